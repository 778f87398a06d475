"""Llama-style decoder-only model in Flax NNX: causal LM or prefix-LM.

RoPE, grouped-query attention (MHA / GQA / MQA by ``num_kv_heads``), SwiGLU MLP, RMSNorm.
Prefix-LM attends bidirectionally over the inputs (``decoder_causal_attention``) and
causally over the targets, as T5X's decoder-only models do.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import gin
import jax
import jax.numpy as jnp
from flax import nnx, struct

from t5x_instruct.config_validation import check_field_types
from t5x_instruct.kernels import AttentionMask
from t5x_instruct.layers import (
    Attention,
    DenseGeneral,
    Embed,
    GatedMLP,
    LayerStack,
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
    stddev_init,
)
from t5x_instruct.layers.sequence import (
    EmbeddedSequence,
    HookedModel,
    gather_tokens,
    start_sequence,
)
from t5x_instruct.models.registry import register_model_family


@gin.configurable
@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    """Shapes and numerics of a decoder-only model (defaults: Llama-2-7B)."""

    vocab_size: int = 32000
    emb_dim: int = 4096
    num_heads: int = 32
    num_kv_heads: int = 32
    head_dim: int = 128
    mlp_dim: int = 11008
    num_layers: int = 32
    mlp_activation: str = "silu"
    rope_theta: float = 10000.0
    norm_epsilon: float = 1e-5
    tie_embeddings: bool = False
    dropout_rate: float = 0.0
    dtype: str = "float32"
    scan_layers: bool = False
    remat_policy: str = "none"
    attention_impl: str = "xla"
    # Initialisers: embeddings N(0, 0.02**2) (Llama's initializer_range); kernels from
    # kernel_init ('normal', 'truncated_normal' or 'uniform') with variance 1/fan_in, or with
    # a fixed kernel_init_stddev (0.02: Hugging Face Llama's recipe for every kernel).
    kernel_init: str = "normal"
    kernel_init_stddev: float | None = None
    embedding_init_stddev: float = 0.02

    def __post_init__(self) -> None:
        check_field_types(self)  # one error naming the binding, before any arithmetic
        check_distribution(self.kernel_init, "DecoderConfig.kernel_init")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"DecoderConfig.num_heads={self.num_heads} must be a multiple of "
                f"num_kv_heads={self.num_kv_heads}."
            )
        if self.head_dim % 2:
            raise ValueError(f"DecoderConfig.head_dim={self.head_dim} must be even for RoPE.")


@struct.dataclass
class _Ctx:
    mask: AttentionMask
    rope_positions: jax.Array
    decode_index: jax.Array | None
    deterministic: bool = struct.field(pytree_node=False)


def _kernel_init(cfg: DecoderConfig) -> dict[str, Any]:
    """DenseGeneral / Attention / GatedMLP initialiser arguments for ``cfg``."""
    fixed = cfg.kernel_init_stddev
    return dict(
        kernel_init=None if fixed is None else stddev_init(fixed, cfg.kernel_init),
        kernel_distribution=cfg.kernel_init,
    )


class DecoderBlock(nnx.Module):
    def __init__(self, cfg: DecoderConfig, *, rngs: nnx.Rngs) -> None:
        dtype = dtype_from_name(cfg.dtype)
        self.dropout_rate = cfg.dropout_rate
        self.pre_attention_norm = RMSNorm(
            cfg.emb_dim, epsilon=cfg.norm_epsilon, dtype=dtype, rngs=rngs
        )
        self.attention = Attention(
            cfg.emb_dim,
            num_heads=cfg.num_heads,
            num_kv_heads=cfg.num_kv_heads,
            head_dim=cfg.head_dim,
            rope_theta=cfg.rope_theta,
            dropout_rate=cfg.dropout_rate,
            attention_impl=cfg.attention_impl,
            dtype=dtype,
            rngs=rngs,
            **_kernel_init(cfg),
        )
        self.pre_mlp_norm = RMSNorm(cfg.emb_dim, epsilon=cfg.norm_epsilon, dtype=dtype, rngs=rngs)
        self.mlp = GatedMLP(
            cfg.emb_dim,
            cfg.mlp_dim,
            activation=cfg.mlp_activation,
            dropout_rate=cfg.dropout_rate,
            dtype=dtype,
            rngs=rngs,
            **_kernel_init(cfg),
        )

    def __call__(self, x: jax.Array, ctx: _Ctx, cache: Any, rng: jax.Array | None):
        det = ctx.deterministic
        r = split_rng(rng, 4)
        h = self.pre_attention_norm(x)
        h, cache = self.attention(
            h,
            h,
            ctx.mask,
            rope_positions=ctx.rope_positions,
            cache=cache,
            decode_index=ctx.decode_index,
            deterministic=det,
            dropout_rng=r[0],
        )
        x = x + dropout(h, self.dropout_rate, r[1], deterministic=det)
        h = self.mlp(self.pre_mlp_norm(x), deterministic=det, dropout_rng=r[2])
        x = x + dropout(h, self.dropout_rate, r[3], deterministic=det)
        return constrain(x, ("batch", "length", "embed")), cache


@register_model_family("decoder", config_type=DecoderConfig, encoder_decoder=False)
class Decoder(nnx.Module, HookedModel):
    """Decoder-only LM. Sequence hooks (plug-ins) see the whole embedded sequence
    (``stack='decoder'``) in training, scoring and prefill; logits come back at the original
    token positions."""

    def __init__(self, cfg: DecoderConfig, *, rngs: nnx.Rngs) -> None:
        self.cfg = cfg
        self._init_sequence_hooks()
        self.dtype = dtype_from_name(cfg.dtype)
        self.token_embedder = Embed(
            cfg.vocab_size,
            cfg.emb_dim,
            dtype=self.dtype,
            embedding_init=normal_init(cfg.embedding_init_stddev),
            rngs=rngs,
        )
        self.layers = LayerStack(
            lambda r: DecoderBlock(cfg, rngs=r),
            cfg.num_layers,
            scan=cfg.scan_layers,
            remat_policy=cfg.remat_policy,
            rngs=rngs,
        )
        self.decoder_norm = RMSNorm(
            cfg.emb_dim, epsilon=cfg.norm_epsilon, dtype=self.dtype, rngs=rngs
        )
        if not cfg.tie_embeddings:
            self.logits_dense = DenseGeneral(
                (cfg.emb_dim,),
                (cfg.vocab_size,),
                logical_axes=("embed", "vocab"),
                dtype=self.dtype,
                rngs=rngs,
                **_kernel_init(cfg),
            )

    def __call__(
        self,
        decoder_input_tokens: jax.Array,
        *,
        decoder_segment_ids: jax.Array | None = None,
        decoder_positions: jax.Array | None = None,
        decoder_causal_attention: jax.Array | None = None,
        features: dict[str, jax.Array] | None = None,
        deterministic: bool = True,
        dropout_rng: jax.Array | None = None,
    ) -> jax.Array:
        """Teacher-forced logits ``[b, t, vocab]`` in fp32.

        ``decoder_causal_attention`` (1 on input tokens) turns on prefix-LM masking.
        Without segment ids every token is one example; right padding is harmless because
        real tokens never attend forward.
        """
        seq = self._embed(
            decoder_input_tokens,
            decoder_segment_ids,
            decoder_positions,
            decoder_causal_attention,
            features,
        )
        logits, _ = self._run(seq, None, deterministic, dropout_rng)
        return logits

    def logits_from_batch(
        self,
        batch: dict[str, jax.Array],
        *,
        deterministic: bool = True,
        dropout_rng: jax.Array | None = None,
    ) -> jax.Array:
        """Logits for a seqio ``LMFeatureConverter`` / ``PrefixLMFeatureConverter`` batch."""
        return self(
            batch["decoder_input_tokens"],
            decoder_segment_ids=batch.get("decoder_segment_ids"),
            decoder_positions=batch.get("decoder_positions"),
            decoder_causal_attention=batch.get("decoder_causal_attention"),
            features=batch,
            deterministic=deterministic,
            dropout_rng=dropout_rng,
        )

    def _embed(
        self,
        tokens: jax.Array,
        segment_ids: jax.Array | None,
        positions: jax.Array | None,
        causal_attention: jax.Array | None,
        features: dict[str, jax.Array] | None,
    ) -> EmbeddedSequence:
        """Embedded tokens and their metadata, after the sequence hooks."""
        b, t = tokens.shape
        x = self.token_embedder(tokens)
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        prefix = None if causal_attention is None else causal_attention.astype(bool)
        if not self.has_sequence_hooks:
            return EmbeddedSequence(x, segment_ids, positions, prefix, None, {}, "decoder")
        # Unpacked rows are one example each (decoder inputs start with token id 0).
        if segment_ids is None:
            segment_ids = jnp.ones((b, t), jnp.int32)
        seq = start_sequence(
            x,
            tokens,
            stack="decoder",
            segment_ids=segment_ids,
            positions=positions,
            in_prefix=prefix,
            features=features,
        )
        return self.run_sequence_hooks(seq)

    def _run(
        self,
        seq: EmbeddedSequence,
        caches: Any,
        deterministic: bool,
        dropout_rng: jax.Array | None,
    ) -> tuple[jax.Array, Any]:
        """Logits at the original tokens ``[b, t0, vocab]`` and the filled caches."""
        mask = AttentionMask(
            q_segment_ids=seq.segment_ids,
            kv_segment_ids=seq.segment_ids,
            q_in_prefix=seq.in_prefix,
            kv_in_prefix=seq.in_prefix,
            causal=True,
        )
        ctx = _Ctx(
            mask=mask,
            rope_positions=seq.positions,
            decode_index=None,
            deterministic=deterministic,
        )
        r = split_rng(dropout_rng, 3)
        x = dropout(seq.x, self.cfg.dropout_rate, r[0], deterministic=deterministic)
        x, caches = self.layers(x, ctx, caches, r[1])
        x = gather_tokens(x, seq)
        return self._logits(x, r[2], deterministic), caches

    def _logits(self, x: jax.Array, rng: jax.Array | None, deterministic: bool) -> jax.Array:
        x = self.decoder_norm(x)
        x = dropout(x, self.cfg.dropout_rate, rng, deterministic=deterministic)
        logits = self.token_embedder.attend(x) if self.cfg.tie_embeddings else self.logits_dense(x)
        return constrain(logits.astype(jnp.float32), ("batch", "length", "vocab"))

    # ------------------------------------------------------------------ decoding

    def prefill(
        self, batch: dict[str, jax.Array], max_decode_length: int
    ) -> tuple[jax.Array, dict]:
        """Run the (right-padded) prompt once, fill the cache, return next-token logits.

        ``batch['decoder_input_tokens']`` is the prompt ``[b, p]``; its length per example is
        ``batch['prompt_lengths']`` (default: up to the last non-zero token).
        ``batch['decoder_causal_attention']`` marks a prefix-LM prompt.
        """
        tokens = batch["decoder_input_tokens"]
        b, p = tokens.shape
        lengths = batch.get("prompt_lengths")
        if lengths is None:
            idx = jnp.arange(1, p + 1, dtype=jnp.int32)
            lengths = jnp.maximum(jnp.max(jnp.where(tokens != 0, idx, 0), axis=1), 1)
        cfg = self.cfg
        seq = self._embed(tokens, None, None, batch.get("decoder_causal_attention"), batch)
        # Hooks may lengthen the prompt (a soft prompt): the cache holds the hooked sequence.
        seq_len = seq.x.shape[1]
        empty = [
            init_kv_cache(
                b, seq_len + max_decode_length, cfg.num_kv_heads, cfg.head_dim, self.dtype
            )
            for _ in range(cfg.num_layers)
        ]
        caches = self.layers.stack_caches(empty)
        logits, caches = self._run(seq, caches, True, None)
        last = jnp.take_along_axis(logits, (lengths - 1)[:, None, None], axis=1)[:, 0]
        index = lengths
        if seq.token_index is not None:
            # The next token goes where the first padding token went: hooks may have put
            # vectors after the last prompt token (a suffix), which it must not overwrite.
            # A row without padding continues after its last non-padding element.
            t0 = seq.token_index.shape[1]
            first_pad = jnp.minimum(lengths, t0 - 1)[:, None]
            after = jnp.take_along_axis(seq.token_index, first_pad, axis=1)[:, 0]
            filled = jnp.sum(seq.segment_ids != 0, axis=1).astype(jnp.int32)
            index = jnp.where(lengths < t0, after, filled)
        return last, {"cache": caches, "index": index}

    def decode_step(
        self, tokens: jax.Array, index: jax.Array, state: dict
    ) -> tuple[jax.Array, dict]:
        """Feed ``tokens [b]`` at sequence index ``index [b]``; logits ``[b, vocab]``."""
        caches = state["cache"]
        max_len = LayerStack.first_layer_cache(caches)["k"].shape[-3]
        ctx = _Ctx(
            mask=AttentionMask(
                q_positions=index[:, None],
                kv_positions=jnp.arange(max_len, dtype=jnp.int32)[None],
                causal=True,
            ),
            rope_positions=index[:, None],
            decode_index=index,
            deterministic=True,
        )
        x = self.token_embedder(tokens[:, None])
        x, caches = self.layers(x, ctx, caches, None)
        return self._logits(x, None, True)[:, 0], {**state, "cache": caches}
