"""Token-level cross entropy with T5X's z-loss and label smoothing, as weighted sums.

Everything returns *sums* over tokens so that gradient accumulation can divide by the
token count of the whole batch once, which makes k microbatches equal one full batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def cross_entropy_sums(
    logits: jax.Array,
    targets: jax.Array,
    weights: jax.Array,
    *,
    z_loss: float = 0.0,
    label_smoothing: float = 0.0,
) -> dict[str, jax.Array]:
    """Summed loss terms over tokens with ``weights`` (0 for padding / input tokens).

    ``z_loss`` adds ``z_loss * log(Z)^2`` per token, pulling the softmax normaliser to 1
    (keeps bf16 logits in range). Label smoothing uses T5X's normalising constant, so a
    perfect prediction scores 0.
    """
    logits = logits.astype(jnp.float32)
    weights = weights.astype(jnp.float32)
    vocab = logits.shape[-1]
    log_z = jax.nn.logsumexp(logits, axis=-1)
    log_probs = logits - log_z[..., None]
    confidence = 1.0 - label_smoothing
    low = label_smoothing / (vocab - 1)
    target_logp = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
    if label_smoothing > 0.0:
        normalizer = -(confidence * jnp.log(confidence) + (vocab - 1) * low * jnp.log(low + 1e-20))
        smooth = -(confidence * target_logp + low * (jnp.sum(log_probs, axis=-1) - target_logp))
        xent = smooth - normalizer
    else:
        xent = -target_logp
    z_term = z_loss * jnp.square(log_z)
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    return {
        "cross_entropy": jnp.sum(xent * weights),
        "z_loss": jnp.sum(z_term * weights),
        "correct": jnp.sum(correct * weights),
        "weight": jnp.sum(weights),
    }
