"""Hooks through which a task module tells the ablation tool about its templates.

"Templates per task" and "median over templates" need knowledge only the task module has
(which templates a task renders, how to render an example with a subset of them). A module
registers a :class:`TemplateProvider`; the tool asks the first provider that handles a task.
Providers register SeqIO tasks themselves, so this module stays free of SeqIO.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class TemplateProvider(Protocol):
    """What the ablation tool needs to vary templates of a task module's tasks."""

    def handles(self, task: str) -> bool:
        """Whether ``task`` (a registered task name) belongs to this provider."""
        ...

    def num_templates(self, task: str) -> int:
        """How many training templates the training task ``task`` renders with."""
        ...

    def subset_task(self, task: str, num_templates: int) -> str:
        """Registers (idempotently) and returns a training task with the same examples as
        ``task``, rendered with its first ``num_templates`` templates only."""
        ...

    def per_template_tasks(self, task: str) -> list[str]:
        """Registers and returns one evaluation task per template of the evaluation task
        ``task`` (same examples, each rendered with that template), in template order;
        ``[]`` when ``task`` cannot be split by template."""
        ...


_PROVIDERS: list[TemplateProvider] = []


def register_template_provider(provider: TemplateProvider) -> None:
    """Adds ``provider`` (a second registration of an equal provider is ignored)."""
    if not isinstance(provider, TemplateProvider):
        raise TypeError(f"{provider!r} does not implement TemplateProvider.")
    if provider not in _PROVIDERS:
        _PROVIDERS.append(provider)


def template_provider(task: str) -> TemplateProvider | None:
    """The first registered provider that handles ``task``, if any."""
    return next((p for p in _PROVIDERS if p.handles(task)), None)


def clear_template_providers() -> None:
    """Forget every provider (tests)."""
    _PROVIDERS.clear()
