"""What may attend to what, described by per-token metadata instead of a dense mask.

Kernels (the XLA reference now, fused Pallas kernels later) build the mask block by block
from these vectors, so no ``[batch, heads, q, k]`` tensor ever needs to exist in memory.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class AttentionMask:
    """Token-level description of an attention pattern.

    A key is visible to a query when all of these hold:
      * same segment (packed examples never see each other; segment 0 is padding),
      * if ``causal``: ``kv_position <= q_position``, unless both tokens are in the prefix
        (prefix-LM: bidirectional over the inputs, causal over the targets).

    Positions index the *sequence* (cache slot / token index), not the RoPE position.
    """

    q_segment_ids: jax.Array | None = None  # [b, q] int32
    kv_segment_ids: jax.Array | None = None  # [b, k] int32
    q_positions: jax.Array | None = None  # [b, q] int32
    kv_positions: jax.Array | None = None  # [b, k] int32
    q_in_prefix: jax.Array | None = None  # [b, q] bool, prefix-LM inputs
    kv_in_prefix: jax.Array | None = None  # [b, k] bool
    causal: bool = struct.field(pytree_node=False, default=False)

    def positions(self, q_len: int, kv_len: int) -> tuple[jax.Array, jax.Array]:
        """Query and key positions, defaulting to ``arange`` ([1, q] / [1, k])."""
        q_pos = self.q_positions
        kv_pos = self.kv_positions
        if q_pos is None:
            q_pos = jnp.arange(q_len, dtype=jnp.int32)[None]
        if kv_pos is None:
            kv_pos = jnp.arange(kv_len, dtype=jnp.int32)[None]
        return q_pos, kv_pos


def dense_mask(mask: AttentionMask, q_len: int, kv_len: int) -> jax.Array:
    """Materialise the boolean mask ``[b or 1, q, k]`` (reference / tests only)."""
    allowed: Any = jnp.ones((1, q_len, kv_len), dtype=bool)
    if mask.q_segment_ids is not None or mask.kv_segment_ids is not None:
        if mask.q_segment_ids is None or mask.kv_segment_ids is None:
            raise ValueError(
                "AttentionMask needs both q_segment_ids and kv_segment_ids, or neither."
            )
        allowed = allowed & (mask.q_segment_ids[:, :, None] == mask.kv_segment_ids[:, None, :])
    if mask.causal:
        q_pos, kv_pos = mask.positions(q_len, kv_len)
        causal = q_pos[:, :, None] >= kv_pos[:, None, :]
        if mask.q_in_prefix is not None and mask.kv_in_prefix is not None:
            causal = causal | (mask.q_in_prefix[:, :, None] & mask.kv_in_prefix[:, None, :])
        allowed = allowed & causal
    return allowed
