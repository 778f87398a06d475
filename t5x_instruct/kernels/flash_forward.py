"""Forward flash-attention kernel: online softmax over key blocks, saves only out + logsumexp.

GPU family (see ``backend``). Grid ``(batch, q_heads, q_blocks)``. Each program holds one
``[block_q, d]`` query tile and walks the keys of its KV head (``h // groups``, chosen in the
BlockSpec index map, so grouped K/V are never repeated in memory) one ``block_kv`` tile at a
time, keeping the running max ``m``, normaliser ``l`` and unnormalised output ``acc`` in fp32.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from t5x_instruct.kernels import block_masks as bm
from t5x_instruct.kernels.backend import compiler_params


def _forward_kernel(
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
    *,
    cfg: bm.KernelConfig,
    num_kv_blocks: int,
) -> None:
    bq, bk = cfg.block_q, cfg.block_kv
    q = q_ref[...]
    q_meta = (q_pos_ref[...], q_seg_ref[...], q_pre_ref[...])
    head_dim = q.shape[-1]

    def body(j, carry):
        start = pl.multiple_of(j * bk, bk)
        sl = pl.ds(start, bk)
        kv_meta = (kv_pos_ref[:, sl], kv_seg_ref[:, sl], kv_pre_ref[:, sl])

        def visit(carry):
            k = k_ref[sl, :]
            v = v_ref[sl, :]
            _, bias = bm.tile_bias(cfg, q_meta[0], kv_meta[0], lambda n: table_ref[n])
            s, _ = bm.masked_logits(cfg, bm.qk_logits(q, k), q_meta, kv_meta, start, bias)
            return bm.online_softmax_step(carry, s, v)

        return bm.visit_unless_empty(cfg, q_meta, kv_meta, visit, carry)

    init = (
        jnp.zeros((bq, head_dim), jnp.float32),
        jnp.full((bq, 1), -jnp.inf, jnp.float32),
        jnp.zeros((bq, 1), jnp.float32),
    )
    out, lse = bm.finish_softmax(*lax.fori_loop(0, num_kv_blocks, body, init), jnp.inf)
    o_ref[...] = out.astype(o_ref.dtype)
    lse_ref[...] = lse


def flash_forward(
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
    nbp = table.shape[-1]
    grid = (batch, num_heads, q_pad // bq)
    q_spec = pl.BlockSpec((None, bq, None, head_dim), lambda b, h, i: (b, i, h, 0))
    kv_spec = pl.BlockSpec((None, kv_pad, None, head_dim), lambda b, h, i: (b, 0, h // g, 0))
    q_meta_spec = pl.BlockSpec((None, bq, 1), lambda b, h, i: (b, i, 0))
    kv_meta_spec = pl.BlockSpec((None, 1, kv_pad), lambda b, h, i: (b, 0, 0))
    table_spec = pl.BlockSpec((None, nbp), lambda b, h, i: (h, 0))
    kernel = functools.partial(_forward_kernel, cfg=cfg, num_kv_blocks=kv_pad // bk)
    return pl.pallas_call(
        kernel,
        grid=grid,
        in_specs=[q_spec, kv_spec, kv_spec] + [q_meta_spec] * 3 + [kv_meta_spec] * 3 + [table_spec],
        out_specs=[q_spec, pl.BlockSpec((None, None, bq, 1), lambda b, h, i: (b, h, i, 0))],
        out_shape=[
            jax.ShapeDtypeStruct(q.shape, q.dtype),
            jax.ShapeDtypeStruct((batch, num_heads, q_pad, 1), jnp.float32),
        ],
        interpret=cfg.interpret,
        compiler_params=compiler_params(cfg.target, cfg.interpret, ("parallel",) * len(grid)),
        name="t5x_flash_forward",
    )(q, k, v, *meta.q_arrays(), *meta.kv_arrays(), table)
