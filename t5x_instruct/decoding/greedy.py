"""Greedy decoding: the most likely token at every step, one sequence per input."""

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
from t5x_instruct.errors import UserInputError


def greedy_decode(
    model: Decodable,
    batch: Mapping[str, jax.Array],
    *,
    max_decode_length: int,
    eos_id: int = 1,
    return_logits: bool = False,
) -> DecodeOutput:
    """Greedy generation in the flat form: ``tokens [b, L]``, ``lengths [b]``, ``scores [b]``.

    Stops early once every row has emitted ``eos_id``; ``scores`` is the sequence's summed
    log-probability. Works under ``jax.jit`` (``max_decode_length`` must be static).
    """
    check_max_decode_length("greedy_decode", max_decode_length)
    logits0, state = model.prefill(batch, max_decode_length)
    b, vocab = logits0.shape
    index0 = first_token_index(batch, state)
    tokens = jnp.zeros((b, max_decode_length), jnp.int32)
    all_logits = jnp.zeros((b, max_decode_length, vocab), jnp.float32) if return_logits else None
    done = jnp.zeros((b,), bool)
    lengths = jnp.zeros((b,), jnp.int32)
    scores = jnp.zeros((b,), jnp.float32)

    def cond(carry):
        step, done = carry[0], carry[4]
        return (step < max_decode_length) & ~jnp.all(done)

    def body(carry):
        step, logits, index, tokens, done, lengths, scores, all_logits, state = carry
        next_tok = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        next_tok = jnp.where(done, 0, next_tok)
        logprob = jnp.take_along_axis(jax.nn.log_softmax(logits), next_tok[:, None], axis=-1)
        scores = scores + jnp.where(done, 0.0, logprob[:, 0])
        tokens = tokens.at[:, step].set(next_tok)
        if all_logits is not None:
            all_logits = all_logits.at[:, step].set(logits)
        lengths = lengths + (~done).astype(jnp.int32)
        done = done | (next_tok == eos_id)
        # The last step needs no further forward pass; skip it to save one step of compute.
        logits, state = jax.lax.cond(
            step + 1 < max_decode_length,
            lambda: model.decode_step(next_tok, index, state),
            lambda: (logits, state),
        )
        return step + 1, logits, index + 1, tokens, done, lengths, scores, all_logits, state

    carry = (jnp.int32(0), logits0, index0, tokens, done, lengths, scores, all_logits, state)
    out = jax.lax.while_loop(cond, body, carry)
    tokens, lengths, scores, all_logits = out[3], out[5], out[6], out[7]
    return DecodeOutput(tokens=tokens, lengths=lengths, scores=scores, logits=all_logits)


@gin.configurable(module="decoding", denylist=["model", "batch"])
def greedy(
    model: Decodable,
    batch: Mapping[str, jax.Array],
    *,
    max_decode_length: int,
    eos_id: int = 1,
    rng: jax.Array | None = None,
    num_decodes: int = 1,
) -> DecodeOutput:
    """:func:`greedy_decode` as a :class:`~t5x_instruct.decoding.DecodeFn` (``[b, 1, L]``)."""
    del rng
    check_num_decodes("greedy", num_decodes)
    if num_decodes != 1:
        raise UserInputError(
            f"decoding.greedy: num_decodes={num_decodes} but greedy decoding yields one "
            "sequence per input. Use `@decoding.beam_search` or `@decoding.temperature_sample` "
            "for several, or set num_decodes = 1."
        )
    out = greedy_decode(model, batch, max_decode_length=max_decode_length, eos_id=eos_id)
    return DecodeOutput(
        tokens=out.tokens[:, None], lengths=out.lengths[:, None], scores=out.scores[:, None]
    )
