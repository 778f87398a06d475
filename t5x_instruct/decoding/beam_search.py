"""Beam search with T5X's length penalty ``((5 + length) / 6) ** alpha``.

The model runs ``prefill`` once per input; its state is then repeated into ``num_decodes``
beams (rows ``i*k .. i*k+k-1`` belong to input ``i``) and reordered within each input whenever
beams are re-ranked (:mod:`t5x_instruct.decoding.state`).

Rules, per input row, with ``k = num_decodes`` and ``length`` = generated tokens, EOS included:

* Live beams: the ``k`` most likely continuations (summed log-probability) that do not end in
  EOS, out of all ``k * vocab`` continuations of the live beams.
* Finished sequences: a continuation is finished if it ends in ``eos_id`` or reaches
  ``max_decode_length``; it is scored ``logprob / ((5 + length) / 6) ** alpha`` and kept among
  the ``k`` best finished ones, but only if it ranks among the top ``k`` of all continuations
  by log-probability at its step (Hugging Face's rule; T5X admits the top ``2k``). With
  ``alpha = 0`` a beam of one is therefore exactly greedy decoding.
* The search stops when no live beam can still beat the ``k``-th finished score (a live
  beam's log-probability only falls, so its best possible score is it divided by the largest
  penalty still reachable), or after ``max_decode_length`` steps.

Unlike T5X, a beam that reaches ``max_decode_length`` without EOS competes as a finished
sequence (T5X returns such beams only when no beam of the row emitted EOS), so every row
returns ``k`` sequences. A ``-inf`` score marks an empty slot: the vocabulary and length
allow fewer distinct sequences than ``k``.
"""

from __future__ import annotations

from collections.abc import Mapping

import gin
import jax
import jax.numpy as jnp

from t5x_instruct.decoding.base import (
    Decodable,
    DecodeOutput,
    check_max_decode_length,
    check_num_decodes,
    first_token_index,
)
from t5x_instruct.decoding.state import gather_beams, repeat_rows
from t5x_instruct.errors import UserInputError


def brevity_penalty(alpha: float, length: jax.Array | int) -> jax.Array:
    """T5X's length normaliser: scores are log-probabilities divided by this."""
    return jnp.power((5.0 + jnp.asarray(length, jnp.float32)) / 6.0, alpha)


def _take(x: jax.Array, idx: jax.Array) -> jax.Array:
    """``x [b, n, ...]`` rows ``idx [b, m]`` of each example."""
    idx = idx.reshape(idx.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, idx, axis=1)


@gin.configurable(module="decoding", denylist=["model", "batch"])
def beam_search(
    model: Decodable,
    batch: Mapping[str, jax.Array],
    *,
    max_decode_length: int,
    eos_id: int = 1,
    rng: jax.Array | None = None,
    num_decodes: int = 4,
    alpha: float = 0.6,
) -> DecodeOutput:
    """The ``num_decodes`` best sequences per input by length-penalised log-probability.

    ``num_decodes`` is the beam size (as in T5X). ``scores`` are the penalised scores,
    ``tokens`` are 0 after EOS. ``rng`` is unused (the search is deterministic).
    """
    del rng
    check_max_decode_length("beam_search", max_decode_length)
    check_num_decodes("beam_search", num_decodes, what="num_decodes (the beam size)")
    if not isinstance(alpha, (int, float)):
        raise UserInputError(
            f"decoding.beam_search: alpha={alpha!r} must be a number "
            "(gin binding `beam_search.alpha`; 0.6 in T5X, 0 for no length penalty)."
        )
    k, length = num_decodes, max_decode_length
    logits0, state = model.prefill(batch, length)
    b, vocab = logits0.shape
    index0 = jnp.repeat(first_token_index(batch, state), k)
    state = repeat_rows(state, k)
    logits0 = jnp.repeat(logits0, k, axis=0)
    n_top = min(2 * k, k * vocab)  # at most k continuations end in EOS: k live ones remain
    top_rank = jnp.arange(n_top) < k

    def cond(carry):
        step, live_lp, fin_scores = carry[0], carry[3], carry[5]
        # A live log-probability (<= 0) can only fall; its best score divides it by the
        # largest penalty among the lengths still reachable, step + 1 .. max_decode_length.
        largest_penalty = jnp.maximum(
            brevity_penalty(alpha, step + 1), brevity_penalty(alpha, length)
        )
        # Sorted best first: beam 0 is the best live beam, slot k-1 the worst finished one.
        row_done = fin_scores[:, -1] >= live_lp[:, 0] / largest_penalty
        return (step < length) & ~jnp.all(row_done)

    def body(carry):
        step, logits, index, live_lp, live_seqs, fin_scores, fin_seqs, fin_lens, state = carry
        logprobs = jax.nn.log_softmax(logits).reshape(b, k, vocab)
        candidates = (live_lp[:, :, None] + logprobs).reshape(b, k * vocab)
        top_lp, top_idx = jax.lax.top_k(candidates, n_top)
        top_beam, top_tok = top_idx // vocab, (top_idx % vocab).astype(jnp.int32)
        is_eos = top_tok == eos_id
        top_seqs = _take(live_seqs, top_beam).at[:, :, step].set(top_tok)

        # Finished: top-k ranked continuations that end in EOS or reach the length limit.
        finishing = top_rank[None] & (is_eos | (step + 1 == length))
        new_scores = jnp.where(finishing, top_lp / brevity_penalty(alpha, step + 1), -jnp.inf)
        all_scores = jnp.concatenate([fin_scores, new_scores[:, :k]], axis=1)
        fin_scores, pick = jax.lax.top_k(all_scores, k)
        fin_seqs = _take(jnp.concatenate([fin_seqs, top_seqs[:, :k]], axis=1), pick)
        new_lens = jnp.full((b, k), step + 1, jnp.int32)
        fin_lens = _take(jnp.concatenate([fin_lens, new_lens], axis=1), pick)

        # Live: the k best continuations that do not end in EOS.
        live_lp, pick = jax.lax.top_k(jnp.where(is_eos, -jnp.inf, top_lp), k)
        live_seqs = _take(top_seqs, pick)
        parents = _take(top_beam, pick)
        tokens = _take(top_tok, pick).reshape(b * k)
        state = gather_beams(state, parents)
        logits, state = jax.lax.cond(
            step + 1 < length,
            lambda: model.decode_step(tokens, index, state),
            lambda: (logits, state),
        )
        return (
            step + 1, logits, index + 1, live_lp, live_seqs, fin_scores, fin_seqs, fin_lens, state
        )  # fmt: skip

    first_beam_only = jnp.where(jnp.arange(k) == 0, 0.0, -jnp.inf)  # k copies of one prefix
    carry = (
        jnp.int32(0),
        logits0,
        index0,
        jnp.broadcast_to(first_beam_only, (b, k)).astype(jnp.float32),
        jnp.zeros((b, k, length), jnp.int32),
        jnp.full((b, k), -jnp.inf, jnp.float32),
        jnp.zeros((b, k, length), jnp.int32),
        jnp.zeros((b, k), jnp.int32),
        state,
    )
    out = jax.lax.while_loop(cond, body, carry)
    fin_scores, fin_seqs, fin_lens = out[5], out[6], out[7]
    return DecodeOutput(tokens=fin_seqs, lengths=fin_lens, scores=fin_scores)
