"""T5 v1.1 / Flan-T5 encoder-decoder in Flax NNX.

Pre-norm RMSNorm blocks, gated-GELU MLP, a shared bucketed relative position bias per stack,
shared input embedding, optional untied output projection, and a KV-cache decode path.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import gin
import jax
import jax.numpy as jnp
from flax import nnx, struct

from t5x_instruct.config_validation import check_field_types
from t5x_instruct.kernels import AttentionMask, RelativeBias
from t5x_instruct.layers import (
    Attention,
    DenseGeneral,
    Embed,
    GatedMLP,
    LayerStack,
    RelativePositionBias,
    RMSNorm,
    dropout,
    dtype_from_name,
    init_kv_cache,
)
from t5x_instruct.layers.params import (
    check_distribution,
    constrain,
    normal_init,
    split_rng,
)
from t5x_instruct.layers.sequence import HookedModel, start_sequence
from t5x_instruct.models.registry import register_model_family


@gin.configurable
@dataclasses.dataclass(frozen=True)
class T5Config:
    """Shapes and numerics of a T5 v1.1 model (defaults: T5 v1.1 small)."""

    vocab_size: int = 32128
    emb_dim: int = 512
    num_heads: int = 6
    head_dim: int = 64
    mlp_dim: int = 1024
    num_encoder_layers: int = 8
    num_decoder_layers: int = 8
    mlp_activation: str = "gelu"
    dropout_rate: float = 0.0
    logits_via_embedding: bool = False
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    dtype: str = "float32"
    scan_layers: bool = False
    remat_policy: str = "none"
    attention_impl: str = "xla"
    # Initialisers, as T5X's T5 v1.1 (t5x/examples/t5): MLP and output-projection kernels
    # truncated normal, attention kernels normal (both variance 1/fan_in; the query also
    # times head_dim**-0.5), embeddings N(0, embedding_init_stddev**2), relative-bias tables
    # variance 1/fan_avg. Each distribution: 'normal', 'truncated_normal' or 'uniform'.
    kernel_init: str = "truncated_normal"
    attention_kernel_init: str = "normal"
    embedding_init_stddev: float = 1.0
    relative_attention_init: str = "uniform"

    def __post_init__(self) -> None:
        check_field_types(self)  # one error naming the binding, before any arithmetic
        for name in ("kernel_init", "attention_kernel_init", "relative_attention_init"):
            check_distribution(getattr(self, name), f"T5Config.{name}")
        if self.emb_dim <= 0 or self.num_heads <= 0 or self.head_dim <= 0:
            raise ValueError(f"T5Config has non-positive sizes: {self}")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"T5Config.dropout_rate={self.dropout_rate} must be in [0, 1).")
        # The decoder's one-sided buckets hold offsets below num_buckets/2 exactly; the
        # log-spaced rest divides by log(max_distance / that), which must not be log(1) = 0.
        exact = self.relative_attention_num_buckets // 2
        if self.relative_attention_max_distance <= exact:
            raise ValueError(
                f"T5Config.relative_attention_max_distance={self.relative_attention_max_distance}"
                f" must exceed num_buckets/2={exact} (the exactly-bucketed offsets)."
            )


@struct.dataclass
class _EncoderCtx:
    mask: AttentionMask
    bias: RelativeBias
    deterministic: bool = struct.field(pytree_node=False)


@struct.dataclass
class _DecoderCtx:
    self_mask: AttentionMask
    cross_mask: AttentionMask
    bias: RelativeBias
    encoded: jax.Array | None
    decode_index: jax.Array | None
    deterministic: bool = struct.field(pytree_node=False)


class EncoderLayer(nnx.Module):
    def __init__(self, cfg: T5Config, *, rngs: nnx.Rngs) -> None:
        dtype = dtype_from_name(cfg.dtype)
        self.dropout_rate = cfg.dropout_rate
        self.pre_attention_layer_norm = RMSNorm(
            cfg.emb_dim, epsilon=cfg.layer_norm_epsilon, dtype=dtype, rngs=rngs
        )
        self.attention = _t5_attention(cfg, dtype, rngs)
        self.pre_mlp_layer_norm = RMSNorm(
            cfg.emb_dim, epsilon=cfg.layer_norm_epsilon, dtype=dtype, rngs=rngs
        )
        self.mlp = _t5_mlp(cfg, dtype, rngs)

    def __call__(self, x: jax.Array, ctx: _EncoderCtx, cache: Any, rng: jax.Array | None):
        det = ctx.deterministic
        r = split_rng(rng, 4)
        h = self.pre_attention_layer_norm(x)
        h, _ = self.attention(h, h, ctx.mask, bias=ctx.bias, deterministic=det, dropout_rng=r[0])
        x = x + dropout(h, self.dropout_rate, r[1], deterministic=det)
        h = self.mlp(self.pre_mlp_layer_norm(x), deterministic=det, dropout_rng=r[2])
        x = x + dropout(h, self.dropout_rate, r[3], deterministic=det)
        return constrain(x, ("batch", "length", "embed")), cache


class DecoderLayer(nnx.Module):
    def __init__(self, cfg: T5Config, *, rngs: nnx.Rngs) -> None:
        dtype = dtype_from_name(cfg.dtype)
        eps = cfg.layer_norm_epsilon
        self.dropout_rate = cfg.dropout_rate
        self.pre_self_attention_layer_norm = RMSNorm(
            cfg.emb_dim, epsilon=eps, dtype=dtype, rngs=rngs
        )
        self.self_attention = _t5_attention(cfg, dtype, rngs)
        self.pre_cross_attention_layer_norm = RMSNorm(
            cfg.emb_dim, epsilon=eps, dtype=dtype, rngs=rngs
        )
        self.encoder_decoder_attention = _t5_attention(cfg, dtype, rngs)
        self.pre_mlp_layer_norm = RMSNorm(cfg.emb_dim, epsilon=eps, dtype=dtype, rngs=rngs)
        self.mlp = _t5_mlp(cfg, dtype, rngs)

    def __call__(self, x: jax.Array, ctx: _DecoderCtx, cache: Any, rng: jax.Array | None):
        det = ctx.deterministic
        r = split_rng(rng, 7)
        h = self.pre_self_attention_layer_norm(x)
        h, self_cache = self.self_attention(
            h,
            h,
            ctx.self_mask,
            bias=ctx.bias,
            cache=None if cache is None else cache["self"],
            decode_index=ctx.decode_index,
            deterministic=det,
            dropout_rng=r[0],
        )
        x = x + dropout(h, self.dropout_rate, r[1], deterministic=det)
        h = self.pre_cross_attention_layer_norm(x)
        h, _ = self.encoder_decoder_attention(
            h,
            ctx.encoded,
            ctx.cross_mask,
            cache=None if cache is None else cache["cross"],
            static_kv=cache is not None,
            deterministic=det,
            dropout_rng=r[2],
        )
        x = x + dropout(h, self.dropout_rate, r[3], deterministic=det)
        h = self.mlp(self.pre_mlp_layer_norm(x), deterministic=det, dropout_rng=r[4])
        x = x + dropout(h, self.dropout_rate, r[5], deterministic=det)
        new_cache = None if cache is None else {"self": self_cache, "cross": cache["cross"]}
        return constrain(x, ("batch", "length", "embed")), new_cache


def _t5_mlp(cfg: T5Config, dtype: jnp.dtype, rngs: nnx.Rngs) -> GatedMLP:
    return GatedMLP(
        cfg.emb_dim,
        cfg.mlp_dim,
        activation=cfg.mlp_activation,
        dropout_rate=cfg.dropout_rate,
        dtype=dtype,
        kernel_distribution=cfg.kernel_init,
        rngs=rngs,
    )


def _t5_attention(cfg: T5Config, dtype: jnp.dtype, rngs: nnx.Rngs) -> Attention:
    # T5 folds the 1/sqrt(d) softmax scale into the query initialisation instead.
    return Attention(
        cfg.emb_dim,
        num_heads=cfg.num_heads,
        head_dim=cfg.head_dim,
        scale=1.0,
        dropout_rate=cfg.dropout_rate,
        attention_impl=cfg.attention_impl,
        kernel_distribution=cfg.attention_kernel_init,
        query_init_scale=cfg.head_dim**-0.5,
        dtype=dtype,
        rngs=rngs,
    )


@register_model_family("t5", config_type=T5Config, encoder_decoder=True)
class EncoderDecoder(nnx.Module, HookedModel):
    """The T5 network; logits come back in fp32 so z-loss and softmax are stable.

    Sequence hooks (plug-ins) see the encoder input (``stack='encoder'``); the decoder reads
    targets and is not hooked.
    """

    def __init__(self, cfg: T5Config, *, rngs: nnx.Rngs) -> None:
        self.cfg = cfg
        self._init_sequence_hooks()
        dtype = dtype_from_name(cfg.dtype)
        self.dtype = dtype
        self.token_embedder = Embed(
            cfg.vocab_size,
            cfg.emb_dim,
            dtype=dtype,
            embedding_init=normal_init(cfg.embedding_init_stddev),
            rngs=rngs,
        )
        rel = dict(
            num_buckets=cfg.relative_attention_num_buckets,
            max_distance=cfg.relative_attention_max_distance,
            distribution=cfg.relative_attention_init,
        )
        self.encoder_relpos_bias = RelativePositionBias(
            cfg.num_heads, bidirectional=True, rngs=rngs, **rel
        )
        self.decoder_relpos_bias = RelativePositionBias(
            cfg.num_heads, bidirectional=False, rngs=rngs, **rel
        )
        stack = dict(scan=cfg.scan_layers, remat_policy=cfg.remat_policy, rngs=rngs)
        self.encoder = LayerStack(
            lambda r: EncoderLayer(cfg, rngs=r), cfg.num_encoder_layers, **stack
        )
        self.decoder = LayerStack(
            lambda r: DecoderLayer(cfg, rngs=r), cfg.num_decoder_layers, **stack
        )
        self.encoder_norm = RMSNorm(
            cfg.emb_dim, epsilon=cfg.layer_norm_epsilon, dtype=dtype, rngs=rngs
        )
        self.decoder_norm = RMSNorm(
            cfg.emb_dim, epsilon=cfg.layer_norm_epsilon, dtype=dtype, rngs=rngs
        )
        if not cfg.logits_via_embedding:
            # float32 output projection even in bf16 runs, as T5X does (logit stability).
            self.logits_dense = DenseGeneral(
                (cfg.emb_dim,),
                (cfg.vocab_size,),
                logical_axes=("embed", "vocab"),
                dtype=jnp.float32,
                kernel_distribution=cfg.kernel_init,
                rngs=rngs,
            )

    # ------------------------------------------------------------------ full sequence

    def encode(
        self,
        encoder_input_tokens: jax.Array,
        encoder_segment_ids: jax.Array | None = None,
        *,
        features: dict[str, jax.Array] | None = None,
        deterministic: bool = True,
        dropout_rng: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """Encoder outputs ``[b, s, d]`` and their segment ids ``[b, s]``.

        The segment ids come back because sequence hooks may lengthen the input (a soft
        prompt); cross-attention must use these, not ones derived from the tokens.
        """
        cfg = self.cfg
        seg = _segments(encoder_input_tokens, encoder_segment_ids)
        r = split_rng(dropout_rng, 3)
        x = self.token_embedder(encoder_input_tokens)
        if self.has_sequence_hooks:
            seq = start_sequence(
                x, encoder_input_tokens, stack="encoder", segment_ids=seg, features=features
            )
            seq = self.run_sequence_hooks(seq)
            x, seg = seq.x, seq.segment_ids
        x = dropout(x, cfg.dropout_rate, r[0], deterministic=deterministic)
        ctx = _EncoderCtx(
            mask=AttentionMask(q_segment_ids=seg, kv_segment_ids=seg),
            bias=self.encoder_relpos_bias(),
            deterministic=deterministic,
        )
        x, _ = self.encoder(x, ctx, None, r[1])
        x = self.encoder_norm(x)
        return dropout(x, cfg.dropout_rate, r[2], deterministic=deterministic), seg

    def decode(
        self,
        encoded: jax.Array,
        encoder_segment_ids: jax.Array,
        decoder_input_tokens: jax.Array,
        decoder_segment_ids: jax.Array | None = None,
        *,
        deterministic: bool = True,
        dropout_rng: jax.Array | None = None,
    ) -> jax.Array:
        dec_seg = (
            jnp.ones_like(decoder_input_tokens, dtype=jnp.int32)
            if decoder_segment_ids is None
            else decoder_segment_ids
        )
        ctx = _DecoderCtx(
            self_mask=AttentionMask(q_segment_ids=dec_seg, kv_segment_ids=dec_seg, causal=True),
            cross_mask=AttentionMask(q_segment_ids=dec_seg, kv_segment_ids=encoder_segment_ids),
            bias=self.decoder_relpos_bias(),
            encoded=encoded,
            decode_index=None,
            deterministic=deterministic,
        )
        r = split_rng(dropout_rng, 3)
        x = self.token_embedder(decoder_input_tokens)
        x = dropout(x, self.cfg.dropout_rate, r[0], deterministic=deterministic)
        x, _ = self.decoder(x, ctx, None, r[1])
        return self._logits(x, r[2], deterministic)

    def __call__(
        self,
        encoder_input_tokens: jax.Array,
        decoder_input_tokens: jax.Array,
        *,
        encoder_segment_ids: jax.Array | None = None,
        decoder_segment_ids: jax.Array | None = None,
        encoder_positions: jax.Array | None = None,
        decoder_positions: jax.Array | None = None,
        features: dict[str, jax.Array] | None = None,
        deterministic: bool = True,
        dropout_rng: jax.Array | None = None,
    ) -> jax.Array:
        """Teacher-forced logits ``[b, t, vocab]``; packed inputs via segment ids.

        Positions are accepted for interface symmetry; relative bias only needs token order
        within a segment, which the segment ids already pin down. ``features`` (the whole
        batch) is handed to sequence hooks.
        """
        del encoder_positions, decoder_positions
        r = split_rng(dropout_rng, 2)
        encoded, enc_seg = self.encode(
            encoder_input_tokens,
            encoder_segment_ids,
            features=features,
            deterministic=deterministic,
            dropout_rng=r[0],
        )
        return self.decode(
            encoded,
            enc_seg,
            decoder_input_tokens,
            decoder_segment_ids,
            deterministic=deterministic,
            dropout_rng=r[1],
        )

    def logits_from_batch(
        self,
        batch: dict[str, jax.Array],
        *,
        deterministic: bool = True,
        dropout_rng: jax.Array | None = None,
    ) -> jax.Array:
        """Logits for a seqio ``EncDecFeatureConverter`` batch."""
        return self(
            batch["encoder_input_tokens"],
            batch["decoder_input_tokens"],
            encoder_segment_ids=batch.get("encoder_segment_ids"),
            decoder_segment_ids=batch.get("decoder_segment_ids"),
            features=batch,
            deterministic=deterministic,
            dropout_rng=dropout_rng,
        )

    def _logits(self, x: jax.Array, rng: jax.Array | None, deterministic: bool) -> jax.Array:
        x = self.decoder_norm(x)
        x = dropout(x, self.cfg.dropout_rate, rng, deterministic=deterministic)
        if self.cfg.logits_via_embedding:
            # Tied output in float32 (T5X's attend_dtype), rescaled so logits keep unit scale.
            table = self.token_embedder.embedding.get_value().astype(jnp.float32)
            logits = jnp.einsum("...d,vd->...v", x.astype(jnp.float32), table)
            logits = logits / jnp.sqrt(self.cfg.emb_dim).astype(jnp.float32)
        else:
            logits = self.logits_dense(x)
        return constrain(logits.astype(jnp.float32), ("batch", "length", "vocab"))

    # ------------------------------------------------------------------ decoding

    def prefill(
        self, batch: dict[str, jax.Array], max_decode_length: int
    ) -> tuple[jax.Array, dict]:
        """Encode the inputs and feed the start token; returns first-step logits and state."""
        tokens = batch["encoder_input_tokens"]
        encoded, enc_seg = self.encode(tokens, batch.get("encoder_segment_ids"), features=batch)
        b = tokens.shape[0]
        cfg = self.cfg

        def make_cache(block: DecoderLayer, x: jax.Array, ctx: Any, cache: Any, rng: Any):
            del cache, rng
            return x, {
                "self": init_kv_cache(
                    b, max_decode_length, cfg.num_heads, cfg.head_dim, self.dtype
                ),
                "cross": block.encoder_decoder_attention.project_kv(encoded),
            }

        _, cache = self.decoder(encoded[:, :1], None, None, None, call_block=make_cache)
        state = {"cache": cache, "encoder_segment_ids": enc_seg}
        start = jnp.zeros((b,), jnp.int32)
        logits, state = self.decode_step(start, jnp.zeros((b,), jnp.int32), state)
        return logits, state

    def decode_step(
        self, tokens: jax.Array, index: jax.Array, state: dict
    ) -> tuple[jax.Array, dict]:
        """Feed ``tokens [b]`` at decoder position ``index [b]``; logits ``[b, vocab]``."""
        cache = state["cache"]
        # [b, max_len, h, d], or [layers, b, max_len, h, d] when scanned
        max_len = LayerStack.first_layer_cache(cache)["self"]["k"].shape[-3]
        b = tokens.shape[0]
        ctx = _DecoderCtx(
            self_mask=AttentionMask(
                q_positions=index[:, None],
                kv_positions=jnp.arange(max_len, dtype=jnp.int32)[None],
                causal=True,
            ),
            cross_mask=AttentionMask(
                q_segment_ids=jnp.ones((b, 1), jnp.int32),
                kv_segment_ids=state["encoder_segment_ids"],
            ),
            bias=self.decoder_relpos_bias(),
            encoded=None,
            decode_index=index,
            deterministic=True,
        )
        x = self.token_embedder(tokens[:, None])
        x, cache = self.decoder(x, ctx, cache, None)
        logits = self._logits(x, None, True)[:, 0]
        return logits, {**state, "cache": cache}


def _segments(tokens: jax.Array, segment_ids: jax.Array | None) -> jax.Array:
    """Explicit segment ids, or 1 for real tokens and 0 for padding (token id 0)."""
    if segment_ids is not None:
        return segment_ids.astype(jnp.int32)
    return (tokens != 0).astype(jnp.int32)
