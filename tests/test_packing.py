"""Packed examples (segment ids, per-segment positions) give the same logits as alone."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from helpers.models import build, forward, tiny_decoder_config, tiny_t5_config

LAYOUTS = pytest.mark.parametrize("scan", [False, True], ids=["loop", "scan"])


def _examples(lengths: tuple[int, ...], seed: int) -> list[np.ndarray]:
    rng = np.random.RandomState(seed)
    return [rng.randint(2, 64, n).astype(np.int32) for n in lengths]


def _pack(examples: list[np.ndarray], length: int) -> dict[str, np.ndarray]:
    """One row: examples back to back, segment ids 1..n, positions restarting at 0, then pad."""
    tokens = np.concatenate(examples)
    pad = length - len(tokens)
    segments = np.concatenate([np.full(len(e), i + 1) for i, e in enumerate(examples)])
    positions = np.concatenate([np.arange(len(e)) for e in examples])
    return {
        "tokens": np.pad(tokens, (0, pad))[None].astype(np.int32),
        "segment_ids": np.pad(segments, (0, pad))[None].astype(np.int32),
        "positions": np.pad(positions, (0, pad))[None].astype(np.int32),
    }


def _spans(examples: list[np.ndarray]) -> list[slice]:
    ends = np.cumsum([len(e) for e in examples])
    return [slice(end - len(e), end) for e, end in zip(examples, ends)]


@LAYOUTS
def test_t5_packed_encoder_and_decoder_match_each_alone(scan: bool) -> None:
    model = build(tiny_t5_config(scan=scan))
    inputs = _examples((5, 7), seed=0)
    targets = _examples((4, 3), seed=1)
    for t in targets:
        t[0] = 0  # each decoder segment begins with the start token, like a real target
    enc, dec = _pack(inputs, 14), _pack(targets, 9)
    packed = np.asarray(
        forward(
            model,
            jnp.asarray(enc["tokens"]),
            jnp.asarray(dec["tokens"]),
            encoder_segment_ids=jnp.asarray(enc["segment_ids"]),
            decoder_segment_ids=jnp.asarray(dec["segment_ids"]),
            encoder_positions=jnp.asarray(enc["positions"]),
            decoder_positions=jnp.asarray(dec["positions"]),
        )
    )
    for inp, tgt, span in zip(inputs, targets, _spans(targets)):
        alone = np.asarray(forward(model, jnp.asarray(inp[None]), jnp.asarray(tgt[None])))
        np.testing.assert_allclose(packed[0, span], alone[0], atol=1e-4, rtol=0)


@LAYOUTS
@pytest.mark.parametrize("prefix_lm", [False, True], ids=["causal", "prefix_lm"])
def test_decoder_packed_matches_each_alone(scan: bool, prefix_lm: bool) -> None:
    model = build(tiny_decoder_config(scan=scan))
    examples = _examples((4, 6, 3), seed=2)
    # Prefix-LM: the first half of every example (at least one token) is its input.
    prefixes = [np.arange(len(e)) < max(1, len(e) // 2) for e in examples]
    packed_in = _pack(examples, 16)
    kwargs = {
        "decoder_segment_ids": jnp.asarray(packed_in["segment_ids"]),
        "decoder_positions": jnp.asarray(packed_in["positions"]),
    }
    if prefix_lm:
        kwargs["decoder_causal_attention"] = jnp.asarray(
            np.pad(np.concatenate(prefixes), (0, 3))[None].astype(np.int32)
        )
    packed = np.asarray(forward(model, jnp.asarray(packed_in["tokens"]), **kwargs))
    for example, prefix, span in zip(examples, prefixes, _spans(examples)):
        alone_kwargs = (
            {"decoder_causal_attention": jnp.asarray(prefix[None].astype(np.int32))}
            if prefix_lm
            else {}
        )
        alone = np.asarray(forward(model, jnp.asarray(example[None]), **alone_kwargs))
        np.testing.assert_allclose(packed[0, span], alone[0], atol=1e-4, rtol=0)
