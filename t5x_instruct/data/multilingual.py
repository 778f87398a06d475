"""Multilingual prompted data (xP3-style): per-language JSONL files mixed with a temperature.

Each language has JSON-lines files of ``{"inputs": ..., "targets": ...}`` (other keys are
ignored). Paths may be local, any ``tf.io.gfile`` scheme (``gs://...``) or a Hugging Face hub
location ``hf://datasets/{repo}/{path}`` (read through ``huggingface_hub``); glob patterns are
expanded when a split is first read, never at registration.

Languages are mixed with ``rate_l ∝ n_l ** (1 / T)``: ``T = 1`` samples in proportion to each
language's size, larger ``T`` flattens towards uniform (up-sampling small languages), as in
multilingual T5/mT0 training.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, BinaryIO

import seqio
import tensorflow as tf

from t5x_instruct.data.metrics import exact_match, strip_whitespace
from t5x_instruct.data.registry import set_task_group
from t5x_instruct.errors import DataUnavailableError, not_utf8

HF_PREFIX = "hf://"


def temperature_rates(sizes: Mapping[str, int], temperature: float) -> dict[str, float]:
    """Normalised mixing rates ``n_l ** (1/T) / sum_k n_k ** (1/T)`` (empty languages get 0).

    Raises ``ValueError`` for ``temperature <= 0``, a negative size, or no examples at all.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}.")
    if bad := {k: n for k, n in sizes.items() if n < 0}:
        raise ValueError(f"Negative example counts: {bad}.")
    weights = {k: float(n) ** (1.0 / temperature) if n > 0 else 0.0 for k, n in sizes.items()}
    total = sum(weights.values())
    if total <= 0:
        raise ValueError(f"No examples to mix: sizes={dict(sizes)}.")
    return {k: w / total for k, w in weights.items()}


def _hf_fs() -> Any:
    try:
        from huggingface_hub import HfFileSystem  # optional dependency
    except ImportError as e:
        raise ImportError(f"{HF_PREFIX} paths need huggingface_hub (pip install datasets).") from e
    return HfFileSystem()


def glob_files(pattern: str) -> list[str]:
    """Files matching ``pattern`` (sorted); a pattern without wildcards names one file."""
    if pattern.startswith(HF_PREFIX):
        rest = pattern[len(HF_PREFIX) :]
        return sorted(HF_PREFIX + p for p in _hf_fs().glob(rest))
    return sorted(tf.io.gfile.glob(pattern))


def _open(path: str) -> BinaryIO:
    """The file as bytes: lines are decoded one by one, so a decoding error names its line."""
    if path.startswith(HF_PREFIX):
        return _hf_fs().open(path[len(HF_PREFIX) :], "rb")
    return tf.io.gfile.GFile(path, "rb")


def read_jsonl(path: str) -> Iterator[dict[str, str]]:
    """``{"inputs", "targets"}`` rows of one JSONL file; blank lines are skipped.

    Raises ``ValueError`` naming ``path:line`` for invalid JSON, a non-object row, or a row
    whose ``inputs``/``targets`` is missing or not a string, and
    :class:`~t5x_instruct.errors.NotUtf8Error` (one too) for a line that is not UTF-8.
    """
    with _open(path) as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise not_utf8(f"{path}:{lineno}", raw, e) from e
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: invalid JSON ({e.msg}).") from e
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {row!r:.80}.")
            bad = [k for k in ("inputs", "targets") if not isinstance(row.get(k), str)]
            if bad:
                raise ValueError(f"{path}:{lineno}: field(s) {bad} missing or not a string.")
            yield {"inputs": row["inputs"], "targets": row["targets"]}


@functools.cache
def _count_rows(path: str) -> int:
    with _open(path) as f:
        return sum(1 for line in f if line.strip())


class JsonlSource(seqio.DataSource):
    """Rows of the JSONL files matching each split's glob patterns, in sorted file order.

    Files are listed when a split is first read (registration touches no data); a split whose
    patterns match nothing, or whose files cannot be listed (offline, no access), raises
    :class:`~t5x_instruct.errors.DataUnavailableError` naming the patterns and ``hint`` (how
    to point the task at a local copy).
    """

    def __init__(self, split_patterns: Mapping[str, Sequence[str]], *, hint: str = "") -> None:
        super().__init__(splits=tuple(split_patterns))
        self._patterns = {s: tuple(p) for s, p in split_patterns.items()}
        self._files: dict[str, list[str]] = {}  # listed once per split (every epoch reads)
        self.hint = hint

    @property
    def supports_arbitrary_sharding(self) -> bool:
        return True

    def files(self, split: str) -> list[str]:
        if split not in self._patterns:
            raise ValueError(f"No split {split!r}; splits: {sorted(self._patterns)}.")
        if split not in self._files:
            patterns = list(self._patterns[split])
            hint = f" {self.hint}" if self.hint else ""
            found: set[str] = set()
            for pattern in patterns:
                try:
                    found.update(glob_files(pattern))
                except Exception as e:  # network, permissions, missing package: all unreachable
                    reason = str(e).splitlines()[0] if str(e) else ""
                    raise DataUnavailableError(
                        f"Cannot list the {split!r} files {pattern} ({type(e).__name__}: "
                        f"{reason}).{hint}"
                    ) from e
            if not found:
                raise DataUnavailableError(f"No files match {patterns} ({split}).{hint}")
            self._files[split] = sorted(found)
        return self._files[split]

    def list_shards(self, split: str) -> list[str]:
        return self.files(split)

    def num_rows(self, split: str) -> int:
        """Non-blank lines over the split's files (reads them once; cached per file)."""
        return sum(_count_rows(f) for f in self.files(split))

    def rows(self, split: str, shard_index: int = 0, num_shards: int = 1) -> Iterator[dict]:
        i = 0
        for path in self.files(split):
            for row in read_jsonl(path):
                if i % num_shards == shard_index:
                    yield row
                i += 1

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
        del shuffle, seed, sequence_length, use_cached, num_epochs  # the Task does these
        self.files(split)  # listed here, not in tf.data, so an unreachable source is one error
        shard = (shard_info.index, shard_info.num_shards) if shard_info else (0, 1)
        return tf.data.Dataset.from_generator(
            lambda: self.rows(split, *shard),
            output_signature={
                "inputs": tf.TensorSpec([], tf.string),
                "targets": tf.TensorSpec([], tf.string),
            },
        )


def add_jsonl_task(
    name: str,
    split_patterns: Mapping[str, Sequence[str]],
    vocabulary: seqio.Vocabulary,
    *,
    group: str = "train_tasks",
    hint: str = "",
) -> seqio.Task:
    """(Re-)registers a text-to-text task over JSONL files (exact-match evaluation); ``hint``
    says how to point it at local files when its files cannot be listed."""
    seqio.TaskRegistry.remove(name)
    task = seqio.TaskRegistry.add(
        name,
        source=JsonlSource(split_patterns, hint=hint),
        output_features={
            "inputs": seqio.Feature(vocabulary, add_eos=True, required=True),
            "targets": seqio.Feature(vocabulary, add_eos=True),
        },
        preprocessors=[
            seqio.preprocessors.tokenize,
            seqio.CacheDatasetPlaceholder(),
            seqio.preprocessors.append_eos_after_trim,
        ],
        postprocess_fn=strip_whitespace,
        metric_fns=[exact_match],
    )
    set_task_group(name, group)
    return task


class TemperatureRate:
    """A mixture rate fn: a language task's share under :func:`temperature_rates`.

    ``sizes`` (language -> examples) avoids reading the data; without it every language's
    split is counted on the first rate lookup (when the mixture's dataset is built), and
    :attr:`reads_data` tells listings not to call it.
    """

    def __init__(
        self,
        task_languages: Mapping[str, str],
        temperature: float,
        *,
        split: str = "train",
        sizes: Mapping[str, int] | None = None,
    ) -> None:
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}.")
        self.task_languages = dict(task_languages)  # task name -> language
        self.temperature = temperature
        self.split = split
        self._sizes = dict(sizes) if sizes is not None else None
        self._rates: dict[str, float] | None = None

    @property
    def reads_data(self) -> bool:
        """Whether a rate lookup would count rows of the data files (sizes not known yet)."""
        return self._sizes is None

    def sizes(self) -> dict[str, int]:
        if self._sizes is None:
            sizes = {}  # kept only when complete: a failed count is retried, not half-used
            for task_name, lang in self.task_languages.items():
                source = seqio.get_mixture_or_task(task_name).source
                if not isinstance(source, JsonlSource):
                    raise TypeError(f"Task {task_name!r} does not read JSONL files.")
                sizes[lang] = source.num_rows(self.split)
            self._sizes = sizes
        return self._sizes

    def rates(self) -> dict[str, float]:
        if self._rates is None:
            sizes = self.sizes()
            missing = sorted(set(self.task_languages.values()) - set(sizes))
            if missing:
                raise ValueError(f"No example counts for languages {missing}.")
            self._rates = temperature_rates(
                {lang: sizes[lang] for lang in self.task_languages.values()}, self.temperature
            )
        return self._rates

    def __call__(self, task: seqio.Task) -> float:
        return self.rates()[self.task_languages[task.name]]


def add_language_mixture(
    name: str,
    task_languages: Mapping[str, str],
    temperature: float,
    *,
    sizes: Mapping[str, int] | None = None,
) -> TemperatureRate:
    """(Re-)registers a mixture of per-language tasks rated by :class:`TemperatureRate`."""
    rate = TemperatureRate(task_languages, temperature, sizes=sizes)
    seqio.MixtureRegistry.remove(name)
    seqio.MixtureRegistry.add(name, list(task_languages), default_rate=rate)
    return rate
