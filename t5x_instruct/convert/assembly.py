"""Stored arrays -> our parameter layout, without gathering any array on one device.

A stored parameter often differs from ours only by a reshape (T5X joins attention heads into
one dimension) or by stacking per-layer arrays (our scanned layout). When the target sharding
allows it, each stored array is read in the sharding that hands every device exactly the
slice its target shard is a reshape of, so the jitted reshape moves no data between devices
(parameters stored in our layout are read straight into their sharding). Otherwise the
stored arrays are read spread over all devices and the same jitted reshape re-lays them out
(the compiler then moves slices).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec


@dataclasses.dataclass(frozen=True)
class ReadPlan:
    """How to read a parameter's stored parts, and whether shards can be assembled locally."""

    part_shardings: tuple[NamedSharding, ...]
    local: bool


def source_spec(
    target_spec: PartitionSpec, target_shape: Sequence[int], source_shape: Sequence[int]
) -> PartitionSpec | None:
    """The spec under which each device's slice of ``source`` reshapes into its target shard.

    ``source`` must be ``target`` with runs of consecutive dimensions merged (row-major). A
    merged run inherits the sharding of its outermost dimension; if an inner one is sharded
    the slices interleave and there is no such spec (``None``).
    """
    spec = list(target_spec) + [None] * (len(target_shape) - len(target_spec))
    out: list[Any] = []
    t = 0
    for size in source_shape:
        start, product = t, 1
        while product < size and t < len(target_shape):
            product *= target_shape[t]
            t += 1
        if product != size or any(s is not None for s in spec[start + 1 : t]):
            return None
        out.append(spec[start] if t > start else None)
    if any(target_shape[i] != 1 or spec[i] is not None for i in range(t, len(target_shape))):
        return None
    return PartitionSpec(*out)


def spread_sharding(shape: Sequence[int], mesh: Mesh) -> NamedSharding:
    """Split the largest dimension that divides evenly over every device, else replicate."""
    axes = tuple(name for name in mesh.axis_names if mesh.shape[name] > 1)
    size = math.prod(mesh.shape[name] for name in axes)
    spec: list[Any] = [None] * len(shape)
    if size > 1:
        for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
            if shape[dim] % size == 0:
                spec[dim] = axes
                break
    return NamedSharding(mesh, PartitionSpec(*spec))


def plan_read(
    target_shape: Sequence[int],
    target_sharding: NamedSharding,
    part_shapes: Sequence[Sequence[int]],
    stacked: bool,
) -> ReadPlan:
    """Shardings to read ``parts`` in; ``stacked`` parts become the target's leading axis."""
    mesh = target_sharding.mesh
    spec = list(target_sharding.spec) + [None] * (len(target_shape) - len(target_sharding.spec))
    per_part_shape, per_part_spec = list(target_shape), PartitionSpec(*spec)
    ok = True
    if stacked:
        ok = spec[0] is None and len(part_shapes) == target_shape[0]
        per_part_shape, per_part_spec = list(target_shape[1:]), PartitionSpec(*spec[1:])
    specs = [source_spec(per_part_spec, per_part_shape, s) if ok else None for s in part_shapes]
    if all(s is not None for s in specs):
        return ReadPlan(tuple(NamedSharding(mesh, s) for s in specs), local=True)
    return ReadPlan(tuple(spread_sharding(s, mesh) for s in part_shapes), local=False)


def assemble(
    parts: Sequence[jax.Array],
    target_shape: Sequence[int],
    dtype: Any,
    sharding: NamedSharding,
    *,
    stacked: bool,
    local: bool,
) -> jax.Array:
    """The target array from ``parts`` read as :func:`plan_read` said."""
    target_shape = tuple(target_shape)
    if not stacked and tuple(parts[0].shape) == target_shape and parts[0].dtype == dtype:
        return parts[0]  # read straight into its sharding: nothing to do
    # One small program per distinct layout (attention kernels share one). With ``local``
    # read shardings it moves no data between devices; otherwise the compiler moves slices.
    del local
    return _relayout(target_shape, jnp.dtype(dtype), sharding, stacked)(*parts)


@functools.lru_cache(maxsize=256)
def _relayout(shape: tuple[int, ...], dtype: Any, sharding: NamedSharding, stacked: bool) -> Any:
    def relayout(*parts: jax.Array) -> jax.Array:
        x = jnp.stack(parts) if stacked else parts[0]
        return x.astype(dtype).reshape(shape)

    return jax.jit(relayout, out_shardings=sharding)
