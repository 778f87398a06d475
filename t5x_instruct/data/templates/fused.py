"""Fused mixtures: thousands of rendered task variants read as a few pipelines, one per source.

Why: a SeqIO mixture builds one pipeline per task (65-220 ms each, plus a first read and a
shuffle buffer each), so a Flan-scale mixture of ~1,700 variants took minutes and GBs before
its first batch. Most variants differ only in *how* an example is rendered (template subset,
options shown, few-shot), not in the data they read. :class:`FusedMixture` is a
``seqio.Mixture`` (same tasks, same rates, registered by name) whose ``get_dataset`` instead:

1. reads each distinct data source once (sharded, repeated, shuffled with a small buffer);
2. assigns each example ONE of the variants reading that source, by a seeded stable hash of
   the example's content weighted by the variants' mixing rates (so expected proportions
   equal the registered rates, and an example's variant is the same on every run and host);
3. renders it exactly as that variant's own task would (same hashes for template, options
   format and exemplars; see :mod:`.preprocessor`), tokenises and appends EOS;
4. samples the per-source streams (grouped: sources with the same record structure and
   normalisation share one render ``map``) at the sum of their variants' rates, seeded.

Tasks that are not plain rendered tasks (other preprocessors, ``mode='py'``) join as ordinary
SeqIO task streams, so any mixture can be fused. The per-variant tasks stay registered: single
variants are still trained and evaluated by name.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import seqio
import tensorflow as tf

from t5x_instruct.data.templates.options import OptionsFormat
from t5x_instruct.data.templates.preprocessor import RenderConfig, apply_templates
from t5x_instruct.data.templates.render import options_block_tf, render_template_tf
from t5x_instruct.data.templates.selection import example_key_tf, hash_prefix
from t5x_instruct.data.templates.template import OPTIONS_FIELD, Template

VARIANT_FEATURE = "variant"  # passthrough feature: the task name an example was rendered as
_UNIT_BUCKETS = 2**53  # hash -> uniform [0, 1) with float64 precision
# Default cap of per-source shuffle buffers (of raw records, before rendering).
MAX_SHUFFLE_BUFFER = 1000


@dataclasses.dataclass
class _Variant:
    task: seqio.Task
    config: RenderConfig
    rate: float


@dataclasses.dataclass
class _Source:
    source: seqio.DataSource
    variants: list[_Variant]
    buffer: int


def rendered_task_parts(task: seqio.Task) -> tuple[RenderConfig, Callable | None] | None:
    """(config, normalize) of a task made by ``add_rendered_task`` with TF rendering, else
    ``None`` (such tasks are mixed as ordinary SeqIO tasks)."""
    pre = list(task.preprocessors)
    if len(pre) != 4 or not isinstance(pre[0], functools.partial):
        return None
    if pre[0].func is not apply_templates or "config" not in pre[0].keywords:
        return None
    if (
        pre[1] is not seqio.preprocessors.tokenize
        or pre[3] is not (seqio.preprocessors.append_eos_after_trim)
        or not isinstance(pre[2], seqio.CacheDatasetPlaceholder)
    ):
        return None
    config = pre[0].keywords["config"]
    if config.mode != "tf":
        return None
    return config, pre[0].keywords.get("normalize")


def _read(source: seqio.DataSource, split: str, shuffle: bool, seed: int | None,
          shard_info: seqio.ShardInfo | None) -> tf.data.Dataset:  # fmt: skip
    """The source's records for this shard, exactly as ``seqio.Task.get_dataset`` shards."""
    if shard_info is None or shard_info.num_shards == 1:
        return source.get_dataset(split=split, shuffle=shuffle, seed=seed)
    if source.supports_arbitrary_sharding or (
        len(source.list_shards(split=split)) >= shard_info.num_shards
    ):
        return source.get_dataset(split=split, shuffle=shuffle, seed=seed, shard_info=shard_info)
    ds = source.get_dataset(split=split, shuffle=shuffle, seed=seed)
    return ds.shard(shard_info.num_shards, shard_info.index)


def _lcm(values: Sequence[int]) -> int:
    out = 1
    for v in values:
        out = out * v // math.gcd(out, v)
    if out >= 2**62:
        raise ValueError(f"Bucket counts {sorted(set(values))} are too many to fuse.")
    return out


class _Group:
    """Sources whose normalised records share a structure: one render ``map`` for all."""

    def __init__(self, name: str, normalize: Callable | None, sources: list[_Source]) -> None:
        self.name, self.normalize, self.sources = name, normalize, sources
        self.variants = [v for s in sources for v in s.variants]
        first = self.variants[0].config
        self.keys, self.seed = first.keys, first.seed
        self.templates: list[Template] = []
        self.formats: list[OptionsFormat] = []
        for v in self.variants:
            for t in v.config.templates:
                if t not in self.templates:
                    self.templates.append(t)
            for f in v.config.options_formats if v.config.show_options else ():
                if f not in self.formats:
                    self.formats.append(f)

    @property
    def rate(self) -> float:
        return sum(v.rate for v in self.variants)

    def _tables(self) -> dict[str, Any]:
        """Constant per-variant tables the render function gathers from."""
        n_v = len(self.variants)
        max_t = max(len(v.config.templates) for v in self.variants)
        max_f = max(len(v.config.formats) for v in self.variants)
        t_map = np.zeros((n_v, max_t), np.int32)
        f_map = np.zeros((n_v, max_f), np.int32)
        for i, v in enumerate(self.variants):
            t_map[i, : len(v.config.templates)] = [self.templates.index(t)
                                                  for t in v.config.templates]  # fmt: skip
            if v.config.show_options:
                f_map[i, : len(v.config.formats)] = [self.formats.index(f)
                                                    for f in v.config.formats]  # fmt: skip
        max_s = max(len(s.variants) for s in self.sources)
        cum = np.full((len(self.sources), max_s), 2.0)
        offsets = []
        for si, s in enumerate(self.sources):
            rates = np.array([v.rate for v in s.variants], np.float64)
            cum[si, : len(rates)] = np.cumsum(rates) / rates.sum()
            cum[si, len(rates) - 1] = 2.0  # u < 1 always lands on a variant of this source
            offsets.append(sum(len(x.variants) for x in self.sources[:si]))
        n_t = [len(v.config.templates) for v in self.variants]
        n_f = [len(v.config.formats) for v in self.variants]
        return {
            "t_map": t_map, "f_map": f_map, "cum": cum, "offsets": np.array(offsets, np.int64),
            "n_t": np.array(n_t, np.int64), "n_f": np.array(n_f, np.int64),
            "modulus": _lcm(n_t + n_f),
            "shown": np.array([v.config.show_options for v in self.variants]),
            "t_prefix": [v.config.prefix("template") for v in self.variants],
            "f_prefix": [v.config.prefix("options") for v in self.variants],
        }  # fmt: skip

    def render_fn(self, with_variant: bool) -> Callable[..., dict[str, tf.Tensor]]:
        """(record, source index) -> inputs/targets/template_id, as each variant renders."""
        tb = self._tables()
        shots = _ShotTables(self.variants)
        tb["modulus"] = _lcm([tb["modulus"], *(p for p in shots.pool_sizes if p)])
        variant_prefix = hash_prefix(self.seed, self.name, "variant")
        names = tf.constant([v.task.name for v in self.variants])
        template_ids = tf.constant([t.id for t in self.templates])

        def fn(record: Mapping[str, tf.Tensor], src: tf.Tensor) -> dict[str, tf.Tensor]:
            ex = dict(self.normalize(record) if self.normalize else record)
            key = example_key_tf(ex, self.keys)
            h = tf.strings.to_hash_bucket_fast(tf.strings.join([variant_prefix, key]),
                                               _UNIT_BUCKETS)  # fmt: skip
            u = tf.cast(h, tf.float64) / _UNIT_BUCKETS
            row = tf.gather(tf.constant(tb["cum"]), src)
            local = tf.searchsorted(row, tf.reshape(u, [1]), side="right")[0]
            v = tf.gather(tb["offsets"], src) + tf.cast(local, tf.int64)

            def bucket(prefixes: list[str], counts: np.ndarray) -> tf.Tensor:
                full = tf.strings.to_hash_bucket_fast(
                    tf.strings.join([tf.gather(tf.constant(prefixes), v), key]), tb["modulus"]
                )
                return full % tf.gather(counts, v)

            t_local, f_local = bucket(tb["t_prefix"], tb["n_t"]), bucket(tb["f_prefix"], tb["n_f"])
            t_global = tf.gather_nd(tb["t_map"], tf.stack([v, t_local]))
            block = tf.constant("")
            if OPTIONS_FIELD in ex and self.formats:
                f_global = tf.gather_nd(tb["f_map"], tf.stack([v, f_local]))
                shown = options_block_tf(self.formats, f_global, ex[OPTIONS_FIELD])
                block = tf.where(tf.gather(tb["shown"], v), shown, block)
            branches = [(lambda t=t: render_template_tf(t, ex, block, task=self.name))
                        for t in self.templates]  # fmt: skip
            inputs, targets = tf.switch_case(t_global, branches)
            inputs = shots.prepend(v, key, t_local, f_local, inputs, tb["modulus"])
            out = {"inputs": inputs, "targets": targets,
                   "template_id": tf.gather(template_ids, t_global)}  # fmt: skip
            if with_variant:
                out[VARIANT_FEATURE] = tf.gather(names, v)
            return out

        return tf.autograph.experimental.do_not_convert(fn)


class _ShotTables:
    """The few-shot exemplar tables of all variants of a group, stacked, so one vectorised
    :func:`~.fewshot.prepend_exemplars_tf` serves every variant (one switch branch per
    few-shot variant cost ~30 ms of tracing each, x 450 at Flan scale)."""

    def __init__(self, variants: Sequence[_Variant]) -> None:
        n = len(variants)
        tables = [v.config.exemplar_table() for v in variants]
        self.pool_sizes = [len(t.keys) if t is not None else 0 for t in tables]
        self.any = any(self.pool_sizes)
        width = max([1, *self.pool_sizes])
        keys = [["\x00"] * width for _ in range(n)]  # "\x00" is never an example's key
        rows: list[list[str]] = []
        offsets, ks, budgets, seps, prefixes = [], [], [], [], []
        for i, (v, t) in enumerate(zip(variants, tables)):
            few = v.config.few_shot
            offsets.append(len(rows))
            if t is not None and t.keys:
                keys[i][: len(t.keys)] = t.keys
                rows += [list(r) + [""] * (width - len(r)) for r in t.texts]
            ks.append(few.k if few else 0)
            budgets.append(few.max_chars if few else 0)
            seps.append(few.exemplar_separator if few else "")
            prefixes.append(v.config.prefix("exemplars"))
        self.keys, self.texts = keys, rows or [[""]]
        self.offsets, self.ks = np.array(offsets, np.int64), np.array(ks, np.int64)
        self.budgets, self.seps, self.prefixes = np.array(budgets, np.int32), seps, prefixes
        self.max_k = max(ks)
        self._n_formats = [len(v.config.formats) for v in variants]

    def prepend(self, v: tf.Tensor, key: tf.Tensor, t_idx: tf.Tensor, f_idx: tf.Tensor,
                query: tf.Tensor, modulus: int) -> tf.Tensor:  # fmt: skip
        """Same result as ``_with_exemplars`` with variant ``v``'s own config and table."""
        if not self.any:
            return query
        pool = tf.gather(tf.constant(self.pool_sizes, tf.int64), v)
        safe_pool = tf.maximum(pool, 1)
        start = (
            tf.strings.to_hash_bucket_fast(
                tf.strings.join([tf.gather(tf.constant(self.prefixes), v), key]), modulus
            )
            % safe_pool
        )
        k = tf.gather(self.ks, v)
        steps = tf.range(self.max_k + 1, dtype=tf.int64)
        candidates = (start + steps) % safe_pool
        valid = steps < tf.minimum(k + 1, pool)
        pool_keys = tf.gather(tf.gather(tf.constant(self.keys), v), candidates)
        not_self = tf.logical_and(valid, pool_keys != key)
        chosen = tf.boolean_mask(candidates, not_self)[:k]
        n_formats = tf.gather(tf.constant(self._n_formats, tf.int64), v)
        row = tf.gather(self.offsets, v) + t_idx * n_formats + f_idx
        row = tf.minimum(row, len(self.texts) - 1)  # variants without a table select nothing
        texts = tf.gather(tf.gather(tf.constant(self.texts), row), chosen)
        sep = tf.gather(tf.constant(self.seps), v)
        lengths = tf.strings.length(texts, unit="UTF8_CHAR") + tf.strings.length(
            sep, unit="UTF8_CHAR"
        )
        room = tf.gather(self.budgets, v) - tf.strings.length(query, unit="UTF8_CHAR")
        texts = tf.boolean_mask(texts, tf.cumsum(lengths) <= room)
        joined = tf.strings.reduce_join(tf.strings.join([texts, sep]))
        return tf.where(pool > 0, tf.strings.join([joined, query]), query)


class FusedMixture(seqio.Mixture):
    """A ``seqio.Mixture`` read one pipeline per data source (see the module docstring).

    Same tasks and rates as the equivalent plain mixture; ``get_dataset`` takes SeqIO's
    arguments. ``passthrough_features=['variant']`` adds the variant (task) name of each
    example, ``copy_pretokenized=True`` the rendered strings (tests and inspection).
    """

    max_shuffle_buffer: int = MAX_SHUFFLE_BUFFER

    def _plan(self, tasks: Sequence[seqio.Task]) -> tuple[list[_Group], list[seqio.Task]]:
        """Groups the rendered tasks by source and record structure; the rest stay tasks."""
        by_source: dict[int, _Source] = {}
        normalizers: dict[int, Callable | None] = {}
        plain = []
        for task in tasks:
            parts = rendered_task_parts(task)
            if parts is None:
                plain.append(task)
                continue
            config, normalize = parts
            sid = id(task.source)
            if sid in by_source and normalizers[sid] is not normalize:
                plain.append(task)  # same source read two ways: keep the exact task path
                continue
            buffer = min(task.shuffle_buffer_size or self.max_shuffle_buffer,
                         self.max_shuffle_buffer)  # fmt: skip
            if sid not in by_source:
                by_source[sid] = _Source(task.source, [], buffer)
                normalizers[sid] = normalize
            entry = by_source[sid]
            entry.buffer = min(entry.buffer, buffer)
            entry.variants.append(_Variant(task, config, float(self.get_rate(task))))
        groups: dict[tuple, list[_Source]] = {}
        for sid, entry in by_source.items():
            entry.variants = [v for v in entry.variants if v.rate > 0]
            if not entry.variants:
                continue
            c = entry.variants[0].config
            if any(v.config.keys != c.keys or v.config.seed != c.seed for v in entry.variants):
                plain += [v.task for v in entry.variants]
                continue
            spec = _structure(entry.source)
            gkey = (id(normalizers[sid]), spec, c.keys, c.seed) if spec else (sid,)
            groups.setdefault(gkey, []).append(entry)
        out = []
        for sources in groups.values():
            name = min(v.task.name for s in sources for v in s.variants)
            out.append(_Group(name, normalizers[id(sources[0].source)], sources))
        return out, plain

    def get_dataset(  # type: ignore[override]
        self,
        sequence_length: Mapping[str, int] | None = None,
        split: str = "train",
        use_cached: bool = False,
        shuffle: bool = True,
        seed: int | None = None,
        shard_info: seqio.ShardInfo | None = None,
        num_epochs: int | None = None,
        copy_pretokenized: bool = False,
        passthrough_features: Sequence[str] | None = None,
        trim_output_features: bool = True,
        try_in_mem_cache: bool = True,
        **unused: Any,
    ) -> tf.data.Dataset:
        """Mixed, tokenised examples (see :meth:`seqio.Mixture.get_dataset`)."""
        if use_cached:  # offline caches are per task: the ordinary path reads them
            return super().get_dataset(sequence_length, split, use_cached, shuffle, seed,
                                       shard_info, num_epochs, copy_pretokenized,
                                       passthrough_features=passthrough_features)  # fmt: skip
        self._check_compatible_features()
        tasks = [t for t in self.tasks if split in t.splits]
        if not tasks:
            raise ValueError(f"No datasets have a '{split}' split")
        keep = set(self.output_features)
        if copy_pretokenized:
            keep |= {f"{k}_pretokenized" for k in self.output_features}
        keep |= set(passthrough_features or ())
        with_variant = VARIANT_FEATURE in keep
        groups, plain = self._plan(tasks)
        datasets, rates = [], []
        for gi, group in enumerate(groups):
            streams = []
            for si, s in enumerate(group.sources):
                ds = _read(s.source, split, shuffle, seed, shard_info)
                if num_epochs != 1:
                    ds = ds.repeat(num_epochs)
                if shuffle:
                    ds = ds.shuffle(s.buffer, seed=seed)
                index = tf.data.Dataset.from_tensors(tf.constant(si, tf.int64)).repeat()
                streams.append(tf.data.Dataset.zip((ds, index)))
            ds = (
                streams[0]
                if len(streams) == 1
                else tf.data.Dataset.sample_from_datasets(
                    streams,
                    [sum(v.rate for v in s.variants) for s in group.sources],
                    seed=None if seed is None else seed + 1 + gi,
                    stop_on_empty_dataset=True,
                )
            )
            datasets.append(
                ds.map(
                    group.render_fn(with_variant),
                    num_parallel_calls=tf.data.AUTOTUNE,
                    deterministic=True,
                )
            )
            rates.append(group.rate)
        sample_seed = seed if seed is not None else (None if shuffle else 42)
        if datasets:  # render per group, tokenise once (one map, not one per group)
            ds = (
                datasets[0]
                if len(datasets) == 1
                else tf.data.Dataset.sample_from_datasets(
                    datasets, rates, seed=sample_seed, stop_on_empty_dataset=True
                )
            )
            ds = seqio.preprocessors.tokenize(ds, self.output_features, copy_pretokenized=True)
            ds = seqio.preprocessors.append_eos_after_trim(
                ds,
                output_features=self.output_features,
                sequence_length=sequence_length if trim_output_features else None,
            )
            datasets = [ds.map(functools.partial(_select, keep=keep))]
            rates = [sum(rates)]
            sample_seed = None if sample_seed is None else sample_seed + 1
        for task in plain:
            ds = self.get_task_dataset(task, keep - {VARIANT_FEATURE}, sequence_length, split,
                                       use_cached, shuffle, seed, shard_info, num_epochs,
                                       trim_output_features, try_in_mem_cache)  # fmt: skip
            if with_variant:
                ds = ds.map(functools.partial(_named, name=task.name))
            datasets.append(ds)
            rates.append(float(self.get_rate(task)))
        if len(datasets) == 1:
            return datasets[0]
        return tf.data.Dataset.sample_from_datasets(datasets, rates, seed=sample_seed,
                                                    stop_on_empty_dataset=True)  # fmt: skip


@tf.autograph.experimental.do_not_convert
def _select(ex: Mapping[str, tf.Tensor], keep: set[str]) -> dict[str, tf.Tensor]:
    return {k: v for k, v in ex.items() if k in keep}


@tf.autograph.experimental.do_not_convert
def _named(ex: Mapping[str, tf.Tensor], name: str) -> dict[str, tf.Tensor]:
    return {**ex, VARIANT_FEATURE: tf.constant(name)}


def _structure(source: seqio.DataSource) -> str | None:
    """Record structure of an in-memory source (cheap to read), else ``None``: only such
    sources are merged into shared groups; a file-backed source is its own group."""
    if not source.supports_arbitrary_sharding or not hasattr(source, "num_input_examples"):
        return None
    try:
        spec = source.get_dataset(split=next(iter(source.splits))).element_spec
    except Exception:  # any source that cannot say: keep it alone
        return None
    return repr(sorted((k, repr(v)) for k, v in spec.items())) if isinstance(spec, dict) else None


def register_fused_mixture(
    name: str, rates: Mapping[str, float] | Sequence[tuple[str, float]]
) -> FusedMixture:
    """Registers (or replaces) a :class:`FusedMixture` of tasks/mixtures with these rates
    (e.g. ``[('flan2021', 1.0)]``: the same tasks and proportions as ``flan2021``)."""
    items = list(rates.items()) if isinstance(rates, Mapping) else list(rates)
    if not items or sum(float(r) for _, r in items) <= 0:
        raise ValueError(f"Fused mixture {name!r}: no tasks or rates summing to zero.")
    seqio.MixtureRegistry.remove(name)
    mixture = seqio.MixtureRegistry.add(name, [(n, float(r)) for n, r in items],
                                        mixture_cls=FusedMixture)  # fmt: skip
    assert isinstance(mixture, FusedMixture)
    return mixture
