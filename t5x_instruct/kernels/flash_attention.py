"""Pallas flash attention (forward + backward) behind the ``dot_product_attention`` signature.

One kernel family covers every mask the models use: causal by position, packed segments
(padding = segment 0), prefix-LM, GQA/MQA, and T5's bucketed relative bias (looked up from
the ``[heads, num_buckets]`` table inside the kernel, with its gradient). Memory is O(S):
the forward saves only the output and the per-row logsumexp; the backward recomputes the
probabilities tile by tile (see ``flash_forward`` / ``flash_backward``).

Numerics follow ``reference.attention``: fp32 logits, softmax and accumulation for bf16 or
fp32 inputs; masked pairs get the reference's finite ``MASK_VALUE``. One documented
difference: a query row that can see *no* key (never produced by the models' masks) is
undefined in both; here it is uniform over the keys of the blocks it visits, or 0 when all
its blocks are skipped.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from t5x_instruct.kernels import block_masks as bm
from t5x_instruct.kernels.backend import resolve_interpret, resolve_target
from t5x_instruct.kernels.flash_backward import flash_backward
from t5x_instruct.kernels.flash_forward import flash_forward
from t5x_instruct.kernels.masks import AttentionMask
from t5x_instruct.kernels.relative_bias import RelativeBias

DEFAULT_BLOCK_Q = 128
DEFAULT_BLOCK_KV = 128


def check_no_dropout(dropout_rate: float) -> None:
    if dropout_rate > 0.0:
        raise ValueError(
            f"attention_impl='pallas' does not support attention dropout (got dropout_rate="
            f"{dropout_rate}); use attention_impl='xla' (or 'auto', which falls back to XLA "
            "when dropout is on) or set the model's dropout_rate to 0."
        )


def flash_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    mask: AttentionMask,
    *,
    bias: RelativeBias | None = None,
    scale: float = 1.0,
    dropout_rate: float = 0.0,
    dropout_rng: jax.Array | None = None,
    block_q: int = DEFAULT_BLOCK_Q,
    block_kv: int = DEFAULT_BLOCK_KV,
    target: str | None = None,
    interpret: bool | None = None,
) -> jax.Array:
    """``softmax(scale * q k^T + bias, masked) v``; shapes as in ``reference.attention``.

    ``target`` ('gpu' / 'tpu') picks the kernel family and ``interpret`` the Pallas
    interpreter; both default from the platform (see ``backend``).
    """
    del dropout_rng
    check_no_dropout(dropout_rate)
    batch, q_len, num_heads, _ = query.shape
    kv_len, num_kv_heads = key.shape[1], key.shape[2]
    if num_heads % num_kv_heads:
        raise ValueError(f"{num_heads} query heads are not a multiple of {num_kv_heads} KV heads.")
    if key.dtype != query.dtype or value.dtype != query.dtype:
        raise ValueError(f"q/k/v dtypes differ: {query.dtype}, {key.dtype}, {value.dtype}")
    target, interpret = resolve_target(target), resolve_interpret(interpret)
    bq = bm.block_size(block_q, q_len)
    bk = bm.block_size(block_kv, kv_len)
    if target == "tpu" and not interpret and bk < kv_len:
        # Mosaic: key metadata rows are (1, block_kv) blocks, which must fill 128 lanes
        # unless one block spans the whole (padded) sequence.
        bk = max(bk, 128)
    q_pad, kv_pad = bm.round_up(q_len, bq), bm.round_up(kv_len, bk)
    cfg = bm.make_config(
        mask,
        bias,
        scale=scale,
        block_q=bq,
        block_kv=bk,
        q_len=q_len,
        kv_len=kv_len,
        kv_pad=kv_pad,
        groups=num_heads // num_kv_heads,
        target=target,
        interpret=interpret,
    )
    meta = bm.prepare_metadata(mask, batch, q_len, kv_len, q_pad, kv_pad)
    table = bias.table if bias is not None else jnp.zeros((num_heads, 1), jnp.float32)
    if table.shape[0] != num_heads:
        raise ValueError(f"bias table has {table.shape[0]} heads, queries have {num_heads}.")

    def pad_seq(x: jax.Array, length: int) -> jax.Array:
        return jnp.pad(x, ((0, 0), (0, length - x.shape[1]), (0, 0), (0, 0)))

    out = _flash(
        cfg, pad_seq(query, q_pad), pad_seq(key, kv_pad), pad_seq(value, kv_pad), table, meta
    )
    return out[:, :q_len]


# Metadata is a frozen dataclass of int arrays; pass it as a tuple so it is a plain pytree.
@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _flash_vjp(cfg, q, k, v, table, meta_arrays):
    return _fwd(cfg, q, k, v, table, meta_arrays)[0]


def _kernels(cfg: bm.KernelConfig):
    """(forward, backward) of the kernel family; both take and return the same shapes."""
    if cfg.target == "tpu":
        from t5x_instruct.kernels import flash_tpu, flash_tpu_backward

        return flash_tpu.flash_forward_tpu, flash_tpu_backward.flash_backward_tpu
    return flash_forward, flash_backward


def _fwd(cfg, q, k, v, table, meta_arrays):
    meta = bm.Metadata(*meta_arrays)
    forward, _ = _kernels(cfg)
    out, lse = forward(q, k, v, meta, bm.pad_table(table), cfg)
    return out, (q, k, v, table, meta_arrays, out, lse)


def _bwd(cfg, residuals, do):
    q, k, v, table, meta_arrays, out, lse = residuals
    meta = bm.Metadata(*meta_arrays)
    _, backward = _kernels(cfg)
    dq, dk, dv, dtable = backward(q, k, v, out, lse, do, meta, bm.pad_table(table), cfg)
    dtable = dtable[: table.shape[0], : table.shape[1]].astype(table.dtype)
    return dq, dk, dv, dtable, None


_flash_vjp.defvjp(_fwd, _bwd)


def _flash(cfg, q, k, v, table, meta: bm.Metadata) -> jax.Array:
    meta_arrays = (meta.q_pos, meta.kv_pos, meta.q_seg, meta.kv_seg, meta.q_prefix, meta.kv_prefix)
    return _flash_vjp(cfg, q, k, v, table, meta_arrays)
