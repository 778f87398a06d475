"""T5's bucketed relative position bias, kept as a table and looked up on the fly."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import struct


def relative_position_bucket(
    relative_position: jax.Array, *, bidirectional: bool, num_buckets: int, max_distance: int
) -> jax.Array:
    """Bucket ``key_pos - query_pos`` as T5 does: exact for small offsets, log-spaced beyond.

    Half the buckets (bidirectional) distinguish left from right. Offsets past
    ``max_distance`` share the last bucket.
    """
    ret = jnp.zeros_like(relative_position)
    n = -relative_position
    if bidirectional:
        num_buckets //= 2
        ret = ret + (n < 0).astype(jnp.int32) * num_buckets
        n = jnp.abs(n)
    else:
        n = jnp.maximum(n, 0)
    max_exact = num_buckets // 2
    is_small = n < max_exact
    # Float math is in fp32 on purpose: bucket boundaries must not move in bf16 runs.
    n_safe = jnp.maximum(n, 1).astype(jnp.float32)
    val_if_large = max_exact + (
        jnp.log(n_safe / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact)
    ).astype(jnp.int32)
    val_if_large = jnp.minimum(val_if_large, num_buckets - 1)
    return ret + jnp.where(is_small, n, val_if_large)


@struct.dataclass
class RelativeBias:
    """A ``[heads, num_buckets]`` bias table plus how to bucket offsets into it."""

    table: jax.Array
    bidirectional: bool = struct.field(pytree_node=False, default=True)
    max_distance: int = struct.field(pytree_node=False, default=128)

    @property
    def num_buckets(self) -> int:
        return self.table.shape[-1]

    def materialize(self, q_positions: jax.Array, kv_positions: jax.Array) -> jax.Array:
        """Dense ``[b, heads, q, k]`` bias (fp32) for the reference path."""
        rel = kv_positions[:, None, :] - q_positions[:, :, None]
        buckets = relative_position_bucket(
            rel,
            bidirectional=self.bidirectional,
            num_buckets=self.num_buckets,
            max_distance=self.max_distance,
        )
        table = self.table.astype(jnp.float32)
        # [h, nb] gathered at [b, q, k] -> [b, q, k, h] -> [b, h, q, k]
        return jnp.moveaxis(jnp.take(table.T, buckets, axis=0), -1, 1)
