"""Backward flash-attention kernels: probabilities are recomputed blockwise from the saved lse.

With ``P = exp(S - lse)`` and ``delta = rowsum(dO * O)``, ``dS = P * (dO V^T - delta)`` on
visible pairs (0 on masked ones: their logit is a constant, not a function of q or k).

* dK/dV kernel, grid ``(batch, kv_heads, kv_blocks)``: one key tile, looping over the
  ``groups`` query heads that share it and over every query tile. Summing the group inside
  the kernel is what keeps GQA/MQA from materialising per-query-head dK/dV.
* dQ kernel, grid ``(batch, q_heads, q_blocks)``: one query tile, looping over key tiles.
  It also reduces dS per bucket into a ``[num_buckets]`` partial gradient of the relative
  bias table for this (batch, head, q tile); the wrapper sums the partials.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from t5x_instruct.kernels import block_masks as bm
from t5x_instruct.kernels.backend import compiler_params


def _dkdv_kernel(
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
    *,
    cfg: bm.KernelConfig,
    num_q_blocks: int,
) -> None:
    bq, bk = cfg.block_q, cfg.block_kv
    k = k_ref[...]
    v = v_ref[...]
    kv_meta = (kv_pos_ref[...], kv_seg_ref[...], kv_pre_ref[...])
    kv_start = pl.program_id(2) * bk

    def q_body(g, i, carry):
        start = pl.multiple_of(i * bq, bq)
        sl = pl.ds(start, bq)
        q_meta = (q_pos_ref[sl, :], q_seg_ref[sl, :], q_pre_ref[sl, :])

        def visit(carry):
            dk, dv = carry
            q = q_ref[sl, g, :]
            do = do_ref[sl, g, :]
            p, ds, _ = bm.probs_and_dlogits(
                cfg,
                q,
                k,
                v,
                do,
                lse_ref[g, sl, :],
                delta_ref[g, sl, :],
                q_meta,
                kv_meta,
                kv_start,
                lambda n: table_ref[g, n],
            )
            # P^T @ dO and dS^T @ Q: contract over the query axis.
            dims = (((0,), (0,)), ((), ()))
            dv = dv + lax.dot_general(
                p.astype(do.dtype), do, dims, preferred_element_type=jnp.float32
            )
            dk = dk + lax.dot_general(
                ds.astype(q.dtype), q, dims, preferred_element_type=jnp.float32
            )
            return dk, dv

        return bm.visit_unless_empty(cfg, q_meta, kv_meta, visit, carry)

    def group_body(g, carry):
        return lax.fori_loop(0, num_q_blocks, functools.partial(q_body, g), carry)

    zeros = jnp.zeros(k.shape, jnp.float32)
    dk, dv = lax.fori_loop(0, cfg.groups, group_body, (zeros, zeros))
    dk_ref[...] = (dk * cfg.scale).astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)


def _dq_kernel(
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
    *,
    cfg: bm.KernelConfig,
    num_kv_blocks: int,
) -> None:
    bk = cfg.block_kv
    q = q_ref[...]
    do = do_ref[...]
    lse = lse_ref[...]
    delta = delta_ref[...]
    q_meta = (q_pos_ref[...], q_seg_ref[...], q_pre_ref[...])
    width = dtable_ref.shape[-1]

    def body(j, carry):
        start = pl.multiple_of(j * bk, bk)
        sl = pl.ds(start, bk)
        kv_meta = (kv_pos_ref[:, sl], kv_seg_ref[:, sl], kv_pre_ref[:, sl])

        def visit(carry):
            dq, dtable = carry
            k = k_ref[sl, :]
            v = v_ref[sl, :]
            _, ds, buckets = bm.probs_and_dlogits(
                cfg, q, k, v, do, lse, delta, q_meta, kv_meta, start, lambda n: table_ref[n]
            )
            dq = dq + jnp.dot(ds.astype(k.dtype), k, preferred_element_type=jnp.float32)
            if cfg.has_bias:
                dtable = dtable + bm.bucket_sums(ds, buckets, cfg.num_buckets, width)
            return dq, dtable

        return bm.visit_unless_empty(cfg, q_meta, kv_meta, visit, carry)

    init = (jnp.zeros(q.shape, jnp.float32), jnp.zeros((1, width), jnp.float32))
    dq, dtable = lax.fori_loop(0, num_kv_blocks, body, init)
    dq_ref[...] = (dq * cfg.scale).astype(dq_ref.dtype)
    dtable_ref[...] = dtable


def flash_backward(
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
    """Padded inputs (``lse`` ``[b, h, q_pad, 1]``) -> (dq, dk, dv, dtable ``[h, nb_padded]``)."""
    batch, q_pad, num_heads, head_dim = q.shape
    kv_pad, num_kv_heads = k.shape[1], k.shape[2]
    bq, bk, g = cfg.block_q, cfg.block_kv, cfg.groups
    nbp = table.shape[-1]
    delta = bm.softmax_delta(out, do)
    operands = (q, do, lse, delta, k, v, *meta.q_arrays(), *meta.kv_arrays(), table)

    # ---- dK / dV: one program per (batch, kv head, key tile).
    full_q = pl.BlockSpec((None, q_pad, g, head_dim), lambda b, h, j: (b, 0, h, 0))
    full_rows = pl.BlockSpec((None, g, q_pad, 1), lambda b, h, j: (b, h, 0, 0))
    kv_tile = pl.BlockSpec((None, bk, None, head_dim), lambda b, h, j: (b, j, h, 0))
    grid = (batch, num_kv_heads, kv_pad // bk)
    dk, dv = pl.pallas_call(
        functools.partial(_dkdv_kernel, cfg=cfg, num_q_blocks=q_pad // bq),
        grid=grid,
        in_specs=[full_q, full_q, full_rows, full_rows, kv_tile, kv_tile]
        + [pl.BlockSpec((None, q_pad, 1), lambda b, h, j: (b, 0, 0))] * 3
        + [pl.BlockSpec((None, 1, bk), lambda b, h, j: (b, 0, j))] * 3
        + [pl.BlockSpec((g, nbp), lambda b, h, j: (h, 0))],
        out_specs=[kv_tile, kv_tile],
        out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
        interpret=cfg.interpret,
        compiler_params=compiler_params(cfg.target, cfg.interpret, ("parallel",) * len(grid)),
        name="t5x_flash_dkdv",
    )(*operands)

    # ---- dQ (+ relative-bias table partials): one program per (batch, q head, query tile).
    q_tile = pl.BlockSpec((None, bq, None, head_dim), lambda b, h, i: (b, i, h, 0))
    row_tile = pl.BlockSpec((None, None, bq, 1), lambda b, h, i: (b, h, i, 0))
    full_kv = pl.BlockSpec((None, kv_pad, None, head_dim), lambda b, h, i: (b, 0, h // g, 0))
    grid = (batch, num_heads, q_pad // bq)
    num_q_blocks = q_pad // bq
    dq, dtable = pl.pallas_call(
        functools.partial(_dq_kernel, cfg=cfg, num_kv_blocks=kv_pad // bk),
        grid=grid,
        in_specs=[q_tile, q_tile, row_tile, row_tile, full_kv, full_kv]
        + [pl.BlockSpec((None, bq, 1), lambda b, h, i: (b, i, 0))] * 3
        + [pl.BlockSpec((None, 1, kv_pad), lambda b, h, i: (b, 0, 0))] * 3
        + [pl.BlockSpec((None, nbp), lambda b, h, i: (h, 0))],
        out_specs=[
            q_tile,
            pl.BlockSpec((None, None, None, 1, nbp), lambda b, h, i: (b, h, i, 0, 0)),
        ],
        out_shape=[
            jax.ShapeDtypeStruct(q.shape, q.dtype),
            jax.ShapeDtypeStruct((batch, num_heads, num_q_blocks, 1, nbp), jnp.float32),
        ],
        interpret=cfg.interpret,
        compiler_params=compiler_params(cfg.target, cfg.interpret, ("parallel",) * len(grid)),
        name="t5x_flash_dq",
    )(*operands)
    return dq, dk, dv, jnp.sum(dtable, axis=(0, 2, 3))
