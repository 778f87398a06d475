"""Optimizers and learning-rate schedules, configured in gin.

T5X's Adafactor (factored by logical axes, parameter-scaled steps) is the default; AdamW is
the alternative. Schedules: constant, inverse square root (T5), cosine; all with
linear warm-up.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gin
import jax.numpy as jnp
import optax

from t5x_instruct.errors import UserInputError
from t5x_instruct.training.adafactor import adafactor


@gin.configurable
def learning_rate_schedule(
    kind: str = "constant",
    base_learning_rate: float = 1e-3,
    warmup_steps: int = 0,
    total_steps: int | None = None,
    final_fraction: float = 0.0,
) -> optax.Schedule:
    """``kind`` in {constant, rsqrt, cosine}; warm-up ramps linearly from 0."""
    if kind == "constant":
        main: optax.Schedule = optax.constant_schedule(base_learning_rate)
    elif kind == "rsqrt":
        # T5: lr = base / sqrt(max(step, warmup)) normalised so it equals base at warm-up end.
        offset = max(warmup_steps, 1)

        def main(step: jnp.ndarray) -> jnp.ndarray:
            return base_learning_rate * jnp.sqrt(offset / jnp.maximum(step + offset, offset))
    elif kind == "cosine":
        if total_steps is None:
            raise ValueError("learning_rate_schedule.kind='cosine' needs total_steps")
        main = optax.cosine_decay_schedule(
            base_learning_rate, max(total_steps - warmup_steps, 1), alpha=final_fraction
        )
    else:
        raise ValueError(
            f"learning_rate_schedule.kind={kind!r}: expected 'constant', 'rsqrt' or 'cosine'"
        )
    if warmup_steps <= 0:
        return main
    warmup = optax.linear_schedule(0.0, base_learning_rate, warmup_steps)
    return optax.join_schedules([warmup, main], [warmup_steps])


@gin.configurable(denylist=["logical_axes"])
def make_optimizer(
    name: str = "adafactor",
    learning_rate: optax.Schedule | float | None = None,
    weight_decay: float = 0.0,
    grad_clip_norm: float | None = None,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    logical_axes: Mapping[str, Any] | None = None,
) -> optax.GradientTransformation:
    """``adafactor`` (T5X's: :mod:`t5x_instruct.training.adafactor`) or ``adamw``.

    Adafactor's own settings are gin bindings of ``adafactor.*`` (``multiply_by_parameter_scale``,
    ``beta1``, ``decay_rate``, ``clipping_threshold``, ...); ``weight_decay`` here, when non-zero,
    is its ``weight_decay_rate``. ``b1``, ``b2`` and ``eps`` are AdamW's. ``logical_axes``
    (``ModelSpec.logical_axes()``, passed by the trainer) choose Adafactor's factored dims.
    """
    lr = learning_rate if learning_rate is not None else learning_rate_schedule()
    if name == "adafactor":
        extra = {"weight_decay_rate": weight_decay} if weight_decay else {}
        opt = adafactor(lr, logical_axes=logical_axes, **extra)
    elif name == "adamw":
        opt = optax.adamw(lr, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
    else:
        raise UserInputError(f"make_optimizer.name={name!r}: expected 'adafactor' or 'adamw'.")
    if grad_clip_norm:
        opt = optax.chain(optax.clip_by_global_norm(grad_clip_norm), opt)
    return opt
