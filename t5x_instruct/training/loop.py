"""The training loop: data -> sharded jitted steps -> metrics, evals and checkpoints.

Everything a run needs is an argument of :func:`train`, bound in gin with T5X's macro
vocabulary (MODEL_DIR, MIXTURE_OR_TASK_NAME, TASK_FEATURE_LENGTHS, TRAIN_STEPS, ...).
The data layer (seqio / TensorFlow) is imported here lazily, never by the step itself.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec
from tqdm.auto import tqdm

from t5x_instruct import gin_utils, partitioning
from t5x_instruct.errors import UserInputError
from t5x_instruct.models import build_model, model_family
from t5x_instruct.plugins.base import Action, CheckpointContext, EvalContext, Plugin
from t5x_instruct.plugins.plugin_set import PluginSet
from t5x_instruct.runtime import distributed, host_data, lockstep, paths
from t5x_instruct.runtime.preemption import PreemptionGuard
from t5x_instruct.training import checkpoints as ckpt_lib
from t5x_instruct.training.compile_ahead import compile_while_fetching
from t5x_instruct.training.evaluation import GreedyEvaluator, load_eval_sources
from t5x_instruct.training.metrics import MetricsWriter
from t5x_instruct.training.optimizers import learning_rate_schedule, make_optimizer
from t5x_instruct.training.reporting import print_eval_table, summarise
from t5x_instruct.training.state_init import StateLayout, make_layout, restore_or_initialise
from t5x_instruct.training.step import LossConfig, eval_step, metrics_from_sums, train_step
from t5x_instruct.training.train_state import ModelSpec, TrainState

log = logging.getLogger(__name__)


@gin.configurable(denylist=["model_spec"])
def train(
    *,
    model_dir: str = gin.REQUIRED,
    mixture_or_task_name: str = gin.REQUIRED,
    task_feature_lengths: Mapping[str, int] = gin.REQUIRED,
    train_steps: int = gin.REQUIRED,
    batch_size: int = gin.REQUIRED,
    decoder_objective: str = "prefix_lm",
    pack: bool = True,
    use_cached_tasks: bool = False,
    seed: int = 0,
    data_shards: int | None = None,
    num_microbatches: int = 1,
    loss_config: LossConfig | None = None,
    optimizer: optax.GradientTransformation | None = None,
    mesh_config: partitioning.MeshConfig | None = None,
    logical_axis_rules: partitioning.AxisRules | None = None,
    log_period: int = 10,
    checkpoint_period: int = 100,
    keep_checkpoints: int = 3,
    async_checkpointing: bool = True,
    eval_period: int = 0,
    eval_batch_size: int = 32,
    max_eval_examples: int | None = 256,
    eval_mixture_or_task_name: str | None = None,
    validation_split: str = "validation",
    final_eval_split: str = "test",
    max_decode_length: int | None = None,
    initial_checkpoint_path: str | None = None,
    assignment_map: Sequence[tuple[str, str | None]] = (),
    fallback_to_scratch: bool = False,
    final_eval: bool = True,
    progress_bar: bool = True,
    plugins: Sequence[Plugin] = (),
    model_spec: ModelSpec | None = None,
) -> dict[str, Any]:
    """Train, evaluate and checkpoint; returns the final summary (also ``summary.json``).

    Restarting with the same MODEL_DIR resumes from its latest checkpoint, data position
    included, so a killed run continues with exactly the losses it would have had.
    ``plugins`` (gin: ``train.plugins = [@SomePlugin(), ...]``) extend the model, loss,
    optimizer split and loop; ``model_spec`` (tests) replaces ``build_model`` and is then
    transformed by the plug-ins too.

    Multi-host: every process runs this with the same arguments (see
    :mod:`t5x_instruct.runtime`). ``data_shards`` splits each batch into that many SeqIO
    shards (default: the process count at the first start, then what the checkpoint says);
    losses depend on it, not on the process count. Only process 0 writes metrics, summaries
    and config.gin. SIGTERM on any process makes all of them save the same step; the summary
    then has ``preempted: True`` (the CLI exits with ``PREEMPTED_EXIT_CODE``).
    """
    launched = time.perf_counter()
    distributed.initialize()  # a no-op unless a multi-process job is configured
    _check_positive_ints(train_steps=train_steps, batch_size=batch_size, log_period=log_period)
    if eval_period and eval_period % log_period:
        raise UserInputError(
            f"train.eval_period={eval_period} must be a multiple of train.log_period={log_period}"
        )
    from t5x_instruct import data  # lazy: TensorFlow only when a run actually reads data

    model_dir = os.fspath(paths.resolve(model_dir, what="MODEL_DIR", for_checkpoints=True))
    ckpt_lib.check_writable(model_dir)  # one line now, not a traceback at the first save
    is_writer = jax.process_index() == 0
    plugin_set = PluginSet(plugins)
    base_build = model_spec.build if model_spec is not None else build_model
    spec = (
        ModelSpec.create(plugin_set.build(base_build, seed))
        if plugin_set or model_spec is None
        else model_spec
    )
    config = spec.config
    encoder_decoder = model_family(config).encoder_decoder
    objectives = {"prefix_lm": "prefix_lm", "lm": "decoder"}
    if decoder_objective not in objectives:
        raise ValueError(
            f"train.decoder_objective={decoder_objective!r}: expected 'prefix_lm' or 'lm'"
        )
    model_type = "encoder_decoder" if encoder_decoder else objectives[decoder_objective]
    eval_name = eval_mixture_or_task_name or mixture_or_task_name
    # One clear error now, instead of NaN embeddings from ids past the table later.
    data.check_vocabulary_fits(mixture_or_task_name, config.vocab_size)
    if (eval_period or final_eval) and eval_name != mixture_or_task_name:
        data.check_vocabulary_fits(eval_name, config.vocab_size)
    final_split = (
        _final_eval_split(data.available_splits(eval_name), final_eval_split, validation_split)
        if final_eval
        else None
    )
    mesh = partitioning.create_mesh(mesh_config or partitioning.MeshConfig())
    rules = plugin_set.axis_rules(
        list(logical_axis_rules or partitioning.standard_logical_axis_rules())
    )
    schedule = learning_rate_schedule()
    optimizer = optimizer or make_optimizer(
        learning_rate=schedule, logical_axes=spec.logical_axes()
    )
    loss_config = loss_config or LossConfig()
    layout = make_layout(spec, optimizer, mesh, rules, plugin_set, model_dir)
    log.info(
        "Model: %s (%.2fM parameters, %.4fM trainable)%s",
        type(config).__name__,
        spec.num_params() / 1e6,
        layout.trainable_count() / 1e6,
        f", plug-ins: {', '.join(plugin_set.names)}" if plugin_set else "",
    )

    _check_batch_divisible(mesh, rules, batch_size=batch_size)
    if eval_period:  # validation batches are sharded like training batches
        _check_batch_divisible(mesh, rules, eval_batch_size=eval_batch_size)
    state_shardings = layout.shardings
    replicated = NamedSharding(mesh, PartitionSpec())
    checkpointer = ckpt_lib.Checkpointer(
        model_dir, keep=keep_checkpoints, async_save=async_checkpointing
    )
    state, data_state = restore_or_initialise(
        layout, checkpointer, initial_checkpoint_path, assignment_map, fallback_to_scratch
    )
    start_step = int(jax.device_get(state.step))

    num_shards = _num_data_shards(data_shards, data_state, batch_size)
    blocks = host_data.row_blocks(partitioning.batch_sharding(mesh, rules, 1), batch_size)
    iterator = host_data.ShardedBatches(
        lambda shard_id: data.DataIterator(
            mixture_or_task_name,
            task_feature_lengths=dict(task_feature_lengths),
            split="train",
            batch_size=batch_size // num_shards,
            model_type=model_type,
            pack=pack,
            shuffle=True,
            seed=seed,
            shard_id=shard_id,
            num_shards=num_shards,
            use_cached=use_cached_tasks,
        ),
        num_shards,
        host_data.shards_for_rows(blocks, batch_size, num_shards),
        owned=host_data.owned_shards(
            partitioning.batch_sharding(mesh, rules, 1), batch_size, num_shards
        ),
    )
    if data_state:  # O(1) from the iterators' checkpoints, else skipping (with a warning)
        iterator.restore(data_state, checkpointer.data_state_dir(start_step), start_step)

    def _train_step(state: TrainState, batch: dict[str, jax.Array], rng: jax.Array):
        with partitioning.axis_rules(mesh, rules):
            return train_step(
                spec,
                optimizer,
                loss_config,
                state,
                batch,
                rng,
                num_microbatches=num_microbatches,
                plugins=plugin_set,
                is_trainable=layout.is_trainable,
            )

    shard_spec = iterator.element_spec
    batch_spec = host_data.global_batch_spec(shard_spec, num_shards, mesh, rules)
    jitted_step = jax.jit(
        _train_step,
        in_shardings=(state_shardings, {k: v.sharding for k, v in batch_spec.items()}, replicated),
        out_shardings=(state_shardings, replicated),
        donate_argnums=(0,),
    )
    rng = jax.device_put(jax.random.PRNGKey(seed), replicated)
    writer = MetricsWriter(model_dir, resume_step=start_step, enabled=is_writer)
    evaluator = GreedyEvaluator(
        spec,
        encoder_decoder=encoder_decoder,
        prefix_lm=model_type == "prefix_lm",
        batch_size=eval_batch_size,
        input_length=task_feature_lengths["inputs"],
        max_decode_length=max_decode_length or task_feature_lengths["targets"],
        target_length=task_feature_lengths["targets"],
        mesh=mesh,
        rules=rules,
    )
    eval_sources: list[Any] = []
    val_batches: list[dict[str, np.ndarray]] = []
    if eval_period:
        eval_sources = load_eval_sources(
            eval_name, validation_split, max_examples=max_eval_examples
        )
        val_batches = _validation_batches(
            data, mixture_or_task_name, task_feature_lengths, validation_split,
            eval_batch_size, model_type, max_eval_examples,
        )  # fmt: skip
    eval_loss_fn = lockstep.CompiledTogether(
        jax.jit(
            lambda params, aux, batch: eval_step(
                spec, loss_config, params, batch, plugins=plugin_set, aux=aux
            )
        ),
        "eval_loss",
    )

    def save(force: bool = False) -> None:
        if checkpointer.save(
            layout.for_checkpoint(state),
            iterator.state(),
            force=force,
            write_data_state=iterator.save_iterators,
        ):
            _plugin_exports(plugin_set, state, model_dir)

    step = start_step
    first_shards: dict[int, Any] | None = None
    compile_seconds = 0.0
    if step < train_steps:  # compile while the first batch loads
        jit_step, first_shards, compile_seconds = compile_while_fetching(
            lambda: jitted_step.lower(state, batch_spec, rng), lambda: next(iterator), "train"
        )
        host_data.check_matches_spec(first_shards, shard_spec)
        log.info("Train step compiled in %.1f s (while the first batch loaded)", compile_seconds)
    tokens_since_log = steps_since_log = 0
    last_log_time = time.perf_counter()
    first_step_time: float | None = None
    in_flight: Any = None  # the previous step's metrics, until that step has run
    stop: tuple[int, list[str]] | None = None  # (step, plug-ins) when a plug-in stopped the run
    bar = tqdm(
        total=train_steps,
        initial=start_step,
        disable=not progress_bar,
        desc="train",
        dynamic_ncols=True,
    )
    with PreemptionGuard(start_step) as preemption:
        while step < train_steps and not preemption.preempted:
            host_shards, first_shards = first_shards or next(iterator), None
            tokens_since_log += host_data.token_count(host_shards, num_shards)
            batch = host_data.global_batch(host_shards, num_shards, mesh, rules)
            state, metrics = jit_step(state, batch, rng)
            # Dispatch runs at most one step ahead of the device: the progress bar counts
            # steps that ran (not steps queued), and batches do not pile up on the device.
            if in_flight is not None:
                jax.block_until_ready(in_flight)
            in_flight = metrics
            step += 1
            steps_since_log += 1
            bar.update(1)
            if first_step_time is None:
                # Every configurable of the run has now been called: gin knows the config.
                _write_operative_config(model_dir)
                jax.block_until_ready(metrics)
                first_step_time = time.perf_counter() - last_log_time
                startup_time = time.perf_counter() - launched
                last_log_time = time.perf_counter()
                tokens_since_log = steps_since_log = 0
            if step % log_period == 0 or step == train_steps:
                metrics = jax.device_get(metrics)
                now = time.perf_counter()
                record = {
                    **metrics,
                    "learning_rate": float(schedule(step - 1)) if callable(schedule) else schedule,
                    "tokens_per_sec": tokens_since_log / max(now - last_log_time, 1e-9),
                }
                if steps_since_log:  # the window's steps (the first step is timed apart)
                    record["step_ms"] = 1e3 * (now - last_log_time) / steps_since_log
                if step == log_period or (start_step and step - start_step == log_period):
                    record["compile_seconds"] = compile_seconds
                    record["first_step_seconds"] = first_step_time
                    record["startup_seconds"] = startup_time
                action = Action.CONTINUE
                if eval_period and step % eval_period == 0:
                    evals = _run_evals(
                        evaluator, eval_sources, val_batches, eval_loss_fn, state, mesh, rules
                    )
                    evals.update(
                        _plugin_metrics(plugin_set, layout, state, evaluator, model_dir, evals)
                    )
                    record.update(evals)
                    log.info("step %d: %s", step, _eval_line(evals, eval_sources))
                    action, who = plugin_set.after_eval(step, record)
                    if action == Action.STOP:
                        stop = (step, who)
                # Every process calls it (only process 0's writer writes): all stop together
                # if the storage refused the write.
                written = lockstep.write_together(
                    f"writing metrics at step {step}", functools.partial(writer.write, step, record)
                )
                bar.set_postfix(loss=f"{written['loss']:.3f}")
                tokens_since_log = steps_since_log = 0
                last_log_time = time.perf_counter()
                if action != Action.CONTINUE:
                    log.info("step %d: plug-in(s) %s asked to %s", step, who, action.value)
                    save(force=True)
                    if stop is not None:
                        break
            if step % checkpoint_period == 0 or step == train_steps:
                save()
            # Every process agrees on the step; the last step needs no preemption save.
            if step < train_steps and preemption.should_stop(step):
                break
        if preemption.preempted:
            log.warning("SIGTERM received: saving step %d before exiting", step)
            save(force=True)
    bar.close()
    iterator.close()  # now, not in a destructor at exit (tf.data's threads wind down here)
    checkpointer.close()
    if first_step_time is None:  # resumed at or past train_steps: no step ran
        _write_operative_config(model_dir)

    summary: dict[str, Any] = {
        "step": step,
        "model_dir": model_dir,
        "params": spec.num_params(),
        "trainable_params": layout.trainable_count(),
    }
    if stop is not None:
        summary["stopped_early"] = {"step": stop[0], "by": stop[1]}
    if preemption.preempted:
        summary["preempted"] = True
    if final_split and not preemption.preempted and (step >= train_steps or stop is not None):
        sources = load_eval_sources(eval_name, final_split, max_examples=max_eval_examples)
        results = evaluator.evaluate(state.params, sources)
        summary["eval_split"] = final_split
        summary["eval"] = summarise(results)
        summary["samples"] = {r.name: r.samples for r in results}
        if plugin_set:
            summary["plugins"] = _plugin_metrics(
                plugin_set, layout, state, evaluator, model_dir, summary["eval"]
            )
        write_summary = None  # only process 0 writes; every process reaches the all-gather
        if is_writer:
            print_eval_table(results)
            write_summary = functools.partial(
                paths.write_text_atomic,
                paths.join(model_dir, "summary.json"),
                json.dumps(summary, indent=2),
            )
        lockstep.write_together("writing summary.json", write_summary)
    writer.close()
    return summary


def _eval_line(evals: Mapping[str, float], sources: Sequence[Any]) -> str:
    """One console line: validation loss and, per eval group, the mean of each metric."""
    parts = []
    if "validation/loss" in evals:
        parts.append(f"validation loss {evals['validation/loss']:.3f}")
    groups: dict[str, dict[str, list[float]]] = {}
    for source in sources:
        prefix = f"eval/{source.task_name}/"
        for key, value in evals.items():
            if key.startswith(prefix):
                metric = key[len(prefix) :]
                groups.setdefault(source.group, {}).setdefault(metric, []).append(value)
    for group, metrics in sorted(groups.items()):
        for metric, values in metrics.items():
            parts.append(f"{group} {metric.replace('_', ' ')} {np.mean(values):.3f}")
    return ", ".join(parts)


def _write_operative_config(model_dir: str) -> None:
    """MODEL_DIR/config.gin: every binding the run used, defaults included (as T5X writes it).

    Written once the first step ran, when gin has seen every configurable called; it parses
    back as a gin file (e.g. for ``python -m t5x_instruct.eval``). Process 0 writes it; every
    process calls this, and all of them stop if the write fails.
    """

    def write() -> None:
        text = gin_utils.operative_config_text()
        paths.write_text_atomic(paths.join(model_dir, "config.gin"), text)

    lockstep.write_together("writing config.gin", write if jax.process_index() == 0 else None)


def _final_eval_split(available: set[str], requested: str, validation: str) -> str | None:
    """The split the final evaluation reads, decided before training so that a missing split
    costs a warning, not a crash after the last step: ``requested``, else ``validation``, else
    none (the final evaluation is skipped)."""
    if requested in available:
        return requested
    where = f"the eval tasks have no {requested!r} split (they have {sorted(available)})"
    if validation in available:
        log.warning(
            "train.final_eval_split: %s; the final evaluation uses %r instead.", where, validation
        )
        return validation
    log.warning(
        "train.final_eval_split: %s; no final evaluation will run "
        "(set train.final_eval=False to say so, or train.final_eval_split).",
        where,
    )
    return None


def _check_batch_divisible(mesh: Any, rules: partitioning.AxisRules, **sizes: int) -> None:
    """Batches are split over the mesh axes the ``batch`` rule names; sizes must divide."""
    sharding = partitioning.batch_sharding(mesh, rules, 1)
    axes = sharding.spec[0]
    axes = () if axes is None else (axes,) if isinstance(axes, str) else axes
    shards = int(np.prod([mesh.shape[a] for a in axes])) if axes else 1
    for name, size in sizes.items():
        if size % shards:
            raise UserInputError(
                f"train.{name}={size} must be divisible by the {shards} batch shards of the mesh "
                f"{dict(mesh.shape)} (batch axes {axes})."
            )


def _check_positive_ints(**values: Any) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise UserInputError(f"train.{name} must be a positive integer, got {value!r}.")


def _num_data_shards(requested: int | None, data_state: Mapping[str, Any], batch_size: int) -> int:
    """``train.data_shards``, else the checkpoint's, else one per process (T5X's default)."""
    saved = data_state.get("config", {}).get("num_shards") if data_state else None
    if requested is not None and saved is not None and requested != saved:
        raise UserInputError(
            f"train.data_shards={requested} but MODEL_DIR's checkpoint was trained with "
            f"{saved} data shards; drop the binding (or set it to {saved}) to resume exactly."
        )
    num_shards = requested or saved or jax.process_count()
    host_data.check_num_shards(batch_size, num_shards)
    return int(num_shards)


def _validation_batches(
    data: Any,
    name: str,
    lengths: Mapping[str, int],
    split: str,
    batch_size: int,
    model_type: str,
    max_examples: int | None,
) -> list[dict[str, np.ndarray]]:
    """A fixed list of validation batches (unshuffled, one pass) for the validation loss."""
    try:
        dataset = data.get_dataset(
            name,
            task_feature_lengths=dict(lengths),
            split=split,
            batch_size=batch_size,
            model_type=model_type,
            pack=False,
            shuffle=False,
            num_epochs=1,
        )
    except ValueError as exc:  # e.g. the training mixture has no validation split
        log.warning("No validation loss: %s", exc)
        return []
    limit = None if max_examples is None else max(1, max_examples // batch_size)
    return list(dataset.take(limit if limit is not None else -1).as_numpy_iterator())


def _run_evals(
    evaluator: GreedyEvaluator,
    eval_sources: Sequence[Any],
    val_batches: list[dict[str, np.ndarray]],
    eval_loss_fn: Any,
    state: TrainState,
    mesh: Any,
    rules: Any,
) -> dict[str, float]:
    out: dict[str, float] = {}
    if val_batches:
        sums: dict[str, Any] = {}
        for batch in val_batches:
            part = eval_loss_fn(
                state.params, state.aux, host_data.replicated_host_batch(batch, mesh, rules)
            )
            sums = part if not sums else jax.tree.map(jnp.add, sums, part)
        for name, value in metrics_from_sums(jax.device_get(sums)).items():
            out[f"validation/{name}"] = float(value)
    for result in evaluator.evaluate(state.params, eval_sources):
        for metric, value in result.metrics.items():
            out[f"eval/{result.name}/{metric}"] = value
    return out


def _plugin_metrics(
    plugins: PluginSet,
    layout: StateLayout,
    state: TrainState,
    evaluator: GreedyEvaluator,
    model_dir: str,
    metrics: Mapping[str, Any],
) -> dict[str, float]:
    if not plugins:
        return {}
    ctx = EvalContext(
        step=int(jax.device_get(state.step)),
        params=state.params,
        aux=state.aux,
        model_spec=layout.spec,
        evaluator=evaluator,
        mesh=layout.mesh,
        rules=layout.rules,
        model_dir=model_dir,
        metrics=dict(metrics),
    )
    return plugins.eval_metrics(ctx)


def _plugin_exports(plugins: PluginSet, state: TrainState, model_dir: str) -> None:
    if not plugins:
        return
    from jax.experimental import multihost_utils

    plugins.on_checkpoint(
        CheckpointContext(
            step=int(jax.device_get(state.step)),
            params=state.params,
            aux=state.aux,
            model_dir=model_dir,
            fetch=lambda tree: jax.tree.map(
                np.asarray, multihost_utils.process_allgather(tree, tiled=True)
            ),
            is_writer=jax.process_index() == 0,
        )
    )
