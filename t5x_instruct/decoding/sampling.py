"""Temperature sampling with optional top-k and top-p (nucleus) truncation, T5X semantics.

Each input row is decoded ``num_decodes`` times: the model's state after ``prefill`` is
repeated along the batch axis (one prefill per input, not per sample), every step draws one
token per row from ``softmax(logits / temperature)`` restricted to the allowed set, and the
samples come back sorted by their log-probability, best first.
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
from t5x_instruct.decoding.state import repeat_rows
from t5x_instruct.errors import UserInputError


def _check_args(temperature: float, top_k: int, top_p: float) -> None:
    def bad(name: str, value: object, rule: str) -> UserInputError:
        return UserInputError(
            f"decoding.temperature_sample: {name}={value!r} {rule} "
            f"(gin binding `temperature_sample.{name}`)."
        )

    if not isinstance(temperature, (int, float)) or temperature < 0:
        raise bad("temperature", temperature, "must be a number >= 0 (0 decodes greedily)")
    if not isinstance(top_k, int) or top_k < 0:
        raise bad("top_k", top_k, "must be an integer >= 0 (0 keeps the whole vocabulary)")
    if not isinstance(top_p, (int, float)) or not 0.0 < top_p <= 1.0:
        raise bad("top_p", top_p, "must be in (0, 1] (1 keeps the whole vocabulary)")


def truncate_logits(logits: jax.Array, top_k: int = 0, top_p: float = 1.0) -> jax.Array:
    """Set every logit outside the allowed set to ``-inf`` (``[rows, vocab]``).

    ``top_k > 0`` keeps the ``top_k`` largest logits (ties with the k-th all kept); ``top_p < 1``
    then keeps the smallest set of most likely tokens whose probabilities sum to at least
    ``top_p`` (the token that crosses ``top_p`` is kept), computed on the renormalised top-k
    distribution when both are set.
    """
    if top_k and top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p < 1.0:
        ordered = jnp.flip(jnp.sort(logits, axis=-1), axis=-1)
        cumulative = jnp.cumsum(jax.nn.softmax(ordered, axis=-1), axis=-1)
        # Tokens before the cutoff sum to less than top_p; the cutoff token crosses it.
        cutoff = jnp.sum(cumulative < top_p, axis=-1, keepdims=True)
        cutoff = jnp.minimum(cutoff, logits.shape[-1] - 1)
        threshold = jnp.take_along_axis(ordered, cutoff, axis=-1)
        logits = jnp.where(logits < threshold, -jnp.inf, logits)
    return logits


def _pick(logprobs: jax.Array, tokens: jax.Array) -> jax.Array:
    return jnp.take_along_axis(logprobs, tokens[:, None], axis=-1)[:, 0]


def _sample_step(
    logits: jax.Array,
    rng: jax.Array,
    temperature: float,
    top_k: int,
    top_p: float,
    rescale_log_probs: bool,
) -> tuple[jax.Array, jax.Array]:
    """One token per row and its log-probability."""
    if temperature == 0:
        tokens = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        if rescale_log_probs:  # the greedy "distribution" puts all mass on the argmax
            return tokens, jnp.zeros(tokens.shape, jnp.float32)
        return tokens, _pick(jax.nn.log_softmax(logits), tokens)
    scaled = truncate_logits(logits / temperature, top_k, top_p)
    tokens = jax.random.categorical(rng, scaled).astype(jnp.int32)
    logprobs = jax.nn.log_softmax(scaled if rescale_log_probs else logits)
    return tokens, _pick(logprobs, tokens)


@gin.configurable(module="decoding", denylist=["model", "batch"])
def temperature_sample(
    model: Decodable,
    batch: Mapping[str, jax.Array],
    *,
    max_decode_length: int,
    eos_id: int = 1,
    rng: jax.Array | None = None,
    num_decodes: int = 1,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    rescale_log_probs: bool = True,
) -> DecodeOutput:
    """``num_decodes`` samples per input, sorted by log-probability (best first).

    Args:
      temperature: divides the logits; 0 decodes greedily (every sample is the argmax path).
      top_k: if > 0, sample among the ``top_k`` most likely tokens only.
      top_p: if < 1, sample from the smallest set of most likely tokens whose probability
        reaches ``top_p`` (nucleus sampling). Unlike T5X, ``top_k`` and ``top_p`` may be
        combined: top-k first, then top-p on what remains (Hugging Face's order).
      rescale_log_probs: scores are log-probabilities under the distribution actually sampled
        from (tempered and truncated; T5X's default), else under the model's own softmax.

    ``rng`` defaults to ``PRNGKey(0)``; step ``t`` draws with ``fold_in(rng, t)``. After
    ``eos_id`` a row emits 0; a row ends after ``max_decode_length`` tokens otherwise.
    """
    check_max_decode_length("temperature_sample", max_decode_length)
    check_num_decodes("temperature_sample", num_decodes)
    _check_args(temperature, top_k, top_p)
    if rng is None:
        rng = jax.random.PRNGKey(0)
    logits0, state = model.prefill(batch, max_decode_length)
    b = logits0.shape[0]
    n = num_decodes
    rows = b * n
    index0 = jnp.repeat(first_token_index(batch, state), n)
    state = repeat_rows(state, n)
    logits0 = jnp.repeat(logits0, n, axis=0)

    def cond(carry):
        step, done = carry[0], carry[4]
        return (step < max_decode_length) & ~jnp.all(done)

    def body(carry):
        step, logits, index, tokens, done, lengths, scores, state = carry
        tok, logprob = _sample_step(
            logits, jax.random.fold_in(rng, step), temperature, top_k, top_p, rescale_log_probs
        )
        tok = jnp.where(done, 0, tok)
        scores = scores + jnp.where(done, 0.0, logprob)
        tokens = tokens.at[:, step].set(tok)
        lengths = lengths + (~done).astype(jnp.int32)
        done = done | (tok == eos_id)
        logits, state = jax.lax.cond(
            step + 1 < max_decode_length,
            lambda: model.decode_step(tok, index, state),
            lambda: (logits, state),
        )
        return step + 1, logits, index + 1, tokens, done, lengths, scores, state

    carry = (
        jnp.int32(0),
        logits0,
        index0,
        jnp.zeros((rows, max_decode_length), jnp.int32),
        jnp.zeros((rows,), bool),
        jnp.zeros((rows,), jnp.int32),
        jnp.zeros((rows,), jnp.float32),
        state,
    )
    _, _, _, tokens, _, lengths, scores, _ = jax.lax.while_loop(cond, body, carry)
    tokens = tokens.reshape(b, n, max_decode_length)
    lengths, scores = lengths.reshape(b, n), scores.reshape(b, n)
    order = jnp.argsort(-scores, axis=1, stable=True)
    return DecodeOutput(
        tokens=jnp.take_along_axis(tokens, order[:, :, None], axis=1),
        lengths=jnp.take_along_axis(lengths, order, axis=1),
        scores=jnp.take_along_axis(scores, order, axis=1),
    )
