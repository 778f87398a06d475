"""KV-cache greedy decoding agrees with full recomputation, for both families and layouts."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from helpers.models import build, forward, greedy, tiny_decoder_config, tiny_t5_config

NEVER_EOS = -1  # argmax never returns -1, so every decode step runs
STEPS = 6
LAYOUTS = pytest.mark.parametrize("scan", [False, True], ids=["loop", "scan"])
# Shared by the tests below so that jitted decoding compiles once per shape.
T5_INPUT_LENGTHS = (9, 4)
PROMPT_LENGTHS = (3, 8)


def _right_padded(rows: list[np.ndarray]) -> np.ndarray:
    out = np.zeros((len(rows), max(len(r) for r in rows)), np.int32)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


def _prompts(lengths: tuple[int, ...], seed: int) -> list[np.ndarray]:
    rng = np.random.RandomState(seed)
    return [rng.randint(2, 64, n).astype(np.int32) for n in lengths]


def _decode(model, key: str, tokens: np.ndarray):
    return greedy(
        model,
        {key: jnp.asarray(tokens)},
        max_decode_length=STEPS,
        eos_id=NEVER_EOS,
        return_logits=True,
    )


def _assert_batch_decodes_like_each_alone(model, key: str, prompts: list[np.ndarray]) -> None:
    batch = _decode(model, key, _right_padded(prompts))
    for row, prompt in enumerate(prompts):
        alone = _decode(model, key, prompt[None])
        np.testing.assert_array_equal(np.asarray(batch.tokens[row]), np.asarray(alone.tokens[0]))
        np.testing.assert_allclose(batch.logits[row], alone.logits[0], atol=1e-4, rtol=0)


@LAYOUTS
def test_t5_cached_steps_match_teacher_forcing(scan: bool) -> None:
    model = build(tiny_t5_config(scan=scan))
    enc = _right_padded(_prompts(T5_INPUT_LENGTHS, seed=0))
    out = _decode(model, "encoder_input_tokens", enc)
    tokens = np.asarray(out.tokens)
    # Without a cache: feed start token + everything generated so far, all at once.
    dec_in = np.concatenate([np.zeros((len(enc), 1), np.int32), tokens[:, :-1]], axis=1)
    full = np.asarray(forward(model, jnp.asarray(enc), jnp.asarray(dec_in)))
    np.testing.assert_allclose(np.asarray(out.logits), full, atol=1e-4, rtol=0)
    np.testing.assert_array_equal(full.argmax(-1), tokens)


def test_t5_padded_batch_decodes_like_each_alone() -> None:
    model = build(tiny_t5_config())
    _assert_batch_decodes_like_each_alone(
        model, "encoder_input_tokens", _prompts(T5_INPUT_LENGTHS, seed=1)
    )


@LAYOUTS
def test_decoder_cached_steps_match_full_recompute(scan: bool) -> None:
    model = build(tiny_decoder_config(scan=scan))
    prompts = _prompts(PROMPT_LENGTHS, seed=2)
    out = _decode(model, "decoder_input_tokens", _right_padded(prompts))
    tokens, logits = np.asarray(out.tokens), np.asarray(out.logits)
    # Prompt + generated tokens (all but the last, which was never fed back), no cache.
    full_seqs = [np.concatenate([p, tokens[i, :-1]]) for i, p in enumerate(prompts)]
    full = np.asarray(forward(model, jnp.asarray(_right_padded(full_seqs))))
    for i, prompt in enumerate(prompts):
        steps = full[i, len(prompt) - 1 : len(prompt) - 1 + STEPS]
        np.testing.assert_allclose(logits[i], steps, atol=1e-4, rtol=0)
        np.testing.assert_array_equal(steps.argmax(-1), tokens[i])


def test_prefix_lm_prompt_decodes_like_full_recompute() -> None:
    """Bidirectional prompt in prefill, causal generation after it, same as no cache."""
    model = build(tiny_decoder_config())
    prompts = _prompts(PROMPT_LENGTHS, seed=5)
    tokens = _right_padded(prompts)
    in_prompt = (tokens != 0).astype(np.int32)
    batch = {
        "decoder_input_tokens": jnp.asarray(tokens),
        "decoder_causal_attention": jnp.asarray(in_prompt),
    }
    out = greedy(model, batch, max_decode_length=STEPS, eos_id=NEVER_EOS, return_logits=True)
    generated = np.asarray(out.tokens)
    full = _right_padded([np.concatenate([p, generated[i, :-1]]) for i, p in enumerate(prompts)])
    prefix = _right_padded([np.arange(len(p) + STEPS - 1) < len(p) for p in prompts])
    recomputed = np.asarray(
        forward(model, jnp.asarray(full), decoder_causal_attention=jnp.asarray(prefix))
    )
    for i, prompt in enumerate(prompts):
        steps = recomputed[i, len(prompt) - 1 : len(prompt) - 1 + STEPS]
        np.testing.assert_allclose(np.asarray(out.logits[i]), steps, atol=1e-4, rtol=0)


@LAYOUTS
def test_decoder_mixed_prompt_lengths_decode_like_each_alone(scan: bool) -> None:
    model = build(tiny_decoder_config(scan=scan))
    _assert_batch_decodes_like_each_alone(
        model, "decoder_input_tokens", _prompts(PROMPT_LENGTHS, seed=3)
    )


@pytest.mark.parametrize("family", ["t5", "decoder"])
def test_loop_and_scan_layouts_compute_the_same_model(family: str) -> None:
    """Same parameters in both layouts must give the same logits (layer order included)."""
    tokens = jnp.asarray(_right_padded(_prompts(PROMPT_LENGTHS, seed=4)))
    config = tiny_t5_config if family == "t5" else tiny_decoder_config
    loop, scanned = build(config(scan=False)), build(config(scan=True))
    args = (tokens, tokens) if family == "t5" else (tokens,)
    np.testing.assert_allclose(forward(loop, *args), forward(scanned, *args), atol=1e-5, rtol=0)
