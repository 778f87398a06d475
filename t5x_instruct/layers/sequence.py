"""The embedded input sequence of a stack, and the hook point plug-ins use to change it.

A model embeds its input tokens into an :class:`EmbeddedSequence` and passes it through its
``sequence_hooks`` (NNX modules attached by plug-ins) before the layer stack runs. A hook may
add, replace or insert vectors, as long as it keeps the per-token metadata consistent:
segment ids (packing and padding), positions (RoPE), prefix flags (prefix-LM) and
``token_index`` (where each original token now sits, used to read outputs back at the
original positions). Masks, the T5 relative bias and KV caches are derived from this
metadata, so they follow automatically.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class EmbeddedSequence:
    """A ``[b, t, d]`` embedded input plus what every token is.

    Attributes:
      x: embeddings ``[b, t, d]`` in the activation dtype.
      segment_ids: ``[b, t]`` int32; packed examples have distinct ids, 0 is padding.
        Hooks always see them filled in; ``None`` only on the hook-free fast path (one
        unpacked example per row).
      positions: ``[b, t]`` int32 position of the token within its example (RoPE positions).
      in_prefix: ``[b, t]`` bool, the bidirectional part of a prefix-LM row (else ``None``).
      token_index: ``[b, t0]`` int32, the index in ``x`` of each of the ``t0`` original tokens
        (``None`` on the hook-free path: the identity).
      features: the other batch features (e.g. a task id), read-only for hooks.
      stack: ``'encoder'`` (T5 encoder input) or ``'decoder'`` (decoder-only sequence).
    """

    x: jax.Array
    segment_ids: jax.Array | None
    positions: jax.Array
    in_prefix: jax.Array | None
    token_index: jax.Array | None
    features: Mapping[str, Any]
    stack: str = struct.field(pytree_node=False, default="decoder")

    @property
    def length(self) -> int:
        return self.x.shape[1]


class SequenceHook(Protocol):
    """What a plug-in attaches with ``model.add_sequence_hook``: maps a sequence to a new one."""

    def __call__(self, seq: EmbeddedSequence) -> EmbeddedSequence: ...


def start_sequence(
    x: jax.Array,
    tokens: jax.Array,
    *,
    stack: str,
    segment_ids: jax.Array | None = None,
    positions: jax.Array | None = None,
    in_prefix: jax.Array | None = None,
    features: Mapping[str, Any] | None = None,
) -> EmbeddedSequence:
    """The sequence before any hook: defaults filled from the tokens (0 = padding)."""
    b, t = tokens.shape
    if segment_ids is None:
        segment_ids = (tokens != 0).astype(jnp.int32)
    if positions is None:
        positions = segment_positions(segment_ids)
    index = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    return EmbeddedSequence(
        x=x,
        segment_ids=segment_ids.astype(jnp.int32),
        positions=positions.astype(jnp.int32),
        in_prefix=in_prefix,
        token_index=index,
        features=dict(features or {}),
        stack=stack,
    )


def segment_positions(segment_ids: jax.Array) -> jax.Array:
    """Position of each token within its segment: 0, 1, ... restarting at each new segment.

    A row of one unpacked example (segment ids ``1 1 1 0 0``) gives plain ``arange``, which
    is what RoPE expects for right-padded rows.
    """
    t = segment_ids.shape[1]
    idx = jnp.arange(t, dtype=jnp.int32)
    starts = jnp.concatenate(
        [
            jnp.ones_like(segment_ids[:, :1], dtype=bool),
            segment_ids[:, 1:] != segment_ids[:, :-1],
        ],
        axis=1,
    )
    start_idx = jax.lax.cummax(jnp.where(starts, idx, 0), axis=1)
    return (idx - start_idx).astype(jnp.int32)


def apply_hooks(hooks: Any, seq: EmbeddedSequence) -> EmbeddedSequence:
    """Run ``hooks`` in order (the order plug-ins attached them)."""
    assert seq.token_index is not None and seq.segment_ids is not None
    t0 = seq.token_index.shape[1]
    for hook in hooks:
        seq = hook(seq)
        if seq.token_index.shape[1] != t0:
            raise ValueError(
                f"sequence hook {type(hook).__name__} changed token_index from {t0} original "
                f"tokens to {seq.token_index.shape[1]}; it must only move them."
            )
    return seq


def gather_tokens(y: jax.Array, seq: EmbeddedSequence) -> jax.Array:
    """Rows of ``y [b, t, ...]`` at the original tokens' indices: ``[b, t0, ...]``."""
    if seq.token_index is None:
        return y
    idx = seq.token_index.reshape(seq.token_index.shape + (1,) * (y.ndim - 2))
    return jnp.take_along_axis(y, idx, axis=1)


class HookedModel:
    """Mixin for models: named sequence hooks, run in the order they were attached.

    Hooks live in an ``nnx.Dict`` (parameters at ``sequence_hooks/<name>/...``, stable
    checkpoint keys); the call order is kept separately because ``nnx.Dict`` sorts its keys.
    """

    sequence_hooks: Any
    sequence_hook_order: tuple[str, ...]

    def _init_sequence_hooks(self) -> None:
        from flax import nnx

        self.sequence_hooks = nnx.Dict()
        self.sequence_hook_order = ()

    def add_sequence_hook(self, name: str, hook: Any) -> None:
        """Attach ``hook`` (an NNX module, see :class:`SequenceHook`) under ``name``."""
        if name in self.sequence_hook_order:
            raise ValueError(f"a sequence hook named {name!r} is already attached")
        self.sequence_hooks[name] = hook
        self.sequence_hook_order = (*self.sequence_hook_order, name)

    @property
    def has_sequence_hooks(self) -> bool:
        return bool(self.sequence_hook_order)

    def run_sequence_hooks(self, seq: EmbeddedSequence) -> EmbeddedSequence:
        return apply_hooks([self.sequence_hooks[n] for n in self.sequence_hook_order], seq)
