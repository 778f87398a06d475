"""Template variants of the demo tasks for mixture ablations (``tools/ablate.py``).

Importing this module registers the demo tasks and a template provider that can

* re-render a training task with its first ``k`` templates only (``demo_<type>_tpl<k>``): the
  same training problems, each given one of the ``k`` templates by a seeded draw, so a
  "1 template vs all" ablation changes the phrasings and nothing else. For the two task types
  whose splits are disjoint by rendered input (arithmetic, compare_numbers), training examples
  whose new rendering equals an evaluation input are dropped, as the original split does;
* split an evaluation task by template (``<task>_t<j>``, the same evaluation problems each
  rendered with template ``j``) for T0-style median and spread over templates: the held-out
  task's 5 templates, each training type's 2 held-out templates, or its 5 training templates.
"""

from __future__ import annotations

import functools
import random

import seqio
import tensorflow as tf

import tasks.demo  # noqa: F401  (registers the demo tasks first)
from t5x_instruct.ablation.providers import register_template_provider
from t5x_instruct.data.metrics import exact_match, strip_whitespace
from t5x_instruct.data.registry import set_task_group, task_group
from tasks.demo.generate import (
    DEFAULT_SEED,
    EVAL_SPLITS,
    Example,
    _problems,
    _render,
    task_type_by_name,
)
from tasks.demo.seqio_tasks import HELDOUT_TASK, _vocabulary, task_name
from tasks.demo.task_types import ALL_TASK_TYPES, HELDOUT_TASK_TYPE

_HELDOUT_SUFFIX = "_heldout_templates"


@functools.cache
def subset_examples(
    type_name: str, split: str, num_templates: int, seed: int = DEFAULT_SEED
) -> tuple[Example, ...]:
    """A training type's examples of ``split`` rendered with templates ``0..k-1`` only."""
    task_type = task_type_by_name(type_name)
    problems = _problems(type_name, seed)
    rng = random.Random(f"demo:{seed}:{type_name}:templates{num_templates}:{split}")
    eval_keys = set()
    if split == "train" and task_type.key_includes_template:
        eval_keys = {d.key(task_type) for s in EVAL_SPLITS for d in problems[s]}
    out = []
    for draw in problems[split]:
        template_id = rng.randrange(num_templates)
        if (draw.problem.key, template_id) in eval_keys:
            continue  # its rendering is an evaluation input
        out.append(_render(task_type, draw.problem, template_id, False))
    return tuple(out)


@functools.cache
def template_examples(
    type_name: str, split: str, template_id: int, heldout: bool, seed: int = DEFAULT_SEED
) -> tuple[Example, ...]:
    """Every evaluation problem of ``split`` rendered with one template."""
    task_type = task_type_by_name(type_name)
    return tuple(
        _render(task_type, d.problem, template_id, heldout)
        for d in _problems(type_name, seed)[split]
    )


class _ExamplesSource(seqio.DataSource):
    """Examples from a function of the split; sharded, then shuffled (as the demo's source)."""

    def __init__(self, examples_fn, splits: tuple[str, ...]) -> None:
        super().__init__(splits=splits, performs_internal_shuffling=True)
        self._examples_fn = examples_fn

    @property
    def supports_arbitrary_sharding(self) -> bool:
        return True

    def list_shards(self, split: str) -> list[str]:
        return [split]

    def get_dataset(
        self,
        split="train",
        shuffle=True,
        seed=None,
        shard_info=None,
        *,
        sequence_length=None,
        use_cached=False,
        num_epochs=1,
    ) -> tf.data.Dataset:
        del sequence_length, use_cached, num_epochs
        examples = self._examples_fn(split)
        ds = tf.data.Dataset.from_tensor_slices(
            {"inputs": [e.inputs for e in examples], "targets": [e.targets for e in examples]}
        )
        if shard_info is not None and shard_info.num_shards > 1:
            ds = ds.shard(shard_info.num_shards, shard_info.index)
        if shuffle:
            ds = ds.shuffle(len(examples), seed=seed, reshuffle_each_iteration=True)
        return ds


def _add_task(name: str, examples_fn, splits: tuple[str, ...], group: str) -> str:
    if name not in seqio.TaskRegistry.names():
        vocab = _vocabulary()
        seqio.TaskRegistry.add(
            name,
            source=_ExamplesSource(examples_fn, splits),
            output_features={
                "inputs": seqio.Feature(vocab, add_eos=True, required=True),
                "targets": seqio.Feature(vocab, add_eos=True),
            },
            preprocessors=[
                seqio.preprocessors.tokenize,
                seqio.CacheDatasetPlaceholder(),
                seqio.preprocessors.append_eos_after_trim,
            ],
            postprocess_fn=strip_whitespace,
            metric_fns=[exact_match],
            shuffle_buffer_size=None,
        )
    set_task_group(name, group)
    return name


class DemoTemplateProvider:
    """The :class:`~t5x_instruct.ablation.providers.TemplateProvider` of the demo tasks."""

    def _parse(self, task: str) -> tuple[str, bool] | None:
        """``(type name, held-out templates)`` of a demo training / eval task name."""
        for task_type in ALL_TASK_TYPES:
            if task_type is HELDOUT_TASK_TYPE:
                if task == HELDOUT_TASK:
                    return task_type.name, False
                continue
            if task == task_name(task_type.name):
                return task_type.name, False
            if task == task_name(task_type.name, heldout_templates=True):
                return task_type.name, True
        return None

    def handles(self, task: str) -> bool:
        return self._parse(task) is not None

    def num_templates(self, task: str) -> int:
        type_name, heldout = self._parse(task)  # type: ignore[misc]
        task_type = task_type_by_name(type_name)
        return len(task_type.heldout_templates if heldout else task_type.templates)

    def subset_task(self, task: str, num_templates: int) -> str:
        parsed = self._parse(task)
        if parsed is None or parsed[1] or task == HELDOUT_TASK:
            raise ValueError(f"{task!r} is not a demo training task.")
        type_name = parsed[0]
        if not 1 <= num_templates <= self.num_templates(task):
            raise ValueError(
                f"{task!r} has {self.num_templates(task)} templates, not {num_templates}."
            )
        return _add_task(
            f"{task}_tpl{num_templates}",
            functools.partial(_subset_split, type_name, num_templates),
            ("train", *EVAL_SPLITS),
            "train_tasks",
        )

    def per_template_tasks(self, task: str) -> list[str]:
        parsed = self._parse(task)
        if parsed is None:
            return []
        type_name, heldout = parsed
        return [
            _add_task(
                f"{task}_t{j}",
                functools.partial(_template_split, type_name, j, heldout),
                EVAL_SPLITS,
                task_group(task),
            )
            for j in range(self.num_templates(task))
        ]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DemoTemplateProvider)

    def __hash__(self) -> int:
        return hash(DemoTemplateProvider)


def _subset_split(type_name: str, num_templates: int, split: str) -> tuple[Example, ...]:
    return subset_examples(type_name, split, num_templates)


def _template_split(type_name: str, template_id: int, heldout: bool, split: str):
    return template_examples(type_name, split, template_id, heldout)


register_template_provider(DemoTemplateProvider())

__all__ = ["DemoTemplateProvider", "subset_examples", "template_examples"]
