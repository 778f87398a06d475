"""Instruction Following Score (AlShikh et al. 2023): an eval metric and an early-stop rule.

``train.plugins = [@InstructionFollowingScore()]`` (see ``gin/plugins/ifs.gin``) with a
classifier directory written by ``tools/train_ifs_classifier.py``. :mod:`.data` builds the
instruction set and the classifier data from dialogues; :mod:`.classifier` is the
response-tone classifier (a tiny T5 scored by rank classification).
"""

from t5x_instruct.plugins.ifs.classifier import (
    LABELS,
    ResponseClassifier,
    ToneClassifier,
    classification_metrics,
)
from t5x_instruct.plugins.ifs.data import (
    ClassifierExample,
    Dialogue,
    Fragments,
    Instruction,
    classifier_examples,
    fragment,
    instruction_set,
    read_dialogues,
)
from t5x_instruct.plugins.ifs.plugin import (
    InstructionFollowingScore,
    InstructionSource,
    ifs_scores,
    plateaued,
)

__all__ = [
    "LABELS",
    "ClassifierExample",
    "Dialogue",
    "Fragments",
    "Instruction",
    "InstructionFollowingScore",
    "InstructionSource",
    "ResponseClassifier",
    "ToneClassifier",
    "classification_metrics",
    "classifier_examples",
    "fragment",
    "ifs_scores",
    "instruction_set",
    "plateaued",
    "read_dialogues",
]
