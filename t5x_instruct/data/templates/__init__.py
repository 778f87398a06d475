"""Instruction templates: render examples into (inputs, targets), per example, deterministically.

* :class:`Template` (``template.py``): format strings with ``{field}`` placeholders; kinds
  ``standard``, ``cot`` (rationale then answer) and ``inversion`` (produce the input from the
  output).
* :class:`OptionsFormat` (``options.py``): how answer options are shown (or hidden).
* :class:`FewShot` (``fewshot.py``): k exemplars from the train split, never the example
  itself, within a character budget.
* :class:`RenderConfig` + :func:`apply_templates` (``preprocessor.py``): the SeqIO
  preprocessor; choices are a seeded hash of the example (``selection.py``), so the same seed
  renders identical data on every run, host and shard, and no example is dropped.
"""

from t5x_instruct.data.templates.fewshot import FewShot
from t5x_instruct.data.templates.options import (
    NO_OPTIONS,
    OPTIONS_FORMATS,
    OPTIONS_FORMATS_BY_ID,
    OptionsFormat,
)
from t5x_instruct.data.templates.preprocessor import (
    RENDER_MODES,
    RenderConfig,
    apply_templates,
    render_example,
)
from t5x_instruct.data.templates.template import (
    OPTIONS_FIELD,
    TEMPLATE_KINDS,
    Template,
    TemplateError,
    make_templates,
)

__all__ = [
    "NO_OPTIONS",
    "OPTIONS_FIELD",
    "OPTIONS_FORMATS",
    "OPTIONS_FORMATS_BY_ID",
    "RENDER_MODES",
    "TEMPLATE_KINDS",
    "FewShot",
    "OptionsFormat",
    "RenderConfig",
    "Template",
    "TemplateError",
    "apply_templates",
    "make_templates",
    "render_example",
]
