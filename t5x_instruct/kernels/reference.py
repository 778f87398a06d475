"""Plain XLA attention: the numerical reference every fused kernel is tested against."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from t5x_instruct.kernels.masks import AttentionMask, dense_mask
from t5x_instruct.kernels.relative_bias import RelativeBias

# Large but finite, so rows with every key masked give uniform weights, not NaNs.
MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)


def attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    mask: AttentionMask,
    *,
    bias: RelativeBias | None = None,
    scale: float = 1.0,
    dropout_rate: float = 0.0,
    dropout_rng: jax.Array | None = None,
) -> jax.Array:
    """Softmax attention with grouped-query heads, computed in fp32.

    Shapes: query ``[b, q, h, d]``, key/value ``[b, k, kv_h, d]`` with ``h % kv_h == 0``.
    K/V heads are never repeated in memory: queries are grouped ``[b, q, kv_h, g, d]``.
    """
    b, q_len, num_heads, head_dim = query.shape
    kv_len, num_kv_heads = key.shape[1], key.shape[2]
    if num_heads % num_kv_heads:
        raise ValueError(f"{num_heads} query heads are not a multiple of {num_kv_heads} KV heads.")
    groups = num_heads // num_kv_heads
    q = query.reshape(b, q_len, num_kv_heads, groups, head_dim)
    logits = jnp.einsum("bqhgd,bkhd->bhgqk", q, key, preferred_element_type=jnp.float32).astype(
        jnp.float32
    )
    # The mask as an additive bias (0 or MASK_VALUE, [b|1, 1, 1, q, k]), summed with the
    # relative bias before one add to the logits, as T5X does: cheaper than a select over
    # the logits and its gradient, and equal in fp32 (logit + MASK_VALUE rounds to MASK_VALUE,
    # so a fully masked row stays uniform, and exp() of a masked entry is exactly 0).
    all_bias = jnp.where(dense_mask(mask, q_len, kv_len), 0.0, MASK_VALUE)[:, None, None]
    if bias is not None:
        q_pos, kv_pos = mask.positions(q_len, kv_len)
        dense_bias = bias.materialize(q_pos, kv_pos)  # [b|1, h, q, k]
        all_bias = all_bias + dense_bias.reshape(
            dense_bias.shape[0], num_kv_heads, groups, q_len, kv_len
        )
    logits = logits * scale + all_bias
    weights = jax.nn.softmax(logits, axis=-1)
    if dropout_rate > 0.0:
        if dropout_rng is None:
            raise ValueError("attention dropout needs a dropout_rng")
        keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, weights.shape)
        weights = jnp.where(keep, weights / (1.0 - dropout_rate), 0.0)
    out = jnp.einsum("bhgqk,bkhd->bqhgd", weights.astype(value.dtype), value)
    return out.reshape(b, q_len, num_heads, head_dim)
