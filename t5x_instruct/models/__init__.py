"""Model families and the gin entry point that builds one (see :mod:`registry`)."""

from __future__ import annotations

from t5x_instruct.models.decoder import Decoder, DecoderConfig
from t5x_instruct.models.encoder_decoder import EncoderDecoder, T5Config
from t5x_instruct.models.registry import (
    ModelFamily,
    build_model,
    is_encoder_decoder,
    model_family,
    register_model_family,
)

Model = EncoderDecoder | Decoder

__all__ = [
    "Decoder",
    "DecoderConfig",
    "EncoderDecoder",
    "Model",
    "ModelFamily",
    "T5Config",
    "build_model",
    "is_encoder_decoder",
    "model_family",
    "register_model_family",
]
