"""Rendering templates and options blocks as TensorFlow string ops (the fast path).

Every function here mirrors a Python reference (:meth:`Template.render`,
:meth:`OptionsFormat.render`); ``tests/test_templates.py`` checks that both agree byte for byte.
Pure TF keeps rendering inside the tf.data runtime (parallel, no GIL), which measured several
times faster than ``tf.py_function`` (see the ``--render_mode`` option of
``tools/bench_mixture.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import tensorflow as tf

from t5x_instruct.data.templates.options import OptionsFormat
from t5x_instruct.data.templates.template import OPTIONS_FIELD, Piece, Template, TemplateError

MAX_OPTIONS = 100  # options beyond this are not shown (no real task comes close)


def fill_tf(
    pieces: Sequence[Piece],
    example: Mapping[str, tf.Tensor],
    options_block: tf.Tensor,
    *,
    task: str,
    template: Template,
) -> tf.Tensor:
    parts: list[tf.Tensor | str] = []
    for p in pieces:
        if p.field is None:
            parts.append(p.text)
        elif p.field == OPTIONS_FIELD:
            parts.append(options_block)
        elif p.field not in example:
            raise TemplateError(
                f"Task {task!r}, template {template.id!r}: example has no field {p.field!r} "
                f"(fields: {sorted(example)})."
            )
        else:
            value = example[p.field]
            if value.dtype != tf.string:
                value = tf.strings.as_string(value)
            parts.append(value)
    if not parts:
        return tf.constant("")
    if len(parts) == 1:
        return tf.convert_to_tensor(parts[0])
    return tf.strings.join(parts)


def render_template_tf(
    template: Template, example: Mapping[str, tf.Tensor], options_block: tf.Tensor, *, task: str
) -> tuple[tf.Tensor, tf.Tensor]:
    return (
        fill_tf(template.input_pieces, example, options_block, task=task, template=template),
        fill_tf(template.target_pieces, example, options_block, task=task, template=template),
    )


def options_block_tf(
    formats: Sequence[OptionsFormat], index: tf.Tensor, options: tf.Tensor
) -> tf.Tensor:
    """The options block of format ``formats[index]`` for a 1-D string tensor ``options``.

    Branch-free: the per-format pieces are gathered from small constant tables, and every
    item carries its own separator (none after the last), so one ``reduce_join`` suffices.
    """
    options = options[:MAX_OPTIONS]
    n = tf.size(options)

    def table(values: list[str]) -> tf.Tensor:
        return tf.gather(tf.constant(values), index)

    prefixes = tf.gather(tf.constant([f.item_prefixes(MAX_OPTIONS) for f in formats]), index)[:n]
    separators = tf.where(tf.range(n) < n - 1, table([f.separator for f in formats]), "")
    items = tf.strings.join([prefixes, options, table([f.suffix for f in formats]), separators])
    return tf.strings.join(
        [
            table([f.leading for f in formats]),
            table([f.header for f in formats]),
            tf.strings.reduce_join(items),
            table([f.trailer for f in formats]),
        ]
    )
