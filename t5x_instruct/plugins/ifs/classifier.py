"""The IFS response-tone classifier: a small T5 that tells answers from continuations.

Why this design: the paper fine-tunes BERT with a classification head; here the classifier
is an ordinary model of this framework (a tiny T5 v1.1) trained by ``training.loop.train``
on a SeqIO task whose targets are the words ``answer`` / ``continuation``, and saved as an
ordinary checkpoint. It classifies by *rank classification*: the log-likelihood of each
label given the text (``decoding.score_batch``), so every text gets exactly one of the two
labels and a probability ``p(answer) = softmax(log-likelihoods)[answer]``, never an
unparseable generation.

A classifier directory holds ``checkpoints/`` (the training run), ``ifs_classifier.json``
(architecture, input length, labels, held-out metrics), ``spiece.model`` (its vocabulary)
and ``instructions.jsonl`` (the instruction set built from the same dialogues).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from t5x_instruct import partitioning
from t5x_instruct.decoding import score_batch
from t5x_instruct.errors import UserInputError
from t5x_instruct.models import T5Config, build_model
from t5x_instruct.training.train_state import ModelSpec, Params

LABELS = ("answer", "continuation")  # index 0 is the positive class (answer-like)
CONFIG_FILE = "ifs_classifier.json"
VOCAB_FILE = "spiece.model"
INSTRUCTIONS_FILE = "instructions.jsonl"


class Vocabulary(Protocol):
    """What the IFS code needs of a tokenizer (SeqIO vocabularies have it)."""

    @property
    def eos_id(self) -> int | None: ...

    @property
    def pad_id(self) -> int: ...

    def encode(self, s: str) -> Sequence[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class ResponseClassifier(Protocol):
    """Anything that gives ``p(answer-like)`` per text (the plug-in's classifier slot)."""

    def answer_probability(self, texts: Sequence[str]) -> np.ndarray: ...


def classifier_model_config(vocab_size: int) -> T5Config:
    """The default architecture: 2 encoder layers, 1 decoder layer, width 64 (CPU-sized)."""
    return T5Config(
        vocab_size=-(-vocab_size // 128) * 128,
        emb_dim=64,
        num_heads=2,
        head_dim=32,
        mlp_dim=128,
        num_encoder_layers=2,
        num_decoder_layers=1,
        dropout_rate=0.0,
    )


def encode_rows(vocabulary: Vocabulary, texts: Sequence[str], length: int) -> np.ndarray:
    """``[len(texts), length]`` int32 ids with EOS, cut as the training pipeline cuts them
    (the first ``length - 1`` ids, then EOS), right-padded with 0."""
    eos = vocabulary.eos_id
    out = np.zeros((len(texts), length), np.int32)
    for i, text in enumerate(texts):
        ids = [*vocabulary.encode(text)][: length - 1] + ([eos] if eos is not None else [])
        out[i, : len(ids)] = ids
    return out


def decode_row(vocabulary: Vocabulary, row: Sequence[int] | np.ndarray) -> str:
    """Text of a generated row up to (excluding) the first EOS; padding dropped."""
    ids = [int(i) for i in np.asarray(row).reshape(-1)]
    if vocabulary.eos_id is not None and vocabulary.eos_id in ids:
        ids = ids[: ids.index(vocabulary.eos_id)]
    return vocabulary.decode([i for i in ids if i != vocabulary.pad_id])


class ToneClassifier:
    """Rank classification of texts between ``labels`` by a trained encoder-decoder.

    Batches have one fixed shape (``batch_size`` texts, both labels scored in one call), so
    a classifier compiles once however many texts it is given.
    """

    def __init__(
        self,
        spec: ModelSpec,
        params: Params,
        vocabulary: Vocabulary,
        *,
        input_length: int,
        labels: Sequence[str] = LABELS,
        batch_size: int = 64,
    ) -> None:
        if len(labels) != 2:
            raise UserInputError(f"An IFS classifier has two labels, got {list(labels)}.")
        self.vocabulary = vocabulary
        self.input_length = input_length
        self.labels = tuple(labels)
        self.batch_size = batch_size
        self._params = params
        targets = [[*vocabulary.encode(label), vocabulary.eos_id] for label in self.labels]
        width = max(map(len, targets))
        self._targets = np.zeros((2, width), np.int32)
        for j, ids in enumerate(targets):
            self._targets[j, : len(ids)] = ids

        def scores(params: Params, inputs: jax.Array, targets: jax.Array) -> jax.Array:
            b = inputs.shape[0]
            # Rows [0, b) score label 0 and rows [b, 2b) label 1, in one forward pass.
            enc = jnp.concatenate([inputs, inputs], axis=0)
            tgt = jnp.repeat(targets, b, axis=0)
            dec_in = jnp.pad(tgt[:, :-1], ((0, 0), (1, 0)))
            batch = {
                "encoder_input_tokens": enc,
                "decoder_input_tokens": dec_in,
                "decoder_target_tokens": tgt,
                "decoder_loss_weights": (tgt != 0).astype(jnp.int32),
            }
            out = score_batch(spec.module(params), batch).sequence_scores
            return out.reshape(2, b).T

        self._scores = jax.jit(scores)

    def log_likelihoods(self, texts: Sequence[str]) -> np.ndarray:
        """``[len(texts), 2]``: log p(label | text) of each label (EOS included)."""
        rows = encode_rows(self.vocabulary, list(texts), self.input_length)
        out = []
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start : start + self.batch_size]
            real = chunk.shape[0]
            if real < self.batch_size:  # pad with copies: same shape, no recompilation
                chunk = np.concatenate([chunk, np.repeat(chunk[:1], self.batch_size - real, 0)])
            scores = self._scores(self._params, chunk, self._targets)
            out.append(np.asarray(jax.device_get(scores))[:real])
        return np.concatenate(out) if out else np.zeros((0, 2), np.float32)

    def answer_probability(self, texts: Sequence[str]) -> np.ndarray:
        """``p(answer-like)`` per text: the softmax of the two labels' log-likelihoods."""
        ll = self.log_likelihoods(texts)
        return 1.0 / (1.0 + np.exp(ll[:, 1] - ll[:, 0]))

    @classmethod
    def load(cls, directory: str, *, batch_size: int = 64) -> ToneClassifier:
        """The classifier saved in ``directory`` (see the module docstring), on one device."""
        from t5x_instruct.data.vocabularies import make_vocabulary  # lazy: seqio
        from t5x_instruct.training.param_checkpoints import restore_model_params

        config = read_classifier_config(directory)
        vocabulary = make_vocabulary(
            "sentencepiece", os.path.join(directory, VOCAB_FILE), binding=f"{directory} vocab"
        )
        # Every field is passed, so no gin binding of the run (T5Config.*) reaches it.
        model_config = T5Config(**config["model"])
        spec = ModelSpec.create(lambda: build_model(model_config, seed=0))
        mesh = partitioning.create_mesh(
            partitioning.MeshConfig(
                data=1, fsdp=1, tensor=1, dcn_data=1, dcn_fsdp=1, dcn_tensor=1, axis_type="auto"
            ),
            devices=jax.local_devices()[:1],
        )
        params = restore_model_params(directory, spec, mesh, partitioning.data_parallel_rules())
        return cls(
            spec,
            params,
            vocabulary,
            input_length=int(config["input_length"]),
            labels=config["labels"],
            batch_size=batch_size,
        )


def write_classifier_config(
    directory: str,
    model: T5Config,
    *,
    input_length: int,
    labels: Sequence[str] = LABELS,
    extra: Mapping[str, Any] | None = None,
) -> str:
    path = os.path.join(directory, CONFIG_FILE)
    payload = {
        "model": dataclasses.asdict(model),
        "input_length": input_length,
        "labels": list(labels),
        **dict(extra or {}),
    }
    with open(path, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=2)
    return path


def read_classifier_config(directory: str) -> dict[str, Any]:
    path = os.path.join(directory, CONFIG_FILE)
    if not os.path.isfile(path):
        raise UserInputError(
            f"{directory} holds no IFS classifier ({CONFIG_FILE} missing). Train one with "
            f"`python tools/train_ifs_classifier.py --model_dir={directory}` (the demo "
            "default takes a few minutes on CPU) and bind IFS_CLASSIFIER_DIR to it."
        )
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def classification_metrics(labels: Sequence[int], predicted: Sequence[int]) -> dict[str, float]:
    """Accuracy, and precision / recall of the positive class (1 = answer-like)."""
    y = np.asarray(labels, bool)
    p = np.asarray(predicted, bool)
    tp = int(np.sum(y & p))
    return {
        "accuracy": float(np.mean(y == p)) if len(y) else float("nan"),
        "precision": tp / int(np.sum(p)) if np.sum(p) else float("nan"),
        "recall": tp / int(np.sum(y)) if np.sum(y) else float("nan"),
        "examples": float(len(y)),
    }
