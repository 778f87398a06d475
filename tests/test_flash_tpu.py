"""The TPU (Mosaic) flash-attention family without a TPU.

Numerics run the kernels in the Pallas interpreter against the XLA reference, with the very
cases and checks the GPU family is tested with (``helpers.attention_cases``). Compatibility is
checked by lowering for TPU from this CPU host, which runs JAX's Mosaic lowering and its
block-shape rules, and asserting the result is a Mosaic ``tpu_custom_call``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers.attention_cases import (
    CASES,
    Case,
    check_against_reference,
    interpret_unless_native,
    make_inputs,
)

from t5x_instruct.kernels import AttentionMask, RelativeBias, flash_attention
from t5x_instruct.kernels import block_masks as bm
from t5x_instruct.kernels.flash_tpu import tile_plan, tile_visits


@pytest.mark.parametrize("name", sorted(CASES))
def test_tpu_family_matches_reference(name: str) -> None:
    """Forward and dq/dk/dv/dtable in the interpreter, same tolerances as the GPU family."""
    check_against_reference(CASES[name], target="tpu")


def test_skipped_tiles_match_the_gpu_family() -> None:
    """Queries whose segment has no key: skipped vs visited tiles decide their (undefined)
    output, so both families must skip exactly the same tiles."""
    rng = np.random.default_rng(3)
    q = jnp.asarray(rng.normal(size=(2, 40, 4, 8)), jnp.float32)
    k, v = (jnp.asarray(rng.normal(size=(2, 56, 2, 8)), jnp.float32) for _ in range(2))
    q_seg = np.repeat(np.array([[1, 2, 5], [2, 7, 7]]), [12, 16, 12], axis=1)
    kv_seg = np.repeat(np.array([[1, 2, 0], [1, 2, 2]]), [20, 20, 16], axis=1)
    mask = AttentionMask(
        q_segment_ids=jnp.asarray(q_seg),
        kv_segment_ids=jnp.asarray(kv_seg),
        q_positions=jnp.arange(40, dtype=jnp.int32)[None] + 16,
        causal=True,
    )
    bias = RelativeBias(jnp.asarray(rng.normal(size=(4, 8)), jnp.float32), max_distance=16)

    def run(target: str):
        def attend(q, k, v, table):
            rel = RelativeBias(table, bidirectional=True, max_distance=16)
            out = flash_attention(
                q, k, v, mask, bias=rel, scale=0.3, block_q=16, block_kv=16, target=target,
                interpret=interpret_unless_native(target),
            )  # fmt: skip
            return jnp.sum(out * jnp.sin(out))

        return jax.jit(jax.value_and_grad(attend, argnums=(0, 1, 2, 3)))(q, k, v, bias.table)

    (val, grads), (ref_val, ref_grads) = run("tpu"), run("gpu")
    np.testing.assert_allclose(val, ref_val, rtol=1e-5)
    for g, rg in zip(grads, ref_grads):
        np.testing.assert_allclose(g, rg, atol=1e-5, rtol=1e-5)


def test_tile_plan_skips_and_redirects_copies() -> None:
    case = Case(q_len=72, causal=True, segments=True, block_kv=32)
    _, _, _, mask, _, _ = make_inputs(case)
    cfg = bm.make_config(
        mask,
        None,
        scale=1.0,
        block_q=16,
        block_kv=32,
        q_len=72,
        kv_len=72,
        kv_pad=96,
        groups=1,
        target="tpu",
        interpret=True,
    )
    visits = np.asarray(tile_visits(bm.prepare_metadata(mask, 2, 72, 72, 80, 96), cfg))
    assert visits.shape == (2, 5, 3)
    assert not visits[:, 0, 1:].any()  # causal: the first query tile sees key tile 0 only
    assert visits[:, :, 0].any()
    plan = np.asarray(tile_plan(jnp.asarray([[False, True, False, True], [False] * 4])))
    # Visited tiles map to themselves; skipped ones to ~(tile kept in VMEM instead).
    np.testing.assert_array_equal(plan, [~1, 1, ~1, 3, ~0, ~0, ~0, ~0])


def _lower_for_tpu(fn, *args) -> str:
    return jax.jit(fn).trace(*args).lower(lowering_platforms=("tpu",)).as_text()


@pytest.mark.parametrize("full_mask", [True, False], ids=["causal_segments_prefix_bias", "plain"])
def test_lowers_for_tpu(full_mask: bool) -> None:
    """S=512, 8 query heads over 2 KV heads, d=128, 128-blocks: forward and gradient."""
    b, s, h, kv_h, d = 2, 512, 8, 2, 128
    dtype = jnp.bfloat16 if full_mask else jnp.float32

    def loss(q, k, v, table, seg, prefix):
        if full_mask:
            mask = AttentionMask(
                q_segment_ids=seg,
                kv_segment_ids=seg,
                q_in_prefix=prefix,
                kv_in_prefix=prefix,
                causal=True,
            )
            bias = RelativeBias(table, bidirectional=False)
        else:
            mask, bias = AttentionMask(), None
        # plain: a 64-wide key block is widened to Mosaic's 128 lanes by the wrapper.
        out = flash_attention(
            q, k, v, mask, bias=bias, scale=d**-0.5, block_kv=128 if full_mask else 64,
            target="tpu", interpret=False,
        )  # fmt: skip
        return jnp.sum(out.astype(jnp.float32))

    args = (
        jax.ShapeDtypeStruct((b, s, h, d), dtype),
        jax.ShapeDtypeStruct((b, s, kv_h, d), dtype),
        jax.ShapeDtypeStruct((b, s, kv_h, d), dtype),
        jax.ShapeDtypeStruct((h, 32), jnp.float32),
        jax.ShapeDtypeStruct((b, s), jnp.int32),
        jax.ShapeDtypeStruct((b, s), jnp.bool_),
    )
    forward = _lower_for_tpu(loss, *args)
    assert forward.count("@tpu_custom_call(") == 1
    assert 'kernel_name = "t5x_flash_forward_tpu"' in forward
    backward = _lower_for_tpu(jax.grad(loss, argnums=(0, 1, 2, 3)), *args)
    assert backward.count("@tpu_custom_call(") == 3
    for kernel in ("t5x_flash_forward_tpu", "t5x_flash_dkdv_tpu", "t5x_flash_dq_tpu"):
        assert f'kernel_name = "{kernel}"' in backward
