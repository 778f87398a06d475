"""Shared by the distillation tests: numpy oracles, tiny model configs, hand-built batches
of both families, and random teachers saved as checkpoints."""

from __future__ import annotations

import jax
import numpy as np

from t5x_instruct import partitioning
from t5x_instruct.models import DecoderConfig, T5Config, build_model
from t5x_instruct.training.param_checkpoints import save_params
from t5x_instruct.training.train_state import ModelSpec

V = 40
STUDENT = T5Config(vocab_size=V, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32,
                   num_encoder_layers=1, num_decoder_layers=1)  # fmt: skip
TEACHER = T5Config(vocab_size=V, emb_dim=32, num_heads=2, head_dim=8, mlp_dim=48,
                   num_encoder_layers=1, num_decoder_layers=1)  # fmt: skip
DEC_STUDENT = DecoderConfig(vocab_size=V, emb_dim=16, num_heads=2, num_kv_heads=1, head_dim=8,
                            mlp_dim=32, num_layers=1)  # fmt: skip
DEC_TEACHER = DecoderConfig(vocab_size=V, emb_dim=16, num_heads=4, num_kv_heads=2, head_dim=4,
                            mlp_dim=48, num_layers=1)  # fmt: skip


def np_log_softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def np_kl(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``sum p log(p / q)`` over the last axis, with ``0 log 0 = 0``."""
    return np.sum(np.where(p > 0, p * (np.log(np.where(p > 0, p, 1)) - np.log(q)), 0), -1)


def mesh_and_rules():
    """One device (the tests compare values, not layouts)."""
    mesh = partitioning.create_mesh(partitioning.MeshConfig(data=1), devices=jax.devices()[:1])
    return mesh, partitioning.standard_logical_axis_rules("data")


def random_params(spec: ModelSpec, seed: int) -> dict:
    """Random parameters of ``spec``'s shapes, drawn in numpy and placed on one device.

    Not the model's initialisers: the tests need values, not a training-ready start, and
    this avoids compiling an initialiser per model (seconds each on a loaded 2-core CI).
    Kernels ~ N(0, 1/fan_in), norm scales ~ 1 + N(0, 0.1).
    """
    rng = np.random.default_rng(seed)
    mesh, rules = mesh_and_rules()

    def draw(path, leaf):
        name = jax.tree_util.keystr(path)
        if "scale" in name:
            value = 1.0 + 0.1 * rng.standard_normal(leaf.shape)
        else:
            value = rng.standard_normal(leaf.shape) / np.sqrt(leaf.shape[0] if leaf.shape else 1)
        return value.astype(leaf.dtype)

    params = jax.tree_util.tree_map_with_path(draw, spec.abstract_params())
    return jax.device_put(params, spec.param_shardings(mesh, rules))


def save_teacher(path: str, config, seed: int = 7) -> str:
    """Random parameters of ``config`` written as a params-only checkpoint at ``path``."""
    save_params(path, random_params(ModelSpec.create(lambda: build_model(config)), seed))
    return path


def encdec_batch(seed: int, b: int = 8, li: int = 7, lt: int = 6) -> dict[str, np.ndarray]:
    """Unpacked rows: inputs and targets of random lengths, each ending in EOS (1)."""
    rng = np.random.default_rng(seed)
    inputs, targets = np.zeros((b, li), np.int32), np.zeros((b, lt), np.int32)
    for r in range(b):
        n, m = rng.integers(2, li + 1), rng.integers(2, lt + 1)
        inputs[r, :n] = np.append(rng.integers(2, V, n - 1), 1)
        targets[r, :m] = np.append(rng.integers(2, V, m - 1), 1)
    return {
        "encoder_input_tokens": inputs,
        "decoder_target_tokens": targets,
        "decoder_input_tokens": np.pad(targets, ((0, 0), (1, 0)))[:, :-1],
        "decoder_loss_weights": (targets != 0).astype(np.float32),
    }


def prefix_lm_batch(encdec: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list]:
    """The same examples as SeqIO's PrefixLMFeatureConverter lays them out (built by hand),
    and each row's (input length, target length)."""
    b, li = encdec["encoder_input_tokens"].shape
    lt = encdec["decoder_target_tokens"].shape[1]
    tokens = np.zeros((b, li + lt), np.int32)
    causal = np.zeros_like(tokens)
    weights = np.zeros((b, li + lt), np.float32)
    lengths = []
    for r in range(b):
        x = encdec["encoder_input_tokens"][r][encdec["encoder_input_tokens"][r] != 0]
        y = encdec["decoder_target_tokens"][r][encdec["decoder_target_tokens"][r] != 0]
        tokens[r, : len(x) + len(y)] = np.concatenate([x, y])
        causal[r, : len(x) + 1] = 1
        weights[r, len(x) : len(x) + len(y)] = 1
        lengths.append((len(x), len(y)))
    return {
        "decoder_target_tokens": tokens,
        "decoder_input_tokens": np.pad(tokens, ((0, 0), (1, 0)))[:, :-1],
        "decoder_causal_attention": causal,
        "decoder_loss_weights": weights,
    }, lengths
