"""What the sweep may name: registered tasks and mixtures, their sizes and eval groups.

:class:`SeqioCatalog` reads SeqIO's registries (imported lazily, when a sweep is resolved);
:class:`StaticCatalog` is the same interface over plain dicts, for planning sweeps of task
modules that are not installed and for tests.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from typing import Protocol


class Catalog(Protocol):
    def names(self) -> list[str]:
        """Every task and mixture name (for suggestions)."""
        ...

    def is_task(self, name: str) -> bool: ...

    def is_mixture(self, name: str) -> bool: ...

    def leaf_tasks(self, name: str) -> list[str]:
        """A mixture's tasks (recursively, in registration order) or ``[name]``."""
        ...

    def num_examples(self, task: str, split: str = "train") -> int: ...

    def group(self, task: str) -> str:
        """Evaluation group: ``train_tasks``, ``heldout_templates`` or ``heldout_task``."""
        ...


class StaticCatalog:
    """A catalog from dicts: ``tasks`` maps task -> train size, ``mixtures`` name -> members."""

    def __init__(
        self,
        tasks: Mapping[str, int],
        mixtures: Mapping[str, Sequence[str]] | None = None,
        groups: Mapping[str, str] | None = None,
    ) -> None:
        self._tasks = dict(tasks)
        self._mixtures = {k: list(v) for k, v in (mixtures or {}).items()}
        self._groups = dict(groups or {})

    def names(self) -> list[str]:
        return sorted({*self._tasks, *self._mixtures})

    def is_task(self, name: str) -> bool:
        return name in self._tasks

    def is_mixture(self, name: str) -> bool:
        return name in self._mixtures

    def leaf_tasks(self, name: str) -> list[str]:
        if name in self._tasks:
            return [name]
        out: list[str] = []
        for member in self._mixtures[name]:
            out += [t for t in self.leaf_tasks(member) if t not in out]
        return out

    def num_examples(self, task: str, split: str = "train") -> int:
        return self._tasks[task]

    def group(self, task: str) -> str:
        return self._groups.get(task, "train_tasks")

    def add_task(self, name: str, size: int, group: str = "train_tasks") -> None:
        """Registers a task (what a template provider does in a real catalog)."""
        self._tasks[name] = size
        self._groups[name] = group


class SeqioCatalog:
    """The live SeqIO registries after importing ``task_modules``."""

    def __init__(self, task_modules: Sequence[str] = ("tasks.demo",)) -> None:
        for module in task_modules:
            importlib.import_module(module)
        self._sizes: dict[tuple[str, str], int] = {}

    def names(self) -> list[str]:
        from t5x_instruct.data.registry import registered_names

        return registered_names()

    def is_task(self, name: str) -> bool:
        import seqio

        return name in seqio.TaskRegistry.names()

    def is_mixture(self, name: str) -> bool:
        import seqio

        return name in seqio.MixtureRegistry.names()

    def leaf_tasks(self, name: str) -> list[str]:
        import seqio

        if self.is_task(name):
            return [name]
        out: list[str] = []
        # Registration order (seqio's Mixture.tasks sorts by name), sub-mixtures recursively.
        for member in seqio.MixtureRegistry.get(name).rate_per_task_name:
            out += [t for t in self.leaf_tasks(member) if t not in out]
        return out

    def num_examples(self, task: str, split: str = "train") -> int:
        """The source's declared size, else the length of its (unshuffled) dataset: known
        without reading for in-memory sources, counted by one pass otherwise."""
        key = (task, split)
        if key not in self._sizes:
            import seqio
            import tensorflow as tf

            source = seqio.TaskRegistry.get(task).source
            n = source.num_input_examples(split)
            if n is None:
                ds = source.get_dataset(split=split, shuffle=False)
                n = int(ds.cardinality())
                if n < 0:  # unknown or infinite: count
                    n = int(ds.reduce(tf.constant(0, tf.int64), lambda c, _: c + 1))
            self._sizes[key] = int(n)
        return self._sizes[key]

    def group(self, task: str) -> str:
        from t5x_instruct.data.registry import task_group

        return task_group(task)
