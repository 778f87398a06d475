"""Building blocks shared by both model families."""

from t5x_instruct.layers.attention import Attention, KVCache, init_kv_cache
from t5x_instruct.layers.embedding import Embed
from t5x_instruct.layers.linear import DenseGeneral
from t5x_instruct.layers.mlp import GatedMLP
from t5x_instruct.layers.normalization import RMSNorm
from t5x_instruct.layers.params import dropout, dtype_from_name, logical_param
from t5x_instruct.layers.position import RelativePositionBias, apply_rope
from t5x_instruct.layers.stack import LayerStack

__all__ = [
    "Attention",
    "DenseGeneral",
    "Embed",
    "GatedMLP",
    "KVCache",
    "LayerStack",
    "RMSNorm",
    "RelativePositionBias",
    "apply_rope",
    "dropout",
    "dtype_from_name",
    "init_kv_cache",
    "logical_param",
]
