"""GPU-family Pallas attention kernels (interpret mode on CPU) against the XLA reference.

The mask cases and the comparison live in ``helpers.attention_cases`` (shared with the TPU
family's tests); this file adds random shapes, the decode kernel and the impl routing.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers.attention_cases import CASES, Case, check_against_reference, interpret_unless_native

from t5x_instruct import kernels
from t5x_instruct.kernels import (
    AttentionMask,
    RelativeBias,
    decode_attention,
    dot_product_attention,
    flash_attention,
    reference,
)


@pytest.mark.parametrize("name", sorted(CASES))
def test_flash_matches_reference(name: str) -> None:
    check_against_reference(CASES[name])


def test_flash_random_shapes() -> None:
    rng = np.random.default_rng(1234)
    for seed in range(2):
        heads = int(rng.choice([2, 4]))
        case = Case(
            q_len=int(rng.integers(5, 50)),
            batch=int(rng.integers(1, 3)),
            heads=heads,
            kv_heads=int(rng.choice([1, heads])),
            head_dim=int(rng.choice([8, 16])),
            causal=bool(rng.integers(2)),
            segments=bool(rng.integers(2)),
            bias=[None, "bi", "uni"][int(rng.integers(3))],
            block_q=int(rng.choice([16, 32])),
            block_kv=int(rng.choice([16, 32])),
            seed=seed,
        )
        check_against_reference(case)


def _decode_inputs(q_len: int, segments: bool, bias: bool):
    """A KV cache of 40 slots; example i decodes at slot ``index[i]`` (later slots unwritten)."""
    rng = np.random.default_rng(7)
    b, cache, heads, kv_heads, d = 2, 40, 4, 2, 8
    index = np.array([17, 39 - q_len + 1])
    q = jnp.asarray(rng.normal(size=(b, q_len, heads, d)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(b, cache, kv_heads, d)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(b, cache, kv_heads, d)), jnp.float32)
    fields: dict = {
        "causal": True,
        "q_positions": jnp.asarray(index[:, None] + np.arange(q_len)[None], jnp.int32),
    }
    if segments:
        # Example 1 holds two packed prompts in its cache; its queries belong to the second.
        kv_seg = np.ones((b, cache), np.int32)
        kv_seg[1, 10:] = 2
        q_seg = np.array([[1] * q_len, [2] * q_len], np.int32)
        fields |= {"q_segment_ids": jnp.asarray(q_seg), "kv_segment_ids": jnp.asarray(kv_seg)}
    table = RelativeBias(
        jnp.asarray(rng.normal(size=(heads, 8)), jnp.float32), bidirectional=False, max_distance=16
    )
    return q, k, v, AttentionMask(**fields), table if bias else None


@pytest.mark.parametrize(
    ("q_len", "segments", "bias", "target"),
    [
        (1, False, True, "gpu"),
        (1, True, False, "gpu"),
        (3, True, True, "gpu"),
        (3, True, True, "tpu"),
    ],
)
def test_decode_kernel_matches_reference(q_len: int, segments: bool, bias: bool, target: str):
    """Both layouts of the cache blocks: per-head (GPU) and [b, s, heads * d] columns (TPU)."""
    q, k, v, mask, rel = _decode_inputs(q_len, segments, bias)
    if target == "tpu":  # the column layout needs 128-lane heads (see decode_attention)
        q, k, v = (jnp.tile(x, (1, 1, 1, 16)) for x in (q, k, v))

    def kernel_fn(q, k, v):
        return decode_attention(
            q, k, v, mask, bias=rel, scale=0.5, block_kv=16, target=target,
            interpret=interpret_unless_native(target),
        )  # fmt: skip

    kernel = jax.jit(kernel_fn)
    ref = jax.jit(lambda q, k, v: reference.attention(q, k, v, mask, bias=rel, scale=0.5))
    np.testing.assert_allclose(kernel(q, k, v), ref(q, k, v), atol=1e-5, rtol=1e-5)


def test_pallas_impl_routes_decode_and_has_gradients(monkeypatch: pytest.MonkeyPatch) -> None:
    """impl='pallas' with one query token goes through the decode kernel (grads via XLA)."""
    q, k, v, mask, rel = _decode_inputs(1, True, True)
    calls = []

    def spy(*args, **kwargs):
        calls.append(args[0].shape)
        return decode_attention(*args, **kwargs)

    monkeypatch.setattr(kernels, "decode_attention", spy)

    def loss(impl):
        def f(q, k, v):
            out = dot_product_attention(q, k, v, mask, bias=rel, scale=0.5, impl=impl)
            return jnp.sum(out * jnp.sin(out))

        return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2)))

    (val, grads), (ref_val, ref_grads) = loss("pallas")(q, k, v), loss("xla")(q, k, v)
    np.testing.assert_allclose(val, ref_val, rtol=1e-5)
    for g, rg in zip(grads, ref_grads):
        np.testing.assert_allclose(g, rg, atol=1e-5, rtol=1e-5)
    assert calls == [q.shape]


def test_dropout_is_rejected_by_pallas() -> None:
    q, k, v, mask, _ = _decode_inputs(1, False, False)
    with pytest.raises(ValueError, match="dropout"):
        dot_product_attention(
            q, k, v, mask, dropout_rate=0.1, dropout_rng=jax.random.key(0), impl="pallas"
        )
    with pytest.raises(ValueError, match="dropout"):
        flash_attention(q, k, v, mask, dropout_rate=0.1)


def test_cudnn_needs_gpu_and_auto_falls_back_to_xla_on_cpu() -> None:
    q, k, v, mask, _ = _decode_inputs(1, False, False)
    with pytest.raises(ValueError, match="GPU"):
        dot_product_attention(q, k, v, mask, impl="cudnn")
    np.testing.assert_array_equal(
        dot_product_attention(q, k, v, mask, impl="auto"),
        dot_product_attention(q, k, v, mask, impl="xla"),
    )
