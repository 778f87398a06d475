"""Tiny random Hugging Face models and their converted twins, for equivalence tests.

Norm scales are randomised away from 1 so that swapping two norms in the converter changes
the outputs; otherwise every freshly initialised RMSNorm would look alike.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from flax import nnx
from transformers import LlamaConfig, LlamaForCausalLM, T5Config, T5ForConditionalGeneration

from t5x_instruct.convert import (
    decoder_config_from_hf,
    params_from_hf,
    t5_config_from_hf,
)
from t5x_instruct.models import Model, build_model


def _randomise_norms(model: torch.nn.Module, gen: torch.Generator) -> None:
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(1.0 + 0.2 * torch.randn(param.shape, generator=gen))


def tiny_hf_t5(
    *, tie_word_embeddings: bool, seed: int = 0, num_decoder_layers: int = 3
) -> T5ForConditionalGeneration:
    """T5 v1.1-style model; small bucket count so the log-spaced buckets are exercised."""
    torch.manual_seed(seed)
    cfg = T5Config(
        vocab_size=64,
        d_model=32,
        d_kv=8,
        d_ff=48,
        num_heads=4,
        num_layers=2,
        num_decoder_layers=num_decoder_layers,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=20,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=tie_word_embeddings,
        dropout_rate=0.0,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    model = T5ForConditionalGeneration(cfg).eval()
    gen = torch.Generator().manual_seed(seed)
    if not tie_word_embeddings:
        # transformers>=5 shares lm_head with the embedding even when "untied"; give it its own.
        lm_head = torch.randn(model.lm_head.weight.shape, generator=gen) * cfg.d_model**-0.5
        model.lm_head.weight = torch.nn.Parameter(lm_head)
    _randomise_norms(model, gen)
    return model


def tiny_hf_llama(
    *, num_kv_heads: int, seed: int = 0, tie_word_embeddings: bool = False
) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=num_kv_heads,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 500.0},
        initializer_range=0.1,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    cfg._attn_implementation = "eager"  # honours custom 4-D additive masks as given
    model = LlamaForCausalLM(cfg).eval()
    _randomise_norms(model, torch.Generator().manual_seed(seed))
    return model


def numpy_state_dict(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}


def convert(hf_model: torch.nn.Module, **overrides: Any) -> Model:
    """Our model built from the HF config dict and loaded from the HF state dict."""
    hf_cfg = hf_model.config.to_dict()
    if hf_cfg.get("model_type") == "t5":
        cfg = t5_config_from_hf(hf_cfg, **overrides)
    else:
        cfg = decoder_config_from_hf(hf_cfg, **overrides)
    # Built abstractly: the converter fills every parameter, so random init would be wasted.
    model = nnx.eval_shape(lambda: build_model(cfg))
    params_from_hf(numpy_state_dict(hf_model), model)
    return model


def torch_ints(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(x, dtype=np.int64))
