"""Gin glue that registers a sweep variant's mixtures inside the training process.

``gin/ablations/variant.gin`` binds ``MIXTURE_OR_TASK_NAME = @ablation_train_mixture()``;
``tools/ablate.py`` passes the variant's tasks and rates as bindings, so one plain
``python -m t5x_instruct.train ...`` command line carries everything the run needs (no side
files, which matters on remote machines). The calls import the data layer (seqio) lazily,
so importing this module does not.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

import gin

from t5x_instruct.ablation.providers import template_provider
from t5x_instruct.errors import UserInputError


def _import(modules: Sequence[str]) -> None:
    for module in modules:
        importlib.import_module(module)


def _provider(task: str):
    provider = template_provider(task)
    if provider is None:
        raise UserInputError(
            f"Task {task!r} has no template provider; add the task module that registers one "
            "to ablation_*_mixture.task_modules (for the demo tasks: 'tasks.demo.ablation')."
        )
    return provider


@gin.configurable
def ablation_train_mixture(
    name: str = gin.REQUIRED,
    components: Sequence[tuple[str, float, int | None]] = gin.REQUIRED,
    task_modules: Sequence[str] = ("tasks.demo",),
) -> str:
    """Registers mixture ``name`` of ``(task, rate, templates)`` and returns its name;
    ``templates`` (or ``None`` for all) re-renders the task with its first templates only."""
    from t5x_instruct.data.custom import register_mixture

    _import(task_modules)
    pairs = []
    for task, rate, templates in components:
        if templates is not None:
            task = _provider(task).subset_task(task, int(templates))
        pairs.append((task, float(rate)))
    register_mixture(name, pairs)
    return name


@gin.configurable
def ablation_eval_mixture(
    name: str = gin.REQUIRED,
    tasks: Sequence[tuple[str, bool]] = gin.REQUIRED,
    task_modules: Sequence[str] = ("tasks.demo",),
) -> str:
    """Registers eval mixture ``name``: each ``(task, per_template)`` as itself or, when
    ``per_template``, as one task per template (for median / spread over templates)."""
    from t5x_instruct.data.custom import register_mixture

    _import(task_modules)
    names: list[str] = []
    for task, per_template in tasks:
        names += _provider(task).per_template_tasks(task) if per_template else [task]
    register_mixture(name, [(t, 1.0) for t in names])
    return name
