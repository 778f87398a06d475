"""Pallas attention kernels (interpret mode on CPU) against the XLA reference.

Every case checks the forward output and the gradients wrt q, k, v and the relative-bias
table through a fixed random cotangent. Shapes are tiny and every function is jitted: the
Pallas interpreter is fast once compiled, and compiling dominates the runtime.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5x_instruct import kernels
from t5x_instruct.kernels import (
    AttentionMask,
    RelativeBias,
    decode_attention,
    dot_product_attention,
    flash_attention,
    reference,
)


@dataclasses.dataclass(frozen=True)
class Case:
    q_len: int = 40
    kv_len: int | None = None  # None: self-attention (kv_len = q_len)
    batch: int = 2
    heads: int = 4
    kv_heads: int = 4
    head_dim: int = 8
    causal: bool = False
    segments: bool = False  # packed examples plus trailing padding (segment 0)
    prefix: bool = False
    bias: str | None = None  # 'bi' | 'uni'
    q_offset: int = 0  # q_positions = arange(q_len) + q_offset (chunked prefill)
    block_q: int = 16
    block_kv: int = 16
    dtype: str = "float32"
    seed: int = 0


def _segments(rng: np.random.Generator, batch: int, length: int) -> np.ndarray:
    """Contiguous packed segments 1..n followed by padding 0 (as the packer produces)."""
    out = np.zeros((batch, length), np.int32)
    for row in out:
        used = int(rng.integers(length // 2, length + 1))
        cuts = np.sort(rng.choice(np.arange(1, used), size=min(2, used - 1), replace=False))
        row[:used] = np.searchsorted(cuts, np.arange(used), side="right") + 1
    return out


def _inputs(case: Case):
    rng = np.random.default_rng(case.seed)
    kv_len = case.kv_len or case.q_len
    dtype = jnp.dtype(case.dtype)

    def normal(*shape):
        return jnp.asarray(rng.normal(size=shape), jnp.float32).astype(dtype)

    q = normal(case.batch, case.q_len, case.heads, case.head_dim)
    k = normal(case.batch, kv_len, case.kv_heads, case.head_dim)
    v = normal(case.batch, kv_len, case.kv_heads, case.head_dim)
    fields: dict = {"causal": case.causal}
    if case.segments:
        kv_seg = _segments(rng, case.batch, kv_len)
        # Self-attention shares ids; cross-attention queries reuse the keys' segment layout.
        q_seg = kv_seg if case.kv_len is None else kv_seg[:, : case.q_len]
        fields |= {"q_segment_ids": jnp.asarray(q_seg), "kv_segment_ids": jnp.asarray(kv_seg)}
    if case.prefix:
        lens = rng.integers(1, case.q_len, size=(case.batch, 1))
        in_prefix = jnp.asarray(np.arange(case.q_len)[None] < lens)
        fields |= {"q_in_prefix": in_prefix, "kv_in_prefix": in_prefix}
    if case.q_offset:
        fields["q_positions"] = jnp.arange(case.q_len, dtype=jnp.int32)[None] + case.q_offset
    mask = AttentionMask(**fields)
    table = None
    if case.bias is not None:
        table = jnp.asarray(rng.normal(size=(case.heads, 8)), jnp.float32)
    cotangent = normal(case.batch, case.q_len, case.heads, case.head_dim)
    return q, k, v, mask, table, cotangent


def _run(fn, case: Case, q, k, v, mask, table, cotangent):
    scale = case.head_dim**-0.5

    def attend(q, k, v, table):
        bias = None
        if table is not None:
            bias = RelativeBias(table, bidirectional=case.bias == "bi", max_distance=16)
        return fn(q, k, v, mask, bias=bias, scale=scale)

    @jax.jit
    def run(q, k, v, table, cotangent):
        out, vjp = jax.vjp(attend, q, k, v, table)
        return out, vjp(cotangent)

    return run(q, k, v, table, cotangent)


def _assert_close(case: Case, actual, expected, what: str) -> None:
    tol = 1e-5 if case.dtype == "float32" else 3e-2
    np.testing.assert_allclose(
        np.asarray(actual, np.float32),
        np.asarray(expected, np.float32),
        atol=tol * max(1.0, float(jnp.max(jnp.abs(expected.astype(jnp.float32))))),
        rtol=tol,
        err_msg=f"{what} differs for {case}",
    )


def interpret_unless_native(target: str) -> bool | None:
    """Compile a family on its own hardware (platform default), interpret it anywhere else."""
    native = "tpu" if jax.default_backend() == "tpu" else "gpu"
    return None if target == native else True


def _check_against_reference(case: Case, target: str = "gpu") -> None:
    """Kernel family ``target`` against the XLA reference (interpreted on CPU)."""
    q, k, v, mask, table, cot = _inputs(case)

    def flash(*args, **kwargs):
        return flash_attention(
            *args,
            block_q=case.block_q,
            block_kv=case.block_kv,
            target=target,
            interpret=interpret_unless_native(target),
            **kwargs,
        )

    out, grads = _run(flash, case, q, k, v, mask, table, cot)
    if case.dtype == "float32":
        ref_out, ref_grads = _run(reference.attention, case, q, k, v, mask, table, cot)
    else:
        # bf16: judge against the fp32 reference on the same (bf16-rounded) inputs.
        up = [x.astype(jnp.float32) for x in (q, k, v, cot)]
        ref_out, ref_grads = _run(reference.attention, case, *up[:3], mask, table, up[3])
    assert out.dtype == q.dtype
    _assert_close(case, out, ref_out, "output")
    for name, g, rg in zip(("dq", "dk", "dv", "dtable"), grads, ref_grads):
        if rg is None:
            assert g is None
            continue
        assert g.shape == rg.shape
        _assert_close(case, g, rg, name)


CASES = {
    "segments_padding_mqa": Case(segments=True, kv_heads=1),
    "causal_packed": Case(q_len=72, causal=True, segments=True, block_kv=32, head_dim=16),
    "prefix_lm": Case(causal=True, prefix=True, segments=True),
    "bias_bidirectional_encoder": Case(segments=True, bias="bi"),
    "bias_unidirectional_decoder": Case(q_len=72, causal=True, bias="uni", kv_heads=2),
    "cross_attention_segments": Case(q_len=24, kv_len=40, segments=True, kv_heads=2),
    "chunked_prefill_positions": Case(q_len=24, kv_len=40, causal=True, q_offset=16),
    "everything": Case(
        q_len=72, causal=True, segments=True, prefix=True, bias="uni", kv_heads=2, block_q=32
    ),
    "single_block": Case(q_len=16, causal=True, batch=1, heads=2, kv_heads=1, bias="bi"),
    "bf16_causal_packed_bias": Case(
        q_len=72, causal=True, segments=True, bias="uni", kv_heads=2, dtype="bfloat16"
    ),
    "bf16_prefix_mqa": Case(causal=True, prefix=True, kv_heads=1, dtype="bfloat16"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_flash_matches_reference(name: str) -> None:
    _check_against_reference(CASES[name])


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
        _check_against_reference(case)


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
