"""A JSONL file of raw inputs (and optional targets) as evaluation examples, for inference.

Each non-blank line is a JSON object; ``input_field`` holds the text to decode (or to score
``target_field`` against). Texts are tokenised with the given vocabulary plus EOS, exactly as
the tasks' ``add_eos`` features are, and truncated at use as training truncates them.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import seqio

from t5x_instruct.data.evaluation import EvalExamples
from t5x_instruct.data.vocabularies import resolve_vocabulary
from t5x_instruct.errors import UserInputError, not_utf8
from t5x_instruct.runtime import paths


def _identity(output: Any, example: Any = None, is_target: bool = False) -> Any:
    del example, is_target
    return output


def _field(record: dict, name: str, where: str, binding: str) -> str:
    value = record[name]
    if not isinstance(value, str):
        raise UserInputError(
            f"{where}: field {name!r} is a {type(value).__name__}, not a string; "
            f"point {binding} at a text field."
        )
    return value


def read_jsonl_examples(
    path: str,
    vocabulary: seqio.Vocabulary,
    *,
    input_field: str = "inputs",
    target_field: str = "targets",
    require_targets: bool = False,
    max_examples: int | None = None,
    binding_prefix: str = "infer",
) -> tuple[EvalExamples, tuple[bool, ...]]:
    """The file's lines as :class:`EvalExamples` (named after the file) and, per line,
    whether it has targets (``targets_text`` is ``''`` where not).

    Raises:
      UserInputError: naming the file and line number of a line that is not a JSON object,
        lacks ``input_field`` (or ``target_field`` when ``require_targets``), holds a
        non-string there, or is not UTF-8; and for a missing or empty file.
    """
    source = paths.resolve(path, what=f"{binding_prefix}.input_file")
    if not source.is_file():
        raise UserInputError(f"{binding_prefix}.input_file = {path!r} does not exist.")
    vocab = resolve_vocabulary(vocabulary)
    eos = vocab.eos_id
    inputs_text: list[str] = []
    targets_text: list[str] = []
    has_targets: list[bool] = []
    with source.open("rb") as f:  # decoded per line: a bad byte is reported with its line
        for number, raw in enumerate(f, start=1):
            if max_examples is not None and len(inputs_text) >= max_examples:
                break
            if not raw.strip():
                continue
            where = f"{path}, line {number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise not_utf8(where, raw, exc) from exc
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserInputError(f"{where}: not valid JSON ({exc.msg}).") from exc
            if not isinstance(record, dict):
                raise UserInputError(f"{where}: expected a JSON object, got {line.strip()[:40]}")
            if input_field not in record:
                raise UserInputError(
                    f"{where}: no {input_field!r} field (it has {sorted(record)}); add it, or "
                    f"set {binding_prefix}.input_field to the field holding the inputs."
                )
            inputs_text.append(_field(record, input_field, where, f"{binding_prefix}.input_field"))
            if target_field in record:
                targets_text.append(
                    _field(record, target_field, where, f"{binding_prefix}.target_field")
                )
                has_targets.append(True)
            elif require_targets:
                raise UserInputError(
                    f"{where}: no {target_field!r} field, which scoring needs (it has "
                    f"{sorted(record)}); add it, or set {binding_prefix}.target_field."
                )
            else:
                targets_text.append("")
                has_targets.append(False)
    if not inputs_text:
        raise UserInputError(f"{binding_prefix}.input_file = {path!r} holds no JSON lines.")

    def tokens(text: str) -> np.ndarray:
        return np.asarray([*vocab.encode(text), eos], np.int32)

    name = os.path.splitext(os.path.basename(path))[0]
    examples = EvalExamples(
        task_name=name,
        group="inference",
        split="jsonl",
        input_tokens=tuple(tokens(t) for t in inputs_text),
        inputs_text=tuple(inputs_text),
        targets_text=tuple(targets_text),
        vocabulary=vocab,
        postprocess_fn=_identity,
        metric_fns=(),
        target_tokens=tuple(tokens(t) for t in targets_text),
        trim_eos={"inputs": eos, "targets": eos},
    )
    return examples, tuple(has_targets)
