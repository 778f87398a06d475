"""Few-shot prompts: k exemplars from a fixed pool of train examples, before the query.

The pool is the first ``pool_size`` examples of the train split (deduplicated by content key),
loaded lazily when the task's dataset is built, never at registration. Per example, a seeded
hash picks a start position in the pool and the next ``k + 1`` pool entries are candidates; any
candidate with the example's own content key is removed, so an example never serves as its own
exemplar even when it is itself in the pool; the first ``k`` remain. Exemplars are rendered
with the example's template and options format, then trimmed from the end until exemplars plus
query fit ``max_chars`` (a character budget; about 4 characters per SentencePiece token for
English). ``x_shot`` variants use ``k = max_k`` and let the budget decide how many fit.

Layout: ``ex_1_inputs + answer_separator + ex_1_targets + exemplar_separator + ... + query``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import tensorflow as tf

from t5x_instruct.data.templates.options import OptionsFormat
from t5x_instruct.data.templates.selection import example_key
from t5x_instruct.data.templates.template import Template

Example = Mapping[str, Any]


@dataclasses.dataclass(frozen=True, eq=False)
class FewShot:
    """Few-shot settings of one task variant.

    Attributes:
      k: number of exemplars wanted (fewer when the budget is tight or the pool is small).
      pool: returns normalised train examples (``dict`` of str fields, ``options`` a list);
        called once, when the dataset is first built.
      pool_size: how many of them to use.
      max_chars: character budget for the final inputs (exemplars + query).
      exemplar_separator: between exemplars, and between the last exemplar and the query.
      answer_separator: between an exemplar's inputs and its targets.
    """

    k: int
    pool: Callable[[], Sequence[Example]]
    pool_size: int = 16
    max_chars: int = 2048
    exemplar_separator: str = "\n\n\n"
    answer_separator: str = "\n"

    def __post_init__(self) -> None:
        if self.k < 1 or self.pool_size < 1 or self.max_chars < 1:
            raise ValueError(f"FewShot needs k, pool_size, max_chars >= 1; got {self}.")


@dataclasses.dataclass(frozen=True)
class ExemplarTable:
    """Pre-rendered exemplars: ``texts[t * num_formats + f, p]`` and ``keys[p]``."""

    texts: tuple[tuple[str, ...], ...]
    keys: tuple[str, ...]


def build_table(
    few_shot: FewShot,
    templates: Sequence[Template],
    formats: Sequence[OptionsFormat],
    key_fields: Sequence[str],
    *,
    task: str,
) -> ExemplarTable:
    """Loads the pool and renders every (template, options format, pool example).

    Pool examples whose rendering exceeds half the budget are skipped (they could never share
    the prompt with a query); when none is left the variant degrades to zero-shot with a
    warning rather than failing, as for long-document tasks with a small budget.
    """
    renders: list[list[str]] = []
    keys: list[str] = []
    for ex in few_shot.pool():
        key = example_key(ex, key_fields)
        if key in keys:
            continue
        options = ex.get("options", ())
        column = []
        for t in templates:
            for f in formats:
                block = f.render(options) if f.id != "none" else ""
                inputs, targets = t.render(ex, options_text=block, task=task)
                column.append(inputs + few_shot.answer_separator + targets)
        if max(len(c) for c in column) > few_shot.max_chars // 2:
            continue
        keys.append(key)
        renders.append(column)
        if len(keys) == few_shot.pool_size:
            break
    if not keys:
        logging.warning("Task %r: no train example fits the few-shot budget; zero-shot.", task)
        return ExemplarTable((), ())
    texts = tuple(tuple(col[r] for col in renders) for r in range(len(renders[0])))
    return ExemplarTable(texts, tuple(keys))


def prepend_exemplars_tf(
    few_shot: FewShot,
    table: ExemplarTable,
    row: tf.Tensor,
    start: tf.Tensor,
    key: tf.Tensor,
    query: tf.Tensor,
) -> tf.Tensor:
    """``query`` with exemplars of table row ``row`` in front (see the module docstring)."""
    if not table.keys:
        return query
    pool_size = len(table.keys)
    candidates = (start + tf.range(few_shot.k + 1, dtype=tf.int64)) % pool_size
    candidates = candidates[: min(few_shot.k + 1, pool_size)]
    not_self = tf.gather(tf.constant(table.keys), candidates) != key
    chosen = tf.boolean_mask(candidates, not_self)[: few_shot.k]
    texts = tf.gather(tf.gather(tf.constant(table.texts), row), chosen)
    sep = few_shot.exemplar_separator
    lengths = tf.strings.length(texts, unit="UTF8_CHAR") + len(sep)
    room = few_shot.max_chars - tf.strings.length(query, unit="UTF8_CHAR")
    texts = tf.boolean_mask(texts, tf.cumsum(lengths) <= room)
    return tf.strings.join([tf.strings.reduce_join(tf.strings.join([texts, sep])), query])


def prepend_exemplars_py(
    few_shot: FewShot, table: ExemplarTable, row: int, start: int, key: str, query: str
) -> str:
    """Python reference of :func:`prepend_exemplars_tf`."""
    if not table.keys:
        return query
    pool_size = len(table.keys)
    candidates = [(start + j) % pool_size for j in range(min(few_shot.k + 1, pool_size))]
    chosen = [c for c in candidates if table.keys[c] != key][: few_shot.k]
    room = few_shot.max_chars - len(query)
    out, used = [], 0
    for c in chosen:
        text = table.texts[row][c] + few_shot.exemplar_separator
        used += len(text)
        if used > room:
            break
        out.append(text)
    return "".join(out) + query
