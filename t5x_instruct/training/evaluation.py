"""Task metrics by greedy decoding (exact match for the demo), grouped per task.

The evaluator only needs what :class:`EvalSource` describes, which the data layer's
``EvalExamples`` provides; nothing here imports SeqIO or TensorFlow.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Protocol

import jax
import numpy as np

from t5x_instruct.decoding import greedy_decode
from t5x_instruct.training.train_state import ModelSpec, Params


class EvalSource(Protocol):
    task_name: str
    group: str
    inputs_text: Sequence[str]
    targets_text: Sequence[str]

    def __len__(self) -> int: ...

    def inputs_array(self, length: int) -> np.ndarray: ...

    def decode(self, token_ids: Sequence[int] | np.ndarray) -> str: ...

    def score(self, predictions: Sequence[str]) -> dict[str, float]: ...


@dataclasses.dataclass
class EvalResult:
    name: str
    group: str
    metrics: dict[str, float]
    num_examples: int
    samples: list[tuple[str, str, str]]  # (input, prediction, target)

    @property
    def exact_match(self) -> float:
        return self.metrics.get("exact_match", float("nan"))


class GreedyEvaluator:
    """Decodes every eval example with one fixed batch shape (a single compilation)."""

    def __init__(
        self,
        spec: ModelSpec,
        *,
        encoder_decoder: bool,
        prefix_lm: bool,
        batch_size: int,
        input_length: int,
        max_decode_length: int,
        eos_id: int = 1,
        num_samples: int = 3,
    ) -> None:
        self.encoder_decoder = encoder_decoder
        self.prefix_lm = prefix_lm
        self.batch_size = batch_size
        self.input_length = input_length
        self.num_samples = num_samples

        def decode(params: Params, batch: dict[str, Any]) -> Any:
            out = greedy_decode(
                spec.module(params), batch, max_decode_length=max_decode_length, eos_id=eos_id
            )
            return out.tokens

        self._decode = jax.jit(decode)

    def model_batch(self, inputs: np.ndarray) -> dict[str, np.ndarray]:
        """Decoder-only prompts match training: a leading 0 (shifted-in BOS), then inputs."""
        if self.encoder_decoder:
            return {"encoder_input_tokens": inputs}
        prompt = np.concatenate([np.zeros((inputs.shape[0], 1), inputs.dtype), inputs], axis=1)
        lengths = (inputs != 0).sum(axis=1).astype(np.int32) + 1
        batch = {"decoder_input_tokens": prompt, "prompt_lengths": lengths}
        if self.prefix_lm:
            positions = np.arange(prompt.shape[1])[None]
            batch["decoder_causal_attention"] = (positions < lengths[:, None]).astype(np.int32)
        return batch

    def predict(self, params: Params, source: EvalSource) -> list[np.ndarray]:
        """Generated token rows (``[max_decode_length]`` each), one per example in order."""
        inputs = source.inputs_array(self.input_length)
        rows: list[np.ndarray] = []
        for start in range(0, inputs.shape[0], self.batch_size):
            chunk = inputs[start : start + self.batch_size]
            real = chunk.shape[0]
            if real < self.batch_size:  # pad with copies: same shape, no recompilation
                chunk = np.concatenate([chunk, np.repeat(chunk[:1], self.batch_size - real, 0)])
            tokens = np.asarray(jax.device_get(self._decode(params, self.model_batch(chunk))))
            rows.extend(tokens[:real])
        return rows

    def evaluate(self, params: Params, sources: Sequence[EvalSource]) -> list[EvalResult]:
        results = []
        for source in sources:
            predictions = [source.decode(row) for row in self.predict(params, source)]
            samples = [
                (source.inputs_text[i], predictions[i], source.targets_text[i])
                for i in range(min(self.num_samples, len(predictions)))
            ]
            results.append(
                EvalResult(
                    name=source.task_name,
                    group=source.group,
                    metrics=source.score(predictions),
                    num_examples=len(predictions),
                    samples=samples,
                )
            )
        return results
