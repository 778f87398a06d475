"""Hugging Face checkpoints -> our NNX models (T5 v1.1 / Flan-T5 and Llama).

Everything here works on a plain ``name -> array`` mapping (numpy, or anything
``np.asarray`` accepts) and a config ``dict`` (``config.json``), so converting a checkpoint
needs neither torch nor transformers on the machine that runs it.

Layout rules: torch ``Linear`` weights are ``[out, in]`` while our kernels are
``[in, ..., out, ...]``; attention projections are split into ``[heads, head_dim]``; the T5
relative-bias table is ``[buckets, heads]`` in HF and ``[heads, buckets]`` here. HF Llama
checkpoints already use the half-split RoPE layout of :func:`t5x_instruct.layers.apply_rope`,
so q/k weights need no permutation.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import numpy as np
from flax import nnx

from t5x_instruct.models.decoder import Decoder, DecoderConfig
from t5x_instruct.models.encoder_decoder import EncoderDecoder, T5Config

StateDict = Mapping[str, Any]
ParamPath = tuple[str | int, ...]
LayerParams = dict[ParamPath, np.ndarray]

# HF activation names -> ours (``gelu_new`` is the tanh approximation T5 v1.1 uses).
_ACTIVATIONS = {
    "gelu_new": "gelu",
    "gelu_pytorch_tanh": "gelu",
    "gelu": "gelu_exact",
    "gelu_python": "gelu_exact",
    "silu": "silu",
    "swish": "silu",
    "relu": "relu",
}

# Weights HF keeps for compatibility that carry nothing our models use.
_T5_IGNORED = (r"decoder\.block\.0\.layer\.1\.EncDecAttention\.relative_attention_bias\.weight",)
_LLAMA_IGNORED = (
    r"model\.rotary_emb\.inv_freq",
    r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq",
)


# ---------------------------------------------------------------------------------- configs


def _require(hf: Mapping[str, Any], key: str) -> Any:
    if key not in hf:
        raise KeyError(f"HF config has no {key!r}; is this the right model family?")
    return hf[key]


def _activation(hf_name: str) -> str:
    if hf_name not in _ACTIVATIONS:
        raise ValueError(
            f"HF activation {hf_name!r} is not supported; expected one of {sorted(_ACTIVATIONS)}"
        )
    return _ACTIVATIONS[hf_name]


def t5_config_from_hf(hf: Mapping[str, Any], **overrides: Any) -> T5Config:
    """A :class:`T5Config` from a HF ``T5Config`` dict; ``overrides`` set ours (dtype, scan...).

    Only gated MLPs (T5 v1.1, Flan-T5) exist here; original T5's ReLU MLP is rejected.
    """
    proj = hf.get("feed_forward_proj", "relu")
    gate, _, act = proj.rpartition("-")
    if gate != "gated":
        raise ValueError(
            f"feed_forward_proj={proj!r}: only gated MLPs (T5 v1.1 'gated-gelu') are supported."
        )
    num_layers = _require(hf, "num_layers")
    fields: dict[str, Any] = dict(
        vocab_size=_require(hf, "vocab_size"),
        emb_dim=_require(hf, "d_model"),
        num_heads=_require(hf, "num_heads"),
        head_dim=_require(hf, "d_kv"),
        mlp_dim=_require(hf, "d_ff"),
        num_encoder_layers=num_layers,
        num_decoder_layers=hf.get("num_decoder_layers") or num_layers,
        # HF maps the legacy name 'gated-gelu' to the tanh approximation.
        mlp_activation=_activation("gelu_new" if proj == "gated-gelu" else act),
        dropout_rate=hf.get("dropout_rate", 0.1),
        # transformers>=5 always reports tie_word_embeddings=True for T5 and keeps the real
        # switch (rescale + reuse the embedding) in scale_decoder_outputs.
        logits_via_embedding=bool(
            hf.get("scale_decoder_outputs", hf.get("tie_word_embeddings", True))
        ),
        relative_attention_num_buckets=hf.get("relative_attention_num_buckets", 32),
        relative_attention_max_distance=hf.get("relative_attention_max_distance", 128),
        layer_norm_epsilon=hf.get("layer_norm_epsilon", 1e-6),
    )
    return T5Config(**{**fields, **overrides})


def _rope_theta(hf: Mapping[str, Any]) -> float:
    """Base frequency of plain RoPE; scaled variants (llama3, yarn, ...) would silently differ."""
    params = hf.get("rope_parameters") or {}
    legacy = hf.get("rope_scaling") or {}
    rope_type = params.get("rope_type", legacy.get("rope_type", legacy.get("type", "default")))
    if rope_type != "default":
        raise NotImplementedError(f"RoPE type {rope_type!r} is not supported (only 'default').")
    if params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0)) != 1.0:
        raise NotImplementedError("Partial rotary embeddings are not supported.")
    return float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))


def decoder_config_from_hf(hf: Mapping[str, Any], **overrides: Any) -> DecoderConfig:
    """A :class:`DecoderConfig` from a HF ``LlamaConfig`` dict; ``overrides`` set ours."""
    model_type = hf.get("model_type", "llama")
    if model_type != "llama":
        raise ValueError(f"model_type={model_type!r}: only 'llama' checkpoints are supported.")
    if hf.get("attention_bias") or hf.get("mlp_bias"):
        raise ValueError("Llama checkpoints with attention_bias / mlp_bias are not supported.")
    heads = _require(hf, "num_attention_heads")
    emb_dim = _require(hf, "hidden_size")
    fields: dict[str, Any] = dict(
        vocab_size=_require(hf, "vocab_size"),
        emb_dim=emb_dim,
        num_heads=heads,
        num_kv_heads=hf.get("num_key_value_heads") or heads,
        head_dim=hf.get("head_dim") or emb_dim // heads,
        mlp_dim=_require(hf, "intermediate_size"),
        num_layers=_require(hf, "num_hidden_layers"),
        mlp_activation=_activation(hf.get("hidden_act", "silu")),
        rope_theta=_rope_theta(hf),
        norm_epsilon=hf.get("rms_norm_eps", 1e-6),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
    )
    return DecoderConfig(**{**fields, **overrides})


# ---------------------------------------------------------------------------------- weights


class _HFWeights:
    """Reads a HF state dict by name and shape, remembering which entries were consumed."""

    def __init__(self, state_dict: StateDict, ignored: Iterable[str] = ()) -> None:
        self._sd = state_dict
        self._used: set[str] = set()
        self._ignored = [re.compile(p) for p in ignored]

    def take(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        if name not in self._sd:
            raise KeyError(f"HF checkpoint is missing {name!r}")
        value = np.asarray(self._sd[name])
        if value.shape != shape:
            raise ValueError(
                f"HF weight {name!r} has shape {value.shape}; the model expects {shape}"
            )
        self._used.add(name)
        return value

    def alias(self, name: str, of: np.ndarray, what: str) -> None:
        """Accept ``name`` only as a copy of ``of`` (tied weights), never drop a distinct one."""
        if name not in self._sd:
            return
        if not np.array_equal(np.asarray(self._sd[name]), of):
            raise ValueError(f"HF weight {name!r} differs from {what}, but the model ties them.")
        self._used.add(name)

    def check_all_used(self) -> None:
        left = [
            k
            for k in self._sd
            if k not in self._used and not any(p.fullmatch(k) for p in self._ignored)
        ]
        if left:
            raise ValueError(f"Unexpected HF weights (not used by the model): {sorted(left)}")


def _dense(w: _HFWeights, name: str, d_in: int, d_out: int) -> np.ndarray:
    """torch ``Linear`` ``[out, in]`` -> our kernel ``[in, out]``."""
    return w.take(name, (d_out, d_in)).T


def _heads_in(w: _HFWeights, name: str, d_in: int, heads: int, head_dim: int) -> np.ndarray:
    """q/k/v ``[heads*head_dim, in]`` -> ``[in, heads, head_dim]``."""
    return _dense(w, name, d_in, heads * head_dim).reshape(d_in, heads, head_dim)


def _heads_out(w: _HFWeights, name: str, heads: int, head_dim: int, d_out: int) -> np.ndarray:
    """o ``[out, heads*head_dim]`` -> ``[heads, head_dim, out]``."""
    return _dense(w, name, heads * head_dim, d_out).reshape(heads, head_dim, d_out)


def _attention(
    w: _HFWeights,
    prefix: str,
    names: tuple[str, str, str, str],
    d: int,
    heads: int,
    kv_heads: int,
    head_dim: int,
) -> LayerParams:
    q, k, v, o = (f"{prefix}.{n}.weight" for n in names)
    return {
        ("query", "kernel"): _heads_in(w, q, d, heads, head_dim),
        ("key", "kernel"): _heads_in(w, k, d, kv_heads, head_dim),
        ("value", "kernel"): _heads_in(w, v, d, kv_heads, head_dim),
        ("out", "kernel"): _heads_out(w, o, heads, head_dim, d),
    }


def _mlp(
    w: _HFWeights, prefix: str, names: tuple[str, str, str], d: int, hidden: int
) -> LayerParams:
    gate, up, down = (f"{prefix}.{n}.weight" for n in names)
    return {
        ("wi_0", "kernel"): _dense(w, gate, d, hidden),
        ("wi_1", "kernel"): _dense(w, up, d, hidden),
        ("wo", "kernel"): _dense(w, down, hidden, d),
    }


def _under(module: str, params: LayerParams) -> LayerParams:
    return {(module, *path): value for path, value in params.items()}


def _stack_layout(stack: str, layers: list[LayerParams], scan: bool) -> LayerParams:
    """Per-layer params at ``stack/blocks/i/...`` (loop) or stacked at ``stack/block/...``."""
    if not scan:
        return {
            (stack, "blocks", i, *path): value
            for i, layer in enumerate(layers)
            for path, value in layer.items()
        }
    return {
        (stack, "block", *path): np.stack([layer[path] for layer in layers]) for path in layers[0]
    }


def _assign(model: nnx.Module, values: LayerParams) -> None:
    """Write ``values`` into every ``nnx.Param`` of ``model``, keeping dtype and sharding.

    ``model`` may be abstract (``nnx.eval_shape``) so large models skip a wasted random init.
    """
    state = nnx.state(model, nnx.Param)
    params = {tuple(path): var for path, var in nnx.to_flat_state(state)}
    missing = sorted("/".join(map(str, p)) for p in params.keys() - values.keys())
    extra = sorted("/".join(map(str, p)) for p in values.keys() - params.keys())
    if missing or extra:
        raise ValueError(
            f"Converted weights do not match the model: missing {missing}, extra {extra}"
        )
    for path, var in params.items():
        old = var.get_value()
        new = values[path]
        if tuple(new.shape) != tuple(old.shape):
            raise ValueError(
                f"Parameter {'/'.join(map(str, path))}: converted shape {new.shape}, "
                f"model has {old.shape}"
            )
        sharding = getattr(old, "sharding", None)
        var.set_value(jax.device_put(np.asarray(new, dtype=old.dtype), sharding))
    nnx.update(model, state)


def t5_params_from_hf(state_dict: StateDict, model: EncoderDecoder) -> None:
    """Load a HF ``T5ForConditionalGeneration`` state dict into ``model`` in place.

    ``model`` may be concrete or abstract (built under ``nnx.eval_shape``).
    """
    cfg = model.cfg
    w = _HFWeights(state_dict, _T5_IGNORED)
    d, h, hd, mlp = cfg.emb_dim, cfg.num_heads, cfg.head_dim, cfg.mlp_dim
    qkvo = ("q", "k", "v", "o")
    ffn = ("wi_0", "wi_1", "wo")
    norm = (d,)

    def attn(prefix: str) -> LayerParams:
        return _attention(w, prefix, qkvo, d, h, h, hd)

    def encoder_layer(i: int) -> LayerParams:
        p = f"encoder.block.{i}.layer"
        return {
            **_under("attention", attn(f"{p}.0.SelfAttention")),
            ("pre_attention_layer_norm", "scale"): w.take(f"{p}.0.layer_norm.weight", norm),
            **_under("mlp", _mlp(w, f"{p}.1.DenseReluDense", ffn, d, mlp)),
            ("pre_mlp_layer_norm", "scale"): w.take(f"{p}.1.layer_norm.weight", norm),
        }

    def decoder_layer(i: int) -> LayerParams:
        p = f"decoder.block.{i}.layer"
        return {
            **_under("self_attention", attn(f"{p}.0.SelfAttention")),
            ("pre_self_attention_layer_norm", "scale"): w.take(f"{p}.0.layer_norm.weight", norm),
            **_under("encoder_decoder_attention", attn(f"{p}.1.EncDecAttention")),
            ("pre_cross_attention_layer_norm", "scale"): w.take(f"{p}.1.layer_norm.weight", norm),
            **_under("mlp", _mlp(w, f"{p}.2.DenseReluDense", ffn, d, mlp)),
            ("pre_mlp_layer_norm", "scale"): w.take(f"{p}.2.layer_norm.weight", norm),
        }

    def relpos(stack: str) -> np.ndarray:
        name = f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
        return w.take(name, (cfg.relative_attention_num_buckets, h)).T

    shared = w.take("shared.weight", (cfg.vocab_size, d))
    w.alias("encoder.embed_tokens.weight", shared, "shared.weight")
    w.alias("decoder.embed_tokens.weight", shared, "shared.weight")
    values: LayerParams = {
        ("token_embedder", "embedding"): shared,
        ("encoder_relpos_bias", "rel_embedding"): relpos("encoder"),
        ("decoder_relpos_bias", "rel_embedding"): relpos("decoder"),
        ("encoder_norm", "scale"): w.take("encoder.final_layer_norm.weight", norm),
        ("decoder_norm", "scale"): w.take("decoder.final_layer_norm.weight", norm),
        **_stack_layout(
            "encoder", [encoder_layer(i) for i in range(cfg.num_encoder_layers)], cfg.scan_layers
        ),
        **_stack_layout(
            "decoder", [decoder_layer(i) for i in range(cfg.num_decoder_layers)], cfg.scan_layers
        ),
    }
    if cfg.logits_via_embedding:
        w.alias("lm_head.weight", shared, "shared.weight")
    else:
        values["logits_dense", "kernel"] = _dense(w, "lm_head.weight", d, cfg.vocab_size)
    w.check_all_used()
    _assign(model, values)


def llama_params_from_hf(state_dict: StateDict, model: Decoder) -> None:
    """Load a HF ``LlamaForCausalLM`` state dict into ``model`` in place.

    ``model`` may be concrete or abstract (built under ``nnx.eval_shape``).
    """
    cfg = model.cfg
    w = _HFWeights(state_dict, _LLAMA_IGNORED)
    d, norm = cfg.emb_dim, (cfg.emb_dim,)
    qkvo = ("q_proj", "k_proj", "v_proj", "o_proj")
    ffn = ("gate_proj", "up_proj", "down_proj")  # gate is the activated branch, as our wi_0

    def layer(i: int) -> LayerParams:
        p = f"model.layers.{i}"
        attn = _attention(
            w, f"{p}.self_attn", qkvo, d, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        )
        return {
            **_under("attention", attn),
            ("pre_attention_norm", "scale"): w.take(f"{p}.input_layernorm.weight", norm),
            **_under("mlp", _mlp(w, f"{p}.mlp", ffn, d, cfg.mlp_dim)),
            ("pre_mlp_norm", "scale"): w.take(f"{p}.post_attention_layernorm.weight", norm),
        }

    embed = w.take("model.embed_tokens.weight", (cfg.vocab_size, d))
    values: LayerParams = {
        ("token_embedder", "embedding"): embed,
        ("decoder_norm", "scale"): w.take("model.norm.weight", norm),
        **_stack_layout("layers", [layer(i) for i in range(cfg.num_layers)], cfg.scan_layers),
    }
    if cfg.tie_embeddings:
        w.alias("lm_head.weight", embed, "model.embed_tokens.weight")
    else:
        values["logits_dense", "kernel"] = _dense(w, "lm_head.weight", d, cfg.vocab_size)
    w.check_all_used()
    _assign(model, values)


def params_from_hf(state_dict: StateDict, model: EncoderDecoder | Decoder) -> None:
    """Load a HF state dict into either model family, chosen by the model's type."""
    if isinstance(model, EncoderDecoder):
        t5_params_from_hf(state_dict, model)
    elif isinstance(model, Decoder):
        llama_params_from_hf(state_dict, model)
    else:
        raise TypeError(f"No HF converter for {type(model).__name__}")
