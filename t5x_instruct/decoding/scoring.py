"""Log-likelihood of given targets (T5X ``score_batch`` semantics), e.g. for rank classification.

The score of a target token is its log-softmax under the model's teacher-forced logits; a
sequence's score is the sum over its tokens weighted by ``decoder_loss_weights`` (so the inputs
of a decoder-only batch and the padding count for nothing). No z-loss, no label smoothing:
these are the model's log-probabilities, comparable across candidate answers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class ScoreOutput:
    """``token_scores [b, t]`` (0 where the weight is 0) and ``sequence_scores [b]``."""

    token_scores: jax.Array
    sequence_scores: jax.Array


def token_log_likelihoods(
    logits: jax.Array, targets: jax.Array, weights: jax.Array | None = None
) -> ScoreOutput:
    """Weighted ``log p(target_t)`` from logits ``[b, t, vocab]``, computed in float32.

    ``weights`` default to 1 on non-padding targets (id != 0).
    """
    if weights is None:
        weights = targets != 0
    logprobs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    picked = jnp.take_along_axis(logprobs, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    token_scores = jnp.where(weights > 0, picked * weights.astype(jnp.float32), 0.0)
    return ScoreOutput(token_scores=token_scores, sequence_scores=token_scores.sum(axis=-1))


def score_batch(model: Any, batch: Mapping[str, jax.Array]) -> ScoreOutput:
    """Per-token and per-sequence log-likelihoods of ``batch['decoder_target_tokens']``.

    Args:
      model: an ``EncoderDecoder`` or ``Decoder`` (anything with
        ``logits_from_batch(batch, deterministic=True)``).
      batch: a feature-converted batch: ``decoder_target_tokens``, ``decoder_input_tokens``,
        ``decoder_loss_weights`` (optional: non-padding targets), plus
        ``encoder_input_tokens`` for encoder-decoders or ``decoder_causal_attention`` for
        prefix-LMs. Use unpacked batches: a packed row's sequence score sums all its segments.

    Deterministic (no dropout) and jit-able: ``nnx.jit(score_batch)(model, batch)``, or
    ``jax.jit(lambda p, b: score_batch(spec.module(p), b))``.
    """
    logits = model.logits_from_batch(dict(batch), deterministic=True)
    return token_log_likelihoods(
        logits, batch["decoder_target_tokens"], batch.get("decoder_loss_weights")
    )
