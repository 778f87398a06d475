"""The demo mixture as IFS dialogues: each example's inputs are the instruction, its targets
the response (the embedded default of ``tools/train_ifs_classifier.py``).

Classifier data come from the training split; the instruction set from the validation
split, so the classifier never saw the instructions IFS is measured on.
"""

from __future__ import annotations

from t5x_instruct.plugins.ifs.data import Dialogue
from tasks.demo.generate import generate
from tasks.demo.task_types import ALL_TASK_TYPES, HELDOUT_TASK_TYPE


def demo_dialogues(split: str, per_type: int | None = None) -> list[Dialogue]:
    """The first ``per_type`` examples of ``split`` of every task type that has it (training
    templates), in task-type order."""
    out: list[Dialogue] = []
    for task_type in ALL_TASK_TYPES:
        if split == "train" and task_type is HELDOUT_TASK_TYPE:
            continue  # the held-out type's training data is the separate 'adapt' split
        examples = generate(task_type.name, split)[:per_type]
        out += [Dialogue(e.inputs, e.targets) for e in examples]
    return out
