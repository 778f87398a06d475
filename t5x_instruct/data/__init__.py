"""Data side of t5x_instruct: SeqIO tasks -> batches of model features, and eval examples.

The only subpackage that imports SeqIO / TensorFlow; nothing outside it imports it eagerly, so
models, training steps and decoding stay TensorFlow-free.

Trainer-facing API:

* :func:`import_task_modules` (``['tasks.demo']``) registers tasks and mixtures.
* :func:`get_vocabulary` for the tokenizer (or take ``EvalExamples.vocabulary``).
* :class:`DataIterator` (or :func:`get_dataset`) for training batches with a resumable position.
* :func:`get_model_feature_lengths` for the feature shapes before the first batch.
* :func:`get_eval_examples` for per-task inputs to decode, targets, raw examples and metrics.
* :func:`get_score_examples` for score-metric (rank classification) tasks: rows, choices per
  example and model-feature batches for a scorer, and the task's metrics of the row scores.
* :func:`check_vocabulary_fits` before training/eval: the task vocabulary must fit the model.
"""

from t5x_instruct.data.evaluation import EvalExamples, get_eval_examples, trim_tokens
from t5x_instruct.data.feature_converters import (
    MODEL_TYPES,
    get_feature_converter,
    get_model_feature_lengths,
    required_task_features,
)
from t5x_instruct.data.metrics import (
    accuracy,
    bleu,
    exact_match,
    f1,
    normalize_squad,
    rouge,
    squad,
    strip_whitespace,
)
from t5x_instruct.data.pipeline import DataIterator, DatasetConfig, get_dataset
from t5x_instruct.data.registry import (
    EVAL_GROUPS,
    available_splits,
    get_mixture_or_task,
    import_task_modules,
    leaf_tasks,
    registered_names,
    set_task_group,
    task_group,
)
from t5x_instruct.data.scoring import (
    RankClassificationExample,
    ScoreBatch,
    ScoreExamples,
    get_score_examples,
)
from t5x_instruct.data.vocabularies import (
    VocabularyNotFoundError,
    VocabularySizeError,
    check_vocabulary_fits,
    get_vocabulary,
    sentencepiece_model_file,
)

__all__ = [
    "EVAL_GROUPS",
    "MODEL_TYPES",
    "DataIterator",
    "DatasetConfig",
    "EvalExamples",
    "RankClassificationExample",
    "ScoreBatch",
    "ScoreExamples",
    "VocabularyNotFoundError",
    "VocabularySizeError",
    "accuracy",
    "available_splits",
    "bleu",
    "check_vocabulary_fits",
    "exact_match",
    "f1",
    "get_dataset",
    "get_eval_examples",
    "get_feature_converter",
    "get_mixture_or_task",
    "get_model_feature_lengths",
    "get_score_examples",
    "get_vocabulary",
    "import_task_modules",
    "leaf_tasks",
    "normalize_squad",
    "registered_names",
    "required_task_features",
    "rouge",
    "sentencepiece_model_file",
    "set_task_group",
    "squad",
    "strip_whitespace",
    "task_group",
    "trim_tokens",
]
