"""The jitted train and eval steps (loss, gradient accumulation, optimizer update)."""

from __future__ import annotations

import dataclasses
from typing import Any

import gin
import jax
import jax.numpy as jnp
import optax

from t5x_instruct.training.losses import cross_entropy_sums
from t5x_instruct.training.train_state import ModelSpec, Params, TrainState

Batch = dict[str, jax.Array]


@gin.configurable
@dataclasses.dataclass(frozen=True)
class LossConfig:
    z_loss: float = 1e-4
    label_smoothing: float = 0.0


def batch_loss_sums(
    spec: ModelSpec,
    params: Params,
    batch: Batch,
    loss_config: LossConfig,
    *,
    deterministic: bool,
    dropout_rng: jax.Array | None,
) -> dict[str, jax.Array]:
    model = spec.module(params)
    logits = model.logits_from_batch(batch, deterministic=deterministic, dropout_rng=dropout_rng)
    return cross_entropy_sums(
        logits,
        batch["decoder_target_tokens"],
        batch["decoder_loss_weights"],
        z_loss=loss_config.z_loss,
        label_smoothing=loss_config.label_smoothing,
    )


def _split_microbatches(batch: Batch, num_microbatches: int) -> Batch:
    def split(x: jax.Array) -> jax.Array:
        if x.shape[0] % num_microbatches:
            raise ValueError(
                f"batch size {x.shape[0]} is not divisible by num_microbatches={num_microbatches}"
            )
        return x.reshape((num_microbatches, x.shape[0] // num_microbatches) + x.shape[1:])

    return jax.tree.map(split, batch)


def train_step(
    spec: ModelSpec,
    optimizer: optax.GradientTransformation,
    loss_config: LossConfig,
    state: TrainState,
    batch: Batch,
    rng: jax.Array,
    *,
    num_microbatches: int = 1,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer update. ``num_microbatches > 1`` accumulates gradients with ``lax.scan``.

    The loss is normalised by the target-token count of the *whole* batch, so k
    microbatches give the same update as one full batch (up to float rounding).
    """
    total_weight = jnp.maximum(jnp.sum(batch["decoder_loss_weights"].astype(jnp.float32)), 1.0)
    step_rng = jax.random.fold_in(rng, state.step)

    def loss_fn(params: Params, micro: Batch, micro_rng: jax.Array):
        sums = batch_loss_sums(
            spec, params, micro, loss_config, deterministic=False, dropout_rng=micro_rng
        )
        return (sums["cross_entropy"] + sums["z_loss"]) / total_weight, sums

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if num_microbatches == 1:
        (_, sums), grads = grad_fn(state.params, batch, step_rng)
    else:
        micro_batches = _split_microbatches(batch, num_microbatches)

        def accumulate(carry: Any, xs: Any) -> tuple[Any, None]:
            grads_acc, sums_acc = carry
            micro, idx = xs
            (_, sums), grads = grad_fn(state.params, micro, jax.random.fold_in(step_rng, idx))
            grads_acc = jax.tree.map(jnp.add, grads_acc, grads)
            sums_acc = jax.tree.map(jnp.add, sums_acc, sums)
            return (grads_acc, sums_acc), None

        zeros = jax.tree.map(jnp.zeros_like, state.params)
        zero_sums = {
            k: jnp.zeros((), jnp.float32) for k in ("cross_entropy", "z_loss", "correct", "weight")
        }
        (grads, sums), _ = jax.lax.scan(
            accumulate, (zeros, zero_sums), (micro_batches, jnp.arange(num_microbatches))
        )
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = metrics_from_sums(sums)
    metrics["grad_norm"] = optax.global_norm(grads)
    metrics["param_norm"] = optax.global_norm(params)
    new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state)
    return new_state, metrics


def eval_step(
    spec: ModelSpec, loss_config: LossConfig, params: Params, batch: Batch
) -> dict[str, jax.Array]:
    """Summed validation loss terms for one batch (summed over batches by the caller)."""
    return batch_loss_sums(spec, params, batch, loss_config, deterministic=True, dropout_rng=None)


def metrics_from_sums(sums: dict[str, jax.Array]) -> dict[str, jax.Array]:
    weight = jnp.maximum(sums["weight"], 1.0)
    return {
        "loss": (sums["cross_entropy"] + sums["z_loss"]) / weight,
        "cross_entropy": sums["cross_entropy"] / weight,
        "z_loss": sums["z_loss"] / weight,
        "accuracy": sums["correct"] / weight,
        "target_tokens": sums["weight"],
    }
