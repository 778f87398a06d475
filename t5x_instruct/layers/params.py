"""Parameters annotated with logical axis names, plus the dtype policy."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from t5x_instruct.partitioning import LOGICAL_AXES_KEY, with_logical_constraint

Initializer = Callable[[jax.Array, tuple[int, ...], jnp.dtype], jax.Array]


def logical_param(
    rngs: nnx.Rngs,
    init: Initializer,
    shape: Sequence[int],
    logical_axes: Sequence[str | None],
    dtype: jnp.dtype = jnp.float32,
) -> nnx.Param:
    """An ``nnx.Param`` whose metadata names each dimension (``('embed', 'mlp')``)."""
    if len(shape) != len(logical_axes):
        raise ValueError(
            f"shape {tuple(shape)} and logical axes {tuple(logical_axes)} differ in rank"
        )
    value = init(rngs.params(), tuple(shape), dtype)
    return nnx.Param(value, **{LOGICAL_AXES_KEY: tuple(logical_axes)})


def fan_in_init(scale: float, fan_in_axes: Sequence[int] = (0,)) -> Initializer:
    """Truncated-normal-free variance scaling over the contracted input dims (T5X default)."""

    def init(key: jax.Array, shape: tuple[int, ...], dtype: jnp.dtype) -> jax.Array:
        fan_in = 1
        for axis in fan_in_axes:
            fan_in *= shape[axis]
        return jax.random.normal(key, shape, dtype) * jnp.sqrt(scale / fan_in).astype(dtype)

    return init


def normal_init(stddev: float) -> Initializer:
    def init(key: jax.Array, shape: tuple[int, ...], dtype: jnp.dtype) -> jax.Array:
        return jax.random.normal(key, shape, dtype) * stddev

    return init


def ones_init(key: jax.Array, shape: tuple[int, ...], dtype: jnp.dtype) -> jax.Array:
    del key
    return jnp.ones(shape, dtype)


def dtype_from_name(name: str | jnp.dtype) -> jnp.dtype:
    """``'bfloat16'`` / ``'float32'`` (gin-friendly strings) to a dtype."""
    if not isinstance(name, str):
        return jnp.dtype(name)
    aliases = {"bf16": "bfloat16", "fp32": "float32", "f32": "float32", "fp16": "float16"}
    return jnp.dtype(aliases.get(name, name))


def split_rng(rng: jax.Array | None, n: int) -> list[jax.Array | None]:
    """``n`` independent keys, or ``n`` Nones when running without dropout."""
    if rng is None:
        return [None] * n
    return list(jax.random.split(rng, n))


def dropout(
    x: jax.Array,
    rate: float,
    rng: jax.Array | None,
    *,
    deterministic: bool,
    broadcast_dims: Sequence[int] = (),
) -> jax.Array:
    """Inverted dropout with an explicit key (reproducible regardless of call order)."""
    if deterministic or rate == 0.0:
        return x
    if rng is None:
        raise ValueError("dropout with deterministic=False needs a dropout_rng")
    shape = list(x.shape)
    for dim in broadcast_dims:
        shape[dim] = 1
    keep = jax.random.bernoulli(rng, 1.0 - rate, tuple(shape))
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


constrain = with_logical_constraint
