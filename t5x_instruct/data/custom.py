"""Your own instruction data: one call (or one gin binding) registers a SeqIO task from files.

Formats (JSON Lines ``.jsonl``/``.json`` or ``.csv``; one record per line/row):

* ``'instruction'``: ``{"instruction", "input", "output"}`` records (Alpaca-style; the field
  names are configurable and ``input`` may be empty or absent). Inputs are the instruction
  and the input joined by a blank line, or rendered by your ``template``.
* ``'messages'``: ``{"messages": [{"role": "system"|"user"|"assistant", "content": ...}]}``.
  Every assistant turn becomes one example whose inputs are the conversation so far and whose
  targets are that turn, so the loss falls on assistant turns only.
* ``'inputs_targets'``: ``{"inputs", "targets"}`` records.

Files are read and validated at registration (so a broken file fails at once, naming the file
and line), kept in memory, and rendered by :func:`~t5x_instruct.data.templates.apply_templates`
like any other task. Use for files up to a few GB; beyond that, convert to TFDS/ArrayRecord.

Gin (e.g. in a run config)::

    import t5x_instruct.data.custom
    register_jsonl_tasks.tasks = [{"name": "my_sft", "paths": ["/data/sft.jsonl"],
                                   "format": "messages"}]
    import_task_modules.modules = ["tasks.custom"]   # calls register_jsonl_tasks()
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import gin
import seqio
import tensorflow as tf

from t5x_instruct.data.metrics import exact_match, strip_whitespace
from t5x_instruct.data.registry import track_gin_bindings
from t5x_instruct.data.templates import RenderConfig, Template, apply_templates
from t5x_instruct.data.vocabularies import get_vocabulary
from t5x_instruct.errors import DataUnavailableError, UserInputError, not_utf8
from t5x_instruct.runtime import paths as file_paths

FORMATS = ("instruction", "messages", "inputs_targets")
ROLES = ("system", "user", "assistant")
ROLE_LABELS = {"system": "System", "user": "User", "assistant": "Assistant"}
DEFAULT_FIELDS = {
    "instruction": {"instruction": "instruction", "input": "input", "output": "output"},
    "messages": {"messages": "messages", "role": "role", "content": "content"},
    "inputs_targets": {"inputs": "inputs", "targets": "targets"},
}
OPTIONAL_FIELDS = {"input"}
# The default rendering of instruction records (our own wording-free layout).
INSTRUCTION_TEMPLATE = Template("instruction", "{instruction}{input_block}", "{output}")


class DataFileError(UserInputError):
    """A bad record; the message names the file and line (1-based)."""


@dataclasses.dataclass(frozen=True)
class LoadStats:
    """What registration read: examples kept and rows skipped (``skip_bad_rows=True``)."""

    rows: int
    examples: int
    skipped: int
    skipped_reasons: tuple[str, ...] = ()


_stats: dict[str, LoadStats] = {}


def load_stats(task_name: str) -> LoadStats:
    """Rows/examples/skipped counts of a task registered by :func:`register_jsonl_task`."""
    if task_name not in _stats:
        raise KeyError(f"{task_name!r} was not registered by register_jsonl_task.")
    return _stats[task_name]


def _decoded_lines(lines: Iterator[bytes], path: str) -> Iterator[str]:
    """UTF-8 lines of a CSV file; a line that is not UTF-8 ends the read, naming file:line."""
    for lineno, raw in enumerate(lines, 1):
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataFileError(str(not_utf8(f"{path}:{lineno}", raw, e))) from e


def _rows(path: str) -> Iterator[tuple[int, Any]]:
    """(line number, parsed record) of a JSONL or CSV file; a parse error names file:line.

    Files are read as bytes and decoded per line, so that a line that is not UTF-8 is
    reported with its line number (a bad JSONL row, skippable with ``skip_bad_rows``).
    """
    source = file_paths.resolve(path, what="data file")
    if path.endswith(".csv"):
        with source.open("rb") as f:
            reader = csv.DictReader(_decoded_lines(iter(f), path))
            for row in reader:
                yield reader.line_num, row
        return
    with source.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield lineno, DataFileError(str(not_utf8(f"{path}:{lineno}", raw, e)))
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as e:
                yield lineno, DataFileError(f"{path}:{lineno}: invalid JSON ({e.msg}).")


def _text(record: Mapping[str, Any], key: str, *, optional: bool = False) -> str:
    if key not in record or record[key] is None:
        if optional:
            return ""
        raise KeyError(key)
    value = record[key]
    if not isinstance(value, (str, int, float)):
        raise TypeError(f"field {key!r} must be text, got {type(value).__name__}")
    return str(value)


def _examples(record: Any, fmt: str, fields: Mapping[str, str]) -> list[dict[str, str]]:
    """The examples of one record (several for multi-turn chats); raises on bad records."""
    if not isinstance(record, Mapping):
        raise TypeError(f"expected a JSON object, got {type(record).__name__}")
    if fmt == "inputs_targets":
        return [{"inputs": _text(record, fields["inputs"]),
                 "targets": _text(record, fields["targets"])}]  # fmt: skip
    if fmt == "instruction":
        ex = {name: _text(record, key, optional=name in OPTIONAL_FIELDS)
              for name, key in fields.items()}  # fmt: skip
        ex["input_block"] = f"\n\n{ex['input']}" if ex.get("input") else ""
        return [ex]
    messages = record.get(fields["messages"])
    if not isinstance(messages, list) or not messages:
        raise KeyError(fields["messages"])
    history: list[str] = []
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise TypeError(f"message {i} is not an object")
        role, content = _text(message, fields["role"]), _text(message, fields["content"])
        if role not in ROLES:
            raise ValueError(f"message {i} has unknown role {role!r}; expected one of {ROLES}")
        if role == "assistant" and history:
            out.append({"inputs": "\n".join(history) + "\nAssistant:", "targets": content})
        history.append(f"{ROLE_LABELS[role]}: {content}")
    if not out:
        raise ValueError("conversation has no assistant turn after a user turn")
    return out


def read_examples(
    paths: Sequence[str],
    fmt: str,
    fields: Mapping[str, str] | None = None,
    *,
    skip_bad_rows: bool = False,
    task: str = "?",
) -> tuple[list[dict[str, str]], LoadStats]:
    """Parses and validates ``paths``; returns examples and counts (see :func:`load_stats`)."""
    if fmt not in FORMATS:
        raise ValueError(f"Task {task!r}: unknown format {fmt!r}; expected one of {FORMATS}.")
    fields = {**DEFAULT_FIELDS[fmt], **(fields or {})}
    unknown = sorted(set(fields) - set(DEFAULT_FIELDS[fmt]))
    if unknown:
        raise ValueError(
            f"Task {task!r}: unknown field(s) {unknown} for format {fmt!r}; configurable "
            f"fields are {sorted(DEFAULT_FIELDS[fmt])}."
        )
    if not paths:
        raise ValueError(f"Task {task!r}: no data files given (paths=[]).")
    examples: list[dict[str, str]] = []
    rows = skipped = 0
    reasons: list[str] = []
    for path in paths:
        if not file_paths.exists(file_paths.resolve(path, what=f"task {task!r} data file")):
            raise DataUnavailableError(
                f"Task {task!r}: data file not found: {path} (paths are relative to the "
                "working directory; register_jsonl_tasks.tasks names them)."
            )
        for lineno, record in _rows(path):
            rows += 1
            try:
                if isinstance(record, DataFileError):
                    raise record
                examples.extend(_examples(record, fmt, fields))
            except (KeyError, TypeError, ValueError) as e:
                detail = f"missing field {e.args[0]!r}" if isinstance(e, KeyError) else str(e)
                message = (
                    f"{path}:{lineno}: {detail}" if not isinstance(e, DataFileError) else str(e)
                )
                if not skip_bad_rows:
                    raise DataFileError(f"Task {task!r}: {message}") from e
                skipped += 1
                reasons.append(message)
    if skipped:
        logging.warning("Task %r: skipped %d bad row(s) of %d; first: %s", task, skipped,
                        rows, reasons[0])  # fmt: skip
    if not examples:
        raise ValueError(
            f"Task {task!r}: no examples in {list(paths)} ({rows} rows, {skipped} skipped)."
        )
    return examples, LoadStats(rows, len(examples), skipped, tuple(reasons[:20]))


class InMemorySource(seqio.DataSource):
    """Examples held in memory, one split per key, sharded by position.

    It does not shuffle: the Task's shuffle buffer does, after SeqIO's in-memory cache of small
    sources (a source that shuffled would have its first order frozen by that cache).
    """

    def __init__(self, splits: Mapping[str, Sequence[Mapping[str, str]]]) -> None:
        super().__init__(splits=tuple(splits))
        self._data = {k: list(v) for k, v in splits.items()}

    @property
    def supports_arbitrary_sharding(self) -> bool:
        return True

    def list_shards(self, split: str) -> list[str]:
        return [split]

    def num_input_examples(self, split: str) -> int:
        return len(self._data[split])

    def get_dataset(self, split: str = "train", shuffle: bool = True, seed: int | None = None,
                    shard_info: seqio.ShardInfo | None = None, *,
                    sequence_length: Mapping[str, int] | None = None, use_cached: bool = False,
                    num_epochs: int | None = 1) -> tf.data.Dataset:  # fmt: skip
        del shuffle, seed, sequence_length, use_cached, num_epochs
        rows = self._data[split]
        keys = sorted(rows[0])
        ds = tf.data.Dataset.from_tensor_slices({k: [r[k] for r in rows] for k in keys})
        if shard_info is not None and shard_info.num_shards > 1:
            ds = ds.shard(shard_info.num_shards, shard_info.index)
        return ds


def _task_output_features(vocabulary: seqio.Vocabulary) -> dict[str, seqio.Feature]:
    return {
        "inputs": seqio.Feature(vocabulary, add_eos=True, required=True),
        "targets": seqio.Feature(vocabulary, add_eos=True),
    }


def add_rendered_task(
    name: str,
    source: seqio.DataSource,
    config: RenderConfig,
    *,
    vocabulary: seqio.Vocabulary,
    normalize: Any = None,
    metric_fns: Sequence[Any] = (exact_match,),
    shuffle_buffer_size: int | None = 1000,  # SeqIO's default
) -> seqio.Task:
    """Registers (or replaces) a task: ``normalize`` -> templates -> tokenize -> EOS."""
    seqio.TaskRegistry.remove(name)
    render = functools.partial(apply_templates, config=config, normalize=normalize)
    return seqio.TaskRegistry.add(
        name,
        source=source,
        output_features=_task_output_features(vocabulary),
        preprocessors=[
            render,
            seqio.preprocessors.tokenize,
            seqio.CacheDatasetPlaceholder(),
            seqio.preprocessors.append_eos_after_trim,
        ],
        postprocess_fn=strip_whitespace,
        metric_fns=list(metric_fns),
        shuffle_buffer_size=shuffle_buffer_size,
    )


@gin.configurable
def register_jsonl_task(
    name: str,
    paths: Sequence[str] | Mapping[str, Sequence[str]] = (),
    format: str = "instruction",
    template: Template | Sequence[Template] | None = None,
    skip_bad_rows: bool = False,
    fields: Mapping[str, str] | None = None,
    seed: int = 0,
    vocabulary: seqio.Vocabulary | None = None,
) -> seqio.Task:
    """Registers SeqIO task ``name`` from JSONL/CSV files (see the module docstring).

    Args:
      name: task name.
      paths: files of the train split, or ``{split: files}``.
      format: ``'instruction'``, ``'messages'`` or ``'inputs_targets'``.
      template: template(s) over the record's fields (chosen per example by a seeded hash);
        default: inputs as they are (``instruction``: instruction + blank line + input).
      skip_bad_rows: skip and count bad rows (see :func:`load_stats`) instead of raising.
      fields: renames, e.g. ``{'output': 'response'}`` for records with a ``response`` key.
      seed: template seed.
      vocabulary: default ``get_vocabulary()`` as configured by gin.
    """
    split_paths = dict(paths) if isinstance(paths, Mapping) else {"train": list(paths)}
    if isinstance(paths, str):
        split_paths = {"train": [paths]}
    data, rows, skipped, reasons = {}, 0, 0, []
    for split, files in split_paths.items():
        data[split], stats = read_examples(files, format, fields, skip_bad_rows=skip_bad_rows,
                                           task=name)  # fmt: skip
        rows, skipped = rows + stats.rows, skipped + stats.skipped
        reasons += stats.skipped_reasons
    _stats[name] = LoadStats(rows, sum(map(len, data.values())), skipped, tuple(reasons[:20]))
    if template is None:
        templates: tuple[Template, ...] = (
            (INSTRUCTION_TEMPLATE,) if format == "instruction"
            else (Template("plain", "{inputs}", "{targets}"),)
        )  # fmt: skip
    else:
        templates = (template,) if isinstance(template, Template) else tuple(template)
    available = sorted(next(iter(data.values()))[0])
    config = RenderConfig(task=name, templates=templates, seed=seed, fields=tuple(available),
                          key_fields=tuple(available))  # fmt: skip
    # A buffer of one epoch at most: SeqIO fills it before the first example (after repeat).
    buffer = min(len(data.get("train", next(iter(data.values())))), 1000)
    return add_rendered_task(name, InMemorySource(data), config, shuffle_buffer_size=buffer,
                             vocabulary=vocabulary or get_vocabulary())  # fmt: skip


@gin.configurable
def register_jsonl_tasks(tasks: Sequence[Mapping[str, Any]] = ()) -> list[str]:
    """Registers several tasks, each a dict of :func:`register_jsonl_task` arguments.

    ``tasks.custom`` calls it at import; task lookups call it again when its gin binding
    changes, so the binding counts wherever it comes (before or after the import, or with
    the module in ``import_task_modules.modules``).
    """
    names = [register_jsonl_task(**dict(spec)).name for spec in tasks]
    track_gin_bindings(register_jsonl_tasks)
    return names


def register_mixture(
    name: str, rates: Mapping[str, float] | Sequence[tuple[str, float]]
) -> seqio.Mixture:
    """Registers (or replaces) a mixture of tasks/mixtures with explicit rates.

    Fails at registration when a rate is negative or they sum to zero (a mixture that could
    never yield an example), or when the list is empty.
    """
    items = list(rates.items()) if isinstance(rates, Mapping) else list(rates)
    if not items:
        raise ValueError(f"Mixture {name!r}: no tasks given.")
    bad = [(n, r) for n, r in items if not r >= 0]
    if bad:
        raise ValueError(f"Mixture {name!r}: negative or invalid rates {bad}.")
    if sum(float(r) for _, r in items) <= 0:
        raise ValueError(
            f"Mixture {name!r}: the rates of its {len(items)} task(s) sum to zero, so it could "
            f"never produce an example (rates: {items[:5]}{' ...' if len(items) > 5 else ''})."
        )
    seqio.MixtureRegistry.remove(name)
    return seqio.MixtureRegistry.add(name, [(n, float(r)) for n, r in items])
