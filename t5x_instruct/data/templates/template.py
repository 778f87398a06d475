"""One instruction template: a pair of format strings that turn an example into (inputs, targets).

Templates use a deliberately tiny language so that they can be rendered both in Python and as
pure TensorFlow string ops (see :mod:`.render`): literal text and ``{field}`` placeholders,
nothing else (no format specs, conversions or attribute access; ``{{``/``}}`` for braces).
The special placeholder ``{options}`` is the example's answer options rendered in one of the
:mod:`.options` formats (or nothing, for the "no options" variants). Everything is checked at
construction so that a broken template fails at registration, naming its task and id.
"""

from __future__ import annotations

import dataclasses
import functools
import string
from collections.abc import Iterable, Mapping, Sequence

OPTIONS_FIELD = "options"
TEMPLATE_KINDS = ("standard", "cot", "inversion")


class TemplateError(ValueError):
    """A template that cannot be parsed or rendered; the message names task and template id."""


@dataclasses.dataclass(frozen=True)
class Piece:
    """A literal string (``field is None``) or a placeholder."""

    text: str = ""
    field: str | None = None


def parse_format(fmt: str, *, where: str) -> tuple[Piece, ...]:
    """Splits ``fmt`` into literal and placeholder pieces; ``where`` prefixes errors."""
    pieces: list[Piece] = []
    try:
        parsed = list(string.Formatter().parse(fmt))
    except ValueError as e:
        raise TemplateError(f"{where}: malformed format string {fmt!r}: {e}") from e
    for literal, field, spec, conversion in parsed:
        if literal:
            pieces.append(Piece(text=literal))
        if field is None:
            continue
        if spec or conversion:
            raise TemplateError(
                f"{where}: placeholder {{{field}}} uses a format spec/conversion, which "
                "templates do not support; write plain {field}."
            )
        if not field.isidentifier():
            raise TemplateError(
                f"{where}: placeholder {{{field}}} is not a plain field name (positional, "
                "index and attribute placeholders are not supported)."
            )
        pieces.append(Piece(field=field))
    return tuple(pieces)


@dataclasses.dataclass(frozen=True)
class Template:
    """A template: ``inputs``/``targets`` format strings over the example's fields.

    Attributes:
      id: unique within its task (``'0'``, ``'1'``, ... for the Flan tasks); appears in errors
        and in ``inspect_task`` output.
      inputs, targets: format strings. ``{options}`` may only appear in ``inputs``.
      kind: ``'standard'``; ``'cot'`` (targets give a rationale, then the answer); or
        ``'inversion'`` (input inversion: the inputs show the output and the targets ask for
        the original input, e.g. write the question for an answer).
    """

    id: str
    inputs: str
    targets: str
    kind: str = "standard"

    def __post_init__(self) -> None:
        if self.kind not in TEMPLATE_KINDS:
            raise TemplateError(
                f"template {self.id!r}: unknown kind {self.kind!r}; use {TEMPLATE_KINDS}."
            )
        where = f"template {self.id!r}"
        self.input_pieces  # noqa: B018  (parses, raising TemplateError on bad formats)
        if any(p.field == OPTIONS_FIELD for p in self.target_pieces):
            raise TemplateError(f"{where}: {{options}} may only appear in the inputs.")

    @functools.cached_property
    def input_pieces(self) -> tuple[Piece, ...]:
        return parse_format(self.inputs, where=f"template {self.id!r} (inputs)")

    @functools.cached_property
    def target_pieces(self) -> tuple[Piece, ...]:
        return parse_format(self.targets, where=f"template {self.id!r} (targets)")

    @property
    def fields(self) -> frozenset[str]:
        """Example fields this template reads (``options`` included when shown)."""
        return frozenset(p.field for p in self.input_pieces + self.target_pieces if p.field)

    @property
    def uses_options(self) -> bool:
        return OPTIONS_FIELD in self.fields

    def check_fields(self, available: Iterable[str], *, task: str) -> None:
        """Raises :class:`TemplateError` naming ``task`` and this template if a placeholder
        refers to a field the task's examples do not have."""
        available = set(available) | {OPTIONS_FIELD}
        missing = sorted(self.fields - available)
        if missing:
            raise TemplateError(
                f"Task {task!r}, template {self.id!r}: unknown field(s) {missing}; the "
                f"examples have {sorted(available - {OPTIONS_FIELD})}."
            )

    def render(
        self,
        example: Mapping[str, str | Sequence[str]],
        *,
        options_text: str = "",
        task: str = "?",
    ) -> tuple[str, str]:
        """(inputs, targets) in Python; ``options_text`` replaces ``{options}``."""

        def fill(pieces: tuple[Piece, ...]) -> str:
            out = []
            for p in pieces:
                if p.field is None:
                    out.append(p.text)
                elif p.field == OPTIONS_FIELD:
                    out.append(options_text)
                else:
                    if p.field not in example:
                        raise TemplateError(
                            f"Task {task!r}, template {self.id!r}: example has no field "
                            f"{p.field!r} (fields: {sorted(example)})."
                        )
                    value = example[p.field]
                    out.append(value.decode() if isinstance(value, bytes) else str(value))
            return "".join(out)

        return fill(self.input_pieces), fill(self.target_pieces)


def make_templates(
    pairs: Sequence[tuple[str, str]], *, kind: str = "standard", first_id: int = 0
) -> tuple[Template, ...]:
    """Templates ``first_id, first_id+1, ...`` from (inputs, targets) pairs."""
    return tuple(
        Template(str(first_id + i), inputs, targets, kind) for i, (inputs, targets) in
        enumerate(pairs)
    )  # fmt: skip


def check_unique_ids(templates: Sequence[Template], *, task: str) -> None:
    ids = [t.id for t in templates]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise TemplateError(f"Task {task!r}: duplicate template ids {dupes}.")
    if not templates:
        raise TemplateError(f"Task {task!r}: no templates given.")
