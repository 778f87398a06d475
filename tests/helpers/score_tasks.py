"""A P3-style ``_score_eval`` rank-classification task on the demo vocabulary, registered the
way tasks/p3 registers its twins (rank_classification, tokenize, accuracy of row scores)."""

from __future__ import annotations

import seqio
import tensorflow as tf

import tasks.demo
from t5x_instruct.data.rank_classification import (
    rank_classification,
    rank_classification_accuracy,
    rank_classification_postprocessor,
)
from t5x_instruct.data.registry import set_task_group

RC_EXAMPLES = [
    {"inputs": "Which day is in this sentence? On Monday we met.", "answer_choices":
     ["Monday", "Friday"], "targets": "Monday"},
    {"inputs": "Pick the city: Sam drove to Vienna.", "answer_choices":
     ["Vienna", "Prague", "Sunday"], "targets": "Vienna"},
    {"inputs": "Is it a day?", "answer_choices": ["yes", "no"], "targets": "no"},
    # longer than 16 tokens: truncated as training truncates it
    {"inputs": "Give the day of the week. Last Sunday Wei took a long train ride to Prague "
     "and then to Vienna.", "answer_choices": ["Sunday", "Saturday", "Monday"],
     "targets": "Sunday"},
    {"inputs": "Which one is a city?", "answer_choices": ["Prague", "Tuesday"],
     "targets": "Prague"},
    {"inputs": "On Friday, Ana walked.", "answer_choices": ["Thursday", "Friday"],
     "targets": "Friday"},
]  # fmt: skip


def register_score_eval_mixture(task: str, mixture: str, splits=("validation", "test")) -> None:
    """``task`` (group ``heldout_task``) and ``mixture`` = task + the demo's held-out task."""
    vocab = seqio.SentencePieceVocabulary(tasks.demo.VOCAB_PATH)

    def dataset_fn(split, shuffle_files, seed=None):
        return tf.data.Dataset.from_generator(
            lambda: iter(RC_EXAMPLES),
            output_signature={
                "inputs": tf.TensorSpec([], tf.string),
                "answer_choices": tf.TensorSpec([None], tf.string),
                "targets": tf.TensorSpec([], tf.string),
            },
        )

    seqio.TaskRegistry.remove(task)
    seqio.TaskRegistry.add(
        task,
        source=seqio.FunctionDataSource(dataset_fn, splits=list(splits)),
        output_features={
            "inputs": seqio.Feature(vocab, add_eos=True),
            "targets": seqio.Feature(vocab, add_eos=True),
        },
        preprocessors=[
            rank_classification,
            seqio.preprocessors.tokenize,
            seqio.CacheDatasetPlaceholder(),
            seqio.preprocessors.append_eos_after_trim,
        ],
        postprocess_fn=rank_classification_postprocessor,
        metric_fns=[rank_classification_accuracy],
    )
    set_task_group(task, "heldout_task")
    seqio.MixtureRegistry.remove(mixture)
    seqio.MixtureRegistry.add(mixture, [task, tasks.demo.HELDOUT_TASK], default_rate=1.0)


def remove(task: str, mixture: str) -> None:
    seqio.MixtureRegistry.remove(mixture)
    seqio.TaskRegistry.remove(task)
