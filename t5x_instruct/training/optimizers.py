"""Optimizers and learning-rate schedules, configured in gin.

Adafactor with T5's settings is the default for encoder-decoder fine-tuning; AdamW for
decoder-only models. Schedules: constant, inverse square root (T5), cosine; all with
linear warm-up.
"""

from __future__ import annotations

import gin
import jax.numpy as jnp
import optax


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


@gin.configurable
def make_optimizer(
    name: str = "adafactor",
    learning_rate: optax.Schedule | float | None = None,
    weight_decay: float = 0.0,
    grad_clip_norm: float | None = None,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
) -> optax.GradientTransformation:
    """``adafactor`` (factored second moments, no momentum: T5) or ``adamw``."""
    lr = learning_rate if learning_rate is not None else learning_rate_schedule()
    if name == "adafactor":
        opt = optax.adafactor(
            learning_rate=lr,
            multiply_by_parameter_scale=False,
            clipping_threshold=1.0,
            decay_rate=0.8,
            weight_decay_rate=weight_decay or None,
        )
    elif name == "adamw":
        opt = optax.adamw(lr, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
    else:
        raise ValueError(f"make_optimizer.name={name!r}: expected 'adafactor' or 'adamw'")
    if grad_clip_norm:
        opt = optax.chain(optax.clip_by_global_norm(grad_clip_norm), opt)
    return opt
