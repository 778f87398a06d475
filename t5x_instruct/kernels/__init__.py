"""Attention kernels behind one entry point, chosen by ``attention_impl``.

Models call :func:`dot_product_attention` only; adding a kernel means registering it here
(see :func:`register_attention_impl`), never editing a model.
"""

from __future__ import annotations

from collections.abc import Callable

import jax

from t5x_instruct.kernels import reference
from t5x_instruct.kernels.masks import AttentionMask, dense_mask
from t5x_instruct.kernels.relative_bias import RelativeBias, relative_position_bucket

AttentionFn = Callable[..., jax.Array]
_IMPLS: dict[str, AttentionFn] = {"xla": reference.attention}


def register_attention_impl(name: str, fn: AttentionFn) -> None:
    _IMPLS[name] = fn


def available_attention_impls() -> list[str]:
    return sorted(_IMPLS)


def dot_product_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    mask: AttentionMask,
    *,
    bias: RelativeBias | None = None,
    scale: float = 1.0,
    dropout_rate: float = 0.0,
    dropout_rng: jax.Array | None = None,
    impl: str = "xla",
) -> jax.Array:
    """``softmax(scale * q k^T + bias, masked) v`` with the chosen implementation."""
    if impl not in _IMPLS:
        raise ValueError(
            f"attention_impl={impl!r} is not available; "
            f"choose one of {available_attention_impls()}."
        )
    return _IMPLS[impl](
        query,
        key,
        value,
        mask,
        bias=bias,
        scale=scale,
        dropout_rate=dropout_rate,
        dropout_rng=dropout_rng,
    )


__all__ = [
    "AttentionMask",
    "RelativeBias",
    "available_attention_impls",
    "dense_mask",
    "dot_product_attention",
    "register_attention_impl",
    "relative_position_bucket",
]
