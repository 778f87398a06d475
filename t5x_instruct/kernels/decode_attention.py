"""Pallas decode attention: a few query steps against a long KV cache (split-K, forward only).

With one query token a flash tile of ``block_q`` rows would be almost all padding, so the
decode kernel instead stacks the ``groups`` query heads that share a KV head (times the few
query steps) into the rows of one tile: each K/V tile is read once per KV head, not once
per query head. The cache is cut into ``num_splits`` contiguous chunks processed in
parallel (grid ``(batch, kv_heads, splits)``), each with an online softmax; the wrapper
merges the chunks' (out, logsumexp) pairs. Masking, bias and numerics are the flash kernel's
(``block_masks``), so ``kv_positions <= q_position`` hides the unwritten cache slots.

Gradients (rarely needed at decode time) come from the XLA reference via ``custom_vjp``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from t5x_instruct.kernels import block_masks as bm
from t5x_instruct.kernels import reference
from t5x_instruct.kernels.backend import compiler_params, resolve_interpret, resolve_target
from t5x_instruct.kernels.flash_attention import check_no_dropout
from t5x_instruct.kernels.masks import AttentionMask
from t5x_instruct.kernels.relative_bias import RelativeBias

# dot_product_attention(impl='pallas') routes queries this short to the decode kernel.
DECODE_MAX_Q_LEN = 4
DEFAULT_DECODE_BLOCK_KV = 256
DEFAULT_NUM_SPLITS = 8


def _decode_kernel(
    q_ref,
    q_pos_ref,
    q_seg_ref,
    q_pre_ref,
    k_ref,
    v_ref,
    kv_pos_ref,
    kv_seg_ref,
    kv_pre_ref,
    table_ref,
    o_ref,
    lse_ref,
    *,
    cfg: bm.KernelConfig,
    blocks_per_split: int,
) -> None:
    bk = cfg.block_kv
    q = q_ref[...]  # [rows, d]: (query step, head in group) pairs of one KV head
    q_meta = (q_pos_ref[...], q_seg_ref[...], q_pre_ref[...])
    split_start = pl.program_id(2) * blocks_per_split * bk

    def body(j, carry):
        start = pl.multiple_of(j * bk, bk)
        sl = pl.ds(start, bk)
        kv_meta = (kv_pos_ref[:, sl], kv_seg_ref[:, sl], kv_pre_ref[:, sl])

        def visit(carry):
            k = k_ref[sl, :]
            v = v_ref[sl, :]
            # Rows belong to different heads: the table is pre-gathered per row.
            _, bias = bm.tile_bias(cfg, q_meta[0], kv_meta[0], lambda n: table_ref[:, n : n + 1])
            s, _ = bm.masked_logits(
                cfg, bm.qk_logits(q, k), q_meta, kv_meta, split_start + start, bias
            )
            return bm.online_softmax_step(carry, s, v)

        return bm.visit_unless_empty(cfg, q_meta, kv_meta, visit, carry)

    rows, head_dim = q.shape
    init = (
        jnp.zeros((rows, head_dim), jnp.float32),
        jnp.full((rows, 1), -jnp.inf, jnp.float32),
        jnp.zeros((rows, 1), jnp.float32),
    )
    # -inf marks "this split saw nothing": it then gets zero weight in the merge.
    o_ref[...], lse_ref[...] = bm.finish_softmax(
        *lax.fori_loop(0, blocks_per_split, body, init), -jnp.inf
    )


def decode_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    mask: AttentionMask,
    *,
    bias: RelativeBias | None = None,
    scale: float = 1.0,
    dropout_rate: float = 0.0,
    dropout_rng: jax.Array | None = None,
    block_kv: int = DEFAULT_DECODE_BLOCK_KV,
    num_splits: int = DEFAULT_NUM_SPLITS,
    target: str | None = None,
    interpret: bool | None = None,
) -> jax.Array:
    """Attention for a short query block over a KV cache; shapes as ``reference.attention``.

    ``target`` / ``interpret`` as in ``flash_attention``; one kernel serves both families.
    On TPU a head's K/V columns must form a 128-lane block, so a cache with several KV heads
    of ``head_dim % 128 != 0`` (T5's 64) is served by the XLA reference instead: the other
    layout would mean transposing the whole cache at every step.
    """
    del dropout_rng
    check_no_dropout(dropout_rate)
    target = resolve_target(target)
    num_kv_heads, head_dim = key.shape[2], key.shape[3]
    if target == "tpu" and num_kv_heads > 1 and head_dim % 128:
        return reference.attention(query, key, value, mask, bias=bias, scale=scale)
    static = (
        float(scale),
        int(block_kv),
        int(num_splits),
        target,
        resolve_interpret(interpret),
    )
    if bias is None:
        return _decode_vjp(static, None, query, key, value, None, mask)
    bias_static = (bias.bidirectional, bias.max_distance)
    return _decode_vjp(static, bias_static, query, key, value, bias.table, mask)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _decode_vjp(static, bias_static, q, k, v, table, mask):
    return _decode_forward(static, bias_static, q, k, v, table, mask)


def _fwd(static, bias_static, q, k, v, table, mask):
    return _decode_forward(static, bias_static, q, k, v, table, mask), (q, k, v, table, mask)


def _bwd(static, bias_static, residuals, do):
    q, k, v, table, mask = residuals

    def ref(q, k, v, table):
        bias = None if table is None else RelativeBias(table, *bias_static)
        return reference.attention(q, k, v, mask, bias=bias, scale=static[0])

    _, vjp = jax.vjp(ref, q, k, v, table)
    return (*vjp(do), None)


_decode_vjp.defvjp(_fwd, _bwd)


def _decode_forward(static, bias_static, query, key, value, table, mask) -> jax.Array:
    scale, block_kv, num_splits, target, interpret = static
    batch, q_len, num_heads, head_dim = query.shape
    kv_len, num_kv_heads = key.shape[1], key.shape[2]
    if num_heads % num_kv_heads:
        raise ValueError(f"{num_heads} query heads are not a multiple of {num_kv_heads} KV heads.")
    g = num_heads // num_kv_heads
    rows = q_len * g
    rows_pad = max(16, bm.pl_next_power_of_2(rows))  # Triton dots want >= 16 rows
    bk = bm.block_size(block_kv, kv_len)
    num_blocks = -(-kv_len // bk)
    splits = max(1, min(num_splits, num_blocks))
    blocks_per_split = -(-num_blocks // splits)
    kv_pad = splits * blocks_per_split * bk
    bias = None if table is None else RelativeBias(table, *bias_static)
    cfg = bm.make_config(
        mask,
        bias,
        scale=scale,
        block_q=rows_pad,
        block_kv=bk,
        q_len=rows,
        kv_len=kv_len,
        kv_pad=kv_pad,
        groups=g,
        target=target,
        interpret=interpret,
    )
    meta = bm.prepare_metadata(mask, batch, q_len, kv_len, q_len, kv_pad)

    def rows_of(x: jax.Array, fill: int) -> jax.Array:
        # Row r is (query step r // g, head r % g of the group); x is a [b, q_len, 1] column.
        x = jnp.repeat(x, g, axis=1)
        return jnp.pad(x, ((0, 0), (0, rows_pad - rows), (0, 0)), constant_values=fill)

    q_rows = query.reshape(batch, q_len, num_kv_heads, g, head_dim).transpose(0, 2, 1, 3, 4)
    q_rows = q_rows.reshape(batch, num_kv_heads, rows, head_dim)
    q_rows = jnp.pad(q_rows, ((0, 0), (0, 0), (0, rows_pad - rows), (0, 0)))
    q_meta = (
        rows_of(meta.q_pos, bm.PAD_Q_POS),
        rows_of(meta.q_seg, bm.PAD_Q_SEG),
        rows_of(meta.q_prefix, 0),
    )
    if table is None:
        table_rows = jnp.zeros((num_kv_heads, rows_pad, 1), jnp.float32)
    else:
        t = bm.pad_table(table).reshape(num_kv_heads, 1, g, -1)
        t = jnp.broadcast_to(t, (num_kv_heads, q_len, g, t.shape[-1]))
        t = t.reshape(num_kv_heads, rows, -1)
        table_rows = jnp.pad(t, ((0, 0), (0, rows_pad - rows), (0, 0)))
    kv_seq_pad = ((0, 0), (0, kv_pad - kv_len), (0, 0), (0, 0))
    key, value = jnp.pad(key, kv_seq_pad), jnp.pad(value, kv_seq_pad)

    split_len = blocks_per_split * bk
    nbp = table_rows.shape[-1]
    grid = (batch, num_kv_heads, splits)
    row_spec = pl.BlockSpec((None, rows_pad, 1), lambda b, h, s: (b, 0, 0))
    if target == "tpu":
        # Mosaic wants (sublane, lane)-shaped blocks: view the cache as [b, s, kv_heads * d]
        # (a free reshape) and take head h's d-wide column block of each split.
        key = key.reshape(batch, kv_pad, num_kv_heads * head_dim)
        value = value.reshape(batch, kv_pad, num_kv_heads * head_dim)
        kv_spec = pl.BlockSpec((None, split_len, head_dim), lambda b, h, s: (b, s, h))
    else:
        kv_spec = pl.BlockSpec((None, split_len, None, head_dim), lambda b, h, s: (b, s, h, 0))
    kv_meta_spec = pl.BlockSpec((None, 1, split_len), lambda b, h, s: (b, 0, s))
    o_part, lse_part = pl.pallas_call(
        functools.partial(_decode_kernel, cfg=cfg, blocks_per_split=blocks_per_split),
        grid=grid,
        in_specs=[pl.BlockSpec((None, None, rows_pad, head_dim), lambda b, h, s: (b, h, 0, 0))]
        + [row_spec] * 3
        + [kv_spec, kv_spec]
        + [kv_meta_spec] * 3
        + [pl.BlockSpec((None, rows_pad, nbp), lambda b, h, s: (h, 0, 0))],
        out_specs=[
            pl.BlockSpec((None, None, None, rows_pad, head_dim), lambda b, h, s: (b, h, s, 0, 0)),
            pl.BlockSpec((None, None, None, rows_pad, 1), lambda b, h, s: (b, h, s, 0, 0)),
        ],
        out_shape=[
            jax.ShapeDtypeStruct((batch, num_kv_heads, splits, rows_pad, head_dim), jnp.float32),
            jax.ShapeDtypeStruct((batch, num_kv_heads, splits, rows_pad, 1), jnp.float32),
        ],
        interpret=interpret,
        compiler_params=compiler_params(target, interpret, ("parallel",) * len(grid)),
        name="t5x_decode_attention",
    )(q_rows, *q_meta, key, value, *meta.kv_arrays(), table_rows)

    # Merge the splits: out = sum_s exp(lse_s - lse) * out_s.
    lse_part = lse_part[..., 0]
    m = jnp.max(lse_part, axis=2, keepdims=True)
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    w = jnp.exp(lse_part - m)  # 0 for splits that saw nothing
    denom = jnp.sum(w, axis=2)
    out = jnp.sum(w[..., None] * o_part, axis=2) / jnp.where(denom > 0, denom, 1.0)[..., None]
    out = out[:, :, :rows].reshape(batch, num_kv_heads, q_len, g, head_dim)
    return (
        out.transpose(0, 2, 1, 3, 4).reshape(batch, q_len, num_heads, head_dim).astype(query.dtype)
    )
