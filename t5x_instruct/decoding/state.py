"""Reordering a model's decode state along its batch axis (expanding rows, picking beams).

Rule: the state is a dict; its ``"cache"`` entry is a ``LayerStack`` cache — a list with one
cache per layer (batch on axis 0) in loop mode, or one pytree of stacked leaves
``[layers, batch, ...]`` in scan mode (batch on axis 1) — and every other leaf (the decoder's
``index``, the encoder's segment ids) has the batch on axis 0. ``LayerStack`` is the only place
that lays caches out, so the rule follows from its contract instead of guessing an axis from
shapes (which fails whenever ``layers == batch``).

Beams are reordered within their own example (``[b*k] -> [b, k]``, gather on ``k``), never
across the batch axis, so a batch sharded over devices stays where it is.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def batch_axes(state: Any) -> Any:
    """A pytree like ``state`` holding each leaf's batch axis."""
    if not isinstance(state, dict):
        return jax.tree.map(lambda _: 0, state)
    axes = {}
    for key, value in state.items():
        axis = 1 if key == "cache" and not isinstance(value, list) else 0
        axes[key] = jax.tree.map(lambda _, a=axis: a, value)
    return axes


def _map_batch(fn: Any, state: Any) -> Any:
    return jax.tree.map(lambda x, axis: fn(x, axis), state, batch_axes(state))


def repeat_rows(state: Any, n: int) -> Any:
    """Each row ``i`` becomes rows ``i*n .. i*n+n-1`` (``[b] -> [b*n]`` on the batch axis)."""
    if n == 1:
        return state
    return _map_batch(lambda x, axis: jnp.repeat(x, n, axis=axis), state)


def gather_beams(state: Any, beam_indices: jax.Array) -> Any:
    """Row ``i*k + j`` of the result is row ``i*k + beam_indices[i, j]`` of ``state``.

    ``beam_indices [b, k]`` picks, for each example, which of its ``k`` beams each new beam
    continues from.
    """
    b, k = beam_indices.shape

    def gather(x: jax.Array, axis: int) -> jax.Array:
        if x.shape[axis] != b * k:
            raise ValueError(
                f"decode state leaf {x.shape} has {x.shape[axis]} rows on axis {axis}, "
                f"expected batch*beams = {b * k}"
            )
        split = x.reshape(x.shape[:axis] + (b, k) + x.shape[axis + 1 :])
        idx = beam_indices.reshape((1,) * axis + (b, k) + (1,) * (x.ndim - axis - 1))
        picked = jnp.take_along_axis(split, idx, axis=axis + 1)
        return picked.reshape(x.shape)

    return _map_batch(gather, state)
