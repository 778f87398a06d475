"""Looking up SeqIO tasks and mixtures by name, with helpful errors, and evaluation groups.

Tasks register themselves when their module is imported (``import tasks.demo``);
:func:`import_task_modules` does that from a gin-configurable list so a run config can name
the modules it needs (binding ``import_task_modules.modules`` is enough: every lookup here
imports the bound modules first). An evaluation *group* (``train_tasks``, ``heldout_templates``,
``heldout_task``) is a small tag a task module attaches to each task so that the trainer can
report exact match per group; untagged tasks fall into ``train_tasks``.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Sequence
from typing import Any

import gin
import seqio

from t5x_instruct.errors import UserInputError

EVAL_GROUPS = ("train_tasks", "heldout_templates", "heldout_task")
DEFAULT_EVAL_GROUP = "train_tasks"

_task_groups: dict[str, str] = {}


class TaskModuleImportError(UserInputError, ImportError):
    """A task module named by ``import_task_modules.modules`` (or ``--module``) is missing."""


@gin.configurable
def import_task_modules(modules: Sequence[str] = ("tasks.demo",)) -> None:
    """Imports the modules whose import registers tasks/mixtures (idempotent)."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as e:
            if isinstance(e, UserInputError):
                raise
            raise TaskModuleImportError(
                f"Could not import task module {module!r} ({e}). Task modules outside the "
                "package (e.g. 'tasks.demo') need the repository root on sys.path."
            ) from e


# Registration functions that ran at a module's import, with the gin bindings they saw then.
_tracked: dict[str, tuple[Callable[[], Any], str]] = {}


def _bindings_key(fn: Callable[..., Any]) -> str:
    return repr(sorted(gin.get_bindings(fn, resolve_references=False).items()))


def track_gin_bindings(fn: Callable[..., Any]) -> None:
    """Records that gin-configurable registration ``fn`` just ran; task lookups call it again
    (with no arguments) when its gin bindings have changed since.

    A gin file's ``import tasks.xp3`` registers at parse time, before the file's later lines
    and the ``--gin.`` flags bind ``tasks.xp3.register.roots``; this makes those count too.
    """
    _tracked[f"{fn.__module__}.{fn.__qualname__}"] = (fn, _bindings_key(fn))


def refresh_registrations() -> None:
    """Imports the modules bound to ``import_task_modules.modules`` (if bound) and re-runs
    tracked registrations whose gin bindings changed; every lookup here calls it first."""
    if gin.get_bindings(import_task_modules, resolve_references=False).get("modules"):
        import_task_modules()  # gin supplies the bound list
    for name, (fn, key) in list(_tracked.items()):
        if _bindings_key(fn) != key:
            fn()
            _tracked[name] = (fn, _bindings_key(fn))


def registered_names() -> list[str]:
    """All registered task and mixture names, sorted."""
    return sorted(set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names()))


class UnknownTaskError(UserInputError):
    """No task or mixture is registered under the name asked for."""


def get_mixture_or_task(name: str) -> seqio.Task | seqio.Mixture:
    """The task or mixture called ``name``; an unknown name raises ``ValueError`` listing
    the closest registered names."""
    refresh_registrations()
    if name in seqio.MixtureRegistry.names():
        return seqio.get_mixture_or_task(name)
    if name in seqio.TaskRegistry.names():
        return seqio.get_mixture_or_task(name)
    names = registered_names()
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    if not names:
        hint += " No tasks are registered: import a task module first (e.g. 'tasks.demo')."
    raise UnknownTaskError(f"Unknown SeqIO task or mixture {name!r}.{hint}")


def leaf_tasks(name: str) -> list[seqio.Task]:
    """The tasks of a mixture (recursively, registration order) or ``[task]`` for a task."""
    provider = get_mixture_or_task(name)
    if isinstance(provider, seqio.Mixture):
        return list(provider.tasks)
    return [provider]


def available_splits(name: str) -> set[str]:
    """Splits that at least one task of ``name`` (a task or mixture) has; reads no data."""
    return {split for task in leaf_tasks(name) for split in task.splits}


def set_task_group(task_name: str, group: str) -> None:
    """Tags a task with an evaluation group (called by task modules at registration)."""
    if group not in EVAL_GROUPS:
        raise ValueError(f"Task {task_name!r}: unknown eval group {group!r}; use {EVAL_GROUPS}.")
    _task_groups[task_name] = group


def task_group(task_name: str) -> str:
    return _task_groups.get(task_name, DEFAULT_EVAL_GROUP)
