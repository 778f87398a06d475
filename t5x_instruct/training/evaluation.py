"""Task metrics by decoding or by scoring, grouped per task: one evaluator for every caller.

The training loop (periodic and final evals) and ``python -m t5x_instruct.eval`` both use
:class:`GreedyEvaluator`. It routes each source by what its task measures:

* decoding tasks (predict metrics: exact match, F1, ROUGE, BLEU, ...) are decoded with the
  gin-chosen decode function and scored by the task's postprocessor and metric fns;
* scoring tasks (score metrics, e.g. P3 ``_score_eval`` rank classification) get the model's
  log-likelihood of every row's targets (:func:`~t5x_instruct.decoding.score_batch`), then
  the task's score metrics of those row scores.

The evaluator only needs what :class:`EvalSource` / :class:`ScoreSource` describe, which the
data layer's ``EvalExamples`` / ``ScoreExamples`` provide; :func:`load_eval_sources` builds
them (importing the data layer lazily), so nothing here imports SeqIO or TensorFlow.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import gin
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from t5x_instruct import partitioning
from t5x_instruct.decoding import DecodeFn, greedy_decode, score_batch
from t5x_instruct.errors import UserInputError
from t5x_instruct.runtime import host_data, lockstep
from t5x_instruct.training.train_state import ModelSpec, Params


class EvalSource(Protocol):
    """A decoding task's examples (the data layer's ``EvalExamples``)."""

    task_name: str
    group: str
    inputs_text: Sequence[str]
    targets_text: Sequence[str]

    def __len__(self) -> int: ...

    def inputs_array(self, length: int) -> np.ndarray: ...

    def decode(self, token_ids: Sequence[int] | np.ndarray) -> str: ...

    def score(self, predictions: Sequence[str]) -> dict[str, float]: ...


class ScoreBatchLike(Protocol):
    features: dict[str, np.ndarray]
    rows: np.ndarray  # row index per batch row, -1 on padding rows


class ScoreSource(Protocol):
    """A scoring task's rows (the data layer's ``ScoreExamples``)."""

    task_name: str
    group: str
    rows: Any  # the rows as an EvalSource (texts, and decoding if the task also needs it)
    examples: Sequence[Any]  # RankClassificationExample per multiple-choice example

    def __len__(self) -> int: ...

    def batches(
        self, *, model_type: str, task_feature_lengths: Mapping[str, int], batch_size: int
    ) -> Sequence[ScoreBatchLike]: ...

    def metrics(self, scores: Sequence[float]) -> dict[str, float]: ...


def is_score_source(source: Any) -> bool:
    return callable(getattr(source, "batches", None)) and hasattr(source, "rows")


@dataclasses.dataclass
class EvalResult:
    """One task's metrics. ``primary_metric`` is the first metric of the task's first metric
    fn (decoding metrics before scoring ones), e.g. ``exact_match``, ``rouge1``, ``bleu`` or
    ``accuracy``: the number a one-column table shows."""

    name: str
    group: str
    metrics: dict[str, float]
    num_examples: int
    samples: list[tuple[str, str, str]]  # (input, prediction, target)
    predictions: list[str] = dataclasses.field(default_factory=list)  # per example, decoded
    prediction_scores: list[float] = dataclasses.field(default_factory=list)  # their scores
    row_scores: list[float] = dataclasses.field(default_factory=list)  # per row, scored

    @property
    def exact_match(self) -> float:
        return self.metrics.get("exact_match", float("nan"))

    @property
    def primary_metric(self) -> str | None:
        return next(iter(self.metrics), None)

    @property
    def primary_value(self) -> float:
        name = self.primary_metric
        return float("nan") if name is None else self.metrics[name]


@gin.configurable(allowlist=["decode_fn", "num_decodes", "decode_seed"])
class GreedyEvaluator:
    """Decodes or scores every eval example with one fixed batch shape (one compilation each).

    Greedy by default; ``decode_fn`` (gin: ``GreedyEvaluator.decode_fn =
    @decoding.beam_search``) decodes ``num_decodes`` sequences per example instead and the
    first (best) one is the prediction. Sampling draws from ``decode_seed`` folded with the
    batch number, so an evaluation is reproducible. Scoring tasks read targets of
    ``target_length`` tokens (default ``max_decode_length``), truncated as in training.

    With a ``mesh`` (and its ``rules``), every batch is split over the mesh's batch axes, so
    on several hosts each process decodes its share; results come back replicated, so every
    process holds all of them (and process 0 writes them).
    """

    def __init__(
        self,
        spec: ModelSpec,
        *,
        encoder_decoder: bool,
        prefix_lm: bool,
        batch_size: int,
        input_length: int,
        max_decode_length: int,
        eos_id: int = 1,
        num_samples: int = 3,
        decode_fn: DecodeFn | None = None,
        num_decodes: int = 1,
        decode_seed: int = 0,
        target_length: int | None = None,
        mesh: Mesh | None = None,
        rules: partitioning.AxisRules | None = None,
    ) -> None:
        if not isinstance(num_decodes, int) or num_decodes < 1:
            raise UserInputError(
                f"GreedyEvaluator.num_decodes={num_decodes!r} must be an integer >= 1 (the beam "
                "size for `@decoding.beam_search`, samples for `@decoding.temperature_sample`)."
            )
        self.encoder_decoder = encoder_decoder
        self.prefix_lm = prefix_lm
        self.batch_size = batch_size
        self.input_length = input_length
        self.target_length = target_length or max_decode_length
        self.num_samples = num_samples
        self.num_decodes = num_decodes
        if mesh is not None and rules is None:
            raise ValueError("GreedyEvaluator: a mesh needs its logical axis rules too.")
        self._mesh = mesh
        self._rules = list(rules or ())

        self._rng = jax.random.PRNGKey(decode_seed)

        def decode(params: Params, batch: dict[str, Any], rng: jax.Array) -> Any:
            model = spec.module(params)
            if decode_fn is None:
                out = greedy_decode(
                    model, batch, max_decode_length=max_decode_length, eos_id=eos_id
                )
                return out.tokens[:, None], out.scores[:, None]
            out = decode_fn(
                model,
                batch,
                max_decode_length=max_decode_length,
                eos_id=eos_id,
                rng=rng,
                num_decodes=num_decodes,
            )
            scores = out.scores if out.scores is not None else out.tokens[..., 0] * 0.0
            return out.tokens, scores

        def score(params: Params, batch: dict[str, Any]) -> jax.Array:
            return score_batch(spec.module(params), batch).sequence_scores

        # Replicated outputs: readable on every process, even when the inputs are split.
        gathered = {} if mesh is None else {"out_shardings": NamedSharding(mesh, PartitionSpec())}
        decode, score = self._under_rules(decode), self._under_rules(score)
        self._decode = lockstep.CompiledTogether(jax.jit(decode, **gathered), "decode")
        self._score = lockstep.CompiledTogether(jax.jit(score, **gathered), "score")
        if decode_fn is not None:
            # Trace once now (no compilation) so a bad decode setting fails at start-up,
            # not at the first evaluation hours into a run.
            dummy = self.model_batch(np.zeros((batch_size, input_length), np.int32))
            jax.eval_shape(decode, spec.abstract_params(), dummy, self._rng)

    def _under_rules(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` traced under the run's logical axis rules, as the train step is: activations
        keep the training layout and Pallas kernels ``shard_map`` themselves over it. Not when
        the batch does not split over the batch axes (it is then replicated, see
        :meth:`place`)."""
        mesh, rules = self._mesh, self._rules
        if mesh is None or self.batch_size % _batch_shards(mesh, rules):
            return fn

        @functools.wraps(fn)
        def traced(*args: Any) -> Any:
            with partitioning.axis_rules(mesh, rules):
                return fn(*args)

        return traced

    def place(self, batch: Mapping[str, np.ndarray]) -> Any:
        """A host batch (the same on every process) as arrays split over the mesh's batch
        axes, or replicated when the batch size does not divide them; as is without a mesh."""
        if self._mesh is None:
            return dict(batch)
        rows = next(iter(batch.values())).shape[0]
        if rows % _batch_shards(self._mesh, self._rules) == 0:
            return host_data.replicated_host_batch(batch, self._mesh, self._rules)
        replicated = NamedSharding(self._mesh, PartitionSpec())
        return {
            k: jax.make_array_from_callback(np.shape(v), replicated, lambda i, v=v: v[i])
            for k, v in batch.items()
        }

    @property
    def model_type(self) -> str:
        """The SeqIO feature converter whose batches the model reads (for scoring)."""
        return "encoder_decoder" if self.encoder_decoder else "prefix_lm"

    def model_batch(self, inputs: np.ndarray) -> dict[str, np.ndarray]:
        """Decoder-only prompts match training: a leading 0 (shifted-in BOS), then inputs."""
        if self.encoder_decoder:
            return {"encoder_input_tokens": inputs}
        prompt = np.concatenate([np.zeros((inputs.shape[0], 1), inputs.dtype), inputs], axis=1)
        lengths = (inputs != 0).sum(axis=1).astype(np.int32) + 1
        batch = {"decoder_input_tokens": prompt, "prompt_lengths": lengths}
        if self.prefix_lm:
            positions = np.arange(prompt.shape[1])[None]
            batch["decoder_causal_attention"] = (positions < lengths[:, None]).astype(np.int32)
        return batch

    # ------------------------------------------------------------------ decoding
    def decode_array(
        self, params: Params, inputs: np.ndarray, *, first_batch: int = 0
    ) -> tuple[np.ndarray, np.ndarray]:
        """All decodes of ``inputs [n, input_length]``: tokens ``[n, num_decodes, L]`` and
        scores ``[n, num_decodes]``, best first.

        Batch ``i`` samples with ``decode_seed`` folded with ``first_batch + i``, so decoding a
        long input in pieces (aligned to ``batch_size``) draws exactly what one call would.
        """
        tokens_out, scores_out = [], []
        for number, start in enumerate(range(0, inputs.shape[0], self.batch_size)):
            chunk = inputs[start : start + self.batch_size]
            real = chunk.shape[0]
            if real < self.batch_size:  # pad with copies: same shape, no recompilation
                chunk = np.concatenate([chunk, np.repeat(chunk[:1], self.batch_size - real, 0)])
            rng = jax.random.fold_in(self._rng, first_batch + number)
            batch = self.place(self.model_batch(chunk))
            tokens, scores = jax.device_get(self._decode(params, batch, rng))
            tokens_out.append(np.asarray(tokens)[:real])
            scores_out.append(np.asarray(scores)[:real])
        if not tokens_out:
            return np.zeros((0, self.num_decodes, 0), np.int32), np.zeros((0, self.num_decodes))
        return np.concatenate(tokens_out), np.concatenate(scores_out)

    def predict(self, params: Params, source: EvalSource) -> list[np.ndarray]:
        """Generated token rows (``[max_decode_length]`` each, the best decode), in order."""
        tokens, _ = self.decode_array(params, source.inputs_array(self.input_length))
        return list(tokens[:, 0])

    # ------------------------------------------------------------------- scoring
    def score_features(self, features: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Feature-converted rows as this model reads them (a causal LM ignores the prefix)."""
        out = dict(features)
        if not self.encoder_decoder and not self.prefix_lm:
            out.pop("decoder_causal_attention", None)
        return out

    def score_batches(self, source: ScoreSource) -> Sequence[ScoreBatchLike]:
        """``source``'s rows as model features, ``batch_size`` rows per batch."""
        return source.batches(
            model_type=self.model_type,
            task_feature_lengths={"inputs": self.input_length, "targets": self.target_length},
            batch_size=self.batch_size,
        )

    def score_features_batches(
        self, params: Params, batches: Sequence[ScoreBatchLike]
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, scores)``: each real row of ``batches`` and its targets' log-likelihood
        (summed over target tokens)."""
        rows, scores = [], []
        for batch in batches:
            values = self._score(params, self.place(self.score_features(batch.features)))
            values = np.asarray(jax.device_get(values), np.float64)
            real = batch.rows >= 0
            rows.append(batch.rows[real])
            scores.append(values[real])
        if not rows:
            return np.zeros(0, np.int64), np.zeros(0)
        return np.concatenate(rows), np.concatenate(scores)

    def score_rows(self, params: Params, source: ScoreSource) -> np.ndarray:
        """Each row's log-likelihood of its targets, in row order."""
        scores = np.full(len(source), np.nan, np.float64)
        rows, values = self.score_features_batches(params, self.score_batches(source))
        scores[rows] = values
        return scores

    # ------------------------------------------------------------------ evaluate
    def evaluate(self, params: Params, sources: Sequence[Any]) -> list[EvalResult]:
        """One result per source: decoding sources are decoded, scoring sources scored (and
        also decoded if their task has predict metrics too)."""
        return [self.evaluate_one(params, source) for source in sources]

    def evaluate_one(self, params: Params, source: Any) -> EvalResult:
        scoring = is_score_source(source)
        rows = source.rows if scoring else source
        if not scoring and getattr(source, "needs_scoring", False):
            raise ValueError(
                f"Eval task {source.task_name!r} has score metrics; pass it as the data "
                "layer's ScoreExamples (load_eval_sources does)."
            )
        metrics: dict[str, float] = {}
        predictions: list[str] = []
        prediction_scores: list[float] = []
        row_scores: list[float] = []
        samples: list[tuple[str, str, str]] = []
        if not scoring or getattr(rows, "needs_decoding", False):
            tokens, scores = self.decode_array(params, rows.inputs_array(self.input_length))
            predictions = [rows.decode(row) for row in tokens[:, 0]]
            prediction_scores = [float(s) for s in scores[:, 0]]
            metrics.update(rows.score(predictions))
            samples = [
                (rows.inputs_text[i], predictions[i], rows.targets_text[i])
                for i in range(min(self.num_samples, len(predictions)))
            ]
        if scoring:
            row_scores = [float(s) for s in self.score_rows(params, source)]
            metrics.update(source.metrics(row_scores))
            samples = samples or _score_samples(source, row_scores, self.num_samples)
        return EvalResult(
            name=source.task_name,
            group=source.group,
            metrics=metrics,
            num_examples=len(source.examples) if scoring and source.examples else len(rows),
            samples=samples,
            predictions=predictions,
            prediction_scores=prediction_scores,
            row_scores=row_scores,
        )


def _batch_shards(mesh: Mesh, rules: partitioning.AxisRules) -> int:
    """How many ways the ``batch`` rule splits a batch on ``mesh``."""
    axes = partitioning.batch_sharding(mesh, rules, 1).spec[0]
    axes = () if axes is None else (axes,) if isinstance(axes, str) else axes
    return int(np.prod([mesh.shape[a] for a in axes])) if axes else 1


def _score_samples(
    source: ScoreSource, scores: Sequence[float], count: int
) -> list[tuple[str, str, str]]:
    """(input, best-scoring choice, a correct choice) of the first multiple-choice examples."""
    out = []
    for example in list(source.examples)[:count]:
        best = int(np.argmax([scores[r] for r in example.rows]))
        correct = example.correct_choices
        target = example.choices_text[correct[0]] if correct else ""
        out.append((example.inputs_text, example.choices_text[best], target))
    if not out:  # score metrics without multiple choice: show the rows' scores
        rows = source.rows
        for i in range(min(count, len(scores))):
            out.append((rows.inputs_text[i], f"score {scores[i]:.4f}", rows.targets_text[i]))
    return out


def load_eval_sources(
    mixture_or_task_name: str, split: str, *, max_examples: int | None = None
) -> list[Any]:
    """Every task of ``mixture_or_task_name`` with ``split``, ready for :class:`GreedyEvaluator`:
    ``EvalExamples`` for decoding tasks, ``ScoreExamples`` for tasks with score metrics."""
    from t5x_instruct import data
    from t5x_instruct.data.scoring import ScoreExamples, group_rank_classification

    sources: list[Any] = []
    for examples in data.get_eval_examples(mixture_or_task_name, split, max_examples=max_examples):
        if examples.needs_scoring:
            sources.append(ScoreExamples(examples, group_rank_classification(examples)))
        else:
            sources.append(examples)
    return sources
