"""The offline teacher: its top-k log-probabilities per target token, on disk, keyed by example.

Layout of a store directory (written by ``tools/teacher_topk.py``)::

    manifest.json              what was stored (task, split, lengths, k, temperature, teacher,
                               vocab size) and the shards written so far; ``complete`` at the end
    topk-00000.safetensors     keys [n, 16] uint8, offsets [n + 1] int64 (token ranges),
    topk-00001.safetensors     ids [N, k] int32, logprobs [N, k] (fp16 or fp32), rest [N] fp32

``logprobs`` are the teacher's ``log_softmax(logits / temperature)`` at its top-k ids for
each target token (EOS included); ``rest`` is the exact log of the mass of all other tokens
(``logsumexp`` outside the top-k, computed from the full distribution before truncation).

An example is keyed by its content: BLAKE2b-128 of its (trimmed) input and target token ids,
so the key is the same whichever family's batch layout it arrives in, packed or not, in any
order. At training time the plug-in joins each batch row's segments to the store on the host
(:meth:`TopKStore.lookup`, called once per step through ``jax.pure_callback``); shards are
memory-mapped, so host memory holds only the key index.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from t5x_instruct.errors import UserInputError

FORMAT = "t5x_instruct.teacher_topk/1"
MANIFEST = "manifest.json"
KEY_BYTES = 16
# Manifest fields a resumed write must agree on (anything else may change).
IDENTITY_FIELDS = (
    "format", "task", "split", "task_feature_lengths", "k", "temperature", "vocab_size",
    "teacher_checkpoint", "teacher_step", "teacher_config", "examples_per_shard",
    "logprob_dtype",
)  # fmt: skip


def example_key(inputs: np.ndarray, targets: np.ndarray) -> bytes:
    """16 bytes identifying an example by its input and target token ids."""
    inputs = np.asarray(inputs, "<i4")
    targets = np.asarray(targets, "<i4")
    digest = hashlib.blake2b(digest_size=KEY_BYTES)
    digest.update(np.asarray([inputs.size, targets.size], "<i4").tobytes())
    digest.update(inputs.tobytes())
    digest.update(targets.tobytes())
    return digest.digest()


def shard_name(index: int) -> str:
    return f"topk-{index:05d}.safetensors"


# ------------------------------------------------------------------------------ segments


def batch_segments(batch: Mapping[str, np.ndarray]) -> Iterator[tuple[int, bytes, np.ndarray]]:
    """``(row, example key, target positions)`` of every example in a host batch.

    Encoder-decoder batches pair encoder and decoder segments by id; prefix-LM (and LM)
    rows split each segment into inputs (loss weight 0) and targets (loss weight > 0).
    Unpacked rows are one segment: their non-padding tokens.
    """
    targets = np.asarray(batch["decoder_target_tokens"])
    weights = np.asarray(batch["decoder_loss_weights"])
    dec_seg = batch.get("decoder_segment_ids")
    dec_seg = (targets != 0).astype(np.int32) if dec_seg is None else np.asarray(dec_seg)
    encoder = batch.get("encoder_input_tokens")
    if encoder is not None:
        encoder = np.asarray(encoder)
        enc_seg = batch.get("encoder_segment_ids")
        enc_seg = (encoder != 0).astype(np.int32) if enc_seg is None else np.asarray(enc_seg)
    for row in range(targets.shape[0]):
        for segment in np.unique(dec_seg[row]):
            if segment == 0:
                continue
            where = np.nonzero(dec_seg[row] == segment)[0]
            if encoder is not None:
                inputs = encoder[row][enc_seg[row] == segment]
                positions = where
            else:
                is_target = weights[row, where] > 0
                inputs = targets[row, where[~is_target]]
                positions = where[is_target]
            yield row, example_key(inputs, targets[row, positions]), positions


# ------------------------------------------------------------------------------ writing


class TopKWriter:
    """Appends examples to a store in fixed-size shards; a rerun resumes after the last one.

    Each shard is written to a temporary name and renamed into place, then recorded in the
    manifest, so a killed run leaves only whole shards behind. Usage::

        writer = TopKWriter(out_dir, manifest_fields, examples_per_shard)
        for example in examples[writer.examples_done:]: writer.add(key, ids, logprobs, rest)
        writer.finish()
    """

    def __init__(self, out_dir: str, fields: Mapping[str, Any], examples_per_shard: int) -> None:
        if examples_per_shard < 1:
            raise UserInputError(f"examples_per_shard={examples_per_shard} must be >= 1.")
        self.out_dir = out_dir
        self.manifest = {
            "format": FORMAT, **fields, "examples_per_shard": examples_per_shard,
            "shards": [], "num_examples": 0, "complete": False,
        }  # fmt: skip
        os.makedirs(out_dir, exist_ok=True)
        path = os.path.join(out_dir, MANIFEST)
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                saved = json.load(f)
            differ = {
                k: (saved.get(k), self.manifest.get(k))
                for k in IDENTITY_FIELDS
                if _canon(saved.get(k)) != _canon(self.manifest.get(k))
            }
            if differ:
                raise UserInputError(
                    f"{out_dir} holds a top-k store written with other settings "
                    f"(field: (stored, now)) {differ}; choose another --out_dir or rerun "
                    "with the stored settings."
                )
            shards = [s for s in saved["shards"] if os.path.exists(os.path.join(out_dir, s))]
            self.manifest.update(shards=shards, num_examples=saved["num_examples"])
            self.manifest["complete"] = saved.get("complete", False) and shards == saved["shards"]
            if len(shards) != len(saved["shards"]):  # a shard file went missing: redo from it
                self.manifest["num_examples"] = len(shards) * examples_per_shard
        self.examples_per_shard = examples_per_shard
        self._buffer: list[tuple[bytes, np.ndarray, np.ndarray, np.ndarray]] = []
        self._write_manifest()

    @property
    def examples_done(self) -> int:
        return int(self.manifest["num_examples"])

    @property
    def complete(self) -> bool:
        return bool(self.manifest["complete"])

    def add(self, key: bytes, ids: np.ndarray, logprobs: np.ndarray, rest: np.ndarray) -> None:
        self._buffer.append((key, ids, logprobs, rest))
        if len(self._buffer) == self.examples_per_shard:
            self._flush()

    def finish(self) -> None:
        if self._buffer:
            self._flush()
        self.manifest["complete"] = True
        self._write_manifest()

    def _flush(self) -> None:
        from safetensors.numpy import save_file

        dtype = np.dtype(self.manifest["logprob_dtype"])
        lengths = [len(ids) for _, ids, _, _ in self._buffer]
        tensors = {
            "keys": np.frombuffer(b"".join(e[0] for e in self._buffer), np.uint8).reshape(
                -1, KEY_BYTES
            ),
            "offsets": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
            "ids": np.concatenate([e[1] for e in self._buffer]).astype(np.int32),
            "logprobs": np.concatenate([e[2] for e in self._buffer]).astype(dtype),
            "rest": np.concatenate([e[3] for e in self._buffer]).astype(np.float32),
        }
        name = shard_name(len(self.manifest["shards"]))
        tmp = os.path.join(self.out_dir, f".{name}.tmp")
        save_file(tensors, tmp, metadata={"examples": str(len(self._buffer))})
        os.replace(tmp, os.path.join(self.out_dir, name))
        self.manifest["shards"].append(name)
        self.manifest["num_examples"] += len(self._buffer)
        self._buffer = []
        self._write_manifest()

    def _write_manifest(self) -> None:
        tmp = os.path.join(self.out_dir, f".{MANIFEST}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.manifest, f, indent=2)
        os.replace(tmp, os.path.join(self.out_dir, MANIFEST))


def _canon(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True))


# ------------------------------------------------------------------------------ reading


class TopKStore:
    """A complete store, opened for lookups by example key."""

    def __init__(self, path: str, where: str = "Distillation.topk_dir") -> None:
        manifest_path = os.path.join(path, MANIFEST)
        if not os.path.exists(manifest_path):
            raise UserInputError(
                f"{where}={path!r} holds no top-k store ({MANIFEST} missing); write one with "
                "tools/teacher_topk.py."
            )
        with open(manifest_path, encoding="utf-8") as f:
            self.manifest = json.load(f)
        if self.manifest.get("format") != FORMAT:
            raise UserInputError(f"{where}={path!r}: unknown store format {self.manifest}.")
        if not self.manifest.get("complete"):
            raise UserInputError(
                f"{where}={path!r} is incomplete ({self.manifest['num_examples']} examples so "
                "far); rerun tools/teacher_topk.py with the same arguments to finish it."
            )
        from safetensors import safe_open

        self.path = path
        self.k = int(self.manifest["k"])
        self._files = []
        self._index: dict[bytes, tuple[int, int, int]] = {}
        for shard, name in enumerate(self.manifest["shards"]):
            handle = safe_open(os.path.join(path, name), framework="numpy")
            self._files.append(handle)
            keys = handle.get_tensor("keys")
            offsets = handle.get_tensor("offsets")
            for i in range(keys.shape[0]):
                self._index[keys[i].tobytes()] = (shard, int(offsets[i]), int(offsets[i + 1]))
        self.misses = 0

    @property
    def temperature(self) -> float:
        return float(self.manifest["temperature"])

    @property
    def vocab_size(self) -> int:
        return int(self.manifest["vocab_size"])

    def __len__(self) -> int:
        return len(self._index)

    def entry(self, key: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """``(ids [n, k], logprobs [n, k] fp32, rest [n])`` of one example, or None."""
        found = self._index.get(key)
        if found is None:
            return None
        shard, start, end = found
        handle = self._files[shard]
        return (
            handle.get_slice("ids")[start:end],
            handle.get_slice("logprobs")[start:end].astype(np.float32),
            handle.get_slice("rest")[start:end],
        )

    def lookup(
        self, batch: Mapping[str, np.ndarray], strict: bool
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The teacher's top-k at every target position of a host batch.

        Returns ``ids [b, t, k]``, ``logprobs [b, t, k]``, ``rest [b, t]`` and ``found
        [b, t]`` (1.0 where the store has the example). ``strict`` raises on an example the
        store lacks (training: the store must cover the mixture); otherwise such positions
        get ``found = 0`` and are counted in ``misses``.
        """
        b, t = np.shape(batch["decoder_target_tokens"])
        ids = np.zeros((b, t, self.k), np.int32)
        # Unused positions (padding, misses) get a harmless uniform teacher over distinct ids:
        # they carry no weight, but an infinite log-ratio times 0 would still be NaN.
        ids[...] = np.arange(self.k, dtype=np.int32)
        logprobs = np.full((b, t, self.k), -np.log(self.k + 1), np.float32)
        rest = np.full((b, t), -np.log(self.k + 1), np.float32)
        found = np.zeros((b, t), np.float32)
        for row, key, positions in batch_segments(batch):
            entry = self.entry(key)
            if entry is None:
                if strict:
                    raise UserInputError(
                        f"The top-k store {self.path} has no entry for an example of this "
                        f"batch (row {row}, {len(positions)} target tokens): it was written "
                        f"for task {self.manifest['task']!r} split {self.manifest['split']!r} "
                        f"with lengths {self.manifest['task_feature_lengths']}. Train on that "
                        "data with those TASK_FEATURE_LENGTHS, or write a store for yours."
                    )
                self.misses += 1
                continue
            e_ids, e_lp, e_rest = entry
            if len(e_ids) != len(positions):
                raise UserInputError(
                    f"The top-k store {self.path} has {len(e_ids)} target tokens for an "
                    f"example the batch has with {len(positions)}; it was written with other "
                    "task_feature_lengths or another vocabulary."
                )
            ids[row, positions] = e_ids
            logprobs[row, positions] = e_lp
            rest[row, positions] = e_rest
            found[row, positions] = 1.0
        return ids, logprobs, rest, found
