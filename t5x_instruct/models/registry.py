"""Model families keyed by their config type: a new family is one file that registers itself.

``build_model`` (gin: ``build_model.config = @T5Config()``) looks the config's type up here,
so neither the trainer nor the plug-ins dispatch on concrete model classes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import gin
from flax import nnx

from t5x_instruct.errors import UserInputError


@dataclasses.dataclass(frozen=True)
class ModelFamily:
    """How to build one family, and which SeqIO feature converter its batches come from.

    ``encoder_decoder`` families read ``encoder_input_tokens``; the others are decoder-only
    (``train.decoder_objective`` then picks causal LM or prefix-LM batches).
    """

    name: str
    config_type: type
    module_type: type
    encoder_decoder: bool


_FAMILIES: dict[type, ModelFamily] = {}


def register_model_family(
    name: str, *, config_type: type, encoder_decoder: bool
) -> Callable[[type], type]:
    """Class decorator for a model module whose ``__init__(config, *, rngs)`` builds it."""

    def decorate(module_type: type) -> type:
        _FAMILIES[config_type] = ModelFamily(name, config_type, module_type, encoder_decoder)
        return module_type

    return decorate


def model_family(model_or_config: Any) -> ModelFamily:
    """The family of a config, a module, or a module type."""
    for family in _FAMILIES.values():
        if isinstance(model_or_config, family.config_type | family.module_type):
            return family
        if model_or_config is family.module_type:
            return family
    known = ", ".join(sorted(f.config_type.__name__ for f in _FAMILIES.values()))
    raise UserInputError(
        f"build_model.config is a {type(model_or_config).__name__}; registered model configs: "
        f"{known}."
    )


@gin.configurable
def build_model(config: Any = gin.REQUIRED, seed: int = 0) -> nnx.Module:
    """Instantiate the network for ``config`` (gin: ``build_model.config``, ``.seed``)."""
    family = model_family(config)
    return family.module_type(config, rngs=nnx.Rngs(params=seed))


def is_encoder_decoder(model_or_config: Any) -> bool:
    return model_family(model_or_config).encoder_decoder
