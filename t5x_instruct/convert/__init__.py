"""Checkpoint conversion: T5X and Hugging Face into our models, ours out to Hugging Face.

``tools/convert_checkpoint.py`` is the command line over these functions.
"""

from t5x_instruct.convert.hf import (
    decoder_config_from_hf,
    llama_params_from_hf,
    params_from_hf,
    t5_config_from_hf,
    t5_params_from_hf,
)
from t5x_instruct.convert.hf_export import hf_config, hf_state_dict, save_hf_checkpoint
from t5x_instruct.convert.hf_files import load_hf_params, model_config_from_hf, read_hf_config
from t5x_instruct.convert.t5x import (
    T5XCheckpointError,
    convert_t5x_checkpoint,
    load_t5x_params,
    open_t5x_checkpoint,
)

__all__ = [
    "T5XCheckpointError",
    "convert_t5x_checkpoint",
    "decoder_config_from_hf",
    "hf_config",
    "hf_state_dict",
    "llama_params_from_hf",
    "load_hf_params",
    "load_t5x_params",
    "model_config_from_hf",
    "open_t5x_checkpoint",
    "params_from_hf",
    "read_hf_config",
    "save_hf_checkpoint",
    "t5_config_from_hf",
    "t5_params_from_hf",
]
