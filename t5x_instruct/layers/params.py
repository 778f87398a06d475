"""Parameters annotated with logical axis names, their initialisers, and the dtype policy."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from t5x_instruct.errors import UserInputError
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


INIT_DISTRIBUTIONS = ("normal", "truncated_normal", "uniform")
# Standard deviation of N(0, 1) truncated to [-2, 2]: dividing by it restores unit variance
# (the constant flax/T5X's variance scaling uses).
_TRUNCATED_NORMAL_STDDEV = 0.87962566103423978


def check_distribution(name: str, binding: str) -> None:
    """One clear error for a gin-set distribution name (``binding`` names the setting)."""
    if name not in INIT_DISTRIBUTIONS:
        raise UserInputError(
            f"{binding}={name!r}: expected one of {', '.join(map(repr, INIT_DISTRIBUTIONS))}."
        )


def draw(
    key: jax.Array, shape: tuple[int, ...], dtype: jnp.dtype, distribution: str, stddev: Any
) -> jax.Array:
    """Zero-mean draws with standard deviation ``stddev``.

    ``truncated_normal`` is cut at two standard deviations; ``uniform`` spans
    ``[-sqrt(3) stddev, sqrt(3) stddev]``. Same draws as flax's ``variance_scaling``.
    """
    check_distribution(distribution, "distribution")
    stddev = jnp.asarray(stddev, dtype)
    if distribution == "normal":
        return jax.random.normal(key, shape, dtype) * stddev
    if distribution == "truncated_normal":
        unit = jax.random.truncated_normal(key, -2.0, 2.0, shape, dtype)
        return unit * (stddev / jnp.asarray(_TRUNCATED_NORMAL_STDDEV, dtype))
    return jax.random.uniform(key, shape, dtype, -1.0, 1.0) * (jnp.sqrt(3.0).astype(dtype) * stddev)


def variance_scaling_init(
    scale: float,
    mode: str = "fan_in",
    distribution: str = "normal",
    in_axes: Sequence[int] = (0,),
) -> Initializer:
    """Variance ``scale / fan`` (T5X's ``nn.initializers.variance_scaling``).

    ``fan_in`` is the product of the ``in_axes`` sizes, ``fan_out`` that of every other axis
    (a DenseGeneral kernel ``[in..., out...]`` gets the fans of T5X's flattened 2-D kernel);
    ``fan_avg`` is their mean.
    """
    if mode not in ("fan_in", "fan_out", "fan_avg"):
        raise ValueError(f"mode={mode!r}: expected 'fan_in', 'fan_out' or 'fan_avg'")
    check_distribution(distribution, "distribution")

    def init(key: jax.Array, shape: tuple[int, ...], dtype: jnp.dtype) -> jax.Array:
        axes = {a % len(shape) for a in in_axes}
        fan_in = math.prod(shape[a] for a in axes)
        fan_out = math.prod(s for a, s in enumerate(shape) if a not in axes)
        fan = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[mode]
        return draw(key, shape, dtype, distribution, math.sqrt(scale / fan))

    return init


def fan_in_init(
    scale: float, fan_in_axes: Sequence[int] = (0,), distribution: str = "normal"
) -> Initializer:
    """Variance ``scale / fan_in`` over the contracted input dims (T5X's dense kernels)."""
    return variance_scaling_init(scale, "fan_in", distribution, fan_in_axes)


def stddev_init(stddev: float, distribution: str = "normal") -> Initializer:
    """A fixed standard deviation (Llama's ``initializer_range`` 0.02, T5's N(0, 1) embedding)."""
    check_distribution(distribution, "distribution")

    def init(key: jax.Array, shape: tuple[int, ...], dtype: jnp.dtype) -> jax.Array:
        return draw(key, shape, dtype, distribution, stddev)

    return init


def scaled_init(init: Initializer, factor: float) -> Initializer:
    """``init`` times a constant (T5 folds the 1/sqrt(head_dim) logit scale into the query)."""

    def scaled(key: jax.Array, shape: tuple[int, ...], dtype: jnp.dtype) -> jax.Array:
        return init(key, shape, dtype) * jnp.asarray(factor, dtype)

    return scaled


def normal_init(stddev: float) -> Initializer:
    return stddev_init(stddev, "normal")


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
