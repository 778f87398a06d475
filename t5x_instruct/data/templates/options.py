"""Ways to show a classification example's answer options inside the inputs.

Each format renders a list of options as one block that *starts with its own separator*
(``"\\n\\n"`` or ``" "``), so a template writes ``...question?{options}`` and the "no options"
variant (empty block) leaves clean text. Formats are picked per example by the seeded hash
in :mod:`.selection`, independently of the template. All wording here is our own.
"""

from __future__ import annotations

import dataclasses
import string
from collections.abc import Sequence


@dataclasses.dataclass(frozen=True)
class OptionsFormat:
    """``leading + header + join(prefix_i + option_i + suffix) + trailer``.

    ``labels`` (e.g. ``'ABCD...'``) turns ``prefix`` into a pattern with ``{label}``; options
    beyond the labels fall back to numbers.
    """

    id: str
    leading: str
    header: str
    prefix: str
    suffix: str
    separator: str
    trailer: str = ""
    labels: str = ""

    def item_prefixes(self, n: int) -> list[str]:
        if "{label}" not in self.prefix:
            return [self.prefix] * n
        labels = list(self.labels) if self.labels else []
        labels += [str(i + 1) for i in range(len(labels), n)]
        return [self.prefix.replace("{label}", labels[i]) for i in range(n)]

    def render(self, options: Sequence[str]) -> str:
        """The options block in Python (the reference the TF renderer is tested against)."""
        items = [p + o + self.suffix for p, o in zip(self.item_prefixes(len(options)), options)]
        return self.leading + self.header + self.separator.join(items) + self.trailer


_LETTERS = string.ascii_uppercase

OPTIONS_FORMATS: tuple[OptionsFormat, ...] = (
    OptionsFormat("bullets", "\n\n", "Options:\n", "- ", "", "\n"),
    OptionsFormat("letters_inline", "\n\n", "", "({label}) ", "", " ", labels=_LETTERS),
    OptionsFormat("choose_from", "\n\n", "Choose from: ", "", "", ", ", trailer="."),
    OptionsFormat("numbered", "\n\n", "Possible answers:\n", "{label}. ", "", "\n"),
    OptionsFormat("letters_lines", "\n", "Answer choices:\n", "{label}) ", "", "\n",
                  labels=_LETTERS),
    OptionsFormat("pipes", " ", "[", "", "", " | ", trailer="]"),
)  # fmt: skip

OPTIONS_FORMATS_BY_ID = {f.id: f for f in OPTIONS_FORMATS}
NO_OPTIONS = OptionsFormat("none", "", "", "", "", "")
