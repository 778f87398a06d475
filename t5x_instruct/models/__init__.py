"""Model families and the gin entry point that builds one."""

from __future__ import annotations

import gin
from flax import nnx

from t5x_instruct.models.decoder import Decoder, DecoderConfig
from t5x_instruct.models.encoder_decoder import EncoderDecoder, T5Config

Model = EncoderDecoder | Decoder


@gin.configurable(denylist=["seed"])
def build_model(config: T5Config | DecoderConfig = gin.REQUIRED, seed: int = 0) -> Model:
    """Instantiate the network for ``config`` (bound in gin as ``build_model.config``)."""
    rngs = nnx.Rngs(params=seed)
    if isinstance(config, T5Config):
        return EncoderDecoder(config, rngs=rngs)
    if isinstance(config, DecoderConfig):
        return Decoder(config, rngs=rngs)
    raise TypeError(
        f"build_model.config must be a T5Config or DecoderConfig, got {type(config).__name__}"
    )


def is_encoder_decoder(model_or_config: object) -> bool:
    return isinstance(model_or_config, EncoderDecoder | T5Config)


__all__ = [
    "Decoder",
    "DecoderConfig",
    "EncoderDecoder",
    "Model",
    "T5Config",
    "build_model",
    "is_encoder_decoder",
]
