"""T0-style SeqIO tasks from PromptSource templates (P3) and the T0 / T0+ / T0++ mixtures.

Every (data set, template) pair becomes a task ``{dataset}_{subset}_{template name}`` named as
T0/P3 named them (see :func:`t0_task_name`); a template with answer choices also gets a
``..._score_eval`` twin that evaluates by rank classification. Registration reads only the
small template files: examples are fetched when a split is first read, through a pluggable
*loader* (Hugging Face ``datasets`` by name by default; tests plug in local data).

Mixing follows T0: sampling is proportional to a data set's training size, except that a data
set of more than 500,000 examples counts as ``500,000 // num_templates`` examples per template
(its number of templates in the PromptSource file).
"""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import gin
import seqio
import tensorflow as tf

from t5x_instruct.data.metrics import bleu, exact_match, rouge, squad, strip_whitespace
from t5x_instruct.data.promptsource import PromptTemplate, TemplateError, TemplateLibrary
from t5x_instruct.data.rank_classification import (
    rank_classification,
    rank_classification_accuracy,
    rank_classification_postprocessor,
)
from t5x_instruct.data.registry import set_task_group
from t5x_instruct.data.vocabularies import make_vocabulary
from t5x_instruct.errors import DataUnavailableError, UserInputError
from tasks.p3.t0_datasets import P3Dataset

log = logging.getLogger(__name__)
MAX_EXAMPLES_PER_DATASET = 500_000
SCORE_EVAL_SUFFIX = "_score_eval"

# (dataset name, subset or None, split name of the data set) -> examples as dicts of fields.
ExampleLoader = Callable[[str, str | None, str], Iterable[Mapping[str, Any]]]


def huggingface_loader(name: str, subset: str | None, split: str) -> Iterable[Mapping[str, Any]]:
    """Loads a split with Hugging Face ``datasets`` (downloads and caches on first use)."""
    try:
        import datasets  # optional dependency, slow to import
    except ImportError as e:
        raise ImportError(
            "P3 tasks read their data with Hugging Face `datasets` (pip install "
            "'t5x_instruct[p3]'), or plug in a loader with tasks.p3.set_example_loader."
        ) from e
    return datasets.load_dataset(name, subset, split=split)


_loader: ExampleLoader = huggingface_loader


_loadable: set[tuple[int, str, str | None, str]] = set()  # (loader id, name, subset, split)


def check_loadable(name: str, subset: str | None, split: str) -> None:
    """Calls the loader once, outside ``tf.data`` (where an error would arrive wrapped in a
    TensorFlow traceback), so that unreachable data is one error naming the data set.

    Raises:
      DataUnavailableError: naming the data set, the reason and how to use local data.
    """
    key = (id(_loader), name, subset, split)
    if key in _loadable:
        return
    try:
        _loader(name, subset, split)
    except ImportError as e:
        raise UserInputError(str(e).splitlines()[0]) from e  # says what to install
    except Exception as e:
        what = f"{name}/{subset}" if subset else name
        reason = str(e).splitlines()[0] if str(e) else ""
        raise DataUnavailableError(
            f"P3 data set {what} (split {split!r}) could not be loaded ({type(e).__name__}: "
            f"{reason}). Offline, Hugging Face `datasets` reads only its cache: load it once "
            "where the network is reachable (same HF_HOME) and set HF_DATASETS_OFFLINE=1, or "
            "read local files through tasks.p3.set_example_loader(...)."
        ) from e
    _loadable.add(key)


def set_example_loader(loader: ExampleLoader | None) -> ExampleLoader:
    """Sets the loader every P3 task reads through (``None``: Hugging Face); returns the
    previous one. Takes effect for datasets built afterwards, also for registered tasks."""
    global _loader
    previous, _loader = _loader, (loader or huggingface_loader)
    return previous


@gin.configurable
def p3_vocabulary(path: str | None = None, extra_ids: int = 0) -> seqio.Vocabulary:
    """The vocabulary of P3 tasks: a SentencePiece model at ``path`` (a ``.model`` file or a
    directory holding ``spiece.model``, e.g. a Flan-T5 / T5 checkpoint folder; T0 used T5's),
    else UTF-8 bytes. The file must exist but is read lazily, so registration stays cheap."""
    kind = "sentencepiece" if path else "byte"
    return make_vocabulary(kind, path, extra_ids, binding="p3_vocabulary")


def t0_task_name(dataset: str, subset: str | None, template_name: str, suffix: str = "") -> str:
    """``{dataset}_{subset}_{template}{suffix}`` with every run of characters other than
    letters, digits, ``_`` and ``.`` replaced by ``_`` - the names P3 was published under
    (case is kept, e.g. ``ai2_arc_ARC_Challenge_...``, ``super_glue_wsc.fixed_...``)."""
    raw = f"{dataset}_{subset}_{template_name}" if subset else f"{dataset}_{template_name}"
    return re.sub(r"[^\w.]+", "_", raw) + suffix


def t0_mixing_rate(
    train_size: int, num_templates: int, maximum: int = MAX_EXAMPLES_PER_DATASET
) -> int:
    """T0's rate for each template-task of a data set: its size, or ``maximum //
    num_templates`` when the data set has more than ``maximum`` examples."""
    if num_templates <= 0:
        raise ValueError(f"num_templates must be positive, got {num_templates}.")
    return maximum // num_templates if train_size > maximum else train_size


@dataclasses.dataclass(frozen=True)
class P3Task:
    """What was registered for one (data set, template)."""

    name: str
    dataset: P3Dataset
    template: PromptTemplate
    num_templates: int
    score_eval_name: str | None

    @property
    def rate(self) -> int:
        return t0_mixing_rate(self.dataset.train_size, self.num_templates)


# Every registered P3 task by name (mixture rates and tools look here).
P3_TASKS: dict[str, P3Task] = {}


@dataclasses.dataclass
class RenderStats:
    """What passes over one P3 task's split rendered, cumulated over passes (epochs).

    ``incomplete``: examples without inputs or targets (e.g. unlabelled test rows), dropped as
    T0 did. ``skipped``: examples the template could not render (it raised, or the result split
    into more than ``inputs ||| targets``), dropped and logged; ``reasons`` keeps the first few.
    """

    read: int = 0
    rendered: int = 0
    incomplete: int = 0
    skipped: int = 0
    reasons: list[str] = dataclasses.field(default_factory=list)


MAX_LOGGED_SKIPS = 5
# A pass where this many examples failed and none rendered means the template is broken:
# failing loudly beats an empty task (which would stall a mixture).
BROKEN_TEMPLATE_MIN_FAILURES = 10
_stats: dict[tuple[str, str], RenderStats] = {}
_stats_lock = threading.Lock()


def render_stats(task_name: str, split: str) -> RenderStats:
    """Counts of examples rendered, dropped as incomplete and skipped as unrenderable so far
    for a registered P3 task (the ``_score_eval`` twin shares its base task's counts)."""
    base = task_name.removesuffix(SCORE_EVAL_SUFFIX)
    with _stats_lock:
        stats = _stats.get((base, split), RenderStats())
        return dataclasses.replace(stats, reasons=list(stats.reasons))


class PromptedSource(seqio.DataSource):
    """One template applied to one data set's examples, rendered in Python on the fly.

    Rendering equals PromptSource's ``Template.apply`` (variables truncated to 2048
    characters). Examples whose rendering lacks inputs or targets (e.g. unlabelled test rows)
    are dropped, as T0 did. An example the template cannot render (it raises, or the result
    has more than two ``|||`` parts, which P3 dropped too) is skipped, counted
    (:func:`render_stats`) and logged with the task and template, so one bad example never
    stops a run; a template that fails on every one of at least ten examples of a pass raises.
    """

    def __init__(self, dataset: P3Dataset, template: PromptTemplate, name: str = "") -> None:
        super().__init__(splits=dataset.splits)
        self._dataset = dataset
        self._template = template
        self._name = name or t0_task_name(dataset.name, dataset.subset, template.name)

    def examples(
        self, split: str, shard_index: int = 0, num_shards: int = 1
    ) -> Iterable[dict[str, Any]]:
        """The rendered examples of ``split`` (``inputs``, ``targets``, ``answer_choices``)."""
        d = self._dataset
        self._template.validate()  # a syntax error is the template's, not an example's
        source_split = d.split_mapping.get(split, split)
        with _stats_lock:
            stats = _stats.setdefault((self._name, split), RenderStats())
        rendered = skipped = 0
        for i, example in enumerate(_loader(d.name, d.subset, source_split)):
            if i % num_shards != shard_index:
                continue
            try:
                prompt = self._template.render(example)
            except TemplateError as e:
                skipped += 1
                self._skip(stats, split, i, e)
                continue
            with _stats_lock:
                stats.read += 1
                stats.incomplete += not prompt.is_complete
                stats.rendered += prompt.is_complete
            if prompt.is_complete:
                rendered += 1
                yield {
                    "inputs": prompt.inputs,
                    "targets": prompt.targets,
                    "answer_choices": list(prompt.answer_choices),
                }
        if skipped:
            log.warning(
                "P3 task %r (%s, template %r) split %r: skipped %d example(s) that could not "
                "be rendered in this pass (render_stats has the counts).",
                self._name, d.key, self._template.name, split, skipped,
            )  # fmt: skip
        if not rendered and skipped >= BROKEN_TEMPLATE_MIN_FAILURES:
            raise TemplateError(
                f"P3 task {self._name!r} ({d.key} {split}): all {skipped} examples failed to "
                f"render, so the template is broken; first: {stats.reasons[0]}"
            )

    def _skip(self, stats: RenderStats, split: str, index: int, error: TemplateError) -> None:
        reason = f"{self._dataset.key} {split} example {index}: {error}"
        with _stats_lock:
            stats.read += 1
            stats.skipped += 1
            if len(stats.reasons) < MAX_LOGGED_SKIPS:
                stats.reasons.append(reason)
            count = stats.skipped
        if count <= MAX_LOGGED_SKIPS:
            log.warning("P3 task %r: skipped an example: %s", self._name, reason)

    @property
    def template(self) -> PromptTemplate:
        return self._template

    @property
    def supports_arbitrary_sharding(self) -> bool:
        return True

    def list_shards(self, split: str) -> list[str]:
        return [split]

    def get_dataset(
        self,
        split: str = "train",
        shuffle: bool = True,
        seed: int | None = None,
        shard_info: seqio.ShardInfo | None = None,
        *,
        sequence_length: Mapping[str, int] | None = None,
        use_cached: bool = False,
        num_epochs: int | None = 1,
    ) -> tf.data.Dataset:
        del shuffle, seed, sequence_length, use_cached, num_epochs  # the Task shuffles/repeats
        if split not in self.splits:
            raise ValueError(f"P3 data set {self._dataset.key} has no split {split!r}.")
        d = self._dataset
        check_loadable(d.name, d.subset, d.split_mapping.get(split, split))
        shard = (shard_info.index, shard_info.num_shards) if shard_info else (0, 1)
        return tf.data.Dataset.from_generator(
            lambda: self.examples(split, *shard),
            output_signature={
                "inputs": tf.TensorSpec([], tf.string),
                "targets": tf.TensorSpec([], tf.string),
                "answer_choices": tf.TensorSpec([None], tf.string),
            },
        )


def _features(vocabulary: seqio.Vocabulary) -> dict[str, seqio.Feature]:
    return {
        "inputs": seqio.Feature(vocabulary, add_eos=True, required=True),
        "targets": seqio.Feature(vocabulary, add_eos=True),
    }


def _tokenize_steps() -> list[Any]:
    return [
        seqio.preprocessors.tokenize,
        seqio.CacheDatasetPlaceholder(),
        seqio.preprocessors.append_eos_after_trim,
    ]


# PromptSource's metadata metric names -> metric fns for the generated text (exact match is
# always computed; names without an entry, e.g. "Other", add nothing).
P3_METRICS: dict[str, Callable[..., dict[str, float]]] = {
    "BLEU": bleu,
    "ROUGE": rouge,
    "Squad": squad,
}


def p3_metric_fns(template: PromptTemplate) -> list[Callable[..., dict[str, float]]]:
    """Predict-metric fns of a template's task: exact match plus what its metadata names."""
    fns: list[Callable[..., dict[str, float]]] = [exact_match]
    for metric in template.metadata.metrics:
        fn = P3_METRICS.get(metric)
        if fn is not None and fn not in fns:
            fns.append(fn)
    return fns


def _add_task(name: str, source: PromptedSource, vocabulary: seqio.Vocabulary, score: bool) -> None:
    seqio.TaskRegistry.remove(name)  # re-registration replaces
    if score:
        seqio.TaskRegistry.add(
            name,
            source=source,
            output_features=_features(vocabulary),
            preprocessors=[rank_classification, *_tokenize_steps()],
            postprocess_fn=rank_classification_postprocessor,
            metric_fns=[rank_classification_accuracy],
        )
    else:
        seqio.TaskRegistry.add(
            name,
            source=source,
            output_features=_features(vocabulary),
            preprocessors=_tokenize_steps(),
            postprocess_fn=strip_whitespace,
            metric_fns=p3_metric_fns(source.template),
        )


def register_p3_tasks(
    datasets: Iterable[P3Dataset],
    *,
    library: TemplateLibrary,
    vocabulary: seqio.Vocabulary,
    group: str = "train_tasks",
    score_eval: bool = True,
) -> list[P3Task]:
    """Registers a task per template of each data set (and ``_score_eval`` twins).

    Reads the templates files only. Raises ``ValueError`` when two templates of a data set
    sanitise to the same task name, naming the file and both templates.
    """
    registered = []
    for d in datasets:
        templates = library.get(d.name, d.subset)
        taken: dict[str, PromptTemplate] = {}
        for template in templates:
            name = t0_task_name(d.name, d.subset, template.name, d.task_suffix)
            if name in taken:
                raise ValueError(
                    f"{templates.path}: templates {taken[name].name!r} and {template.name!r} "
                    f"both map to task name {name!r}."
                )
            taken[name] = template
            source = PromptedSource(d, template, name)
            _add_task(name, source, vocabulary, score=False)
            set_task_group(name, group)
            score_name = None
            if score_eval and template.has_answer_choices:
                score_name = name + SCORE_EVAL_SUFFIX
                _add_task(score_name, source, vocabulary, score=True)
                set_task_group(score_name, group)
            info = P3Task(name, d, template, len(templates), score_name)
            P3_TASKS[name] = info
            registered.append(info)
    return registered


def _rate(task: seqio.Task) -> float:
    return float(P3_TASKS[task.name].rate)


def add_mixture(name: str, task_names: Sequence[str], rate: Callable | float = _rate) -> None:
    """(Re-)registers a mixture; the default rate is T0's capped size (:func:`t0_mixing_rate`)."""
    if not task_names:
        raise ValueError(f"Mixture {name!r} would be empty.")
    seqio.MixtureRegistry.remove(name)
    seqio.MixtureRegistry.add(name, list(task_names), default_rate=rate)


def tasks_of(datasets: Iterable[P3Dataset]) -> list[str]:
    """Names of the registered (non score-eval) tasks of ``datasets``, in registration order."""
    keys = {(d.name, d.subset, d.task_suffix) for d in datasets}
    return [
        n
        for n, t in P3_TASKS.items()
        if (t.dataset.name, t.dataset.subset, t.dataset.task_suffix) in keys
    ]
