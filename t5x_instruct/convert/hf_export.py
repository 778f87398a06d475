"""Our parameters -> Hugging Face checkpoints (safetensors + ``config.json``).

T5 models become ``T5ForConditionalGeneration``, decoder-only ones ``LlamaForCausalLM``; the
layout rules are those of :mod:`t5x_instruct.convert.hf` run backwards (torch ``Linear`` is
``[out, in]``, heads are joined, the relative-bias table is ``[buckets, heads]``).

Tensors are fetched one parameter at a time and written in safetensors files of at most
``max_shard_bytes`` (with HF's ``model.safetensors.index.json`` when there are several), so
host memory holds one file's worth, never the whole model. Tied weights are written once
(``shared.weight`` / ``model.embed_tokens.weight``), as ``save_pretrained`` does.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import numpy as np

from t5x_instruct.errors import UserInputError
from t5x_instruct.models.decoder import DecoderConfig
from t5x_instruct.models.encoder_decoder import T5Config
from t5x_instruct.training.train_state import Params

SAFETENSORS_INDEX = "model.safetensors.index.json"

# Ours -> HF ``feed_forward_proj`` (T5) / ``hidden_act`` (Llama). HF maps the legacy
# 'gated-gelu' to the tanh approximation (``gelu_new``), which is our 'gelu'.
_T5_FEED_FORWARD = {
    "gelu": "gated-gelu",
    "gelu_exact": "gated-gelu_python",
    "silu": "gated-silu",
    "relu": "gated-relu",
}
_LLAMA_ACT = {"silu": "silu", "gelu": "gelu_pytorch_tanh", "gelu_exact": "gelu", "relu": "relu"}


@dataclasses.dataclass(frozen=True)
class HFTensor:
    """One HF tensor: made from our parameter ``source`` (layer ``layer`` of a stacked one)."""

    hf_name: str
    source: str
    layer: int | None
    kind: str  # 'copy' | 'transpose' | 'dense' (kernel [in..., out...] -> [out, in])
    num_in: int = 1  # leading dims of a 'dense' kernel that are inputs


# ---------------------------------------------------------------------------------- configs


def hf_config_from_t5(cfg: T5Config) -> dict[str, Any]:
    """A ``config.json`` dict for ``T5ForConditionalGeneration`` with ``cfg``'s shapes."""
    tied = bool(cfg.logits_via_embedding)
    return {
        "architectures": ["T5ForConditionalGeneration"],
        "model_type": "t5",
        "vocab_size": cfg.vocab_size,
        "d_model": cfg.emb_dim,
        "d_kv": cfg.head_dim,
        "d_ff": cfg.mlp_dim,
        "num_layers": cfg.num_encoder_layers,
        "num_decoder_layers": cfg.num_decoder_layers,
        "num_heads": cfg.num_heads,
        "relative_attention_num_buckets": cfg.relative_attention_num_buckets,
        "relative_attention_max_distance": cfg.relative_attention_max_distance,
        "dropout_rate": cfg.dropout_rate,
        "layer_norm_epsilon": cfg.layer_norm_epsilon,
        "feed_forward_proj": _lookup(_T5_FEED_FORWARD, cfg.mlp_activation, "T5Config"),
        # transformers<5 reads tie_word_embeddings, >=5 keeps the switch in
        # scale_decoder_outputs; both mean "reuse the embedding, rescaled by d_model**-0.5".
        "tie_word_embeddings": tied,
        "scale_decoder_outputs": tied,
        "is_encoder_decoder": True,
        "decoder_start_token_id": 0,
        "pad_token_id": 0,
        "eos_token_id": 1,
        "initializer_factor": 1.0,
        "use_cache": True,
    }


def hf_config_from_decoder(
    cfg: DecoderConfig,
    *,
    max_position_embeddings: int = 4096,
    bos_token_id: int | None = 1,
    eos_token_id: int | None = 2,
    pad_token_id: int | None = 0,
) -> dict[str, Any]:
    """A ``config.json`` dict for ``LlamaForCausalLM`` with ``cfg``'s shapes.

    Our model has no position limit; ``max_position_embeddings`` only informs HF tooling.
    The token ids default to the Llama SentencePiece vocabulary's.
    """
    rope = {"rope_type": "default", "rope_theta": float(cfg.rope_theta)}
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.emb_dim,
        "intermediate_size": cfg.mlp_dim,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": _lookup(_LLAMA_ACT, cfg.mlp_activation, "DecoderConfig"),
        "rms_norm_eps": cfg.norm_epsilon,
        "rope_theta": float(cfg.rope_theta),  # transformers<5
        "rope_parameters": rope,  # transformers>=5
        "max_position_embeddings": max_position_embeddings,
        "tie_word_embeddings": bool(cfg.tie_embeddings),
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "pad_token_id": pad_token_id,
        "use_cache": True,
    }


def hf_config(cfg: T5Config | DecoderConfig) -> dict[str, Any]:
    if isinstance(cfg, T5Config):
        return hf_config_from_t5(cfg)
    if isinstance(cfg, DecoderConfig):
        return hf_config_from_decoder(cfg)
    raise TypeError(f"No HF export for {type(cfg).__name__}")


def _lookup(table: Mapping[str, str], activation: str, where: str) -> str:
    if activation not in table:
        raise UserInputError(
            f"{where}.mlp_activation={activation!r} has no Hugging Face equivalent here; "
            f"exportable: {sorted(table)}."
        )
    return table[activation]


# ---------------------------------------------------------------------------------- mapping


def _layers(stack: str, count: int, scanned: bool) -> Iterator[tuple[str, int | None]]:
    """Our per-layer prefix and, for a scanned stack, the index into the stacked arrays."""
    for i in range(count):
        yield ((f"{stack}/block", i) if scanned else (f"{stack}/blocks/{i}", None))


def _attention(ours: str, layer: int | None, hf: str, names: tuple[str, ...]) -> list[HFTensor]:
    q, k, v, o = names
    return [
        HFTensor(f"{hf}.{q}.weight", f"{ours}/query/kernel", layer, "dense"),
        HFTensor(f"{hf}.{k}.weight", f"{ours}/key/kernel", layer, "dense"),
        HFTensor(f"{hf}.{v}.weight", f"{ours}/value/kernel", layer, "dense"),
        HFTensor(f"{hf}.{o}.weight", f"{ours}/out/kernel", layer, "dense", num_in=2),
    ]


def _copy(hf_name: str, source: str, layer: int | None) -> HFTensor:
    return HFTensor(hf_name, source, layer, "copy")


def _mlp(ours: str, layer: int | None, hf: str, names: tuple[str, ...]) -> list[HFTensor]:
    return [
        HFTensor(f"{hf}.{n}.weight", f"{ours}/{w}/kernel", layer, "dense")
        for n, w in zip(names, ("wi_0", "wi_1", "wo"))
    ]


def t5_tensors(cfg: T5Config) -> list[HFTensor]:
    """Every tensor of a HF T5 checkpoint, in HF's order, and where it comes from."""
    qkvo, ffn = ("q", "k", "v", "o"), ("wi_0", "wi_1", "wo")
    out = [HFTensor("shared.weight", "token_embedder/embedding", None, "copy")]
    for i, (p, layer) in enumerate(_layers("encoder", cfg.num_encoder_layers, cfg.scan_layers)):
        hf = f"encoder.block.{i}.layer"
        out += _attention(f"{p}/attention", layer, f"{hf}.0.SelfAttention", qkvo)
        if i == 0:
            out.append(
                HFTensor(
                    f"{hf}.0.SelfAttention.relative_attention_bias.weight",
                    "encoder_relpos_bias/rel_embedding",
                    None,
                    "transpose",
                )
            )
        out.append(_copy(f"{hf}.0.layer_norm.weight", f"{p}/pre_attention_layer_norm/scale", layer))
        out += _mlp(f"{p}/mlp", layer, f"{hf}.1.DenseReluDense", ffn)
        out.append(_copy(f"{hf}.1.layer_norm.weight", f"{p}/pre_mlp_layer_norm/scale", layer))
    out.append(HFTensor("encoder.final_layer_norm.weight", "encoder_norm/scale", None, "copy"))
    for i, (p, layer) in enumerate(_layers("decoder", cfg.num_decoder_layers, cfg.scan_layers)):
        hf = f"decoder.block.{i}.layer"
        out += _attention(f"{p}/self_attention", layer, f"{hf}.0.SelfAttention", qkvo)
        if i == 0:
            out.append(
                HFTensor(
                    f"{hf}.0.SelfAttention.relative_attention_bias.weight",
                    "decoder_relpos_bias/rel_embedding",
                    None,
                    "transpose",
                )
            )
        out.append(
            _copy(f"{hf}.0.layer_norm.weight", f"{p}/pre_self_attention_layer_norm/scale", layer)
        )
        out += _attention(f"{p}/encoder_decoder_attention", layer, f"{hf}.1.EncDecAttention", qkvo)
        out.append(
            _copy(f"{hf}.1.layer_norm.weight", f"{p}/pre_cross_attention_layer_norm/scale", layer)
        )
        out += _mlp(f"{p}/mlp", layer, f"{hf}.2.DenseReluDense", ffn)
        out.append(_copy(f"{hf}.2.layer_norm.weight", f"{p}/pre_mlp_layer_norm/scale", layer))
    out.append(HFTensor("decoder.final_layer_norm.weight", "decoder_norm/scale", None, "copy"))
    if not cfg.logits_via_embedding:
        out.append(HFTensor("lm_head.weight", "logits_dense/kernel", None, "dense"))
    return out


def llama_tensors(cfg: DecoderConfig) -> list[HFTensor]:
    """Every tensor of a HF Llama checkpoint, in HF's order, and where it comes from."""
    out = [HFTensor("model.embed_tokens.weight", "token_embedder/embedding", None, "copy")]
    for i, (p, layer) in enumerate(_layers("layers", cfg.num_layers, cfg.scan_layers)):
        hf = f"model.layers.{i}"
        out += _attention(
            f"{p}/attention", layer, f"{hf}.self_attn", ("q_proj", "k_proj", "v_proj", "o_proj")
        )
        out += _mlp(f"{p}/mlp", layer, f"{hf}.mlp", ("gate_proj", "up_proj", "down_proj"))
        out.append(_copy(f"{hf}.input_layernorm.weight", f"{p}/pre_attention_norm/scale", layer))
        out.append(_copy(f"{hf}.post_attention_layernorm.weight", f"{p}/pre_mlp_norm/scale", layer))
    out.append(HFTensor("model.norm.weight", "decoder_norm/scale", None, "copy"))
    if not cfg.tie_embeddings:
        out.append(HFTensor("lm_head.weight", "logits_dense/kernel", None, "dense"))
    return out


def hf_tensor_plan(cfg: T5Config | DecoderConfig) -> list[HFTensor]:
    """Every tensor of the HF checkpoint for ``cfg`` and the parameter it comes from."""
    if isinstance(cfg, T5Config):
        return t5_tensors(cfg)
    if isinstance(cfg, DecoderConfig):
        return llama_tensors(cfg)
    raise TypeError(f"No HF export for {type(cfg).__name__}")


def _convert(t: HFTensor, value: np.ndarray) -> np.ndarray:
    if t.layer is not None:
        value = value[t.layer]
    if t.kind == "transpose":
        return np.ascontiguousarray(value.T)
    if t.kind == "dense":
        d_in = math.prod(value.shape[: t.num_in])
        return np.ascontiguousarray(value.reshape(d_in, -1).T)
    return np.ascontiguousarray(value)


# ---------------------------------------------------------------------------------- writing


def _host(x: Any) -> np.ndarray:
    """The full value of one (possibly sharded, possibly multi-host) array on this host."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))


def hf_state_dict(
    params: Params, cfg: T5Config | DecoderConfig
) -> Iterator[tuple[str, np.ndarray]]:
    """``(hf_name, array)`` pairs in HF's order, one parameter fetched to host at a time."""
    flat = _flat(params)
    cached: tuple[str, np.ndarray] | None = None  # a stacked (scanned) parameter, reused
    for t in hf_tensor_plan(cfg):
        if t.source not in flat:
            raise UserInputError(f"Parameter {t.source} is missing from the params to export.")
        if cached is None or cached[0] != t.source:
            cached = (t.source, _host(flat[t.source]))
        yield t.hf_name, _convert(t, cached[1])


def save_hf_checkpoint(
    params: Params,
    cfg: T5Config | DecoderConfig,
    out_dir: str,
    *,
    dtype: Any = np.float32,
    max_shard_bytes: int = 2 * 1024**3,
    config_overrides: Mapping[str, Any] | None = None,
) -> list[str]:
    """Write ``params`` as a HF checkpoint ``transformers`` loads; returns the files written.

    Args:
      params: our parameter tree (sharded ``jax.Array``s or host arrays).
      cfg: the model's config (decides T5 or Llama and every shape in ``config.json``).
      out_dir: created if needed; must not already hold a checkpoint.
      dtype: tensor dtype on disk (``np.float32`` or ``jnp.bfloat16``).
      max_shard_bytes: split into several safetensors files beyond this size.
      config_overrides: extra / replaced ``config.json`` entries (token ids, ...).
    """
    from safetensors.numpy import save_file

    os.makedirs(out_dir, exist_ok=True)
    for existing in ("model.safetensors", SAFETENSORS_INDEX, "pytorch_model.bin"):
        if os.path.exists(os.path.join(out_dir, existing)):
            raise UserInputError(f"{out_dir} already holds a checkpoint ({existing}).")
    dtype = np.dtype(dtype)
    plan = hf_tensor_plan(cfg)
    flat = _flat(params)
    sizes = [math.prod(_per_layer_shape(flat, t)) * dtype.itemsize for t in plan]
    shard_of, n_shards, used = [], 0, max_shard_bytes
    for size in sizes:
        if used + size > max_shard_bytes and used > 0:
            n_shards, used = n_shards + 1, 0
        shard_of.append(n_shards - 1)
        used += size
    names = (
        ["model.safetensors"]
        if n_shards == 1
        else [f"model-{i + 1:05d}-of-{n_shards:05d}.safetensors" for i in range(n_shards)]
    )
    primary = jax.process_index() == 0
    weight_map: dict[str, str] = {}
    pending: dict[str, np.ndarray] = {}
    current = 0
    for (hf_name, value), shard in zip(hf_state_dict(params, cfg), shard_of):
        if shard != current:
            if primary:
                save_file(pending, os.path.join(out_dir, names[current]), {"format": "pt"})
            pending, current = {}, shard
        pending[hf_name] = value.astype(dtype)
        weight_map[hf_name] = names[shard]
    if primary:
        save_file(pending, os.path.join(out_dir, names[current]), {"format": "pt"})
        config = {
            **hf_config(cfg),
            "dtype": dtype.name,
            "torch_dtype": dtype.name,
            **(config_overrides or {}),
        }
        with open(os.path.join(out_dir, "config.json"), "w") as f:
            json.dump(config, f, indent=2, sort_keys=True)
        if n_shards > 1:
            index = {"metadata": {"total_size": sum(sizes)}, "weight_map": weight_map}
            with open(os.path.join(out_dir, SAFETENSORS_INDEX), "w") as f:
                json.dump(index, f, indent=2, sort_keys=True)
    return [os.path.join(out_dir, n) for n in names] + [os.path.join(out_dir, "config.json")]


def _per_layer_shape(flat: Mapping[str, Any], t: HFTensor) -> tuple[int, ...]:
    if t.source not in flat:
        raise UserInputError(f"Parameter {t.source} is missing from the params to export.")
    shape = tuple(np.shape(flat[t.source]))
    return shape[1:] if t.layer is not None else shape


def _flat(tree: Mapping[Any, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(_flat(value, name))
        else:
            out[name] = value
    return out
