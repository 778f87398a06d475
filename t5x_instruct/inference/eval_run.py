"""``evaluate``: a task or mixture's own metrics on one, the latest or every checkpoint.

What ``python -m t5x_instruct.eval`` runs. The output folder (default
``MODEL_DIR/eval/<mixture>``) holds, per evaluated checkpoint step ``N``:

* ``step_N.json``: per-task metrics (with each task's primary metric named), per-group means
  of every metric, samples. Written last and atomically: it marks step ``N`` as done, so a
  rerun (``checkpoints = 'all'`` after more training, or after a kill) evaluates only the
  steps without one;
* ``predictions/step_N/<task>.jsonl``: inputs, targets, and the prediction with its score
  (decoding; for greedy the log-probability of the generated tokens) and/or the row's
  ``score`` (scoring: the log-likelihood of the targets);
* a record in ``metrics.jsonl`` and TensorBoard scalars under ``tb/``
  (``eval/<task>/<metric>``, ``eval_mean/<group>/<metric>``);

and ``config.gin``, the eval run's operative gin config.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import gin

from t5x_instruct import partitioning
from t5x_instruct.errors import UserInputError
from t5x_instruct.gin_utils import operative_config_text
from t5x_instruct.inference.files import atomic_write_text, write_json, write_jsonl
from t5x_instruct.inference.model_setup import (
    is_writer,
    load_inference_model,
    model_dir_of,
    select_steps,
)
from t5x_instruct.runtime import paths
from t5x_instruct.training import param_checkpoints
from t5x_instruct.training.evaluation import EvalResult, load_eval_sources
from t5x_instruct.training.metrics import MetricsWriter
from t5x_instruct.training.reporting import flat_metrics, print_eval_table, summarise

log = logging.getLogger(__name__)

_STEP_FILE = re.compile(r"^step_(\d+)\.json$")


def finished_steps(output_dir: str) -> list[int]:
    """Steps whose evaluation completed in ``output_dir`` (those with a ``step_N.json``)."""
    found = (_STEP_FILE.match(name) for name in paths.listdir(output_dir))
    return sorted(int(m.group(1)) for m in found if m)


def step_file(output_dir: str, step: int) -> str:
    return os.fspath(paths.join(output_dir, f"step_{step}.json"))


@gin.configurable
def evaluate(
    *,
    checkpoint_path: str = gin.REQUIRED,
    mixture_or_task_name: str = gin.REQUIRED,
    task_feature_lengths: Mapping[str, int] = gin.REQUIRED,
    checkpoints: str | int | Sequence[int] = "all",
    split: str = "test",
    output_dir: str | None = None,
    batch_size: int = 32,
    max_examples: int | None = None,
    max_decode_length: int | None = None,
    decoder_objective: str | None = None,
    write_predictions: bool = True,
    print_table: bool = True,
    mesh_config: partitioning.MeshConfig | None = None,
    logical_axis_rules: partitioning.AxisRules | None = None,
) -> dict[int, dict[str, Any]]:
    """Evaluate checkpoints of ``checkpoint_path`` on ``mixture_or_task_name``.

    Args:
      checkpoint_path: a MODEL_DIR (gin: ``%MODEL_DIR``), its ``checkpoints`` folder, or one
        step folder (then only that checkpoint).
      checkpoints: ``'all'`` (every step, skipping those already evaluated), ``'latest'``,
        a step, or a list of steps.
      split: the split of every task to evaluate (tasks without it are left out).
      output_dir: default ``MODEL_DIR/eval/<mixture_or_task_name>``.
      max_examples: cap per task (the first examples), for quick looks.
      max_decode_length: default ``task_feature_lengths['targets']``.
      decoder_objective: decoder-only models: ``'prefix_lm'`` or ``'lm'`` (default: the run's
        ``train.decoder_objective``).

    Returns:
      ``{step: record}`` for every selected step (also those evaluated by an earlier run).
    """
    from t5x_instruct import data  # lazy: TensorFlow only once a run reads data

    model = load_inference_model(
        decoder_objective=decoder_objective,
        mesh_config=mesh_config,
        logical_axis_rules=logical_axis_rules,
    )
    data.check_vocabulary_fits(mixture_or_task_name, model.config.vocab_size)
    steps = [
        param_checkpoints.resolve_checkpoint(checkpoint_path, step)[1]
        for step in select_steps(checkpoint_path, checkpoints, "evaluate.checkpoints")
    ]
    out = os.fspath(
        paths.resolve(output_dir, what="evaluate.output_dir")
        if output_dir
        else paths.join(model_dir_of(checkpoint_path), "eval", mixture_or_task_name)
    )
    done = finished_steps(out)
    todo = [s for s in steps if s not in done]
    if len(todo) < len(steps):
        log.info("Already evaluated in %s: steps %s", out, [s for s in steps if s in done])
    if not todo:
        log.info("Nothing left to evaluate.")
        return {s: _read(step_file(out, s)) for s in steps}
    try:
        sources = load_eval_sources(mixture_or_task_name, split, max_examples=max_examples)
    except ValueError as exc:
        raise UserInputError(
            f"{exc} (evaluate.split = {split!r}; choose another with --gin.evaluate.split=...)"
        ) from exc
    evaluator = model.evaluator(
        batch_size=batch_size,
        task_feature_lengths=task_feature_lengths,
        max_decode_length=max_decode_length,
    )
    writer = MetricsWriter(out, resume_step=max(done, default=0)) if is_writer() else None
    records: dict[int, dict[str, Any]] = {}
    try:
        for number, step in enumerate(todo):
            step_dir, _ = param_checkpoints.resolve_checkpoint(checkpoint_path, step)
            log.info("Evaluating %s (step %d) on %r", step_dir, step, mixture_or_task_name)
            params = model.restore(step_dir)
            results = evaluator.evaluate(params, sources)
            summary = summarise(results)
            record = {
                "step": step,
                "checkpoint": step_dir,
                "mixture_or_task_name": mixture_or_task_name,
                "split": split,
                "eval": summary,
                "samples": {r.name: r.samples for r in results},
            }
            records[step] = record
            if print_table and is_writer():
                print(f"\nstep {step}:")
                print_eval_table(results)
            if writer is None:
                continue
            if write_predictions:
                _write_predictions(out, step, sources, results)
            writer.write(step, flat_metrics(summary))
            write_json(step_file(out, step), record)  # last: marks the step done
            if number == 0:  # gin has now seen every configurable the evaluation calls
                atomic_write_text(paths.join(out, "config.gin"), operative_config_text())
    finally:
        if writer is not None:
            writer.close()
    for s in steps:
        if s not in records:
            records[s] = _read(step_file(out, s))
    return {s: records[s] for s in steps}


def _read(path: str) -> dict[str, Any]:
    return json.loads(paths.read_text(path))


def _write_predictions(
    out: str, step: int, sources: Sequence[Any], results: Sequence[EvalResult]
) -> None:
    """Per task, one JSON line per example (decoding) or per row (scoring)."""
    for source, result in zip(sources, results, strict=True):
        rows = getattr(source, "rows", source)
        records = []
        for i in range(len(rows)):
            record: dict[str, Any] = {
                "inputs": rows.inputs_text[i],
                "targets": rows.targets_text[i],
            }
            if result.predictions:
                record["prediction"] = result.predictions[i]
                record["prediction_score"] = result.prediction_scores[i]
            if result.row_scores:
                record["score"] = result.row_scores[i]
            records.append(record)
        path = paths.join(out, "predictions", f"step_{step}", f"{result.name}.jsonl")
        write_jsonl(os.fspath(path), records)
