"""``infer``: predictions or target scores of a checkpoint, for a JSONL file or a task split.

What ``python -m t5x_instruct.infer`` runs. ``mode='predict'`` decodes each input with the
gin-chosen decode function (``GreedyEvaluator.decode_fn`` / ``.num_decodes``);
``mode='score'`` gives the log-likelihood of each example's targets (T5X ``score_batch``).
Output per source, in ``output_dir`` (default ``MODEL_DIR/infer/<mode>``): ``<name>.jsonl``
with one object per example::

    {"inputs": ..., "targets": ... (when known), "prediction": ..., "score": ...,
     "predictions": [...], "scores": [...]}     # the last two only with num_decodes > 1

written in chunks of ``chunk_size`` examples (:class:`~t5x_instruct.inference.files.ChunkedJsonl`):
a killed job rerun with the same settings continues after its last complete chunk and
produces the file an uninterrupted run would have (sampling seeds follow the batch number).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import gin
from tqdm.auto import tqdm

from t5x_instruct import partitioning
from t5x_instruct.errors import UserInputError
from t5x_instruct.inference.files import ChunkedJsonl
from t5x_instruct.inference.model_setup import (
    InferenceModel,
    is_writer,
    load_inference_model,
    model_dir_of,
)
from t5x_instruct.runtime import paths
from t5x_instruct.training import param_checkpoints
from t5x_instruct.training.evaluation import GreedyEvaluator
from t5x_instruct.training.train_state import Params

log = logging.getLogger(__name__)

MODES = ("predict", "score")


@gin.configurable
def infer(
    *,
    checkpoint_path: str = gin.REQUIRED,
    task_feature_lengths: Mapping[str, int] = gin.REQUIRED,
    mode: str = "predict",
    input_file: str | None = None,
    input_field: str = "inputs",
    target_field: str = "targets",
    mixture_or_task_name: str | None = None,
    split: str = "test",
    vocabulary: Any = None,
    step: int | None = None,
    output_dir: str | None = None,
    batch_size: int = 32,
    chunk_size: int = 1024,
    max_examples: int | None = None,
    max_decode_length: int | None = None,
    decoder_objective: str | None = None,
    progress_bar: bool = True,
    mesh_config: partitioning.MeshConfig | None = None,
    logical_axis_rules: partitioning.AxisRules | None = None,
) -> dict[str, str]:
    """Decode or score every example; returns ``{source name: output file}``.

    Args:
      checkpoint_path: a MODEL_DIR (gin: ``%MODEL_DIR``) or one step folder.
      mode: ``'predict'`` or ``'score'`` (``--mode`` on the command line).
      input_file: a JSONL file; each line's ``input_field`` is an input and ``target_field``
        its target (optional for predict, required for score). Without a file, every task of
        ``mixture_or_task_name`` with ``split`` is read instead.
      vocabulary: tokenises a JSONL file (gin: ``@get_vocabulary()``); default: the
        vocabulary of ``mixture_or_task_name``'s tasks.
      step: which checkpoint of a MODEL_DIR (default: the latest).
      chunk_size: examples per chunk file; a multiple of ``batch_size``.
    """
    from t5x_instruct import data  # lazy: TensorFlow only once a run reads data

    if mode not in MODES:
        raise UserInputError(f"infer.mode={mode!r}: expected one of {MODES} (--mode=...).")
    for name, value in (("batch_size", batch_size), ("chunk_size", chunk_size)):
        if not isinstance(value, int) or value <= 0:
            raise UserInputError(f"infer.{name} must be a positive integer, got {value!r}.")
    if chunk_size % batch_size:
        raise UserInputError(
            f"infer.chunk_size={chunk_size} must be a multiple of infer.batch_size="
            f"{batch_size} (so a resumed job decodes the same batches)."
        )
    model = load_inference_model(
        decoder_objective=decoder_objective,
        mesh_config=mesh_config,
        logical_axis_rules=logical_axis_rules,
        binding_prefix="infer",
    )
    sources = _sources(
        data, model, mode, input_file, input_field, target_field, mixture_or_task_name, split,
        vocabulary, max_examples,
    )  # fmt: skip
    step_dir, found_step = param_checkpoints.resolve_checkpoint(checkpoint_path, step)
    evaluator = model.evaluator(
        batch_size=batch_size,
        task_feature_lengths=task_feature_lengths,
        max_decode_length=max_decode_length,
    )
    out = (
        paths.resolve(output_dir, what="infer.output_dir")
        if output_dir
        else paths.join(model_dir_of(checkpoint_path), "infer", mode)
    )
    params: Params | None = None
    written: dict[str, str] = {}
    for examples, has_targets, source_id in sources:
        output = ChunkedJsonl(
            os.fspath(out / f"{examples.task_name}.jsonl"),
            num_records=len(examples),
            chunk_size=chunk_size,
            manifest={
                "source": source_id,
                "mode": mode,
                "checkpoint": step_dir,
                "step": found_step,
                "batch_size": batch_size,
                "task_feature_lengths": dict(task_feature_lengths),
                "max_decode_length": max_decode_length,
                "num_decodes": evaluator.num_decodes,
                **_decode_settings(),
            },
        )
        written[examples.task_name] = output.output
        if is_writer():
            output.open()
        _all_processes_reach(f"infer:{examples.task_name}")  # manifest checked before reading
        pending = output.pending()
        if not pending:
            log.info("%s is complete; nothing to do.", output.output)
            continue
        if len(pending) < output.num_chunks:
            log.info(
                "%s: resuming, %d of %d chunks already written",
                output.output, output.num_chunks - len(pending), output.num_chunks,
            )  # fmt: skip
        if params is None:
            params = model.restore(step_dir)
        run = _Runner(evaluator, params, examples, has_targets, mode)
        done = len(examples) - sum(end - start for start, end in map(output.bounds, pending))
        with tqdm(
            total=len(examples),
            initial=done,
            desc=examples.task_name,
            disable=not progress_bar,
            dynamic_ncols=True,
        ) as bar:
            for index in pending:
                start, end = output.bounds(index)
                records = run(start, end)
                if is_writer():
                    output.write_chunk(index, records)
                bar.update(end - start)
        if is_writer():
            output.finish()
        log.info("Wrote %s (%d examples)", output.output, len(examples))
    return written


def _all_processes_reach(name: str) -> None:
    """A barrier on multi-host runs: every process sees the same chunks as done (decoding
    is collective, so they must all decode the same ones)."""
    import jax

    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _decode_settings() -> dict[str, str]:
    """The gin-chosen decode function and its bindings (a resumed job must match them)."""
    try:
        reference = gin.query_parameter("GreedyEvaluator.decode_fn")
    except ValueError:
        reference = None
    if reference is None:
        return {"decode_fn": "greedy"}
    name = str(reference)
    selector = name.lstrip("@").removesuffix("()")
    try:
        bindings = gin.get_bindings(selector)
    except (ValueError, KeyError):
        bindings = {}
    return {"decode_fn": name, **{f"{selector}.{k}": repr(v) for k, v in bindings.items()}}


def _sources(
    data: Any,
    model: InferenceModel,
    mode: str,
    input_file: str | None,
    input_field: str,
    target_field: str,
    mixture_or_task_name: str | None,
    split: str,
    vocabulary: Any,
    max_examples: int | None,
) -> list[tuple[Any, tuple[bool, ...], str]]:
    """``(examples, has_targets per example, source id)`` per output file."""
    vocab_size = model.config.vocab_size
    if input_file is None:
        if not mixture_or_task_name:
            raise UserInputError(
                "infer needs inputs: set infer.input_file to a JSONL file, or "
                "infer.mixture_or_task_name (MIXTURE_OR_TASK_NAME) to a task or mixture."
            )
        data.check_vocabulary_fits(mixture_or_task_name, vocab_size)
        try:
            found = data.get_eval_examples(mixture_or_task_name, split, max_examples=max_examples)
        except ValueError as exc:
            raise UserInputError(f"{exc} (infer.split = {split!r})") from exc
        return [
            (e, (True,) * len(e), f"{mixture_or_task_name}:{e.task_name}:{split}") for e in found
        ]
    if vocabulary is None:
        if not mixture_or_task_name:
            raise UserInputError(
                "infer needs a vocabulary to tokenise infer.input_file: bind "
                "infer.vocabulary = @get_vocabulary() with get_vocabulary.path = '...', or "
                "MIXTURE_OR_TASK_NAME to a task whose vocabulary to use."
            )
        task = data.leaf_tasks(mixture_or_task_name)[0]
        vocabulary = task.output_features["inputs"].vocabulary
    from t5x_instruct.data.jsonl_inputs import read_jsonl_examples
    from t5x_instruct.data.vocabularies import resolve_vocabulary

    size = resolve_vocabulary(vocabulary).vocab_size
    if size > vocab_size:
        raise data.VocabularySizeError(
            f"The vocabulary for {input_file} has {size} ids but the model's vocab_size is "
            f"{vocab_size}; bind infer.vocabulary to the model's vocabulary."
        )
    examples, has_targets = read_jsonl_examples(
        input_file,
        vocabulary,
        input_field=input_field,
        target_field=target_field,
        require_targets=mode == "score",
        max_examples=max_examples,
    )
    return [(examples, has_targets, os.fspath(paths.resolve(input_file, what="infer.input_file")))]


class _Runner:
    """Records ``[start, end)`` of one source: decoded or scored, as JSON-ready dicts."""

    def __init__(
        self,
        evaluator: GreedyEvaluator,
        params: Params,
        examples: Any,
        has_targets: tuple[bool, ...],
        mode: str,
    ) -> None:
        self.evaluator = evaluator
        self.params = params
        self.examples = examples
        self.has_targets = has_targets
        self.mode = mode
        if mode == "predict":
            self.inputs = examples.inputs_array(evaluator.input_length)
        else:
            from t5x_instruct.data.scoring import ScoreExamples

            self.batches = evaluator.score_batches(ScoreExamples(examples, ()))

    def __call__(self, start: int, end: int) -> list[dict[str, Any]]:
        ex = self.examples
        records = []
        for i in range(start, end):
            record: dict[str, Any] = {"inputs": ex.inputs_text[i]}
            if self.has_targets[i]:
                record["targets"] = ex.targets_text[i]
            records.append(record)
        batch_size = self.evaluator.batch_size
        if self.mode == "score":
            batches = self.batches[start // batch_size : -(-end // batch_size)]
            rows, scores = self.evaluator.score_features_batches(self.params, batches)
            for row, score in zip(rows, scores, strict=True):
                records[row - start]["score"] = float(score)
            return records
        tokens, scores = self.evaluator.decode_array(
            self.params, self.inputs[start:end], first_batch=start // batch_size
        )
        for record, row_tokens, row_scores in zip(records, tokens, scores, strict=True):
            texts = [ex.decode(t) for t in row_tokens]
            record["prediction"] = texts[0]
            record["score"] = float(row_scores[0])
            if len(texts) > 1:
                record["predictions"] = texts
                record["scores"] = [float(s) for s in row_scores]
        return records
