"""TPU (Pallas Mosaic) flash attention: the key loop is a grid axis, not an in-kernel loop.

Same math and signatures as the GPU family (``flash_forward`` / ``flash_backward``), shaped for
Mosaic: tensors are transposed to ``[b, heads, seq, d]`` so every block ends in ``(tile, d)``;
the innermost grid axis walks the tiles being reduced over ("arbitrary"), so Pallas
double-buffers them through VMEM while the running statistics stay in VMEM scratch.

Which tiles to skip is decided before the kernel, in XLA: :func:`tile_plan` applies
``block_masks.block_is_empty`` to every (query tile, key tile) pair and the kernel gets the
result as a scalar-prefetch array. A scalar branch on an SMEM value is cheap on TPU, while
reducing metadata to a scalar inside Mosaic is not. The plan also redirects skipped tiles'
index maps to a tile that is fetched anyway, so skipped tiles cost no DMA either.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from t5x_instruct.kernels import block_masks as bm
from t5x_instruct.kernels.backend import compiler_params

# The whole (tiny) bias table sits in SMEM: the bias lookup reads table[head, n] as scalars.
SMEM_SPEC = pl.BlockSpec(memory_space=pltpu.SMEM)


def to_heads_major(x: jax.Array) -> jax.Array:
    """``[b, s, h, d]`` <-> ``[b, h, s, d]`` (its own inverse)."""
    return jnp.swapaxes(x, 1, 2)


def _tiles(x: jax.Array, axis: int, size: int) -> jax.Array:
    """Tiles: ``[b, s, 1]`` -> ``[b, n, size, 1]``, ``[b, 1, s]`` -> ``[b, n, 1, size]``."""
    if axis == 1:
        return x.reshape(x.shape[0], -1, size, 1)
    return jnp.swapaxes(x.reshape(x.shape[0], 1, -1, size), 1, 2)


def tile_visits(meta: bm.Metadata, cfg: bm.KernelConfig) -> jax.Array:
    """``[b, q_blocks, kv_blocks]`` bool: False where ``block_is_empty`` proves a pair empty.

    The very rule the GPU kernels evaluate per tile, vmapped over all tile pairs, so both
    families skip the same tiles (which matters only for rows that see no key at all).
    """
    q_meta = tuple(_tiles(x, 1, cfg.block_q) for x in meta.q_arrays())
    kv_meta = tuple(_tiles(x, 2, cfg.block_kv) for x in meta.kv_arrays())
    nq, nk = q_meta[0].shape[1], kv_meta[0].shape[1]
    if not cfg.can_skip_tiles:
        return jnp.ones((q_meta[0].shape[0], nq, nk), bool)
    per_kv = jax.vmap(functools.partial(bm.block_is_empty, cfg), in_axes=(None, 0))
    per_q = jax.vmap(per_kv, in_axes=(0, None))
    return ~jax.vmap(per_q)(q_meta, kv_meta)


def tile_plan(visits: jax.Array) -> jax.Array:
    """Flatten ``[..., n]`` visits into the int32 scalar-prefetch plan the kernels read.

    Entry ``t`` is ``t`` when tile ``t`` is visited and ``~f`` (``-f - 1``) when it is
    skipped, where ``f`` is the tile to keep in VMEM instead: the last visited one before
    ``t``, else the first after it. Pallas skips the copy when a block index repeats.
    """
    n = visits.shape[-1]
    idx = lax.broadcasted_iota(jnp.int32, visits.shape, visits.ndim - 1)
    last = lax.cummax(jnp.where(visits, idx, -1), axis=visits.ndim - 1)
    first = jnp.min(jnp.where(visits, idx, n), axis=-1, keepdims=True)
    fetch = jnp.where(last >= 0, last, jnp.where(first < n, first, 0))
    return jnp.where(visits, idx, ~fetch).reshape(-1)


def fetched_tile(plan_ref, flat: jax.Array) -> jax.Array:
    """Index-map side of :func:`tile_plan`: the tile to have in VMEM at plan position ``flat``."""
    code = plan_ref[flat]
    return jnp.where(code >= 0, code, ~code)


def when_visited(cfg: bm.KernelConfig, plan_ref, flat: jax.Array, body: Callable[[], None]):
    """Run ``body`` unless the plan marks this tile pair as skipped (dense: always run)."""
    if cfg.can_skip_tiles:
        pl.when(plan_ref[flat] >= 0)(body)
    else:
        body()


def q_meta_spec(block: int, index_map: Callable) -> pl.BlockSpec:
    return pl.BlockSpec((None, block, 1), index_map)


def kv_meta_spec(block: int, index_map: Callable) -> pl.BlockSpec:
    return pl.BlockSpec((None, 1, block), index_map)


def _forward_kernel(
    plan_ref,
    q_ref,
    k_ref,
    v_ref,
    q_pos_ref,
    q_seg_ref,
    q_pre_ref,
    kv_pos_ref,
    kv_seg_ref,
    kv_pre_ref,
    table_ref,
    o_ref,
    lse_ref,
    acc_ref,
    m_ref,
    l_ref,
    *,
    cfg: bm.KernelConfig,
    nq: int,
    nk: int,
) -> None:
    b, h, i, j = (pl.program_id(a) for a in range(4))

    @pl.when(j == 0)
    def _init():
        acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)
        m_ref[...] = jnp.full(m_ref.shape, -jnp.inf, jnp.float32)
        l_ref[...] = jnp.zeros(l_ref.shape, jnp.float32)

    def visit():
        q_meta = (q_pos_ref[...], q_seg_ref[...], q_pre_ref[...])
        kv_meta = (kv_pos_ref[...], kv_seg_ref[...], kv_pre_ref[...])
        _, bias = bm.tile_bias(cfg, q_meta[0], kv_meta[0], lambda n: table_ref[h, n])
        logits = bm.qk_logits(q_ref[...], k_ref[...])
        s, _ = bm.masked_logits(cfg, logits, q_meta, kv_meta, j * cfg.block_kv, bias)
        carry = (acc_ref[...], m_ref[...], l_ref[...])
        acc_ref[...], m_ref[...], l_ref[...] = bm.online_softmax_step(carry, s, v_ref[...])

    when_visited(cfg, plan_ref, (b * nq + i) * nk + j, visit)

    @pl.when(j == nk - 1)
    def _finish():
        out, lse = bm.finish_softmax(acc_ref[...], m_ref[...], l_ref[...], jnp.inf)
        o_ref[...] = out.astype(o_ref.dtype)
        lse_ref[...] = lse


def flash_forward_tpu(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    meta: bm.Metadata,
    table: jax.Array,
    cfg: bm.KernelConfig,
) -> tuple[jax.Array, jax.Array]:
    """Padded inputs -> (out ``[b, q_pad, h, d]``, lse ``[b, h, q_pad, 1]`` fp32)."""
    batch, q_pad, num_heads, head_dim = q.shape
    kv_pad = k.shape[1]
    bq, bk, g = cfg.block_q, cfg.block_kv, cfg.groups
    nq, nk = q_pad // bq, kv_pad // bk
    plan = tile_plan(tile_visits(meta, cfg))

    def kv_block(b, h, i, j, plan_ref):
        return fetched_tile(plan_ref, (b * nq + i) * nk + j)

    q_spec = pl.BlockSpec((None, None, bq, head_dim), lambda b, h, i, j, p: (b, h, i, 0))
    kv_spec = pl.BlockSpec(
        (None, None, bk, head_dim),
        lambda b, h, i, j, p: (b, lax.div(h, g), kv_block(b, h, i, j, p), 0),
    )
    grid = (batch, num_heads, nq, nk)
    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=1,
        grid=grid,
        in_specs=[q_spec, kv_spec, kv_spec]
        + [q_meta_spec(bq, lambda b, h, i, j, p: (b, i, 0))] * 3
        + [kv_meta_spec(bk, lambda b, h, i, j, p: (b, 0, kv_block(b, h, i, j, p)))] * 3
        + [SMEM_SPEC],
        out_specs=[q_spec, pl.BlockSpec((None, None, bq, 1), lambda b, h, i, j, p: (b, h, i, 0))],
        scratch_shapes=[
            pltpu.VMEM((bq, head_dim), jnp.float32),
            pltpu.VMEM((bq, 1), jnp.float32),
            pltpu.VMEM((bq, 1), jnp.float32),
        ],
    )
    semantics = ("parallel", "parallel", "parallel", "arbitrary")
    out, lse = pl.pallas_call(
        functools.partial(_forward_kernel, cfg=cfg, nq=nq, nk=nk),
        grid_spec=grid_spec,
        out_shape=[
            jax.ShapeDtypeStruct((batch, num_heads, q_pad, head_dim), q.dtype),
            jax.ShapeDtypeStruct((batch, num_heads, q_pad, 1), jnp.float32),
        ],
        interpret=cfg.interpret,
        compiler_params=compiler_params(cfg.target, cfg.interpret, semantics),
        name="t5x_flash_forward_tpu",
    )(
        plan,
        to_heads_major(q),
        to_heads_major(k),
        to_heads_major(v),
        *meta.q_arrays(),
        *meta.kv_arrays(),
        table,
    )
    return to_heads_major(out), lse
