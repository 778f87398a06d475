"""Checkpoint conversion from other frameworks into our NNX models."""

from t5x_instruct.convert.hf import (
    decoder_config_from_hf,
    llama_params_from_hf,
    params_from_hf,
    t5_config_from_hf,
    t5_params_from_hf,
)

__all__ = [
    "decoder_config_from_hf",
    "llama_params_from_hf",
    "params_from_hf",
    "t5_config_from_hf",
    "t5_params_from_hf",
]
