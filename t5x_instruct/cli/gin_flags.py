"""T5X-style command lines: ``--gin_file=... --gin.KEY=VALUE --gin_search_paths=...``."""

from __future__ import annotations

import argparse
import ast
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import gin

from t5x_instruct.gin_utils import GinConfigError, parse_gin

# T5X's macro vocabulary, and the `train` argument each one feeds.
MACROS = {
    "MODEL_DIR": "model_dir",
    "MIXTURE_OR_TASK_NAME": "mixture_or_task_name",
    "TASK_FEATURE_LENGTHS": "task_feature_lengths",
    "TRAIN_STEPS": "train_steps",
    "BATCH_SIZE": "batch_size",
    "DROPOUT_RATE": None,
    "INITIAL_CHECKPOINT_PATH": "initial_checkpoint_path",
    "USE_CACHED_TASKS": "use_cached_tasks",
}

# Unquoted paths and words (``/tmp/run``, ``gs://b/x``) are taken as strings; anything else
# (lists, dicts, half-typed brackets) goes to gin as written, so its errors stay visible.
_BARE_WORD = re.compile(r"^[\w./:~+-]+$")
_BINDING = re.compile(r"^\s*([A-Za-z_][\w./]*)\s*=\s*(.+)$", re.DOTALL)


def parse_args(
    argv: Sequence[str],
    *,
    prog: str = "python -m t5x_instruct.train",
    description: str = "Train a model from gin files; any --gin.KEY=VALUE overrides a binding.",
) -> tuple[list[str], list[str], list[str]]:
    """Split argv into gin files, bindings and search paths; reject anything else."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--gin_file", action="append", default=[], help="gin file (repeatable)")
    parser.add_argument(
        "--gin_search_paths", action="append", default=[], help="extra folders for gin includes"
    )
    parser.add_argument("--gin_bindings", action="append", default=[], help="KEY=VALUE binding")
    known, rest = parser.parse_known_args(list(argv))
    bindings = list(known.gin_bindings)
    for arg in rest:
        if not arg.startswith("--gin."):
            parser.error(f"unrecognised argument {arg!r} (bindings are written --gin.KEY=VALUE)")
        bindings.append(arg[len("--gin.") :])
    search_paths = [p for chunk in known.gin_search_paths for p in chunk.split(",") if p]
    return known.gin_file, [normalise_binding(b) for b in bindings], search_paths


def normalise_binding(binding: str) -> str:
    """Accept ``KEY=VALUE``; quote a bare string VALUE (``MODEL_DIR=/tmp/run``) for gin."""
    match = _BINDING.match(binding)
    if not match:
        raise GinConfigError(
            f"Malformed gin binding {binding!r}: expected KEY=VALUE, e.g. --gin.TRAIN_STEPS=100"
        )
    key, value = match.group(1), match.group(2).strip()
    if _BARE_WORD.match(value) and not _is_gin_value(value):
        return f"{key} = {value!r}"
    return f"{key} = {value}"


def _is_gin_value(value: str) -> bool:
    if value.startswith(("@", "%")) or value in ("True", "False", "None"):
        return True
    try:
        ast.literal_eval(value)
        return True
    except (ValueError, SyntaxError):
        return False


def configure(
    argv: Sequence[str],
    *,
    defaults: Sequence[str] = (),
    prog: str = "python -m t5x_instruct.train",
    description: str = "Train a model from gin files; any --gin.KEY=VALUE overrides a binding.",
) -> None:
    """Parse the command line's gin files and bindings, after the command's own ``defaults``
    gin files (which the user's files then override)."""
    files, bindings, search_paths = parse_args(argv, prog=prog, description=description)
    if not files:
        raise GinConfigError("No --gin_file given; e.g. --gin_file=gin/runs/quickstart.gin")
    parse_gin([*defaults, *files], bindings, search_paths, clear=True)


def check_required_macros(macros: Sequence[str] = tuple(MACROS)) -> None:
    """A macro still bound to ``%gin.REQUIRED`` names itself (gin would pass a placeholder)."""
    missing = []
    for macro in macros:
        try:
            value = gin.query_parameter(f"{macro}/macro.value")
        except ValueError:
            continue  # not declared by the run's gin files at all
        if str(value) == "%gin.REQUIRED":
            missing.append(macro)
    if missing:
        raise GinConfigError(
            f"Required macro(s) not set: {', '.join(missing)}; pass "
            + " ".join(f"--gin.{m}=..." for m in missing)
            + " or bind them in a gin file."
        )


def call_with_required_macros(
    fn: Callable[..., Any], macros: Mapping[str, str | None] = MACROS
) -> Any:
    """Call a gin configurable; turn a missing REQUIRED argument into the macro to set.

    ``macros`` maps each macro the command needs to the argument of ``fn`` it feeds.
    """
    check_required_macros(tuple(macros))
    try:
        return fn()
    except (RuntimeError, ValueError, TypeError) as exc:
        message = str(exc)
        if "Required bindings" not in message and "gin.REQUIRED" not in message:
            raise
        missing = re.findall(r"'(\w+)'", message.split("not provided")[-1]) or []
        hints = []
        for arg in missing or [message]:
            macro = next((m for m, a in macros.items() if a == arg), None)
            hints.append(
                f"--gin.{macro}=..."
                if macro
                else f"--gin.{getattr(fn, '__name__', 'train')}.{arg}=..."
            )
        raise GinConfigError(
            f"Missing required setting(s) {missing}: set {', '.join(hints)} on the command line "
            "or in a gin file."
        ) from exc
