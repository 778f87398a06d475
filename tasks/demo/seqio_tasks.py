"""SeqIO registration of the demo tasks and mixtures (examples come from ``generate``)."""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping

import seqio
import tensorflow as tf

from t5x_instruct.data.metrics import exact_match, strip_whitespace
from t5x_instruct.data.registry import set_task_group
from tasks.demo.generate import EVAL_SPLITS, generate
from tasks.demo.task_types import HELDOUT_TASK_TYPE, TRAINING_TASK_TYPES

VOCAB_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vocab", "demo.model")
# Every demo example fits these lengths, EOS included (tests/test_data_demo.py checks it).
TASK_FEATURE_LENGTHS = {"inputs": 48, "targets": 8}

TRAIN_MIXTURE = "demo_instructions"
HELDOUT_TEMPLATES_MIXTURE = "demo_instructions_heldout_templates"
HELDOUT_TASK = f"demo_heldout_{HELDOUT_TASK_TYPE.name}"
# The held-out task type with a training split ("adapt" examples): for adapting a trained
# model to it (prompt tuning, LoRA, fine-tuning); evaluate on HELDOUT_TASK.
ADAPT_TASK = f"demo_adapt_{HELDOUT_TASK_TYPE.name}"
EVAL_MIXTURE = "demo_eval"


def task_name(type_name: str, heldout_templates: bool = False) -> str:
    return f"demo_{type_name}" + ("_heldout_templates" if heldout_templates else "")


class _GeneratedSource(seqio.DataSource):
    """The generated examples of one task variant, sharded then shuffled in the source.

    Shuffling the raw strings here (a full, seeded permutation, fresh each epoch) is free,
    whereas SeqIO's task-level shuffle buffer would tokenise thousands of examples per task
    before the first batch. Sharding before shuffling keeps hosts' shards disjoint for any seed.
    No ``num_input_examples``: SeqIO would then cache the first (shuffled) epoch in memory and
    replay its order every epoch.
    """

    def __init__(
        self,
        type_name: str,
        heldout_templates: bool,
        splits: tuple[str, ...],
        split_map: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(splits=splits, performs_internal_shuffling=True)
        self._type_name = type_name
        self._heldout_templates = heldout_templates
        self._split_map = dict(split_map or {})

    @property
    def supports_arbitrary_sharding(self) -> bool:
        return True

    def list_shards(self, split: str) -> list[str]:
        return [split]

    def get_dataset(
        self,
        split: str = "train",
        shuffle: bool = True,
        seed: int | None = None,
        shard_info: seqio.ShardInfo | None = None,
        *,
        sequence_length: Mapping[str, int] | None = None,
        use_cached: bool = False,
        num_epochs: int | None = 1,
    ) -> tf.data.Dataset:
        del sequence_length, use_cached, num_epochs  # repetition is the Task's job
        examples = generate(
            self._type_name,
            self._split_map.get(split, split),
            heldout_templates=self._heldout_templates,
        )
        ds = tf.data.Dataset.from_tensor_slices(
            {"inputs": [e.inputs for e in examples], "targets": [e.targets for e in examples]}
        )
        if shard_info is not None and shard_info.num_shards > 1:
            ds = ds.shard(shard_info.num_shards, shard_info.index)
        if shuffle:
            ds = ds.shuffle(len(examples), seed=seed, reshuffle_each_iteration=True)
        return ds


@functools.cache
def _vocabulary() -> seqio.Vocabulary:
    if not os.path.exists(VOCAB_PATH):
        raise FileNotFoundError(
            f"Demo vocabulary {VOCAB_PATH} is missing; run tools/build_demo_vocab.py."
        )
    return seqio.SentencePieceVocabulary(VOCAB_PATH)


def _add_task(
    name: str,
    type_name: str,
    heldout_templates: bool,
    splits: tuple[str, ...],
    split_map: Mapping[str, str] | None = None,
) -> None:
    vocab = _vocabulary()
    seqio.TaskRegistry.remove(name)  # re-registration (module reload) replaces, not fails
    seqio.TaskRegistry.add(
        name,
        source=_GeneratedSource(type_name, heldout_templates, splits, split_map),
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
        shuffle_buffer_size=None,  # the source shuffles (see _GeneratedSource)
    )


def _add_mixture(name: str, tasks: list[str]) -> None:
    seqio.MixtureRegistry.remove(name)
    seqio.MixtureRegistry.add(name, tasks, default_rate=1.0)


def register() -> None:
    """Registers every demo task and mixture (safe to call again)."""
    train_tasks, heldout_template_tasks = [], []
    for task_type in TRAINING_TASK_TYPES:
        name = task_name(task_type.name)
        _add_task(name, task_type.name, False, ("train", *EVAL_SPLITS))
        set_task_group(name, "train_tasks")
        train_tasks.append(name)
        name = task_name(task_type.name, heldout_templates=True)
        _add_task(name, task_type.name, True, EVAL_SPLITS)
        set_task_group(name, "heldout_templates")
        heldout_template_tasks.append(name)
    _add_task(HELDOUT_TASK, HELDOUT_TASK_TYPE.name, False, EVAL_SPLITS)
    set_task_group(HELDOUT_TASK, "heldout_task")
    _add_task(
        ADAPT_TASK, HELDOUT_TASK_TYPE.name, False, ("train", *EVAL_SPLITS), {"train": "adapt"}
    )
    set_task_group(ADAPT_TASK, "heldout_task")
    # Equal rates: every training task has the same number of examples, so this is also
    # the examples-proportional mixture.
    _add_mixture(TRAIN_MIXTURE, train_tasks)
    _add_mixture(HELDOUT_TEMPLATES_MIXTURE, heldout_template_tasks)
    _add_mixture(EVAL_MIXTURE, [TRAIN_MIXTURE, HELDOUT_TEMPLATES_MIXTURE, HELDOUT_TASK])
