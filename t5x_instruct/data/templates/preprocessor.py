"""The SeqIO preprocessor that renders templates: :func:`apply_templates`.

Use it in any Task after a step that maps raw records to flat *fields* (scalar strings, plus
an optional 1-D string tensor ``options``)::

    config = RenderConfig(task="my_task", templates=make_templates([...]), seed=0)
    seqio.Task(..., preprocessors=[normalise, functools.partial(apply_templates, config=config),
                                   seqio.preprocessors.tokenize, ...])

Output: ``inputs``, ``targets`` and ``template_id`` (a string, for inspection). One example
in, one example out: nothing is dropped. Choices (template, options format, exemplars) are a
seeded hash of the example's content (see :mod:`.selection`), so the rendered data is the
same on every run and host, for any shuffling or sharding.

``mode='tf'`` renders with TF string ops; ``mode='py'`` calls the Python reference renderer
through ``tf.py_function`` (kept for comparison and for debugging; it is slower and holds the
GIL).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Mapping

import tensorflow as tf

from t5x_instruct.data.templates.fewshot import (
    ExemplarTable,
    FewShot,
    build_table,
    prepend_exemplars_py,
    prepend_exemplars_tf,
)
from t5x_instruct.data.templates.options import NO_OPTIONS, OPTIONS_FORMATS, OptionsFormat
from t5x_instruct.data.templates.render import options_block_tf, render_template_tf
from t5x_instruct.data.templates.selection import (
    bucket,
    bucket_tf,
    example_key,
    example_key_tf,
    hash_prefix,
)
from t5x_instruct.data.templates.template import (
    OPTIONS_FIELD,
    Template,
    TemplateError,
    check_unique_ids,
)

RENDER_MODES = ("tf", "py")


@dataclasses.dataclass(frozen=True, eq=False)
class RenderConfig:
    """How one task variant renders its examples.

    Attributes:
      task: the task name (in error messages).
      templates: candidates; one is chosen per example.
      seed: template seed; another seed gives another (equally deterministic) assignment.
      hash_name: name hashed with the seed; defaults to ``task``. Variants of one data set
        (zero-shot, no-options, few-shot) share it so an example keeps its template.
      show_options: render ``{options}`` (else it renders as nothing: the "no_opt" variants).
      options_formats: candidates for the options block; one is chosen per example.
      key_fields: fields that identify an example (its content key); defaults to every field
        the templates read, ``options`` included.
      fields: the fields examples have, if known; templates are checked against them now.
      few_shot: exemplar settings, or ``None`` for zero-shot.
      mode: ``'tf'`` or ``'py'`` (see the module docstring).
    """

    task: str
    templates: tuple[Template, ...]
    seed: int = 0
    hash_name: str | None = None
    show_options: bool = True
    options_formats: tuple[OptionsFormat, ...] = OPTIONS_FORMATS
    key_fields: tuple[str, ...] | None = None
    fields: tuple[str, ...] | None = None
    few_shot: FewShot | None = None
    mode: str = "tf"

    def __post_init__(self) -> None:
        check_unique_ids(self.templates, task=self.task)
        if self.mode not in RENDER_MODES:
            raise ValueError(
                f"Task {self.task!r}: render mode {self.mode!r} not in {RENDER_MODES}."
            )
        if not self.options_formats:
            raise ValueError(f"Task {self.task!r}: options_formats is empty.")
        if self.fields is not None:
            for t in self.templates:
                t.check_fields(self.fields, task=self.task)
        object.__setattr__(self, "_table_lock", threading.Lock())
        object.__setattr__(self, "_table", None)

    @property
    def formats(self) -> tuple[OptionsFormat, ...]:
        return self.options_formats if self.show_options else (NO_OPTIONS,)

    @property
    def keys(self) -> tuple[str, ...]:
        if self.key_fields is not None:
            return self.key_fields
        return tuple(sorted(set().union(*(t.fields for t in self.templates))))

    def prefix(self, salt: str) -> str:
        return hash_prefix(self.seed, self.hash_name or self.task, salt)

    def exemplar_table(self) -> ExemplarTable | None:
        """The few-shot table, built on first use (it reads the train split)."""
        if self.few_shot is None:
            return None
        with self._table_lock:  # type: ignore[attr-defined]
            if self._table is None:  # type: ignore[attr-defined]
                table = build_table(
                    self.few_shot, self.templates, self.formats, self.keys, task=self.task
                )
                object.__setattr__(self, "_table", table)
        return self._table  # type: ignore[attr-defined]


def apply_templates(
    dataset: tf.data.Dataset,
    config: RenderConfig,
    normalize: Callable[[Mapping[str, tf.Tensor]], Mapping[str, tf.Tensor]] | None = None,
) -> tf.data.Dataset:
    """SeqIO preprocessor: fields -> ``inputs``/``targets``/``template_id`` (see module doc).

    ``normalize`` (raw record -> fields, TF ops) runs in the same ``map`` as the rendering:
    one map per task instead of two matters when a mixture has thousands of tasks.
    """
    table = config.exemplar_table()
    render = _render_tf if config.mode == "tf" else _render_py_function
    norm = normalize or (lambda ex: ex)
    # No autograph: the functions are plain TF ops, and converting them per task costs
    # more than the rest of the tracing in mixtures with thousands of tasks.
    fn = tf.autograph.experimental.do_not_convert(lambda ex: render(config, table, norm(ex)))
    return dataset.map(
        fn,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )


def _choices_tf(config: RenderConfig, ex: Mapping[str, tf.Tensor]):
    for t in config.templates:  # at trace time: a clear error instead of a KeyError
        t.check_fields(ex, task=config.task)
    missing = sorted(set(config.keys) - set(ex))
    if missing:
        raise TemplateError(f"Task {config.task!r}: key_fields {missing} not in the examples.")
    key = example_key_tf(ex, config.keys)
    t_idx = bucket_tf(config.prefix("template"), key, len(config.templates))
    f_idx = bucket_tf(config.prefix("options"), key, len(config.formats))
    return key, t_idx, f_idx


def _with_exemplars(config, table, key, t_idx, f_idx, inputs):
    if table is None or not table.keys:
        return inputs
    start = bucket_tf(config.prefix("exemplars"), key, len(table.keys))
    row = t_idx * len(config.formats) + f_idx
    return prepend_exemplars_tf(config.few_shot, table, row, start, key, inputs)


def _render_tf(config: RenderConfig, table, ex: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    key, t_idx, f_idx = _choices_tf(config, ex)
    uses_options = any(t.uses_options for t in config.templates)
    if uses_options and OPTIONS_FIELD not in ex:
        raise TemplateError(
            f"Task {config.task!r}: templates show {{options}} but examples "
            "have no 'options' field."
        )
    block = (
        options_block_tf(config.formats, f_idx, ex[OPTIONS_FIELD])
        if uses_options and config.show_options else tf.constant("")
    )  # fmt: skip
    branches = [
        (lambda t=t: render_template_tf(t, ex, block, task=config.task)) for t in config.templates
    ]
    inputs, targets = tf.switch_case(tf.cast(t_idx, tf.int32), branches)
    inputs = _with_exemplars(config, table, key, t_idx, f_idx, inputs)
    ids = tf.constant([t.id for t in config.templates])
    return {"inputs": inputs, "targets": targets, "template_id": tf.gather(ids, t_idx)}


def render_example(config: RenderConfig, example: Mapping[str, object]) -> dict[str, str]:
    """Renders one Python example exactly as the preprocessor would (reference and tools)."""
    key = example_key(example, config.keys)
    t_idx = bucket(config.prefix("template"), key, len(config.templates))
    f_idx = bucket(config.prefix("options"), key, len(config.formats))
    return _render_py(config, config.exemplar_table(), example, key, t_idx, f_idx)


def _render_py(config, table, example, key: str, t_idx: int, f_idx: int) -> dict[str, str]:
    template = config.templates[t_idx]
    options = example.get(OPTIONS_FIELD, ())
    shown = template.uses_options and config.show_options
    block = config.formats[f_idx].render(options) if shown else ""
    inputs, targets = template.render(example, options_text=block, task=config.task)
    if table is not None and table.keys:
        start = bucket(config.prefix("exemplars"), key, len(table.keys))
        row = t_idx * len(config.formats) + f_idx
        inputs = prepend_exemplars_py(config.few_shot, table, row, start, key, inputs)
    return {"inputs": inputs, "targets": targets, "template_id": template.id}


def _render_py_function(config, table, ex: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    key, t_idx, f_idx = _choices_tf(config, ex)
    names = sorted(ex)

    def call(key_t, t_t, f_t, *values):
        example = {}
        for name, v in zip(names, values):
            value = v.numpy()
            example[name] = [_decode(s) for s in value] if v.shape.rank else _decode(value)
        out = _render_py(config, table, example, key_t.numpy().decode(), int(t_t), int(f_t))
        return out["inputs"], out["targets"], out["template_id"]

    outputs = tf.py_function(call, [key, t_idx, f_idx, *(ex[n] for n in names)], [tf.string] * 3)
    for t in outputs:
        t.set_shape([])
    return dict(zip(("inputs", "targets", "template_id"), outputs))


def _decode(value: object) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
