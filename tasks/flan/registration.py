"""SeqIO registration of the Flan 2021 tasks, cluster mixtures and held-out-cluster mixtures.

Naming (``{name}`` is a :class:`~tasks.flan.datasets.DatasetSpec` name, e.g. ``rte``):

* ``flan_{name}_zero_shot``: every template, one per example, options shown.
* ``flan_{name}_no_opt``: the same without the options block (classification sets only).
* ``flan_{name}_x_shot``: few-shot, as many exemplars (up to ``MAX_SHOTS``) as fit the budget.
* ``flan_{name}_{k}_shot``: exactly-k few-shot (budget permitting); :func:`few_shot_task`.
* ``flan_{name}_template_{i}_{zero_shot|no_opt|x_shot}``: one template only (Flan's
  per-template tasks, for held-out-template evaluation and Flan-2022-scale mixtures).
* ``flan_{name}_cot`` / ``flan_{name}_cot_x_shot``: chain-of-thought templates (sets with
  rationales: esnli, cos_e, gsm8k).

Mixtures: ``flan2021_{cluster}`` per cluster, ``flan2021`` (all clusters), ``flan2021_cot``,
``flan2021_template_variants`` (all per-template tasks), and ``flan2022_flan_cot`` (Flan 2021
and CoT at their Flan 2022 collection weights). ``{mixture}_fused`` (``flan2021_fused``,
``flan2021_template_variants_fused``, ``flan2022_flan_cot_fused``): the same tasks and rates read
as one pipeline per data set (:mod:`t5x_instruct.data.templates.fused`; seconds instead of
minutes to the first batch at Flan scale). A data set's rate is ``min(cap, n_train)``,
split evenly over its variants in a mixture.

Registration reads no data: sources are lazy TFDS loaders, rates come from metadata tables;
data (and the few-shot pools) are read when a dataset is built.
"""

from __future__ import annotations

import difflib
import functools
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import gin
import numpy as np
import seqio
import tensorflow as tf

from t5x_instruct.data.custom import add_rendered_task, register_mixture
from t5x_instruct.data.metrics import bleu, exact_match, rouge, squad
from t5x_instruct.data.registry import set_task_group
from t5x_instruct.data.templates import FewShot, RenderConfig, Template, TemplateError
from t5x_instruct.data.templates.fused import register_fused_mixture
from t5x_instruct.data.vocabularies import ConfiguredVocabulary, make_vocabulary
from t5x_instruct.errors import DataUnavailableError
from tasks.flan.datasets import CLUSTERS, DatasetSpec, all_specs
from tasks.flan.sizes import FLAN2022_COLLECTION_WEIGHTS, capped_rate, num_train_examples

PREFIX = "flan_"
MAX_SHOTS = 5
FEW_SHOT_MAX_CHARS = 2048
POOL_SIZE = 16
# Per-task example shuffle buffer. SeqIO fills every task's buffer before the task's first
# example, so in a mixture of ~1,500 tasks the default of 1,000 means rendering ~1.5M examples
# (minutes, GBs) before the first batch; mixture sampling and TFDS file shuffling do the rest.
SHUFFLE_BUFFER_SIZE = 128


class FlanTfdsSource(seqio.TfdsDataSource):
    """A TFDS source that tolerates data that is not prepared (size ``None``, one shard).

    SeqIO asks every source for its size when building a dataset (to cache small ones);
    the stock source raises without prepared metadata, e.g. under ``tfds.testing.mock_data``.
    """

    def num_input_examples(self, split: str) -> int | None:
        try:
            return super().num_input_examples(split)
        except Exception:  # unprepared data set or mocked builder
            return None

    def list_shards(self, split: str) -> list[str]:
        """File shards, or one pseudo-shard without files (SeqIO then shards by example)."""
        try:
            return list(super().list_shards(split))
        except Exception:
            return [split]

    def get_dataset(self, split: str | None = None, shuffle: bool = True,
                    seed: int | None = None, shard_info: seqio.ShardInfo | None = None,
                    **kwargs: Any) -> Any:  # fmt: skip
        """The stock load; when it fails on data that is not prepared (TFDS then downloads,
        impossible offline), one error naming the data set, the folder and what to do."""
        try:
            return super().get_dataset(split, shuffle, seed, shard_info, **kwargs)
        except Exception as e:
            name = self.tfds_dataset.name or "?"
            data_dir = self.tfds_dataset.data_dir or os.environ.get(
                "TFDS_DATA_DIR", os.path.expanduser("~/tensorflow_datasets")
            )
            folder = os.path.join(data_dir, *name.replace(":", "/").split("/"))
            if tf.io.gfile.exists(os.path.join(folder, "dataset_info.json")):
                raise  # prepared: a real read error, keep it as it is
            reason = str(e).splitlines()[0] if str(e) else ""
            raise DataUnavailableError(
                f"TFDS data set {name} is not prepared in {data_dir} and could not be downloaded "
                f"({type(e).__name__}: {reason}). Prepare it where the network is reachable "
                f"(`tfds build {name.split(':')[0]}`), copy the folder over, and point TFDS at "
                "it: TFDS_DATA_DIR=/path/to/tensorflow_datasets."
            ) from e


@functools.cache
def _tfds_builders() -> frozenset[str]:
    import tensorflow_datasets as tfds

    return frozenset(tfds.list_builders(with_community_datasets=False))


def versioned_tfds_name(tfds_name: str) -> str:
    """``tfds_name:VERSION`` (the installed builder's version, as SeqIO requires one); raises
    ``ValueError`` (with close names) for an unknown TFDS data set or config."""
    import tensorflow_datasets as tfds

    name, _, config = tfds_name.partition("/")
    builders = _tfds_builders()
    if name not in builders:
        close = difflib.get_close_matches(name, sorted(builders), n=3)
        raise ValueError(f"Unknown TFDS data set {tfds_name!r}; did you mean {close}?")
    configs = [c.name for c in (tfds.builder_cls(name).BUILDER_CONFIGS or [])]
    if config and config not in configs:
        close = difflib.get_close_matches(config, configs, n=3)
        raise ValueError(f"TFDS data set {name!r} has no config {config!r}; close: {close}.")
    if ":" in tfds_name:
        return tfds_name
    cls = tfds.builder_cls(name)
    version = next((c.version for c in cls.BUILDER_CONFIGS or [] if c.name == config), None)
    return f"{tfds_name}:{version or cls.VERSION}"


_pools: dict[tuple[str, str], list[dict[str, Any]]] = {}


def _decode(value: Any) -> Any:
    if isinstance(value, np.ndarray) and value.ndim:
        return [_decode(v) for v in value]
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value).decode("utf-8")
    return str(value.item() if isinstance(value, np.generic) else value)


def _load_pool(spec: DatasetSpec, source: seqio.DataSource) -> list[dict[str, Any]]:
    """First train examples of ``spec`` as Python fields (cached per data set)."""
    key = (spec.name, spec.tfds_name)
    if key not in _pools:
        ds = source.get_dataset(split="train", shuffle=False).take(4 * POOL_SIZE)
        ds = ds.map(spec.normalize)
        _pools[key] = [{k: _decode(v) for k, v in ex.items()} for ex in ds.as_numpy_iterator()]
    return _pools[key]


def clear_pool_cache() -> None:
    """Forgets loaded few-shot pools (tests that swap mock data)."""
    _pools.clear()


def build_templates(task: str, pairs: Sequence[tuple[str, ...]]) -> tuple[Template, ...]:
    """Templates ``'0'``, ``'1'``, ... from a family; errors name the task and template id."""
    out = []
    for i, pair in enumerate(pairs):
        try:
            out.append(Template(str(i), pair[0], pair[1], *pair[2:]))
        except TemplateError as e:
            raise TemplateError(f"Task {task!r}, {e}") from e
    return tuple(out)


@gin.configurable
def flan_vocabulary(
    kind: str = "byte", path: str | None = None, extra_ids: int = 0
) -> seqio.Vocabulary:
    """The vocabulary of the Flan tasks (gin: ``flan_vocabulary.kind/path/extra_ids``).

    Flan-T5's own: ``flan_vocabulary.kind = 'sentencepiece'`` and ``flan_vocabulary.path`` =
    a local checkpoint folder holding ``spiece.model`` (or the file itself).
    """
    return make_vocabulary(kind, path, extra_ids, binding="flan_vocabulary")


def metric_fns(spec: DatasetSpec) -> tuple[Callable[..., dict[str, float]], ...]:
    """The metrics Flan reports for a data set's generated text: exact match for option
    (classification) sets, ROUGE for summarisation, BLEU for translation, both for
    structure-to-text, exact match plus SQuAD F1 for free-form QA."""
    if spec.classification:
        return (exact_match,)
    if spec.cluster == "summarization":
        return (rouge,)
    if spec.cluster == "translation":
        return (bleu,)
    if spec.cluster == "struct_to_text":
        return (rouge, bleu)
    if spec.cluster in ("closed_book_qa", "reading_comprehension"):
        return (exact_match, squad)
    return (exact_match,)


def _variants(spec: DatasetSpec, per_template: bool) -> list[tuple[str, dict[str, Any]]]:
    """(suffix, RenderConfig overrides) of every task variant of ``spec``."""
    cls = spec.classification
    base: list[tuple[str, dict[str, Any]]] = [("zero_shot", {}), ("x_shot", {"k": MAX_SHOTS})]
    if cls:
        base.append(("no_opt", {"show_options": False}))
    out = list(base)
    if per_template:
        for i in range(len(spec.templates)):
            out += [(f"template_{i}_{s}", {**kw, "only": i}) for s, kw in base]
    if spec.cot_templates:
        out += [("cot", {"cot": True}), ("cot_x_shot", {"cot": True, "k": MAX_SHOTS})]
    return out


def register_spec(
    spec: DatasetSpec,
    *,
    seed: int = 0,
    mode: str = "tf",
    per_template: bool = True,
    vocabulary: seqio.Vocabulary | None = None,
    source: seqio.DataSource | None = None,
) -> list[str]:
    """Registers every variant of one data set; returns the task names."""
    if spec.cluster not in CLUSTERS:
        raise ValueError(f"Data set {spec.name!r}: unknown cluster {spec.cluster!r}.")
    if source is None:
        source = FlanTfdsSource(versioned_tfds_name(spec.tfds_name), splits=dict(spec.splits))
    vocabulary = vocabulary or ConfiguredVocabulary(flan_vocabulary)
    standard = build_templates(f"{PREFIX}{spec.name}", spec.templates)
    cot = build_templates(f"{PREFIX}{spec.name}_cot", spec.cot_templates)
    pool = functools.partial(_load_pool, spec, source)
    names = []
    for suffix, kw in _variants(spec, per_template):
        name = f"{PREFIX}{spec.name}_{suffix}"
        templates = cot if kw.get("cot") else standard
        if "only" in kw:
            templates = (templates[kw["only"]],)
        few_shot = (
            FewShot(k=kw["k"], pool=pool, pool_size=POOL_SIZE, max_chars=FEW_SHOT_MAX_CHARS)
            if "k" in kw else None
        )  # fmt: skip
        config = RenderConfig(
            task=name, templates=templates, seed=seed,
            hash_name=f"{PREFIX}{spec.name}" + ("_cot" if kw.get("cot") else ""),
            show_options=kw.get("show_options", True), fields=spec.fields,
            key_fields=tuple(f for f in spec.fields if f != "rationale"), few_shot=few_shot,
            mode=mode,
        )  # fmt: skip
        add_rendered_task(name, source, config, vocabulary=vocabulary, normalize=spec.normalize,
                          shuffle_buffer_size=SHUFFLE_BUFFER_SIZE,
                          metric_fns=metric_fns(spec))  # fmt: skip
        names.append(name)
    return names


def few_shot_task(spec_name: str, k: int, *, seed: int = 0) -> str:
    """Registers ``flan_{spec_name}_{k}_shot`` (exactly k exemplars, budget permitting)."""
    spec = {s.name: s for s in all_specs()}[spec_name]
    source = FlanTfdsSource(versioned_tfds_name(spec.tfds_name), splits=dict(spec.splits))
    name = f"{PREFIX}{spec.name}_{k}_shot"
    pool = functools.partial(_load_pool, spec, source)
    config = RenderConfig(
        task=name, templates=build_templates(name, spec.templates), seed=seed,
        hash_name=f"{PREFIX}{spec.name}", fields=spec.fields,
        key_fields=tuple(f for f in spec.fields if f != "rationale"),
        few_shot=FewShot(k=k, pool=pool, pool_size=max(POOL_SIZE, 2 * k),
                         max_chars=FEW_SHOT_MAX_CHARS),
    )  # fmt: skip
    add_rendered_task(
        name, source, config, vocabulary=ConfiguredVocabulary(flan_vocabulary),
        normalize=spec.normalize,
        shuffle_buffer_size=SHUFFLE_BUFFER_SIZE, metric_fns=metric_fns(spec),
    )  # fmt: skip
    return name


def dataset_rate(spec: DatasetSpec) -> float:
    """``min(cap, train examples)`` of a data set."""
    return capped_rate(num_train_examples(spec.tfds_name, split=spec.splits["train"]))


def mixture_rates(specs: Sequence[DatasetSpec], suffixes: Sequence[str]) -> dict[str, float]:
    """Task -> rate: each data set's capped rate split evenly over its listed variants."""
    rates: dict[str, float] = {}
    registered = set(seqio.TaskRegistry.names())
    for spec in specs:
        names = [f"{PREFIX}{spec.name}_{s}" for s in suffixes]
        names = [n for n in names if n in registered]
        for n in names:
            rates[n] = dataset_rate(spec) / len(names)
    return rates


TRAIN_SUFFIXES = ("zero_shot", "x_shot", "no_opt")
COT_SUFFIXES = ("cot", "cot_x_shot")


def register(
    *, seed: int = 0, mode: str = "tf", per_template: bool = True,
    specs: Sequence[DatasetSpec] | None = None,
) -> list[str]:  # fmt: skip
    """Registers all Flan tasks and mixtures (safe to call again); returns the task names."""
    specs = list(specs or all_specs())
    vocabulary = ConfiguredVocabulary(flan_vocabulary)  # resolved when used: see its doc
    names: list[str] = []
    for spec in specs:
        names += register_spec(spec, seed=seed, mode=mode, per_template=per_template,
                               vocabulary=vocabulary)  # fmt: skip
    for cluster in CLUSTERS:
        members = [s for s in specs if s.cluster == cluster]
        if members:
            register_mixture(f"flan2021_{cluster}", mixture_rates(members, TRAIN_SUFFIXES))
    register_mixture("flan2021", mixture_rates(specs, TRAIN_SUFFIXES))
    cot_specs = [s for s in specs if s.cot_templates]
    if cot_specs:
        register_mixture("flan2021_cot", mixture_rates(cot_specs, COT_SUFFIXES))
        register_collection("flan2022_flan_cot", {"flan2021": "flan2021", "cot": "flan2021_cot"})
    if per_template:
        suffixes = [f"template_{i}_{s}" for i in range(max(len(s.templates) for s in specs))
                    for s in TRAIN_SUFFIXES]  # fmt: skip
        register_mixture("flan2021_template_variants", mixture_rates(specs, suffixes))
    for mixture in ("flan2021", "flan2022_flan_cot", "flan2021_template_variants"):
        if mixture in seqio.MixtureRegistry.names():
            register_fused_mixture(f"{mixture}_fused", [(mixture, 1.0)])
    logging.info("Registered %d Flan tasks.", len(names))
    return names


def register_collection(name: str, components: Mapping[str, str]) -> seqio.Mixture:
    """A mixture of sub-mixtures at the Flan 2022 collection weights.

    ``components`` maps a collection key (``flan2021``, ``t0``, ``niv2``, ``cot``, ``dialog``)
    to a registered mixture; each gets its published weight (SeqIO spreads it over the
    sub-mixture's tasks in proportion to their rates). Missing components are simply absent,
    so the weights of those present are used as relative shares.
    """
    unknown = sorted(set(components) - set(FLAN2022_COLLECTION_WEIGHTS))
    if unknown:
        raise ValueError(
            f"Collection {name!r}: unknown component(s) {unknown}; known: "
            f"{sorted(FLAN2022_COLLECTION_WEIGHTS)}."
        )
    return register_mixture(
        name, [(mix, FLAN2022_COLLECTION_WEIGHTS[key]) for key, mix in components.items()]
    )


def heldout_cluster_mixtures(cluster: str, *, specs: Sequence[DatasetSpec] | None = None
                             ) -> tuple[str, str]:  # fmt: skip
    """Registers ``flan2021_without_{cluster}`` (train on every other cluster) and
    ``flan2021_{cluster}_eval`` (zero-shot tasks of ``cluster``, tagged ``heldout_task`` for
    the trainer's per-group metrics); returns (train mixture, eval mixture)."""
    if cluster not in CLUSTERS:
        raise ValueError(f"Unknown cluster {cluster!r}; clusters: {CLUSTERS}.")
    specs = list(specs or all_specs())
    held = [s for s in specs if s.cluster == cluster]
    rest = [s for s in specs if s.cluster != cluster]
    if not held:
        raise ValueError(f"Cluster {cluster!r} has no registered data sets.")
    train = f"flan2021_without_{cluster}"
    register_mixture(train, mixture_rates(rest, TRAIN_SUFFIXES))
    evaluation = f"flan2021_{cluster}_eval"
    eval_tasks = [f"{PREFIX}{s.name}_zero_shot" for s in held]
    register_mixture(evaluation, [(t, 1.0) for t in eval_tasks])
    for t in eval_tasks:
        set_task_group(t, "heldout_task")
    return train, evaluation


def task_names(spec_name: str) -> list[str]:
    """Registered task names of one data set."""
    return sorted(n for n in seqio.TaskRegistry.names() if n.startswith(f"{PREFIX}{spec_name}_"))
