"""Tiny T5 and decoder models train identically with attention_impl='pallas' and 'xla'.

The Pallas kernels run in interpret mode on CPU. Batches are packed (segment ids with
padding) and the decoder uses prefix-LM flags, so the models' real masks, T5's relative
bias (and its gradient) and GQA all go through the flash kernels' forward and backward.
"""

from __future__ import annotations

import dataclasses
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from helpers.attention_cases import interpret_unless_native

from t5x_instruct.models import DecoderConfig, T5Config, build_model

T5_TINY = T5Config(
    vocab_size=32,
    emb_dim=16,
    num_heads=2,
    head_dim=8,
    mlp_dim=32,
    num_encoder_layers=1,
    num_decoder_layers=1,
    relative_attention_num_buckets=8,
    relative_attention_max_distance=16,
)
# The module, not the same-named function the kernels package exports.
FLASH_MODULE = importlib.import_module("t5x_instruct.kernels.flash_attention")
DEC_TINY = DecoderConfig(
    vocab_size=32,
    emb_dim=16,
    num_heads=4,
    num_kv_heads=2,
    head_dim=8,
    mlp_dim=32,
    num_layers=1,
)


def _packed(rng: np.random.Generator, lengths: list[list[int]], total: int) -> np.ndarray:
    """Segment ids for rows of packed examples, zero-padded to ``total``."""
    out = np.zeros((len(lengths), total), np.int32)
    for row, lens in zip(out, lengths):
        row[: sum(lens)] = np.repeat(np.arange(1, len(lens) + 1), lens)
    return out


def _batch(encoder_decoder: bool) -> dict[str, jax.Array]:
    rng = np.random.default_rng(0)
    dec_seg = _packed(rng, [[8, 9], [12, 5]], 20)
    targets = rng.integers(2, 32, size=dec_seg.shape) * (dec_seg > 0)
    inputs = np.where(dec_seg > 0, np.roll(targets, 1, axis=1), 0)
    inputs[np.diff(dec_seg, prepend=-1, axis=1) != 0] = 0  # BOS at each segment start
    batch = {
        "decoder_target_tokens": targets,
        "decoder_input_tokens": inputs,
        "decoder_segment_ids": dec_seg,
        "decoder_loss_weights": (dec_seg > 0).astype(np.float32),
    }
    if encoder_decoder:
        enc_seg = _packed(rng, [[10, 10], [7, 13]], 24)
        batch["encoder_input_tokens"] = rng.integers(2, 32, size=enc_seg.shape) * (enc_seg > 0)
        batch["encoder_segment_ids"] = enc_seg
    else:
        starts = np.diff(dec_seg, prepend=-1, axis=1) != 0
        seg_start = np.maximum.accumulate(np.where(starts, np.arange(20), 0), axis=1)
        positions = np.arange(20)[None] - seg_start
        batch["decoder_positions"] = positions * (dec_seg > 0)
        batch["decoder_causal_attention"] = ((positions < 4) & (dec_seg > 0)).astype(np.int32)
    return {k: jnp.asarray(v) for k, v in batch.items()}


def _train_losses(config, batch: dict[str, jax.Array], steps: int = 3) -> list[float]:
    graphdef, params, rest = nnx.split(build_model(config), nnx.Param, ...)
    tx = optax.sgd(0.5)

    def loss_fn(params, batch):
        logits = nnx.merge(graphdef, params, rest).logits_from_batch(batch)
        xent = optax.softmax_cross_entropy_with_integer_labels(
            logits, batch["decoder_target_tokens"]
        )
        weights = batch["decoder_loss_weights"]
        return jnp.sum(xent * weights) / jnp.sum(weights)

    @jax.jit
    def step(params, opt_state, batch):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    opt_state = tx.init(params)
    losses = []
    for _ in range(steps):
        params, opt_state, loss = step(params, opt_state, batch)
        losses.append(float(loss))
    return losses


@pytest.mark.parametrize("target", ["gpu", "tpu"])
@pytest.mark.parametrize("config", [T5_TINY, DEC_TINY], ids=["t5", "decoder"])
def test_pallas_training_matches_xla(config, target: str, monkeypatch: pytest.MonkeyPatch):
    """Both kernel families (the platform picks one; here it is forced) train like XLA."""
    monkeypatch.setattr(FLASH_MODULE, "resolve_target", lambda _: target)
    if interpret_unless_native(target):
        monkeypatch.setattr(FLASH_MODULE, "resolve_interpret", lambda _: True)
    batch = _batch(isinstance(config, T5Config))
    xla = _train_losses(dataclasses.replace(config, attention_impl="xla"), batch)
    pallas = _train_losses(dataclasses.replace(config, attention_impl="pallas"), batch)
    assert xla[-1] < xla[0]  # the loop really trains
    np.testing.assert_allclose(pallas, xla, rtol=1e-5, atol=1e-5)
