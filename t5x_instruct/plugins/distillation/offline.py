"""Running a teacher over a task outside training: the shared part of the offline tools.

``tools/teacher_topk.py`` (top-k log-probabilities per target token) and
``tools/distill_sequences.py`` (sequence-level KD data) both load a teacher from gin files and
a checkpoint, stream a task's or mixture's examples in a fixed order (trimmed to the training
lengths exactly as the training pipeline trims them) and build model batches of either
family. SeqIO is imported inside the functions that read data, never at module level.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from t5x_instruct import partitioning
from t5x_instruct.gin_utils import parse_gin
from t5x_instruct.models import build_model
from t5x_instruct.plugins.distillation.teacher import Teacher
from t5x_instruct.training.param_checkpoints import resolve_checkpoint


@dataclasses.dataclass
class LoadedTeacher:
    teacher: Teacher
    params: Any
    checkpoint: str  # the step folder read
    step: int


def load_teacher(
    gin_files: Sequence[str],
    bindings: Sequence[str],
    checkpoint: str,
    *,
    step: int | None = None,
    dtype: str | None = None,
) -> LoadedTeacher:
    """The model ``build_model`` gets from ``gin_files`` + ``bindings``, restored from
    ``checkpoint`` on the default mesh (all local devices, the standard rules). Run files
    (``gin/runs/*.gin``) work too: their ``train.*`` bindings are parsed, not used."""
    import t5x_instruct.training.loop  # noqa: F401  (defines `train`, which run files bind)

    parse_gin(gin_files, bindings, clear=True)
    config = build_model().cfg
    teacher = Teacher.create(config, dtype)
    mesh = partitioning.create_mesh()
    rules = partitioning.standard_logical_axis_rules()
    step_dir, found = resolve_checkpoint(checkpoint, step)
    params = teacher.restore(step_dir, mesh, rules, setting="--teacher_checkpoint")
    return LoadedTeacher(teacher, params, step_dir, found)


@dataclasses.dataclass(frozen=True)
class Example:
    task: str
    inputs: np.ndarray  # trimmed token ids, EOS included
    targets: np.ndarray
    inputs_text: str


def task_examples(
    name: str, split: str, lengths: Mapping[str, int], max_examples: int | None = None
) -> Iterator[Example]:
    """Every example of task/mixture ``name`` (leaf tasks by name, each in data order).

    Trimmed as the training pipeline trims: the task's own preprocessing at these
    ``sequence_length``s (``append_eos_after_trim`` keeps the EOS), then the feature
    converter's plain cut.
    """
    from t5x_instruct.data import leaf_tasks

    def stream() -> Iterator[Example]:
        for task in sorted(leaf_tasks(name), key=lambda t: t.name):
            if split not in task.splits:
                continue
            ds = task.get_dataset(
                sequence_length=dict(lengths), split=split, shuffle=False, num_epochs=1,
                use_cached=False,
            )  # fmt: skip
            for ex in ds.as_numpy_iterator():
                text = ex.get("inputs_pretokenized", b"")
                yield Example(
                    task=task.name,
                    inputs=np.asarray(ex["inputs"], np.int32)[: lengths["inputs"]],
                    targets=np.asarray(ex["targets"], np.int32)[: lengths["targets"]],
                    inputs_text=text.decode("utf-8") if isinstance(text, bytes) else str(text),
                )

    return itertools.islice(stream(), max_examples)


def batches(examples: Iterator[Example], size: int) -> Iterator[list[Example]]:
    while chunk := list(itertools.islice(examples, size)):
        yield chunk


def model_batch(
    examples: Sequence[Example], encoder_decoder: bool, lengths: Mapping[str, int], size: int
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """A teacher-forcing batch of ``size`` rows (short chunks padded with copies of row 0)
    and each row's first target position (0 for encoder-decoders, len(inputs) for
    prefix-LMs)."""
    rows = list(examples) + [examples[0]] * (size - len(examples))
    li, lt = lengths["inputs"], lengths["targets"]
    start = np.zeros((size,), np.int32)
    if encoder_decoder:
        inputs = np.zeros((size, li), np.int32)
        targets = np.zeros((size, lt), np.int32)
        for r, ex in enumerate(rows):
            inputs[r, : len(ex.inputs)] = ex.inputs
            targets[r, : len(ex.targets)] = ex.targets
        batch = {"encoder_input_tokens": inputs}
    else:
        targets = np.zeros((size, li + lt), np.int32)
        causal = np.zeros((size, li + lt), np.int32)
        for r, ex in enumerate(rows):
            n = len(ex.inputs)
            targets[r, :n] = ex.inputs
            targets[r, n : n + len(ex.targets)] = ex.targets
            causal[r, : n + 1] = 1
            start[r] = n
        batch = {"decoder_causal_attention": causal}
    batch["decoder_target_tokens"] = targets
    batch["decoder_input_tokens"] = np.pad(targets, ((0, 0), (1, 0)))[:, :-1]
    batch["decoder_loss_weights"] = (targets != 0).astype(np.float32)
    return batch, start


def topk_fn(teacher: Teacher, k: int, temperature: float, target_length: int):
    """Jitted ``(params, batch, start) -> (ids, logprobs, rest)``, each ``[b, Lt, ...]``:
    the teacher's top-k of ``log_softmax(logits / temperature)`` at the target positions and
    the exact log-mass of every other token."""

    def run(params, batch, start):
        logits = teacher.spec.module(params).logits_from_batch(batch, deterministic=True)
        logp = jax.nn.log_softmax(logits.astype(jnp.float32) / temperature, axis=-1)
        index = start[:, None] + jnp.arange(target_length)[None]
        index = jnp.minimum(index, logp.shape[1] - 1)
        logp = jnp.take_along_axis(logp, index[..., None], axis=1)
        top, ids = jax.lax.top_k(logp, k)
        taken = jnp.sum(jax.nn.one_hot(ids, logp.shape[-1], dtype=jnp.bool_), axis=-2) > 0
        rest = jax.nn.logsumexp(jnp.where(taken, -jnp.inf, logp), axis=-1)
        return ids, top, rest

    return jax.jit(run)


def prompt_batch(
    examples: Sequence[Example], encoder_decoder: bool, input_length: int, size: int
) -> dict[str, np.ndarray]:
    """Decoding inputs (as the evaluator builds them): encoder inputs, or a decoder-only
    prompt ``[BOS, inputs...]`` with its lengths and prefix-LM mask."""
    rows = list(examples) + [examples[0]] * (size - len(examples))
    inputs = np.zeros((size, input_length), np.int32)
    for r, ex in enumerate(rows):
        inputs[r, : len(ex.inputs)] = ex.inputs
    if encoder_decoder:
        return {"encoder_input_tokens": inputs}
    prompt = np.pad(inputs, ((0, 0), (1, 0)))
    lengths = (inputs != 0).sum(1).astype(np.int32) + 1
    causal = (np.arange(prompt.shape[1])[None] < lengths[:, None]).astype(np.int32)
    return {"decoder_input_tokens": prompt, "prompt_lengths": lengths,
            "decoder_causal_attention": causal}  # fmt: skip
