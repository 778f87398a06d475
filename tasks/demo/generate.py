"""Deterministic generation of the demo splits (pure Python, no downloads).

For every task type, validation and test *problems* are drawn first (distinct, and test
disjoint from validation); training problems are then drawn while rejecting any whose key
belongs to an evaluation problem, so no example is shared between splits. Evaluation problems
are rendered twice: with a training template (``demo_<type>``) and with a held-out template
(``demo_<type>_heldout_templates``). The held-out task type has evaluation splits only.
Everything is a function of ``seed``; the same seed always yields the same examples.
"""

from __future__ import annotations

import dataclasses
import functools
import random
from collections.abc import Hashable

from tasks.demo.task_types import ALL_TASK_TYPES, HELDOUT_TASK_TYPE, Problem, TaskType

DEFAULT_SEED = 1234
# "adapt": training data for the held-out task type, for adaptation experiments only (a
# plug-in adapting a trained model to the held-out task); never in the training mixture.
SPLIT_SIZES: dict[str, int] = {"train": 3000, "validation": 200, "test": 200, "adapt": 1000}
EVAL_SPLITS = ("validation", "test")
_MAX_TRIES_PER_EXAMPLE = 200


@dataclasses.dataclass(frozen=True)
class Example:
    inputs: str
    targets: str
    task_type: str
    template_id: int  # index into the task type's templates or heldout_templates
    heldout_template: bool


@dataclasses.dataclass(frozen=True)
class _Draw:
    problem: Problem
    template_id: int

    def key(self, task_type: TaskType) -> Hashable:
        return (
            (self.problem.key, self.template_id)
            if task_type.key_includes_template
            else self.problem.key
        )


def task_type_by_name(name: str) -> TaskType:
    for task_type in ALL_TASK_TYPES:
        if task_type.name == name:
            return task_type
    known = ", ".join(t.name for t in ALL_TASK_TYPES)
    raise KeyError(f"Unknown demo task type {name!r}; known types: {known}.")


def _render(task_type: TaskType, problem: Problem, template_id: int, heldout: bool) -> Example:
    templates = task_type.heldout_templates if heldout else task_type.templates
    try:
        inputs = templates[template_id].format(**problem.fields)
    except KeyError as e:
        raise KeyError(
            f"Template {template_id} (heldout={heldout}) of demo task type {task_type.name!r} "
            f"uses field {e} that its problem sampler does not provide."
        ) from e
    return Example(inputs, problem.answer, task_type.name, template_id, heldout)


def _draw(task_type: TaskType, rng: random.Random) -> _Draw:
    return _Draw(task_type.sample(rng), rng.randrange(len(task_type.templates)))


@functools.cache
def _problems(task_type_name: str, seed: int) -> dict[str, tuple[_Draw, ...]]:
    task_type = task_type_by_name(task_type_name)
    rng = random.Random(f"demo:{seed}:{task_type.name}")
    heldout = task_type is HELDOUT_TASK_TYPE
    splits = (*EVAL_SPLITS, "adapt") if heldout else ("train", *EVAL_SPLITS)
    taken: set[Hashable] = set()
    drawn: dict[str, tuple[_Draw, ...]] = {}
    # Evaluation problems first, so training data avoids them (and adding the "adapt" split,
    # drawn last, left every earlier split unchanged).
    for split in (*EVAL_SPLITS, "train", "adapt"):
        if split not in splits:
            continue
        distinct = split in EVAL_SPLITS  # training may repeat a problem; evaluation may not
        out: list[_Draw] = []
        new_keys: set[Hashable] = set()
        for _ in range(SPLIT_SIZES[split] * _MAX_TRIES_PER_EXAMPLE):
            if len(out) == SPLIT_SIZES[split]:
                break
            draw = _draw(task_type, rng)
            key = draw.key(task_type)
            if key in taken or (distinct and key in new_keys):
                continue
            new_keys.add(key)
            out.append(draw)
        else:
            raise RuntimeError(
                f"Demo task type {task_type.name!r}: could only draw {len(out)} of "
                f"{SPLIT_SIZES[split]} disjoint {split} examples; its problem space is too small."
            )
        if split in EVAL_SPLITS:
            taken |= new_keys
        drawn[split] = tuple(out)
    return drawn


@functools.cache
def generate(
    task_type_name: str, split: str, *, heldout_templates: bool = False, seed: int = DEFAULT_SEED
) -> tuple[Example, ...]:
    """Examples of one task type and split; ``heldout_templates`` renders with unseen templates.

    Raises ``ValueError`` for a split the variant does not have (held-out templates and the
    held-out task type exist for evaluation splits only).
    """
    task_type = task_type_by_name(task_type_name)
    problems = _problems(task_type.name, seed)
    if split not in problems or (heldout_templates and split == "train"):
        raise ValueError(
            f"Demo task type {task_type.name!r} (heldout_templates={heldout_templates}) has no "
            f"{split!r} split; it has {sorted(problems)}."
        )
    if not heldout_templates:
        return tuple(_render(task_type, d.problem, d.template_id, False) for d in problems[split])
    if not task_type.heldout_templates:
        raise ValueError(f"Demo task type {task_type.name!r} has no held-out templates.")
    # A separate stream so that choosing held-out templates never perturbs other splits.
    rng = random.Random(f"demo:{seed}:{task_type.name}:heldout:{split}")
    n = len(task_type.heldout_templates)
    return tuple(_render(task_type, d.problem, rng.randrange(n), True) for d in problems[split])


def corpus(seed: int = DEFAULT_SEED) -> list[str]:
    """Every input and target string of every split and variant (the vocab training text)."""
    lines: list[str] = []
    for task_type in ALL_TASK_TYPES:
        variants = [False, True] if task_type.heldout_templates else [False]
        for split in ("train", *EVAL_SPLITS):
            for heldout in variants:
                if split == "train" and (heldout or task_type is HELDOUT_TASK_TYPE):
                    continue
                for ex in generate(task_type.name, split, heldout_templates=heldout, seed=seed):
                    lines.extend((ex.inputs, ex.targets))
    return lines
