"""Data side of t5x_instruct: SeqIO tasks -> batches of model features, and eval examples.

The only subpackage that imports SeqIO / TensorFlow; nothing outside it imports it eagerly, so
models, training steps and decoding stay TensorFlow-free.

Trainer-facing API:

* :func:`import_task_modules` (``['tasks.demo']``) registers tasks and mixtures.
* :func:`get_vocabulary` for the tokenizer (or take ``EvalExamples.vocabulary``).
* :class:`DataIterator` (or :func:`get_dataset`) for training batches with a resumable position.
* :func:`get_model_feature_lengths` for the feature shapes before the first batch.
* :func:`get_eval_examples` for per-task inputs to greedy-decode, targets and metrics.
"""

from t5x_instruct.data.evaluation import EvalExamples, get_eval_examples
from t5x_instruct.data.feature_converters import (
    MODEL_TYPES,
    get_feature_converter,
    get_model_feature_lengths,
    required_task_features,
)
from t5x_instruct.data.metrics import exact_match, strip_whitespace
from t5x_instruct.data.pipeline import DataIterator, DatasetConfig, get_dataset
from t5x_instruct.data.registry import (
    EVAL_GROUPS,
    get_mixture_or_task,
    import_task_modules,
    leaf_tasks,
    registered_names,
    set_task_group,
    task_group,
)
from t5x_instruct.data.vocabularies import get_vocabulary

__all__ = [
    "EVAL_GROUPS",
    "MODEL_TYPES",
    "DataIterator",
    "DatasetConfig",
    "EvalExamples",
    "exact_match",
    "get_dataset",
    "get_eval_examples",
    "get_feature_converter",
    "get_mixture_or_task",
    "get_model_feature_lengths",
    "get_vocabulary",
    "import_task_modules",
    "leaf_tasks",
    "registered_names",
    "required_task_features",
    "set_task_group",
    "strip_whitespace",
    "task_group",
]
