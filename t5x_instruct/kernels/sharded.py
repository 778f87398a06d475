"""Pallas attention under a sharded ``jit``: each device runs the kernel on its own block.

XLA's SPMD partitioner cannot split a Mosaic or Triton custom call ("Mosaic kernels cannot be
automatically partitioned"), so the kernels are wrapped in ``jax.shard_map`` over the mesh
of the enclosing :func:`t5x_instruct.partitioning.axis_rules`. The layout comes from the
same logical names the attention layer constrains its activations with:

* the batch dimension is split over the mesh axes of ``'batch'``;
* query heads over those of ``'heads'``, with K/V heads (GQA) following their query heads:
  split the same way when the KV head count divides the shard count, otherwise each shard
  takes the one KV head its query heads share (``kv_heads < shards``, e.g. 4 KV heads on
  8-way tensor parallelism);
* sequence and head_dim stay whole inside a shard. A layout that shards ``'length'``,
  ``'kv_length'`` or ``'kv'`` is *not* an error: the inputs are all-gathered along those
  dimensions on entry (the ``shard_map`` input specs replicate them) and a warning says so.
  The same fallback (replicate, warn) applies to a batch or head count the mesh axes do not
  divide.

Mesh axes not used for batch or heads see replicated inputs and compute the same result
(as XLA would for attention under such a layout). Outside ``axis_rules``, or on a
one-device mesh, the kernel is called directly.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
from jax import lax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from t5x_instruct import partitioning
from t5x_instruct.kernels.backend import platform_overrides
from t5x_instruct.kernels.masks import AttentionMask
from t5x_instruct.kernels.relative_bias import RelativeBias

log = logging.getLogger(__name__)

# The logical names of the attention layer's q and k/v constraints (layers/attention.py).
Q_AXES = ("batch", "length", "heads", "kv")
KV_AXES = ("batch", "kv_length", "kv_heads", "kv")

_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning(message)


def _axes(entry: Any) -> tuple[str, ...]:
    """A PartitionSpec entry as a tuple of mesh axis names."""
    if entry is None:
        return ()
    return (entry,) if isinstance(entry, str) else tuple(entry)


def _size(mesh: Mesh, axes: Sequence[str]) -> int:
    return math.prod(mesh.shape[a] for a in axes)


def _spec_entry(axes: tuple[str, ...]) -> Any:
    if not axes:
        return None
    return axes[0] if len(axes) == 1 else axes


def plan_layout(
    mesh: Mesh,
    rules: partitioning.AxisRules,
    *,
    batch: int,
    num_heads: int,
    num_kv_heads: int,
) -> tuple[tuple[str, ...], tuple[str, ...], str]:
    """``(batch_axes, head_axes, kv_mode)`` for one attention call.

    ``kv_mode`` is ``'split'`` (K/V heads split like the query heads) or ``'slice'`` (K/V
    replicated over the head axes; each shard slices out the single KV head it needs).
    """
    q_spec = tuple(partitioning.logical_to_mesh_axes(Q_AXES, rules))
    kv_spec = tuple(partitioning.logical_to_mesh_axes(KV_AXES, rules))
    q_spec += (None,) * (4 - len(q_spec))
    kv_spec += (None,) * (4 - len(kv_spec))
    gathered = {
        name: _axes(entry)
        for name, entry in (
            ("length", q_spec[1]),
            ("kv", q_spec[3]),
            ("kv_length", kv_spec[1]),
        )
        if _axes(entry)
    }
    if _axes(kv_spec[3]):
        gathered["kv"] = _axes(kv_spec[3])
    if gathered:
        _warn_once(
            "attention_impl='pallas': the logical-axis rules shard "
            + ", ".join(f"{k!r} over {v}" for k, v in sorted(gathered.items()))
            + "; the Pallas kernels need whole sequences and head dims, so their inputs are "
            "all-gathered along those dimensions (attention_impl='xla' keeps them sharded)."
        )
    batch_axes = _axes(q_spec[0])
    if batch_axes and batch % _size(mesh, batch_axes):
        _warn_once(
            f"attention_impl='pallas': batch {batch} is not divisible by the {batch_axes} mesh "
            f"axes ({_size(mesh, batch_axes)} shards); attention runs on the whole batch on "
            "every device."
        )
        batch_axes = ()
    head_axes = _axes(q_spec[2])
    shards = _size(mesh, head_axes)
    kv_mode = "split"
    if head_axes and num_heads % shards:
        head_axes, shards = (), 1
        _warn_once(
            f"attention_impl='pallas': {num_heads} heads are not divisible by the "
            f"{_axes(q_spec[2])} mesh axes; attention heads are gathered on every device."
        )
    if head_axes and num_kv_heads % shards:
        if shards % num_kv_heads == 0:
            kv_mode = "slice"
        else:
            _warn_once(
                f"attention_impl='pallas': {num_kv_heads} KV heads neither divide nor are "
                f"divisible by {shards} head shards; attention heads are gathered on every "
                "device."
            )
            head_axes = ()
    return batch_axes, head_axes, kv_mode


def active_platform() -> str:
    """Platform of the active mesh's devices (compile-only TPU devices included), else the
    default backend: what ``attention_impl='auto'`` decides by."""
    active = partitioning.active_axis_rules()
    if active is None:
        return jax.default_backend()
    return active[0].devices.flat[0].platform


def shard_attention(
    fn: Callable[..., jax.Array],
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    mask: AttentionMask,
    *,
    bias: RelativeBias | None = None,
    scale: float = 1.0,
) -> jax.Array:
    """``fn(query, key, value, mask, bias=..., scale=...)`` per device of the active mesh."""
    active = partitioning.active_axis_rules()
    if active is None or active[0].size == 1:
        return fn(query, key, value, mask, bias=bias, scale=scale)
    mesh, rules = active
    batch, _, num_heads, _ = query.shape
    num_kv_heads = key.shape[2]
    batch_axes, head_axes, kv_mode = plan_layout(
        mesh, rules, batch=batch, num_heads=num_heads, num_kv_heads=num_kv_heads
    )
    b, h = _spec_entry(batch_axes), _spec_entry(head_axes)
    q_spec = P(b, None, h, None)
    kv_spec = P(b, None, h if kv_mode == "split" else None, None)
    # Mask vectors are [batch, len] or broadcast [1, len] (default positions).
    mask_specs = jax.tree.map(lambda x: P(b if x.shape[0] == batch else None), mask)
    overrides = platform_overrides(mesh.devices.flat[0].platform)
    kv_per_shard = _size(mesh, head_axes) // num_kv_heads if kv_mode == "slice" else 0

    def local(q, k, v, local_mask, *table):
        if kv_per_shard:
            # Shard s holds query heads of KV head s // kv_per_shard (heads are grouped).
            index = lax.axis_index(head_axes) // kv_per_shard
            k = lax.dynamic_slice_in_dim(k, index, 1, axis=2)
            v = lax.dynamic_slice_in_dim(v, index, 1, axis=2)
        rel = None
        if bias is not None:
            rel = RelativeBias(
                *table, bidirectional=bias.bidirectional, max_distance=bias.max_distance
            )
        return fn(q, k, v, local_mask, bias=rel, scale=scale, **overrides)

    args: tuple[Any, ...] = (query, key, value, mask)
    specs: tuple[Any, ...] = (q_spec, kv_spec, kv_spec, mask_specs)
    if bias is not None:
        args, specs = (*args, bias.table), (*specs, P(h, None))
    mapped = jax.shard_map(
        local,
        mesh=mesh,
        in_specs=specs,
        out_specs=q_spec,
        # Pallas calls carry no varying-manual-axes types; replication is not checked.
        check_vma=False,
    )
    return mapped(*args)
