"""Parsing gin files and command-line bindings with the repository's ``gin/`` folder on the path.

Presets include each other by paths relative to ``gin/``
(``include 'models/t5_1_1/architecture.gin'``), so that folder is always a search path.
Gin's own errors name a line but not always which of several files or ``--gin.`` bindings it
came from; :class:`GinConfigError` does.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import gin

import t5x_instruct
from t5x_instruct.errors import UserInputError

GIN_DIR = Path(t5x_instruct.__file__).resolve().parents[1] / "gin"

# Imported before parsing so that their configurables (T5Config, build_model, ...) exist.
CONFIGURABLE_MODULES: tuple[str, ...] = (
    "t5x_instruct.models",
    "t5x_instruct.partitioning",
    "t5x_instruct.decoding",
    "t5x_instruct.plugins.library",
    "t5x_instruct.runtime.distributed",
)

_added_search_paths: set[str] = set()


class GinConfigError(UserInputError):
    """A gin file or binding could not be parsed; the message names which one."""


def add_search_path(path: str | os.PathLike[str]) -> None:
    """Make ``include`` statements and relative file names also resolve under ``path``."""
    path = os.fspath(path)
    if path not in _added_search_paths:
        gin.add_config_file_search_path(path)
        _added_search_paths.add(path)


def parse_gin(
    files: Sequence[str | os.PathLike[str]] = (),
    bindings: Sequence[str] = (),
    search_paths: Sequence[str | os.PathLike[str]] | None = None,
    *,
    clear: bool = False,
    finalize: bool = False,
) -> None:
    """Parse ``files`` in order, then ``bindings`` (later ones win), into the global config.

    Args:
      files: gin files; relative names are looked up in the working directory, then in the
        search paths (the repository's ``gin/`` folder and any ``search_paths``).
      bindings: single bindings such as ``"T5Config.dropout_rate = 0.1"`` or ``"MACRO = 3"``.
      search_paths: extra folders searched for files and includes (gin keeps search paths
        for the rest of the process, in the order first added).
      clear: drop every earlier binding first (a fresh config, e.g. per test).
      finalize: lock the config afterwards (no more bindings until cleared).

    Raises:
      GinConfigError: naming the file or binding at fault, with gin's message appended.
    """
    for module in CONFIGURABLE_MODULES:
        importlib.import_module(module)
    if clear:
        gin.clear_config()
    for path in search_paths or ():
        add_search_path(path)
    add_search_path(GIN_DIR)
    with _quiet_resource_lookups():
        for file in files:
            try:
                gin.parse_config_file(os.fspath(file))
            except Exception as exc:  # gin raises many types (TokenError, ValueError, ...)
                raise GinConfigError(
                    f"Invalid gin file {os.fspath(file)!r}: {_describe(exc)}"
                ) from exc
        for binding in bindings:
            try:
                gin.parse_config(binding)
            except Exception as exc:
                raise GinConfigError(f"Invalid gin binding {binding!r}: {_describe(exc)}") from exc
    if finalize:
        gin.finalize()


# What gin's package-resource reader logs for every file it looks up (one line per gin file
# and include, plus an error for each search-path miss): noise to a user.
_GIN_LOOKUP_MESSAGES = ("Path not found", "system_path_file_exists", "gin-config opened resource")


class _DropMissingResourceErrors(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            record.pathname.endswith(os.path.join("gin", "resource_reader.py"))
            and record.getMessage().startswith(_GIN_LOOKUP_MESSAGES)
        )


@contextlib.contextmanager
def _quiet_resource_lookups() -> Iterator[None]:
    """Silence gin's file-lookup lines while it tries each search path in turn.

    Gin tries to read every relative path as a Python-package resource, logging each lookup
    (``system_path_file_exists:...``) and an error at each miss, even when the file is then
    found under ``gin/``.
    """
    root = logging.getLogger()
    log_filter = _DropMissingResourceErrors()
    root.addFilter(log_filter)
    try:
        yield
    finally:
        root.removeFilter(log_filter)


def _describe(exc: BaseException) -> str:
    """Gin's message plus, for syntax errors, the location it carries separately."""
    if isinstance(exc, SyntaxError) and exc.filename is not None:
        return f"{exc.msg} (in {exc.filename!r}, line {exc.lineno}: {(exc.text or '').strip()!r})"
    return f"{type(exc).__name__}: {exc}"


def operative_config_text() -> str:
    """``gin.operative_config_str()`` that parses back in a fresh process: ``import`` lines
    added for every module defining a configurable it binds.

    Gin writes imports only for modules its parsed files imported; a configurable registered
    by a Python import (``import_task_modules.modules = ['tasks.custom']`` registers
    ``register_jsonl_tasks``) would otherwise be unknown when the file is read back.
    """
    import gin.config as gin_config

    text = gin.operative_config_str()
    modules = set()
    for _, selector in getattr(gin_config, "_OPERATIVE_CONFIG", {}):
        try:
            configurable = gin_config._REGISTRY.get_match(selector)
        except Exception:  # a macro or an unregistered selector: nothing to import
            continue
        module = getattr(getattr(configurable, "wrapped", None), "__module__", None)
        if module and module != "__main__" and f"import {module}\n" not in text:
            modules.add(module)
    if not modules:
        return text
    return "".join(f"import {m}\n" for m in sorted(modules)) + text
