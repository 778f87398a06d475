"""Scoring targets (T5X ``score_batch``): log-softmax of each target token, weighted, summed.

The reference is numpy's (float64) log-softmax of Hugging Face's logits for the same weights;
a second check applies numpy to our own teacher-forced logits, which isolates the scoring
arithmetic from any framework difference in the logits themselves.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from helpers.hf_models import convert, tiny_hf_llama, tiny_hf_t5, torch_ints

from t5x_instruct.decoding import score_batch

# fp32 scores vs float64 numpy; sequences sum <= 7 tokens of magnitude ~5.
TOL = 1e-5

jit_score = nnx.jit(score_batch)


def _reference(logits: np.ndarray, targets: np.ndarray, weights: np.ndarray):
    x = logits.astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    logprobs = x - np.log(np.exp(x).sum(-1, keepdims=True))
    token = np.take_along_axis(logprobs, targets[..., None], axis=-1)[..., 0] * weights
    return token, token.sum(-1)


def _check(got, logits: np.ndarray, batch: dict, tol: float) -> None:
    targets, weights = batch["decoder_target_tokens"], batch["decoder_loss_weights"]
    token, sequence = _reference(logits, targets, weights)
    np.testing.assert_allclose(np.asarray(got.token_scores), token, atol=tol, rtol=0)
    np.testing.assert_allclose(np.asarray(got.sequence_scores), sequence, atol=tol, rtol=0)


def _shift_right(targets: np.ndarray) -> np.ndarray:
    return np.concatenate([np.zeros_like(targets[:, :1]), targets[:, :-1]], axis=1)


def test_t5_scores_match_hf_log_softmax() -> None:
    hf = tiny_hf_t5(tie_word_embeddings=False, seed=31)
    ours = convert(hf)
    rng = np.random.RandomState(31)
    enc = rng.randint(2, 64, (3, 8))
    enc[1, 5:] = enc[2, 3:] = 0
    targets = rng.randint(2, 64, (3, 6))
    targets[0, 5] = 1  # EOS
    targets[1, 3:] = 0  # padding
    weights = (targets != 0).astype(np.float32)
    weights[2, :2] = 0.0  # a scored suffix only, as a partial-credit weighting would do
    batch = {
        "encoder_input_tokens": enc.astype(np.int32),
        "decoder_input_tokens": _shift_right(targets).astype(np.int32),
        "decoder_target_tokens": targets.astype(np.int32),
        "decoder_loss_weights": weights,
    }
    got = jit_score(ours, {k: jnp.asarray(v) for k, v in batch.items()})
    with torch.no_grad():
        hf_logits = hf(
            input_ids=torch_ints(enc),
            attention_mask=torch_ints(enc != 0),
            decoder_input_ids=torch_ints(batch["decoder_input_tokens"]),
        ).logits.numpy()
    _check(got, hf_logits, batch, TOL)
    ours_logits = nnx.jit(lambda m, b: m.logits_from_batch(b))(
        ours, {k: jnp.asarray(v) for k, v in batch.items()}
    )
    _check(got, np.asarray(ours_logits), batch, TOL)
    assert np.all(np.asarray(got.token_scores)[weights == 0] == 0.0)


def _prefix_lm_mask(prefix_lengths: np.ndarray, length: int) -> torch.Tensor:
    """``[b, 1, q, k]`` additive mask: inputs see each other, targets see what precedes them."""
    q, k = np.arange(length)[:, None], np.arange(length)[None, :]
    allowed = np.stack([(k <= q) | ((q < p) & (k < p)) for p in prefix_lengths])[:, None]
    return torch.where(torch.from_numpy(allowed), 0.0, torch.finfo(torch.float32).min)


@pytest.mark.parametrize("prefix_lm", [False, True], ids=["lm", "prefix_lm"])
def test_decoder_scores_match_hf_log_softmax(prefix_lm: bool) -> None:
    """Only target positions (loss weight 1) count; the prompt scores nothing."""
    hf = tiny_hf_llama(num_kv_heads=2, seed=32)
    ours = convert(hf)
    rng = np.random.RandomState(32)
    sequence = rng.randint(3, 64, (2, 9)).astype(np.int32)  # [0, prompt..., target...] shifted
    prompt_lengths = np.array([3, 5])
    positions = np.arange(9)[None]
    # Target token t is predicted at position t-1; targets start right after the prompt.
    weights = (positions >= prompt_lengths[:, None] - 1).astype(np.float32)
    batch = {
        "decoder_input_tokens": _shift_right(sequence),
        "decoder_target_tokens": sequence,
        "decoder_loss_weights": weights,
    }
    mask = torch_ints(np.ones_like(sequence))
    if prefix_lm:  # the prompt (plus the shifted-in 0) is the bidirectional prefix
        batch["decoder_causal_attention"] = (positions < prompt_lengths[:, None]).astype(np.int32)
        mask = _prefix_lm_mask(prompt_lengths, 9)
    got = jit_score(ours, {k: jnp.asarray(v) for k, v in batch.items()})
    with torch.no_grad():
        hf_logits = hf(
            input_ids=torch_ints(batch["decoder_input_tokens"]), attention_mask=mask
        ).logits.numpy()
    _check(got, hf_logits, batch, TOL)
    ours_logits = nnx.jit(lambda m, b: m.logits_from_batch(b))(
        ours, {k: jnp.asarray(v) for k, v in batch.items()}
    )
    _check(got, np.asarray(ours_logits), batch, TOL)
