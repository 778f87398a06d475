"""LoRA (Hu et al. 2021): low-rank adapters on chosen projections of a frozen base model.

``train.plugins = [@LoRA()]`` (see ``gin/plugins/lora.gin``). :class:`LoRA` wraps each
targeted ``DenseGeneral`` in :class:`LoRADenseGeneral`; ``LoRA.merge`` folds the adapters
back into plain base parameters; adapter files (safetensors) move adapters between runs.
"""

from t5x_instruct.plugins.lora.adapters import merge_adapters, read_adapters, save_adapters
from t5x_instruct.plugins.lora.layer import LoRADenseGeneral
from t5x_instruct.plugins.lora.plugin import DEFAULT_TARGETS, LoRA

__all__ = [
    "DEFAULT_TARGETS",
    "LoRA",
    "LoRADenseGeneral",
    "merge_adapters",
    "read_adapters",
    "save_adapters",
]
