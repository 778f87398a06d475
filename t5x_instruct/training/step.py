"""The jitted train and eval steps (loss, gradient accumulation, optimizer update).

The objective is ``(ce_scale * cross_entropy + z_loss + sum of plug-in terms) / N`` where
every term is a *sum* over target tokens and ``N`` is the whole batch's target-token count,
so microbatched gradient accumulation gives exactly the full-batch update. Only trainable
parameters are differentiated and updated (see ``train_state.split_params``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import gin
import jax
import jax.numpy as jnp
import optax

from t5x_instruct.config_validation import check_field_types
from t5x_instruct.plugins.base import StepContext
from t5x_instruct.plugins.plugin_set import PluginSet
from t5x_instruct.training.losses import cross_entropy_sums
from t5x_instruct.training.train_state import (
    IsTrainable,
    ModelSpec,
    Params,
    TrainState,
    merge_params,
    split_params,
)

Batch = dict[str, jax.Array]

# Sums every step produces; anything else in a sums dict is a plug-in loss term.
CORE_SUMS = ("cross_entropy", "z_loss", "correct", "weight")
_NO_PLUGINS = PluginSet()


@gin.configurable
@dataclasses.dataclass(frozen=True)
class LossConfig:
    z_loss: float = 1e-4
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        check_field_types(self)


def batch_loss_sums(
    spec: ModelSpec,
    params: Params,
    batch: Batch,
    loss_config: LossConfig,
    *,
    deterministic: bool,
    dropout_rng: jax.Array | None,
    plugins: PluginSet = _NO_PLUGINS,
    aux: dict[str, Any] | None = None,
    step: jax.Array | None = None,
) -> dict[str, jax.Array]:
    """Core loss sums plus ``'<plugin>/<term>'`` sums for one (micro)batch."""
    model = spec.module(params)
    # Plug-ins get their own stream; without plug-ins the model's dropout key is unchanged.
    model_rng, plugin_rng = dropout_rng, None
    if plugins and dropout_rng is not None:
        model_rng, plugin_rng = jax.random.split(dropout_rng)
    logits = model.logits_from_batch(batch, deterministic=deterministic, dropout_rng=model_rng)
    sums = cross_entropy_sums(
        logits,
        batch["decoder_target_tokens"],
        batch["decoder_loss_weights"],
        z_loss=loss_config.z_loss,
        label_smoothing=loss_config.label_smoothing,
    )
    if plugins:
        ctx = StepContext(
            model=model,
            params=params,
            batch=batch,
            logits=logits,
            aux=aux or {},
            step=jnp.zeros((), jnp.int32) if step is None else step,
            rng=plugin_rng,
            deterministic=deterministic,
        )
        sums.update(plugins.loss_terms(ctx))
    return sums


def objective_sum(sums: dict[str, jax.Array], ce_scale: float = 1.0) -> jax.Array:
    """The summed objective: scaled cross-entropy, z-loss and every plug-in term."""
    total = ce_scale * sums["cross_entropy"] + sums["z_loss"]
    for key, value in sums.items():
        if key not in CORE_SUMS:
            total = total + value
    return total


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
    plugins: PluginSet = _NO_PLUGINS,
    is_trainable: IsTrainable | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer update. ``num_microbatches > 1`` accumulates gradients with ``lax.scan``.

    The loss is normalised by the target-token count of the *whole* batch, so k
    microbatches give the same update as one full batch (up to float rounding).
    """
    step_rng = jax.random.fold_in(rng, state.step)
    batch_rng = jax.random.fold_in(step_rng, 0x6261)  # independent of the dropout keys
    trainable, frozen = split_params(state.params, is_trainable)
    if plugins:
        batch = dict(
            plugins.prepare_batch(
                StepContext(
                    model=spec.module(state.params),
                    params=state.params,
                    batch=batch,
                    logits=None,
                    aux=state.aux,
                    step=state.step,
                    rng=batch_rng,
                    deterministic=True,
                )
            )
        )
    total_weight = jnp.maximum(jnp.sum(batch["decoder_loss_weights"].astype(jnp.float32)), 1.0)
    ce_scale = plugins.cross_entropy_scale()

    def loss_fn(train_params: Params, micro: Batch, micro_rng: jax.Array):
        sums = batch_loss_sums(
            spec,
            merge_params(train_params, frozen),
            micro,
            loss_config,
            deterministic=False,
            dropout_rng=micro_rng,
            plugins=plugins,
            aux=state.aux,
            step=state.step,
        )
        return objective_sum(sums, ce_scale) / total_weight, sums

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if num_microbatches == 1:
        (_, sums), grads = grad_fn(trainable, batch, step_rng)
    else:
        micro_batches = _split_microbatches(batch, num_microbatches)

        def accumulate(carry: Any, xs: Any) -> tuple[Any, None]:
            grads_acc, sums_acc = carry
            micro, idx = xs
            (_, sums), grads = grad_fn(trainable, micro, jax.random.fold_in(step_rng, idx))
            grads_acc = jax.tree.map(jnp.add, grads_acc, grads)
            sums_acc = jax.tree.map(jnp.add, sums_acc, sums)
            return (grads_acc, sums_acc), None

        zeros = jax.tree.map(jnp.zeros_like, trainable)
        first = jax.tree.map(lambda x: x[0], micro_batches)
        sums_shape = jax.eval_shape(lambda: grad_fn(trainable, first, step_rng)[0][1])
        zero_sums = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), sums_shape)
        (grads, sums), _ = jax.lax.scan(
            accumulate, (zeros, zero_sums), (micro_batches, jnp.arange(num_microbatches))
        )
    updates, opt_state = optimizer.update(grads, state.opt_state, trainable)
    params = merge_params(optax.apply_updates(trainable, updates), frozen)
    metrics = metrics_from_sums(sums, ce_scale)
    metrics["grad_norm"] = optax.global_norm(grads)
    metrics["param_norm"] = optax.global_norm(params)
    aux = plugins.update_aux(state.aux, params, state.step + 1) if plugins else state.aux
    new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state, aux=aux)
    return new_state, metrics


def eval_step(
    spec: ModelSpec,
    loss_config: LossConfig,
    params: Params,
    batch: Batch,
    *,
    plugins: PluginSet = _NO_PLUGINS,
    aux: dict[str, Any] | None = None,
) -> dict[str, jax.Array]:
    """Summed validation loss terms for one batch (summed over batches by the caller)."""
    return batch_loss_sums(
        spec,
        params,
        batch,
        loss_config,
        deterministic=True,
        dropout_rng=None,
        plugins=plugins,
        aux=aux,
    )


def metrics_from_sums(sums: dict[str, jax.Array], ce_scale: float = 1.0) -> dict[str, jax.Array]:
    weight = jnp.maximum(sums["weight"], 1.0)
    metrics = {
        "loss": objective_sum(sums, ce_scale) / weight,
        "cross_entropy": sums["cross_entropy"] / weight,
        "z_loss": sums["z_loss"] / weight,
        "accuracy": sums["correct"] / weight,
        "target_tokens": sums["weight"],
    }
    for key, value in sums.items():
        if key not in CORE_SUMS:
            metrics[key] = value / weight
    return metrics
