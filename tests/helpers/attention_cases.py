"""Attention test cases shared by both Pallas kernel families' tests.

A :class:`Case` describes one mask combination at tiny sizes; :func:`check_against_reference`
runs a kernel family on it and compares the forward output and the gradients wrt q, k, v and
the relative-bias table (through a fixed random cotangent) with the XLA reference. Every
function is jitted: the Pallas interpreter is fast once compiled.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from t5x_instruct.kernels import AttentionMask, RelativeBias, flash_attention, reference


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


def make_inputs(case: Case):
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


def check_against_reference(case: Case, target: str = "gpu") -> None:
    """Kernel family ``target`` against the XLA reference (interpreted on CPU)."""
    q, k, v, mask, table, cot = make_inputs(case)

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
