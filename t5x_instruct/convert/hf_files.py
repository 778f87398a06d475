"""Hugging Face checkpoint folders -> our parameters, placed straight into their shardings.

A folder holds ``config.json`` and the weights as ``model.safetensors``, sharded safetensors
(``model.safetensors.index.json``) or ``pytorch_model.bin`` (read with torch, only then
imported). Safetensors are read lazily, one tensor at a time from the memory-mapped files.

Before anything is converted, the checkpoint's tensor names and shapes are compared with what
the model needs (:func:`hf_expected_shapes`), so a checkpoint of another architecture fails
with one error naming every parameter that differs.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from t5x_instruct import partitioning
from t5x_instruct.convert.hf import (
    decoder_config_from_hf,
    params_from_hf,
    t5_config_from_hf,
)
from t5x_instruct.convert.hf_export import SAFETENSORS_INDEX, HFTensor, hf_tensor_plan
from t5x_instruct.errors import UserInputError
from t5x_instruct.models.decoder import DecoderConfig
from t5x_instruct.models.encoder_decoder import T5Config
from t5x_instruct.training.checkpoints import CheckpointShapeError
from t5x_instruct.training.param_checkpoints import flat_tree, mismatch_summary
from t5x_instruct.training.train_state import ModelSpec, Params

_CONFIG = "config.json"
_SINGLE = "model.safetensors"
_TORCH_BIN = "pytorch_model.bin"

# Present in HF checkpoints but carrying nothing our models read (tied copies, caches).
_OPTIONAL = (
    "encoder.embed_tokens.weight",
    "decoder.embed_tokens.weight",
    "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",
    "model.rotary_emb.inv_freq",
)


class HFCheckpointError(UserInputError):
    """A folder that is not a readable Hugging Face checkpoint."""


def read_hf_config(path: str) -> dict[str, Any]:
    config_file = os.path.join(path, _CONFIG)
    if not os.path.isfile(config_file):
        raise HFCheckpointError(f"{path} has no {_CONFIG}; is it a Hugging Face model folder?")
    with open(config_file) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as exc:
            raise HFCheckpointError(f"{config_file} is not valid JSON: {exc}") from exc


def model_config_from_hf(hf: Mapping[str, Any], **overrides: Any) -> T5Config | DecoderConfig:
    """Our model config for a HF ``config.json`` dict (T5 or Llama), with ``overrides``."""
    model_type = hf.get("model_type")
    try:
        if model_type == "t5":
            return t5_config_from_hf(hf, **overrides)
        if model_type == "llama":
            return decoder_config_from_hf(hf, **overrides)
    except (KeyError, ValueError, NotImplementedError) as exc:
        raise HFCheckpointError(f"Unsupported HF {model_type} config: {exc}") from exc
    raise HFCheckpointError(
        f"HF model_type={model_type!r} is not supported; expected 't5' (T5 v1.1 / Flan-T5) "
        "or 'llama'."
    )


class LazyStateDict(Mapping[str, np.ndarray]):
    """A HF folder's tensors by name; each read from disk only when asked for."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._files: dict[str, str] = {}
        index = os.path.join(path, SAFETENSORS_INDEX)
        if os.path.isfile(index):
            with open(index) as f:
                weight_map = json.load(f)["weight_map"]
            self._files = {k: os.path.join(path, v) for k, v in weight_map.items()}
        elif os.path.isfile(os.path.join(path, _SINGLE)):
            from safetensors import safe_open

            single = os.path.join(path, _SINGLE)
            with safe_open(single, framework="numpy") as f:
                self._files = dict.fromkeys(f.keys(), single)
        self._torch: dict[str, Any] | None = None
        if not self._files:
            if not os.path.isfile(os.path.join(path, _TORCH_BIN)):
                raise HFCheckpointError(
                    f"{path} has no weights ({_SINGLE}, {SAFETENSORS_INDEX} or {_TORCH_BIN})."
                )
            import torch

            self._torch = torch.load(
                os.path.join(path, _TORCH_BIN), map_location="cpu", weights_only=True, mmap=True
            )

    def __getitem__(self, name: str) -> np.ndarray:
        if self._torch is not None:
            return self._torch[name].float().numpy()
        from safetensors import safe_open

        if name not in self._files:
            raise KeyError(name)
        with safe_open(self._files[name], framework="numpy") as f:
            return f.get_tensor(name)

    def shape(self, name: str) -> tuple[int, ...]:
        if self._torch is not None:
            return tuple(self._torch[name].shape)
        from safetensors import safe_open

        with safe_open(self._files[name], framework="numpy") as f:
            return tuple(f.get_slice(name).get_shape())

    def __iter__(self) -> Iterator[str]:
        return iter(self._torch if self._torch is not None else self._files)

    def __len__(self) -> int:
        return len(self._torch if self._torch is not None else self._files)


def hf_expected_shapes(
    cfg: T5Config | DecoderConfig, model_params: Mapping[str, tuple[int, ...]]
) -> dict[str, tuple[int, ...]]:
    """HF tensor name -> shape for our model (the export layout, :mod:`hf_export`)."""
    out = {}
    for t in hf_tensor_plan(cfg):
        shape = tuple(model_params[t.source])
        out[t.hf_name] = _hf_shape(t, shape[1:] if t.layer is not None else shape)
    return out


def _hf_shape(t: HFTensor, shape: tuple[int, ...]) -> tuple[int, ...]:
    if t.kind == "transpose":
        return tuple(reversed(shape))
    if t.kind == "dense":
        return (math.prod(shape[t.num_in :]), math.prod(shape[: t.num_in]))
    return shape


def check_hf_architecture(
    state_dict: LazyStateDict, cfg: T5Config | DecoderConfig, model_params: Mapping[str, Any]
) -> None:
    """Raise one :class:`CheckpointShapeError` naming every tensor that differs."""
    expected = hf_expected_shapes(cfg, model_params)
    missing = [n for n in expected if n not in state_dict]
    unexpected = sorted(
        n
        for n in state_dict
        if n not in expected
        and n not in _OPTIONAL
        and not n.endswith("rotary_emb.inv_freq")
        and n != "lm_head.weight"  # a tied copy; hf.py checks it equals the embedding
    )
    wrong = [
        f"{n}: checkpoint {list(state_dict.shape(n))} vs model {list(shape)}"
        for n, shape in expected.items()
        if n in state_dict and state_dict.shape(n) != shape
    ]
    if missing or unexpected or wrong:
        raise CheckpointShapeError(
            f"{state_dict.path} holds a different model than configured: "
            + mismatch_summary(missing, unexpected, wrong)
            + "."
        )


def load_hf_params(path: str, spec: ModelSpec, mesh: Mesh, rules: partitioning.AxisRules) -> Params:
    """Our parameters from the HF folder ``path``, each placed directly into its sharding.

    Raises:
      HFCheckpointError: not a HF model folder.
      CheckpointShapeError: its tensors do not fit ``spec``'s model (all differences named).
    """
    state_dict = LazyStateDict(path)
    abstract = spec.abstract_params()
    flat = {name: tuple(x.shape) for name, x in flat_tree(abstract).items()}
    check_hf_architecture(state_dict, spec.config, flat)
    shardings = spec.param_shardings(mesh, rules)
    # An abstract model whose leaves carry the target shardings: the converter device_puts
    # each host array into them, so only per-device slices ever reach a device.
    model = nnx.eval_shape(spec.build)
    state = nnx.state(model, nnx.Param)
    sharded = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings
    )
    nnx.replace_by_pure_dict(state, sharded)
    nnx.update(model, state)
    try:
        params_from_hf(state_dict, model)
    except (KeyError, ValueError) as exc:
        raise CheckpointShapeError(f"{path}: {exc}") from exc
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))
