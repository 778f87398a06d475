"""Shared pieces of the Pallas attention kernels: metadata padding and per-block masking.

The kernels never see a dense mask. Each program loads the per-token metadata of its query
block and of one key block (positions, segment ids, prefix flags) and rebuilds the
``[block_q, block_kv]`` mask, the relative-position bias and the "is this block empty?"
predicate from those vectors. Everything here is plain ``jnp`` so it traces the same way
inside a Pallas kernel (GPU/TPU/interpret) and outside it.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax import lax

from t5x_instruct.kernels.masks import AttentionMask
from t5x_instruct.kernels.reference import MASK_VALUE
from t5x_instruct.kernels.relative_bias import RelativeBias, relative_position_bucket

# Sentinels for rows/columns the wrapper adds to reach a whole number of blocks. They are
# far from any real sequence index but small enough that ``kv_pos - q_pos`` cannot overflow
# int32 when the relative bias is bucketed.
PAD_Q_POS = -(2**29)
PAD_KV_POS = 2**29
PAD_Q_SEG = -1
PAD_KV_SEG = -2


@dataclasses.dataclass(frozen=True)
class KernelConfig:
    """Static (hashable) description of one attention call; selects what the kernel compiles."""

    scale: float
    causal: bool
    has_segments: bool
    has_prefix: bool
    has_bias: bool
    bidirectional: bool
    max_distance: int
    num_buckets: int
    block_q: int
    block_kv: int
    q_len: int  # unpadded lengths: keys at index >= kv_len are wrapper padding
    kv_len: int
    kv_pad: int  # padded key length seen by the kernel (> kv_len means a masked tail)
    groups: int  # query heads per KV head
    interpret: bool


@dataclasses.dataclass(frozen=True)
class Metadata:
    """Padded per-token vectors, all int32: ``q_*`` are ``[b, q_pad]``, ``kv_*`` ``[b, kv_pad]``."""

    q_pos: jax.Array
    kv_pos: jax.Array
    q_seg: jax.Array
    kv_seg: jax.Array
    q_prefix: jax.Array
    kv_prefix: jax.Array

    def q_arrays(self) -> tuple[jax.Array, jax.Array, jax.Array]:
        return self.q_pos, self.q_seg, self.q_prefix

    def kv_arrays(self) -> tuple[jax.Array, jax.Array, jax.Array]:
        return self.kv_pos, self.kv_seg, self.kv_prefix


def _pad_to(x: jax.Array, length: int, value: int) -> jax.Array:
    return jnp.pad(x, ((0, 0), (0, length - x.shape[1])), constant_values=value)


def prepare_metadata(
    mask: AttentionMask, batch: int, q_len: int, kv_len: int, q_pad: int, kv_pad: int
) -> Metadata:
    """Broadcast the mask vectors to ``[b, len]`` int32 and pad them with sentinels.

    Padded queries get a position before every key and their own segment, padded keys a
    position after every query; the kernels additionally drop padded keys by index, so the
    sentinels only matter for block skipping (a block of pure padding is skipped).
    """
    q_pos, kv_pos = mask.positions(q_len, kv_len)

    def full(x: jax.Array | None, length: int, fill: int) -> jax.Array:
        if x is None:
            return jnp.full((batch, length), fill, jnp.int32)
        return jnp.broadcast_to(x.astype(jnp.int32), (batch, length))

    if (mask.q_segment_ids is None) != (mask.kv_segment_ids is None):
        raise ValueError("AttentionMask needs both q_segment_ids and kv_segment_ids, or neither.")
    return Metadata(
        q_pos=_pad_to(full(q_pos, q_len, 0), q_pad, PAD_Q_POS),
        kv_pos=_pad_to(full(kv_pos, kv_len, 0), kv_pad, PAD_KV_POS),
        q_seg=_pad_to(full(mask.q_segment_ids, q_len, 1), q_pad, PAD_Q_SEG),
        kv_seg=_pad_to(full(mask.kv_segment_ids, kv_len, 1), kv_pad, PAD_KV_SEG),
        q_prefix=_pad_to(full(mask.q_in_prefix, q_len, 0), q_pad, 0),
        kv_prefix=_pad_to(full(mask.kv_in_prefix, kv_len, 0), kv_pad, 0),
    )


def make_config(
    mask: AttentionMask,
    bias: RelativeBias | None,
    *,
    scale: float,
    block_q: int,
    block_kv: int,
    q_len: int,
    kv_len: int,
    kv_pad: int,
    groups: int,
    interpret: bool,
) -> KernelConfig:
    has_prefix = mask.causal and mask.q_in_prefix is not None and mask.kv_in_prefix is not None
    return KernelConfig(
        scale=float(scale),
        causal=bool(mask.causal),
        has_segments=mask.q_segment_ids is not None,
        has_prefix=has_prefix,
        has_bias=bias is not None,
        bidirectional=bias.bidirectional if bias is not None else True,
        max_distance=bias.max_distance if bias is not None else 128,
        num_buckets=bias.num_buckets if bias is not None else 1,
        block_q=block_q,
        block_kv=block_kv,
        q_len=q_len,
        kv_len=kv_len,
        kv_pad=kv_pad,
        groups=groups,
        interpret=interpret,
    )


def block_size(requested: int, length: int) -> int:
    """Clamp a block size to the (power-of-two rounded) length; Triton wants >= 16 and 2^n."""
    return max(16, min(requested, pl_next_power_of_2(length)))


def pl_next_power_of_2(x: int) -> int:
    return 1 if x <= 1 else 1 << (x - 1).bit_length()


def round_up(x: int, multiple: int) -> int:
    return -(-x // multiple) * multiple


def pad_table(table: jax.Array) -> jax.Array:
    """fp32 table with buckets padded to a power of two (Triton block dims must be 2^n)."""
    nb = table.shape[-1]
    return jnp.pad(table.astype(jnp.float32), ((0, 0), (0, pl_next_power_of_2(nb) - nb)))


# ---------------------------------------------------------------- in-kernel helpers


def block_is_empty(
    cfg: KernelConfig,
    q_meta: tuple[jax.Array, jax.Array, jax.Array],
    kv_meta: tuple[jax.Array, jax.Array, jax.Array],
) -> jax.Array | None:
    """Scalar bool: no query of this block may see any key of that block.

    Conservative (may say False for an empty block) and O(block) cheap: it compares ranges,
    never the full ``[block_q, block_kv]`` grid. Causal: every key is in the future of every
    query and the prefix-LM exception cannot apply. Segments: the id ranges do not overlap.
    """
    q_pos, q_seg, q_pre = q_meta
    kv_pos, kv_seg, kv_pre = kv_meta
    empty = None
    if cfg.causal:
        empty = jnp.max(q_pos) < jnp.min(kv_pos)
        if cfg.has_prefix:
            empty = empty & ~((jnp.max(q_pre) > 0) & (jnp.max(kv_pre) > 0))
    if cfg.has_segments:
        apart = (jnp.max(q_seg) < jnp.min(kv_seg)) | (jnp.min(q_seg) > jnp.max(kv_seg))
        empty = apart if empty is None else empty | apart
    return empty


def visit_unless_empty(cfg: KernelConfig, q_meta, kv_meta, visit, carry):
    """``visit(carry)`` for a tile pair, skipped (carry passed through) when provably empty."""
    if not (cfg.causal or cfg.has_segments):
        return visit(carry)  # dense attention: nothing can be skipped, no branch needed
    return lax.cond(block_is_empty(cfg, q_meta, kv_meta), lambda c: c, visit, carry)


def allowed_mask(
    cfg: KernelConfig,
    q_meta: tuple[jax.Array, jax.Array, jax.Array],
    kv_meta: tuple[jax.Array, jax.Array, jax.Array],
) -> jax.Array | None:
    """``[bq, bk]`` bool of visible pairs (same rule as ``masks.dense_mask``), or None."""
    q_pos, q_seg, q_pre = q_meta
    kv_pos, kv_seg, kv_pre = kv_meta
    allowed = None
    if cfg.has_segments:
        allowed = q_seg[:, None] == kv_seg[None, :]
    if cfg.causal:
        causal = q_pos[:, None] >= kv_pos[None, :]
        if cfg.has_prefix:
            causal = causal | ((q_pre[:, None] > 0) & (kv_pre[None, :] > 0))
        allowed = causal if allowed is None else allowed & causal
    return allowed


def bias_buckets(cfg: KernelConfig, q_pos: jax.Array, kv_pos: jax.Array) -> jax.Array:
    """``[bq, bk]`` int32 T5 buckets, computed with the exact function the reference uses."""
    return relative_position_bucket(
        kv_pos[None, :] - q_pos[:, None],
        bidirectional=cfg.bidirectional,
        num_buckets=cfg.num_buckets,
        max_distance=cfg.max_distance,
    )


def lookup_bias(buckets: jax.Array, read_entry, num_buckets: int) -> jax.Array:
    """Gather ``table[bucket]`` as a chain of selects.

    Pallas backends have no general in-register gather, but a select per bucket (T5 uses 32)
    lowers everywhere. ``read_entry(n)`` returns the scalar (or row-broadcastable) entry.
    """
    bias = jnp.zeros(buckets.shape, jnp.float32)
    for n in range(num_buckets):
        bias = jnp.where(buckets == n, read_entry(n), bias)
    return bias


def bucket_sums(ds: jax.Array, buckets: jax.Array, num_buckets: int, width: int) -> jax.Array:
    """``[width]`` fp32 vector: entry n is the sum of ``ds`` over pairs in bucket n.

    This is the transpose of :func:`lookup_bias`: d(table[h, n]) = sum of dlogits whose pair
    falls into bucket n.
    """
    iota = lax.broadcasted_iota(jnp.int32, (width,), 0)
    out = jnp.zeros((width,), jnp.float32)
    for n in range(num_buckets):
        # Two single-axis sums: Triton lowers reductions over one axis at a time only.
        total = jnp.sum(jnp.sum(jnp.where(buckets == n, ds, 0.0), axis=1), axis=0)
        out = jnp.where(iota == n, total, out)
    return out


def masked_logits(
    cfg: KernelConfig,
    s: jax.Array,
    q_meta: tuple[jax.Array, jax.Array, jax.Array],
    kv_meta: tuple[jax.Array, jax.Array, jax.Array],
    kv_start: jax.Array,
    bias: jax.Array | None,
) -> tuple[jax.Array, jax.Array | None]:
    """Scaled logits with bias and mask applied, plus the visibility mask (for dlogits).

    Masked pairs become ``MASK_VALUE`` (finite, as in the reference), so a row whose keys are
    all masked still normalises to uniform weights instead of NaN. Wrapper padding becomes
    ``-inf``: it must carry exactly zero weight even in such rows.
    """
    s = s * cfg.scale
    if bias is not None:
        s = s + bias
    allowed = allowed_mask(cfg, q_meta, kv_meta)
    if allowed is not None:
        s = jnp.where(allowed, s, MASK_VALUE)
    if cfg.kv_pad > cfg.kv_len:
        kv_idx = kv_start + lax.broadcasted_iota(jnp.int32, s.shape, 1)
        s = jnp.where(kv_idx < cfg.kv_len, s, -jnp.inf)
    return s, allowed


def online_softmax_step(
    carry: tuple[jax.Array, jax.Array, jax.Array], s: jax.Array, v: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Fold one key tile into the running (unnormalised out, row max, row sum), all fp32."""
    acc, m, denom = carry
    m_new = jnp.maximum(m, jnp.max(s, axis=1))
    # m_new is -inf only while every key seen so far is wrapper padding; avoid inf - inf.
    m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)
    alpha = jnp.exp(m - m_safe)
    p = jnp.exp(s - m_safe[:, None])
    denom = alpha * denom + jnp.sum(p, axis=1)
    # bf16 inputs: P is rounded to bf16 for the PV matmul (as the reference rounds weights).
    pv = jnp.dot(p.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return acc * alpha[:, None] + pv, m_new, denom
