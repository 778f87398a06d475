"""PromptSource template files, read and rendered without PromptSource's own Python code.

PromptSource keeps its prompts as YAML files ``templates/{dataset}[/{subset}]/templates.yaml``
whose entries are ``!Template`` objects (``id``, ``name``, ``jinja``, ``answer_choices``,
``reference``, ``metadata: !TemplateMetadata``). We parse them with a *safe* YAML loader that
maps those two tags onto our frozen dataclasses, so loading a file never runs code and never
imports ``promptsource`` (whose package pulls in pkg_resources, streamlit, datasets ...); an
installed ``promptsource`` is only used as a directory of files.

Rendering reproduces PromptSource 0.2.3's ``Template.apply`` (with its default
``truncate=True``), which the tests check against PromptSource itself on the real files:

* the ``jinja`` source renders to ``inputs ||| targets``; ``answer_choices`` is itself a Jinja
  expression rendering to ``a ||| b ||| ...``, visible to the main template as the list
  ``answer_choices``;
* every ``{{ ... }}`` output of the main template is passed through ``| string |
  truncate(2048)`` (PromptSource rewrites each ``}}`` textually, so the filter binds to the
  last operand of the expression, exactly as there): text over 2048 + 5 characters is cut at
  a word boundary and ends in ``...``;
* ``|||`` inside a top-level string field is protected so that it does not split (fields
  nested in lists or dicts are not, as in PromptSource); an answer choice containing ``|||``
  is handed to the template unprotected, so a target that prints it splits into more than two
  parts. PromptSource's ``apply`` then returns three or more parts and P3's pipeline dropped
  such examples; :meth:`PromptTemplate.render` raises :class:`SeparatorError` for them and
  :class:`~tasks.p3.PromptedSource` counts and skips them.

Differences on purpose: ``-`` in field names becomes ``_`` (what P3's pipeline did before
``apply``); templates run in Jinja's sandbox; the ``choice`` and ``random`` filters draw from a
``random.Random`` seeded by (seed, template id, example content), so the same example always
renders the same way - PromptSource used the global, unseeded ``random`` module (the draws are
otherwise identical: same call, same sequence).
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import hashlib
import importlib.util
import json
import os
import random
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jinja2
import jinja2.meta
import jinja2.sandbox
import yaml

SEPARATOR = "|||"
# Stands in for "|||" inside example text while rendering. PromptSource's own placeholder,
# because truncation counts its characters: another length would cut long fields elsewhere.
_PIPE_PLACEHOLDER = "3ed2dface8203c4c9dfb1a5dc58e41e0"
TEMPLATES_FILE = "templates.yaml"
# PromptSource's default cut of every template variable (``Template.apply(truncate=True)``).
TEXT_VAR_LENGTH = 2048


class TemplateError(ValueError):
    """A template that cannot be parsed or rendered; the message names its file and id."""


class SeparatorError(TemplateError):
    """The rendering split into more than ``inputs ||| targets`` (``|||`` in an answer choice
    or a nested field); PromptSource returns the parts, P3 dropped the example."""


@dataclasses.dataclass(frozen=True)
class TemplateMetadata:
    """What PromptSource records about a template (``!TemplateMetadata``)."""

    original_task: bool | None = None
    choices_in_prompt: bool | None = None
    metrics: tuple[str, ...] = ()
    languages: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class RenderedPrompt:
    """One example through one template. ``targets`` is ``''`` when the template rendered no
    target (e.g. an unlabelled test example); ``answer_choices`` is ``()`` without choices."""

    inputs: str
    targets: str
    answer_choices: tuple[str, ...] = ()

    @property
    def is_complete(self) -> bool:
        """Both sides non-empty: the examples T0 kept for training."""
        return bool(self.inputs) and bool(self.targets)


@dataclasses.dataclass(frozen=True)
class PromptTemplate:
    """One ``!Template``; ``source`` is ``file:line`` for error messages."""

    id: str
    name: str
    jinja: str
    answer_choices: str | None = None
    reference: str = ""
    metadata: TemplateMetadata = TemplateMetadata()
    source: str = "<memory>"

    def where(self) -> str:
        return f"{self.source} (template id {self.id!r}, name {self.name!r})"

    @property
    def has_answer_choices(self) -> bool:
        return bool(self.answer_choices and self.answer_choices.strip())

    def validate(self) -> None:
        """Compiles both Jinja sources now (the main one as :meth:`apply` runs it, truncation
        filters included); raises :class:`TemplateError` naming the template."""
        self._compiled(self.jinja, "jinja")
        self._compiled(_with_truncation(self.jinja, TEXT_VAR_LENGTH), "jinja")
        if self.has_answer_choices:
            self._compiled(self.answer_choices or "", "answer_choices")

    def fixed_answer_choices(self) -> tuple[str, ...] | None:
        """The choices when they do not depend on the example (e.g. ``Yes ||| No``), else None."""
        if not self.has_answer_choices:
            return None
        self._compiled(self.answer_choices or "", "answer_choices")  # syntax errors name us
        if jinja2.meta.find_undeclared_variables(_ENV.parse(self.answer_choices or "")):
            return None
        return self._render_choices({}, random.Random(0))

    def apply(
        self, example: Mapping[str, Any], *, seed: int = 0, truncate: int | None = TEXT_VAR_LENGTH
    ) -> list[str]:
        """The stripped ``|||``-separated parts, as PromptSource's ``Template.apply`` returns them
        (two for a complete example, one without a target, more when a choice contains ``|||``).

        ``truncate``: characters every ``{{ ... }}`` output is cut to (PromptSource's default
        2048); ``None`` renders untruncated (PromptSource's ``truncate=False``).

        Raises:
          TemplateError: naming the file, template id and name, for a syntax error or an error
            raised while rendering (the original exception is chained).
        """
        return self._apply(example, seed, truncate)[0]

    def render(
        self, example: Mapping[str, Any], *, seed: int = 0, truncate: int | None = TEXT_VAR_LENGTH
    ) -> RenderedPrompt:
        """Applies the template to ``example`` (a dict of fields as the data set provides).

        ``inputs`` and ``targets`` are PromptSource's ``apply(example)`` parts (``targets`` is
        ``''`` without a second part); see :meth:`apply` for ``truncate``.

        Raises:
          TemplateError: see :meth:`apply`.
          SeparatorError: the rendering has more than two parts (see the module docstring).
        """
        parts, choices = self._apply(example, seed, truncate)
        if len(parts) > 2:
            raise SeparatorError(
                f"{self.where()}: rendered to {len(parts)} parts; expected 'inputs ||| targets' "
                "(an answer choice or a nested field contains '|||')."
            )
        targets = parts[1] if len(parts) == 2 else ""
        return RenderedPrompt(parts[0], targets, tuple(choices or ()))

    def _apply(
        self, example: Mapping[str, Any], seed: int, truncate: int | None
    ) -> tuple[list[str], tuple[str, ...] | None]:
        fields = _dehyphenate(example)
        if "answer_choices" in fields:
            raise TemplateError(
                f"{self.where()}: the example has a field 'answer_choices', which the template "
                "variable of that name would hide."
            )
        rng = random.Random(_example_seed(seed, self.id, example))
        choices = None
        if self.answer_choices is not None:
            choices = self._render_choices(fields, rng)
        jinja = self.jinja if truncate is None else _with_truncation(self.jinja, truncate)
        # A list, as PromptSource passes it (``answer_choices + [...]`` must work).
        listed = None if choices is None else list(choices)
        text = self._run(jinja, "jinja", {**_protect(fields), "answer_choices": listed}, rng)
        return [_unprotect(part).strip() for part in text.split(SEPARATOR)], choices

    def _render_choices(self, fields: Mapping[str, Any], rng: random.Random) -> tuple[str, ...]:
        text = self._run(self.answer_choices or "", "answer_choices", _protect(fields), rng)
        return tuple(_unprotect(c.strip()) for c in text.split(SEPARATOR))

    def _compiled(self, text: str, what: str) -> jinja2.Template:
        try:
            return _compile(text)
        except jinja2.TemplateSyntaxError as e:
            raise TemplateError(
                f"{self.where()}: Jinja syntax error in {what} (line {e.lineno} of the "
                f"template): {e.message}"
            ) from e

    def _run(self, text: str, what: str, fields: Mapping[str, Any], rng: random.Random) -> str:
        template = self._compiled(text, what)
        token = _RNG.set(rng)
        try:
            return template.render(**fields)
        except Exception as e:
            raise TemplateError(
                f"{self.where()}: rendering {what} failed: {type(e).__name__}: {e}"
            ) from e
        finally:
            _RNG.reset(token)


@dataclasses.dataclass(frozen=True)
class DatasetTemplates:
    """The templates of one (dataset, subset), in file order (sorted by id, as PromptSource
    writes them)."""

    dataset: str
    subset: str | None
    templates: tuple[PromptTemplate, ...]
    path: str = "<memory>"

    def __len__(self) -> int:
        return len(self.templates)

    def __iter__(self) -> Iterator[PromptTemplate]:
        return iter(self.templates)

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.templates]

    def by_name(self, name: str) -> PromptTemplate:
        for template in self.templates:
            if template.name == name:
                return template
        raise KeyError(f"{self.path}: no template named {name!r}; templates: {self.names}.")

    def by_id(self, template_id: str) -> PromptTemplate:
        for template in self.templates:
            if template.id == template_id:
                return template
        raise KeyError(f"{self.path}: no template with id {template_id!r}.")


# ----------------------------------------------------------------------------- YAML reading


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """Safe loader knowing only PromptSource's two tags (no arbitrary object construction)."""

    current_file = "<memory>"


def _metadata(loader: _Loader, node: yaml.Node) -> TemplateMetadata:
    d = loader.construct_mapping(node, deep=True)
    return TemplateMetadata(
        original_task=d.get("original_task"),
        choices_in_prompt=d.get("choices_in_prompt"),
        metrics=tuple(d.get("metrics") or ()),
        languages=tuple(d.get("languages") or ()),
    )


def _template(loader: _Loader, node: yaml.Node) -> PromptTemplate:
    d = loader.construct_mapping(node, deep=True)
    where = f"{loader.current_file}:{node.start_mark.line + 1}"
    missing = [k for k in ("id", "name", "jinja") if not isinstance(d.get(k), str)]
    if missing:
        raise TemplateError(f"{where}: !Template without string field(s) {missing}.")
    return PromptTemplate(
        id=d["id"],
        name=d["name"],
        jinja=d["jinja"],
        answer_choices=d.get("answer_choices"),
        reference=d.get("reference") or "",
        metadata=d.get("metadata") or TemplateMetadata(),
        source=where,
    )


_Loader.add_constructor("!Template", _template)
_Loader.add_constructor("!TemplateMetadata", _metadata)


def parse_templates(text: str, path: str = "<memory>") -> DatasetTemplates:
    """Parses the text of a ``templates.yaml`` (``path`` is only used in messages)."""
    loader = _Loader(text)
    loader.current_file = path
    try:
        doc = loader.get_single_data()
    except yaml.YAMLError as e:
        raise TemplateError(f"{path}: invalid templates YAML: {e}") from e
    finally:
        loader.dispose()
    if not isinstance(doc, dict) or not isinstance(doc.get("templates"), dict):
        raise TemplateError(f"{path}: expected a mapping with 'dataset' and 'templates'.")
    templates = tuple(doc["templates"].values())
    for key, template in doc["templates"].items():
        if not isinstance(template, PromptTemplate):
            raise TemplateError(f"{path}: entry {key!r} is not a !Template.")
        if key != template.id:
            raise TemplateError(f"{template.where()}: listed under the different key {key!r}.")
    names = Counter(t.name for t in templates)
    if dup := [n for n, c in names.items() if c > 1]:
        raise TemplateError(f"{path}: duplicate template names {dup}.")
    return DatasetTemplates(doc.get("dataset", ""), doc.get("subset"), templates, path)


@functools.cache
def load_templates_file(path: str) -> DatasetTemplates:
    """Reads one ``templates.yaml`` (cached per path)."""
    with open(path, encoding="utf-8") as f:
        return parse_templates(f.read(), path)


def installed_templates_root() -> str:
    """The ``templates`` directory of an installed ``promptsource`` package (not imported)."""
    spec = importlib.util.find_spec("promptsource")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "PromptSource templates not found: install them with "
            "`pip install --no-deps promptsource==0.2.3` (only its files are read) or pass a "
            "templates directory."
        )
    return os.path.join(next(iter(spec.submodule_search_locations)), "templates")


class TemplateLibrary:
    """A tree ``{root}/{dataset}[/{subset}]/templates.yaml``; files are parsed on first use."""

    def __init__(self, root: str | None = None) -> None:
        self.root = root or installed_templates_root()
        if not os.path.isdir(self.root):
            raise FileNotFoundError(f"Templates directory {self.root!r} does not exist.")

    def path(self, dataset: str, subset: str | None = None) -> str:
        parts = [self.root, dataset, *([subset] if subset else []), TEMPLATES_FILE]
        return os.path.join(*parts)

    def keys(self) -> list[tuple[str, str | None]]:
        """Every (dataset, subset) with a templates file, sorted (walks directories only)."""
        found = []
        for dirpath, _, files in os.walk(self.root):
            if TEMPLATES_FILE in files:
                rel = os.path.relpath(dirpath, self.root).split(os.sep)
                found.append((rel[0], "/".join(rel[1:]) or None))
        return sorted(found, key=lambda k: (k[0], k[1] or ""))

    def get(self, dataset: str, subset: str | None = None) -> DatasetTemplates:
        path = self.path(dataset, subset)
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"No PromptSource templates for dataset {dataset!r} subset {subset!r}: "
                f"{path} does not exist."
            )
        return load_templates_file(path)


# ----------------------------------------------------------------------------- rendering

_RNG: contextvars.ContextVar[random.Random] = contextvars.ContextVar("promptsource_rng")


def _rng() -> random.Random:
    rng = _RNG.get(None)
    if rng is None:  # only reachable when a compiled template is rendered directly
        raise RuntimeError("PromptSource filters need PromptTemplate.render (seeded per example).")
    return rng


def _choice(seq: Sequence[Any]) -> Any:
    """PromptSource's ``choice`` filter, seeded: raises ``IndexError`` on an empty sequence."""
    return _rng().choice(seq)


@jinja2.pass_environment
def _random(env: jinja2.Environment, seq: Sequence[Any]) -> Any:
    """Jinja's builtin ``random`` filter, seeded: undefined (renders ``''``) when empty."""
    try:
        return _rng().choice(seq)
    except IndexError:
        return env.undefined("No random item, sequence was empty.")


def _most_frequent(items: Sequence[Any]) -> list[Any] | None:
    """Every item tied for the highest count, in first-seen order."""
    if not items:
        return None
    counts = Counter(items).most_common()
    return [item for item, n in counts if n == counts[0][1]]


def _make_env() -> jinja2.sandbox.SandboxedEnvironment:
    env = jinja2.sandbox.SandboxedEnvironment(loader=jinja2.BaseLoader())
    env.filters["choice"] = _choice
    env.filters["random"] = _random
    env.filters["most_frequent"] = _most_frequent
    env.globals["zip"] = zip
    return env


_ENV = _make_env()


@functools.lru_cache(maxsize=8192)
def _compile(text: str) -> jinja2.Template:
    return _ENV.from_string(text)


def _dehyphenate(example: Mapping[str, Any]) -> dict[str, Any]:
    return {str(k).replace("-", "_"): v for k, v in example.items()}


def _protect(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Hides ``|||`` in top-level string fields only (PromptSource does not look deeper)."""
    return {
        k: v.replace(SEPARATOR, _PIPE_PLACEHOLDER) if isinstance(v, str) else v
        for k, v in fields.items()
    }


def _with_truncation(jinja: str, length: int) -> str:
    """PromptSource's rewrite: every ``}}`` gets ``| string | truncate(length)`` before it."""
    return jinja.replace("}}", f" | string | truncate({int(length)}) }}}}")


def _unprotect(text: str) -> str:
    return text.replace(_PIPE_PLACEHOLDER, SEPARATOR)


def _example_seed(seed: int, template_id: str, example: Mapping[str, Any]) -> int:
    blob = json.dumps(example, sort_keys=True, default=repr, ensure_ascii=False)
    digest = hashlib.sha256(f"{seed}\0{template_id}\0{blob}".encode()).digest()
    return int.from_bytes(digest[:8], "little")
