"""Shared pieces of the Pallas attention kernels: metadata padding and per-block masking.

The kernels never see a dense mask. Each program loads the per-token metadata of its query
block and of one key block (positions, segment ids, prefix flags) and rebuilds the
``[block_q, block_kv]`` mask, the relative-position bias and the "is this block empty?"
predicate from those vectors. Query metadata is a ``[block_q, 1]`` column and key metadata a
``[1, block_kv]`` row, so every pairwise rule is a 2-D broadcast: no 1-D <-> 2-D reshapes,
which Mosaic (TPU) handles poorly. Everything here is plain ``jnp`` so it traces the same way
inside a Pallas kernel (Triton, Mosaic or the interpreter) and outside it.
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
    target: str  # kernel family, 'gpu' or 'tpu' (see ``backend``)
    interpret: bool

    @property
    def can_skip_tiles(self) -> bool:
        """Only causal or segmented attention has tiles that ``block_is_empty`` can prove empty."""
        return self.causal or self.has_segments


@dataclasses.dataclass(frozen=True)
class Metadata:
    """Padded per-token metadata (int32): ``q_*`` ``[b, q_pad, 1]``, ``kv_*`` ``[b, 1, kv_pad]``."""

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
    """Broadcast the mask vectors to int32 columns / rows and pad them with sentinels.

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

    def column(x: jax.Array | None, fill: int, pad: int) -> jax.Array:
        return _pad_to(full(x, q_len, fill), q_pad, pad)[:, :, None]

    def row(x: jax.Array | None, fill: int, pad: int) -> jax.Array:
        return _pad_to(full(x, kv_len, fill), kv_pad, pad)[:, None, :]

    return Metadata(
        q_pos=column(q_pos, 0, PAD_Q_POS),
        kv_pos=row(kv_pos, 0, PAD_KV_POS),
        q_seg=column(mask.q_segment_ids, 1, PAD_Q_SEG),
        kv_seg=row(mask.kv_segment_ids, 1, PAD_KV_SEG),
        q_prefix=column(mask.q_in_prefix, 0, 0),
        kv_prefix=row(mask.kv_in_prefix, 0, 0),
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
    target: str,
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
        target=target,
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


def reduce_all(reduce, x: jax.Array) -> jax.Array:
    """Reduce a 2-D tile to a scalar one axis at a time (Triton reduces a single axis)."""
    return reduce(reduce(x, axis=1), axis=0)


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

    def hi(x):
        return reduce_all(jnp.max, x)

    def lo(x):
        return reduce_all(jnp.min, x)

    empty = None
    if cfg.causal:
        empty = hi(q_pos) < lo(kv_pos)
        if cfg.has_prefix:
            empty = empty & ~((hi(q_pre) > 0) & (hi(kv_pre) > 0))
    if cfg.has_segments:
        apart = (hi(q_seg) < lo(kv_seg)) | (lo(q_seg) > hi(kv_seg))
        empty = apart if empty is None else empty | apart
    return empty


def visit_unless_empty(cfg: KernelConfig, q_meta, kv_meta, visit, carry):
    """``visit(carry)`` for a tile pair, skipped (carry passed through) when provably empty."""
    if not cfg.can_skip_tiles:
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
        allowed = q_seg == kv_seg
    if cfg.causal:
        causal = q_pos >= kv_pos
        if cfg.has_prefix:
            causal = causal | ((q_pre > 0) & (kv_pre > 0))
        allowed = causal if allowed is None else allowed & causal
    return allowed


def bias_buckets(cfg: KernelConfig, q_pos: jax.Array, kv_pos: jax.Array) -> jax.Array:
    """``[bq, bk]`` int32 T5 buckets, computed with the exact function the reference uses."""
    return relative_position_bucket(
        kv_pos - q_pos,
        bidirectional=cfg.bidirectional,
        num_buckets=cfg.num_buckets,
        max_distance=cfg.max_distance,
    )


def tile_bias(
    cfg: KernelConfig, q_pos: jax.Array, kv_pos: jax.Array, read_entry
) -> tuple[jax.Array | None, jax.Array | None]:
    """(buckets, bias) ``[bq, bk]`` of one tile pair, or (None, None) without a bias table.

    ``read_entry(n)`` reads the table entry of bucket n for this tile's head(s).
    """
    if not cfg.has_bias:
        return None, None
    buckets = bias_buckets(cfg, q_pos, kv_pos)
    return buckets, lookup_bias(buckets, read_entry, cfg.num_buckets)


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
    """``[1, width]`` fp32 row: entry n is the sum of ``ds`` over pairs in bucket n.

    This is the transpose of :func:`lookup_bias`: d(table[h, n]) = sum of dlogits whose pair
    falls into bucket n.
    """
    iota = lax.broadcasted_iota(jnp.int32, (1, width), 1)
    out = jnp.zeros((1, width), jnp.float32)
    for n in range(num_buckets):
        # keepdims sums: a [1, 1] tile broadcasts into the row without a scalar round trip.
        masked = jnp.where(buckets == n, ds, 0.0)
        total = jnp.sum(jnp.sum(masked, axis=1, keepdims=True), axis=0, keepdims=True)
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
    """Fold one key tile into the running (unnormalised out, row max, row sum), all fp32.

    ``m`` and ``denom`` are ``[bq, 1]`` columns, like the query metadata.
    """
    acc, m, denom = carry
    m_new = jnp.maximum(m, jnp.max(s, axis=1, keepdims=True))
    # m_new is -inf only while every key seen so far is wrapper padding; avoid inf - inf.
    m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)
    alpha = jnp.exp(m - m_safe)
    p = jnp.exp(s - m_safe)
    denom = alpha * denom + jnp.sum(p, axis=1, keepdims=True)
    # bf16 inputs: P is rounded to bf16 for the PV matmul (as the reference rounds weights).
    pv = jnp.dot(p.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return acc * alpha + pv, m_new, denom


def finish_softmax(
    acc: jax.Array, m: jax.Array, denom: jax.Array, empty_lse: float
) -> tuple[jax.Array, jax.Array]:
    """Normalised output and ``[bq, 1]`` logsumexp; rows that saw no key get 0 and ``empty_lse``.

    The flash kernels use ``+inf`` (the backward's ``exp(s - lse)`` is then exactly 0, not
    NaN); the split-K decode kernel uses ``-inf`` (zero weight when merging splits).
    """
    seen = denom > 0.0
    l_safe = jnp.where(seen, denom, 1.0)
    return acc / l_safe, jnp.where(seen, m + jnp.log(l_safe), empty_lse)


def qk_logits(q: jax.Array, k: jax.Array) -> jax.Array:
    """``q @ k^T`` accumulated in fp32 (bf16 inputs stay bf16 on the MXU / tensor cores)."""
    return lax.dot_general(q, k, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)


def probs_and_dlogits(cfg, q, k, v, do, lse, delta, q_meta, kv_meta, kv_start, table_entry):
    """Backward tile math: recompute P from the saved lse, return (P, dS, buckets).

    ``dS = P * (dO V^T - delta)`` on visible pairs, 0 on masked ones (their logit is a
    constant); it excludes ``scale``, which the kernels apply once to the summed dQ / dK.
    """
    buckets, bias = tile_bias(cfg, q_meta[0], kv_meta[0], table_entry)
    s, allowed = masked_logits(cfg, qk_logits(q, k), q_meta, kv_meta, kv_start, bias)
    p = jnp.exp(s - lse)
    dp = qk_logits(do, v)  # dO @ V^T: same contraction shape as Q @ K^T
    ds = p * (dp - delta)
    if allowed is not None:
        ds = jnp.where(allowed, ds, 0.0)
    return p, ds, buckets


def softmax_delta(out: jax.Array, do: jax.Array) -> jax.Array:
    """``rowsum(dO * O)`` as ``[b, h, q, 1]`` fp32 columns, for ``probs_and_dlogits``.

    O(S) and cheap in XLA; computing it before the backward kernels keeps them single-pass.
    """
    delta = jnp.einsum("bqhd,bqhd->bhq", out.astype(jnp.float32), do.astype(jnp.float32))
    return delta[..., None]
