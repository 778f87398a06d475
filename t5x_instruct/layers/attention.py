"""Multi-head / grouped-query attention with an optional KV cache.

All score computation goes through :func:`t5x_instruct.kernels.dot_product_attention`, so the
kernel is a gin choice (``attention_impl``) and never a model edit.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from t5x_instruct.kernels import AttentionMask, RelativeBias, dot_product_attention
from t5x_instruct.layers.linear import DenseGeneral
from t5x_instruct.layers.params import Initializer, constrain, fan_in_init, scaled_init
from t5x_instruct.layers.position import apply_rope

KVCache = dict[str, jax.Array]  # {'k': [b, max_len, kv_h, d], 'v': [b, max_len, kv_h, d]}


class Attention(nnx.Module):
    """Projections ``query/key/value [embed, heads, kv]`` and ``out [heads, kv, embed]``.

    Kernels draw from ``kernel_init`` if given, else from ``kernel_distribution`` with
    variance 1 / fan_in. ``query_init_scale`` multiplies the query's initial values (T5 folds
    its 1/sqrt(head_dim) logit scale there and attends with ``scale=1``); ``query_init``
    replaces the query initialiser outright.
    """

    def __init__(
        self,
        features: int,
        *,
        num_heads: int,
        num_kv_heads: int | None = None,
        head_dim: int,
        kv_features: int | None = None,
        scale: float | None = None,
        rope_theta: float | None = None,
        dropout_rate: float = 0.0,
        attention_impl: str = "xla",
        query_init: Initializer | None = None,
        kernel_init: Initializer | None = None,
        kernel_distribution: str = "normal",
        query_init_scale: float = 1.0,
        dtype: jnp.dtype = jnp.float32,
        rngs: nnx.Rngs,
    ) -> None:
        num_kv_heads = num_kv_heads or num_heads
        kv_features = kv_features or features
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.scale = head_dim**-0.5 if scale is None else scale
        self.rope_theta = rope_theta
        self.dropout_rate = dropout_rate
        self.attention_impl = attention_impl
        self.dtype = dtype
        in_init = kernel_init or fan_in_init(1.0, (0,), kernel_distribution)
        if query_init is None:
            query_init = (
                in_init if query_init_scale == 1.0 else scaled_init(in_init, query_init_scale)
            )
        self.query = DenseGeneral(
            (features,),
            (num_heads, head_dim),
            logical_axes=("embed", "heads", "kv"),
            dtype=dtype,
            kernel_init=query_init,
            rngs=rngs,
        )
        self.key = DenseGeneral(
            (kv_features,),
            (num_kv_heads, head_dim),
            logical_axes=("embed", "kv_heads", "kv"),
            dtype=dtype,
            kernel_init=in_init,
            rngs=rngs,
        )
        self.value = DenseGeneral(
            (kv_features,),
            (num_kv_heads, head_dim),
            logical_axes=("embed", "kv_heads", "kv"),
            dtype=dtype,
            kernel_init=in_init,
            rngs=rngs,
        )
        self.out = DenseGeneral(
            (num_heads, head_dim),
            (features,),
            logical_axes=("heads", "kv", "embed"),
            dtype=dtype,
            kernel_init=kernel_init or fan_in_init(1.0, (0, 1), kernel_distribution),
            rngs=rngs,
        )

    def project_kv(self, kv_input: jax.Array, positions: jax.Array | None = None) -> KVCache:
        """Keys and values for ``kv_input`` (RoPE applied when the layer uses it)."""
        k = self.key(kv_input)
        v = self.value(kv_input)
        if self.rope_theta is not None:
            if positions is None:
                raise ValueError("RoPE attention needs key positions")
            k = apply_rope(k, positions, theta=self.rope_theta)
        return {"k": k, "v": v}

    def __call__(
        self,
        x: jax.Array,
        kv_input: jax.Array | None,
        mask: AttentionMask,
        *,
        rope_positions: jax.Array | None = None,
        bias: RelativeBias | None = None,
        cache: KVCache | None = None,
        decode_index: jax.Array | None = None,
        static_kv: bool = False,
        deterministic: bool = True,
        dropout_rng: jax.Array | None = None,
    ) -> tuple[jax.Array, KVCache | None]:
        """Attend from ``x`` to ``kv_input`` (self-attention when ``kv_input is x``).

        Cache modes:
          * ``cache`` and no ``decode_index``: prefill. Attend over the fresh block and write
            its keys/values to cache slots ``[0, t)``.
          * ``cache`` and ``decode_index [b]``: one decode step. Write slot ``decode_index``
            per example, attend over the whole cache (``mask`` must hide future slots).
          * ``static_kv``: ``cache`` holds precomputed cross-attention keys/values.
        """
        q = self.query(x)
        if self.rope_theta is not None:
            q = apply_rope(q, rope_positions, theta=self.rope_theta)
        q = constrain(q, ("batch", "length", "heads", "kv"))
        new_cache = cache
        if static_kv:
            assert cache is not None
            k, v = cache["k"], cache["v"]
        else:
            fresh = self.project_kv(kv_input if kv_input is not None else x, rope_positions)
            k, v = fresh["k"], fresh["v"]
            if cache is not None:
                new_cache = _write_cache(cache, fresh, decode_index)
                if decode_index is not None:
                    k, v = new_cache["k"], new_cache["v"]
        k = constrain(k, ("batch", "kv_length", "kv_heads", "kv"))
        v = constrain(v, ("batch", "kv_length", "kv_heads", "kv"))
        out = dot_product_attention(
            q,
            k.astype(q.dtype),
            v.astype(q.dtype),
            mask,
            bias=bias,
            scale=self.scale,
            dropout_rate=0.0 if deterministic else self.dropout_rate,
            dropout_rng=dropout_rng,
            impl=self.attention_impl,
        )
        return self.out(out), new_cache


def _write_cache(cache: KVCache, fresh: KVCache, decode_index: jax.Array | None) -> KVCache:
    if decode_index is None:
        return {
            name: jax.lax.dynamic_update_slice(
                cache[name], fresh[name].astype(cache[name].dtype), (0, 0, 0, 0)
            )
            for name in ("k", "v")
        }
    batch = jnp.arange(cache["k"].shape[0])
    # Each example writes its own slot: prompts of different lengths decode in one batch.
    return {
        name: cache[name].at[batch, decode_index].set(fresh[name][:, 0].astype(cache[name].dtype))
        for name in ("k", "v")
    }


def init_kv_cache(
    batch: int, max_length: int, num_kv_heads: int, head_dim: int, dtype: jnp.dtype
) -> KVCache:
    shape = (batch, max_length, num_kv_heads, head_dim)
    return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}
