"""Exact-match evaluation by greedy decoding, grouped per task."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from t5x_instruct.decoding import greedy_decode
from t5x_instruct.training.train_state import ModelSpec, Params


@dataclasses.dataclass
class EvalSet:
    """Tokenised inputs (``[n, length]``, 0-padded) and target strings of one task/split."""

    name: str
    inputs: np.ndarray
    targets: Sequence[str]
    group: str = "train_tasks"  # e.g. train_tasks / heldout_templates / heldout_task


@dataclasses.dataclass
class EvalResult:
    name: str
    group: str
    exact_match: float
    num_examples: int
    samples: list[tuple[str, str, str]]  # (input, prediction, target)


def _normalise(text: str) -> str:
    return " ".join(text.strip().split())


class ExactMatchEvaluator:
    """Decodes every eval example with a fixed batch shape (one compilation) and scores it."""

    def __init__(
        self,
        spec: ModelSpec,
        *,
        encoder_decoder: bool,
        prefix_lm: bool,
        decode_text: Callable[[Sequence[int]], str],
        batch_size: int,
        max_decode_length: int,
        eos_id: int = 1,
        num_samples: int = 3,
    ) -> None:
        self.encoder_decoder = encoder_decoder
        self.prefix_lm = prefix_lm
        self.decode_text = decode_text
        self.batch_size = batch_size
        self.num_samples = num_samples

        def decode(params: Params, batch: dict[str, Any]) -> Any:
            out = greedy_decode(
                spec.module(params), batch, max_decode_length=max_decode_length, eos_id=eos_id
            )
            return out.tokens

        self._decode = jax.jit(decode)

    def _model_batch(self, inputs: np.ndarray) -> dict[str, np.ndarray]:
        if self.encoder_decoder:
            return {"encoder_input_tokens": inputs}
        # Decoder-only prompts match training: a leading 0 (shifted-right BOS) then inputs.
        prompt = np.concatenate([np.zeros((inputs.shape[0], 1), inputs.dtype), inputs], axis=1)
        batch = {"decoder_input_tokens": prompt}
        lengths = np.maximum((prompt != 0).cumsum(1).argmax(1) + 1, 1).astype(np.int32)
        batch["prompt_lengths"] = lengths
        if self.prefix_lm:
            batch["decoder_causal_attention"] = (
                np.arange(prompt.shape[1])[None] < lengths[:, None]
            ).astype(np.int32)
        return batch

    def predict(self, params: Params, inputs: np.ndarray) -> list[str]:
        predictions: list[str] = []
        n = inputs.shape[0]
        for start in range(0, n, self.batch_size):
            chunk = inputs[start : start + self.batch_size]
            pad = self.batch_size - chunk.shape[0]
            if pad:
                chunk = np.concatenate([chunk, np.repeat(chunk[:1], pad, axis=0)], axis=0)
            tokens = np.asarray(jax.device_get(self._decode(params, self._model_batch(chunk))))
            for row in tokens[: self.batch_size - pad]:
                ids = [int(t) for t in row]
                ids = ids[: ids.index(1)] if 1 in ids else ids
                predictions.append(self.decode_text([t for t in ids if t != 0]))
        return predictions

    def evaluate(self, params: Params, eval_sets: Sequence[EvalSet]) -> list[EvalResult]:
        results = []
        for eval_set in eval_sets:
            predictions = self.predict(params, eval_set.inputs)
            hits = [_normalise(p) == _normalise(t) for p, t in zip(predictions, eval_set.targets)]
            samples = [
                (
                    self.decode_text([t for t in eval_set.inputs[i] if t not in (0, 1)]),
                    predictions[i],
                    eval_set.targets[i],
                )
                for i in range(min(self.num_samples, len(predictions)))
            ]
            results.append(
                EvalResult(
                    name=eval_set.name,
                    group=eval_set.group,
                    exact_match=float(np.mean(hits)) if hits else 0.0,
                    num_examples=len(hits),
                    samples=samples,
                )
            )
        return results
