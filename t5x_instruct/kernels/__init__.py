"""Attention kernels behind one entry point, chosen by ``attention_impl``.

Models call :func:`dot_product_attention` only; adding a kernel means registering it here
(see :func:`register_attention_impl`), never editing a model.

Registered implementations:

* ``'xla'``: :func:`reference.attention`, plain XLA; the numerical reference. Supports dropout.
* ``'pallas'``: our Pallas kernels. Query blocks of at most ``DECODE_MAX_Q_LEN`` tokens go to
  the split-K decode kernel, longer ones to flash attention (forward + backward). No dropout.
  The platform picks the kernel family (``backend``): Triton-shaped kernels on GPU
  (``flash_forward`` / ``flash_backward``), Mosaic-shaped ones on TPU (``flash_tpu*``); on
  CPU they run in the Pallas interpreter (slow; for tests). The test suite lowers both
  families for their hardware from CPU (``tests/test_kernel_lowering.py``,
  ``tests/test_flash_tpu.py``). Under a sharded layout (``partitioning.axis_rules``) the
  kernels run per device inside ``shard_map`` over the batch and head mesh axes
  (``sharded``), since XLA cannot partition a Mosaic or Triton call itself.
* ``'cudnn'``: ``jax.nn.dot_product_attention(implementation='cudnn')`` with the mask and
  bias materialised densely. GPU only; no dropout.
* ``'auto'``: ``'pallas'`` on GPU/TPU when no dropout is requested, otherwise ``'xla'``. The
  rule is decided per call, so a model with dropout gets XLA in training and Pallas in eval.
  The platform is the active mesh's (compile-only TPU devices count as TPU), else JAX's
  default backend.
"""

from __future__ import annotations

from collections.abc import Callable

import jax

from t5x_instruct.kernels import reference
from t5x_instruct.kernels.decode_attention import DECODE_MAX_Q_LEN, decode_attention
from t5x_instruct.kernels.flash_attention import check_no_dropout, flash_attention
from t5x_instruct.kernels.masks import AttentionMask, dense_mask
from t5x_instruct.kernels.relative_bias import RelativeBias, relative_position_bucket
from t5x_instruct.kernels.sharded import active_platform, shard_attention

AttentionFn = Callable[..., jax.Array]


def pallas_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    mask: AttentionMask,
    *,
    bias: RelativeBias | None = None,
    scale: float = 1.0,
    dropout_rate: float = 0.0,
    dropout_rng: jax.Array | None = None,
) -> jax.Array:
    """Our Pallas kernels: decode kernel for very short query blocks, flash otherwise.

    Under a sharded layout (``partitioning.axis_rules``) each device runs the kernel on its
    batch and head shard (``sharded.shard_attention``).
    """
    del dropout_rng
    check_no_dropout(dropout_rate)
    fn = decode_attention if query.shape[1] <= DECODE_MAX_Q_LEN else flash_attention
    return shard_attention(fn, query, key, value, mask, bias=bias, scale=scale)


def cudnn_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    mask: AttentionMask,
    *,
    bias: RelativeBias | None = None,
    scale: float = 1.0,
    dropout_rate: float = 0.0,
    dropout_rng: jax.Array | None = None,
) -> jax.Array:
    """cuDNN fused attention via ``jax.nn.dot_product_attention``.

    cuDNN takes no segment ids / prefix flags / bucketed bias, so the mask ``[b, 1, q, k]``
    and bias ``[b, h, q, k]`` are materialised: O(S^2) memory, unlike ``'pallas'``.
    """
    del dropout_rng
    if jax.default_backend() != "gpu":
        raise ValueError(
            f"attention_impl='cudnn' needs a CUDA GPU; the default backend is "
            f"{jax.default_backend()!r}. Use 'xla', 'pallas' or 'auto'."
        )
    if dropout_rate > 0.0:
        raise ValueError("attention_impl='cudnn' does not support attention dropout here.")
    q_len, kv_len = query.shape[1], key.shape[1]
    dense_bias = None
    if bias is not None:
        q_pos, kv_pos = mask.positions(q_len, kv_len)
        dense_bias = bias.materialize(q_pos, kv_pos).astype(query.dtype)
    plain_causal = mask.causal and all(
        x is None
        for x in (
            mask.q_segment_ids,
            mask.q_positions,
            mask.kv_positions,
            mask.q_in_prefix,
            mask.kv_in_prefix,
        )
    )
    return jax.nn.dot_product_attention(
        query,
        key,
        value,
        bias=dense_bias,
        mask=None if plain_causal else dense_mask(mask, q_len, kv_len)[:, None],
        scale=scale,
        is_causal=plain_causal,
        implementation="cudnn",
    )


def auto_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    mask: AttentionMask,
    **kwargs,
) -> jax.Array:
    """``'pallas'`` on GPU/TPU without dropout, else ``'xla'`` (the only rule; no tuning)."""
    use_pallas = kwargs.get("dropout_rate", 0.0) == 0.0 and active_platform() in ("gpu", "tpu")
    fn = pallas_attention if use_pallas else reference.attention
    return fn(query, key, value, mask, **kwargs)


_IMPLS: dict[str, AttentionFn] = {
    "xla": reference.attention,
    "pallas": pallas_attention,
    "cudnn": cudnn_attention,
    "auto": auto_attention,
}


def register_attention_impl(name: str, fn: AttentionFn) -> None:
    _IMPLS[name] = fn


def available_attention_impls() -> list[str]:
    return sorted(_IMPLS)


def dot_product_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    mask: AttentionMask,
    *,
    bias: RelativeBias | None = None,
    scale: float = 1.0,
    dropout_rate: float = 0.0,
    dropout_rng: jax.Array | None = None,
    impl: str = "xla",
) -> jax.Array:
    """``softmax(scale * q k^T + bias, masked) v`` with the chosen implementation."""
    if impl not in _IMPLS:
        raise ValueError(
            f"attention_impl={impl!r} is not available; "
            f"choose one of {available_attention_impls()}."
        )
    return _IMPLS[impl](
        query,
        key,
        value,
        mask,
        bias=bias,
        scale=scale,
        dropout_rate=dropout_rate,
        dropout_rng=dropout_rng,
    )


__all__ = [
    "AttentionMask",
    "RelativeBias",
    "auto_attention",
    "available_attention_impls",
    "cudnn_attention",
    "decode_attention",
    "dense_mask",
    "dot_product_attention",
    "flash_attention",
    "pallas_attention",
    "register_attention_impl",
    "relative_position_bucket",
]
