"""Position information: rotary embeddings (Llama) and the T5 relative-bias table."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from t5x_instruct.kernels import RelativeBias
from t5x_instruct.layers.params import logical_param, variance_scaling_init


def apply_rope(x: jax.Array, positions: jax.Array, *, theta: float = 10000.0) -> jax.Array:
    """Rotate ``x [b, t, h, d]`` by ``positions [b, t]`` (half-split layout, as HF Llama).

    Angles are computed in fp32 so long positions keep their precision under bf16.
    """
    head_dim = x.shape[-1]
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [b, t, d/2]
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    x32 = x.astype(jnp.float32)
    half = head_dim // 2
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    return (x32 * cos + rotated * sin).astype(x.dtype)


class RelativePositionBias(nnx.Module):
    """Per-head learned bias for each bucket of ``key_pos - query_pos`` (T5).

    The module only owns the ``[heads, buckets]`` table; kernels look it up per block. It is
    initialised as T5X's: variance ``1 / fan_avg`` with fan_in = heads, fan_out = buckets,
    drawn from ``distribution`` (T5X: uniform).
    """

    def __init__(
        self,
        num_heads: int,
        *,
        num_buckets: int = 32,
        max_distance: int = 128,
        bidirectional: bool = True,
        distribution: str = "uniform",
        rngs: nnx.Rngs,
    ) -> None:
        self.max_distance = max_distance
        self.bidirectional = bidirectional
        self.rel_embedding = logical_param(
            rngs,
            variance_scaling_init(1.0, "fan_avg", distribution),
            (num_heads, num_buckets),
            ("heads", "relpos_buckets"),
        )

    def __call__(self) -> RelativeBias:
        return RelativeBias(
            table=self.rel_embedding.get_value(),
            bidirectional=self.bidirectional,
            max_distance=self.max_distance,
        )
