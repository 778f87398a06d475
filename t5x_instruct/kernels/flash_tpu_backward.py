"""TPU (Pallas Mosaic) flash-attention backward: two kernels whose reduction axes are grid axes.

Math as in ``flash_backward`` (P recomputed from the saved lse, ``delta = rowsum(dO * O)``
from XLA). What changes is the shape of the program, as in ``flash_tpu``:

* dK/dV, grid ``(batch, kv_heads, kv_blocks, groups, q_blocks)``: the last two axes are the
  reduction ("arbitrary"), so each key tile sums the query tiles of every query head sharing
  its KV head into fp32 VMEM scratch; GQA/MQA never materialise per-query-head dK/dV. A 5-D
  grid rather than one flat ``groups * q_blocks`` axis means no div/mod anywhere.
* dQ, grid ``(batch, q_heads, q_blocks, kv_blocks)``: like the forward, plus a ``[1, nbp]``
  partial gradient of the relative-bias table per (batch, head, query tile), summed in XLA.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from t5x_instruct.kernels import block_masks as bm
from t5x_instruct.kernels.backend import compiler_params
from t5x_instruct.kernels.flash_tpu import (
    SMEM_SPEC,
    fetched_tile,
    kv_meta_spec,
    q_meta_spec,
    tile_plan,
    tile_visits,
    to_heads_major,
    when_visited,
)

# P^T @ dO and dS^T @ Q: contract over the query axis of both operands.
_TRANSPOSED_LHS = (((0,), (0,)), ((), ()))


def _dkdv_kernel(
    plan_ref,
    q_ref,
    do_ref,
    lse_ref,
    delta_ref,
    k_ref,
    v_ref,
    q_pos_ref,
    q_seg_ref,
    q_pre_ref,
    kv_pos_ref,
    kv_seg_ref,
    kv_pre_ref,
    table_ref,
    dk_ref,
    dv_ref,
    dk_acc,
    dv_acc,
    *,
    cfg: bm.KernelConfig,
    nq: int,
    nk: int,
) -> None:
    b, kv_head, j, g, i = (pl.program_id(a) for a in range(5))

    @pl.when((g == 0) & (i == 0))
    def _init():
        dk_acc[...] = jnp.zeros(dk_acc.shape, jnp.float32)
        dv_acc[...] = jnp.zeros(dv_acc.shape, jnp.float32)

    def visit():
        q, do = q_ref[...], do_ref[...]
        head = kv_head * cfg.groups + g
        p, ds, _ = bm.probs_and_dlogits(
            cfg,
            q,
            k_ref[...],
            v_ref[...],
            do,
            lse_ref[...],
            delta_ref[...],
            (q_pos_ref[...], q_seg_ref[...], q_pre_ref[...]),
            (kv_pos_ref[...], kv_seg_ref[...], kv_pre_ref[...]),
            j * cfg.block_kv,
            lambda n: table_ref[head, n],
        )
        dv_acc[...] += lax.dot_general(
            p.astype(do.dtype), do, _TRANSPOSED_LHS, preferred_element_type=jnp.float32
        )
        dk_acc[...] += lax.dot_general(
            ds.astype(q.dtype), q, _TRANSPOSED_LHS, preferred_element_type=jnp.float32
        )

    when_visited(cfg, plan_ref, (b * nk + j) * nq + i, visit)

    @pl.when((g == cfg.groups - 1) & (i == nq - 1))
    def _finish():
        dk_ref[...] = (dk_acc[...] * cfg.scale).astype(dk_ref.dtype)
        dv_ref[...] = dv_acc[...].astype(dv_ref.dtype)


def _dq_kernel(
    plan_ref,
    q_ref,
    do_ref,
    lse_ref,
    delta_ref,
    k_ref,
    v_ref,
    q_pos_ref,
    q_seg_ref,
    q_pre_ref,
    kv_pos_ref,
    kv_seg_ref,
    kv_pre_ref,
    table_ref,
    dq_ref,
    dtable_ref,
    dq_acc,
    dtable_acc,
    *,
    cfg: bm.KernelConfig,
    nq: int,
    nk: int,
) -> None:
    b, h, i, j = (pl.program_id(a) for a in range(4))

    @pl.when(j == 0)
    def _init():
        dq_acc[...] = jnp.zeros(dq_acc.shape, jnp.float32)
        dtable_acc[...] = jnp.zeros(dtable_acc.shape, jnp.float32)

    def visit():
        k = k_ref[...]
        _, ds, buckets = bm.probs_and_dlogits(
            cfg,
            q_ref[...],
            k,
            v_ref[...],
            do_ref[...],
            lse_ref[...],
            delta_ref[...],
            (q_pos_ref[...], q_seg_ref[...], q_pre_ref[...]),
            (kv_pos_ref[...], kv_seg_ref[...], kv_pre_ref[...]),
            j * cfg.block_kv,
            lambda n: table_ref[h, n],
        )
        dq_acc[...] += jnp.dot(ds.astype(k.dtype), k, preferred_element_type=jnp.float32)
        if cfg.has_bias:
            width = dtable_acc.shape[-1]
            dtable_acc[...] += bm.bucket_sums(ds, buckets, cfg.num_buckets, width)

    when_visited(cfg, plan_ref, (b * nq + i) * nk + j, visit)

    @pl.when(j == nk - 1)
    def _finish():
        dq_ref[...] = (dq_acc[...] * cfg.scale).astype(dq_ref.dtype)
        dtable_ref[...] = dtable_acc[...]


def flash_backward_tpu(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    out: jax.Array,
    lse: jax.Array,
    do: jax.Array,
    meta: bm.Metadata,
    table: jax.Array,
    cfg: bm.KernelConfig,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Padded inputs (``lse`` ``[b, h, q_pad, 1]``) -> (dq, dk, dv, dtable ``[h, nbp]``)."""
    batch, q_pad, num_heads, head_dim = q.shape
    kv_pad, num_kv_heads = k.shape[1], k.shape[2]
    bq, bk, groups = cfg.block_q, cfg.block_kv, cfg.groups
    nq, nk = q_pad // bq, kv_pad // bk
    nbp = table.shape[-1]
    delta = bm.softmax_delta(out, do)
    visits = tile_visits(meta, cfg)
    operands = (
        to_heads_major(q),
        to_heads_major(do),
        lse,
        delta,
        to_heads_major(k),
        to_heads_major(v),
        *meta.q_arrays(),
        *meta.kv_arrays(),
        table,
    )

    # ---- dK / dV: one key tile per (b, kv head, j); reduce over (group, query tile).
    def q_block(b, kv_head, j, g, i, plan_ref):
        return fetched_tile(plan_ref, (b * nk + j) * nq + i)

    def q_rows(block: int) -> pl.BlockSpec:
        return pl.BlockSpec(
            (None, None, bq, block),
            lambda b, kv_head, j, g, i, p: (
                b,
                kv_head * groups + g,
                q_block(b, kv_head, j, g, i, p),
                0,
            ),
        )

    kv_tile = pl.BlockSpec(
        (None, None, bk, head_dim), lambda b, kv_head, j, g, i, p: (b, kv_head, j, 0)
    )
    grid = (batch, num_kv_heads, nk, groups, nq)
    dk, dv = pl.pallas_call(
        functools.partial(_dkdv_kernel, cfg=cfg, nq=nq, nk=nk),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=1,
            grid=grid,
            in_specs=[q_rows(head_dim), q_rows(head_dim), q_rows(1), q_rows(1), kv_tile, kv_tile]
            + [q_meta_spec(bq, lambda b, kh, j, g, i, p: (b, q_block(b, kh, j, g, i, p), 0))] * 3
            + [kv_meta_spec(bk, lambda b, kh, j, g, i, p: (b, 0, j))] * 3
            + [SMEM_SPEC],
            out_specs=[kv_tile, kv_tile],
            scratch_shapes=[pltpu.VMEM((bk, head_dim), jnp.float32)] * 2,
        ),
        out_shape=[jax.ShapeDtypeStruct((batch, num_kv_heads, kv_pad, head_dim), k.dtype)] * 2,
        interpret=cfg.interpret,
        compiler_params=compiler_params(
            cfg.target, cfg.interpret, ("parallel",) * 3 + ("arbitrary",) * 2
        ),
        name="t5x_flash_dkdv_tpu",
    )(tile_plan(jnp.swapaxes(visits, 1, 2)), *operands)

    # ---- dQ (+ bias-table partials): one query tile per (b, head, i); reduce over key tiles.
    def kv_block(b, h, i, j, plan_ref):
        return fetched_tile(plan_ref, (b * nq + i) * nk + j)

    def q_tile(block: int) -> pl.BlockSpec:
        return pl.BlockSpec((None, None, bq, block), lambda b, h, i, j, p: (b, h, i, 0))

    kv_spec = pl.BlockSpec(
        (None, None, bk, head_dim),
        lambda b, h, i, j, p: (b, lax.div(h, groups), kv_block(b, h, i, j, p), 0),
    )
    grid = (batch, num_heads, nq, nk)
    dq, dtable = pl.pallas_call(
        functools.partial(_dq_kernel, cfg=cfg, nq=nq, nk=nk),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=1,
            grid=grid,
            in_specs=[q_tile(head_dim), q_tile(head_dim), q_tile(1), q_tile(1), kv_spec, kv_spec]
            + [q_meta_spec(bq, lambda b, h, i, j, p: (b, i, 0))] * 3
            + [kv_meta_spec(bk, lambda b, h, i, j, p: (b, 0, kv_block(b, h, i, j, p)))] * 3
            + [SMEM_SPEC],
            out_specs=[
                q_tile(head_dim),
                pl.BlockSpec((None, None, None, 1, nbp), lambda b, h, i, j, p: (b, h, i, 0, 0)),
            ],
            scratch_shapes=[
                pltpu.VMEM((bq, head_dim), jnp.float32),
                pltpu.VMEM((1, nbp), jnp.float32),
            ],
        ),
        out_shape=[
            jax.ShapeDtypeStruct((batch, num_heads, q_pad, head_dim), q.dtype),
            jax.ShapeDtypeStruct((batch, num_heads, nq, 1, nbp), jnp.float32),
        ],
        interpret=cfg.interpret,
        compiler_params=compiler_params(
            cfg.target, cfg.interpret, ("parallel",) * 3 + ("arbitrary",)
        ),
        name="t5x_flash_dq_tpu",
    )(tile_plan(visits), *operands)
    return (
        to_heads_major(dq),
        to_heads_major(dk),
        to_heads_major(dv),
        jnp.sum(dtable, axis=(0, 2, 3)),
    )
