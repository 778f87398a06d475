"""Adapters as data: fold them into the base weights, or keep them in a small file.

Adapter files are safetensors (``safetensors`` package, the format Hugging Face PEFT uses
for adapters) with one tensor per layer: a scanned stack's ``encoder/block/.../lora_a
[layers, ...]`` is written as ``encoder/blocks/<i>/.../lora_a``, so one file loads into a
model with or without ``scan_layers``. The header's metadata records rank, alpha and the
target regexes.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from t5x_instruct.errors import UserInputError
from t5x_instruct.plugins.lora.layer import ADAPTER_NAMES

FORMAT = "t5x_instruct.lora/1"
SUFFIX = ".safetensors"

Params = dict[str, Any]


def is_adapter(path: str) -> bool:
    return path.rsplit("/", 1)[-1] in ADAPTER_NAMES


def adapter_tree(params: Mapping[str, Any]) -> Params:
    """The nested sub-dict of ``params`` holding only ``lora_a`` / ``lora_b`` leaves."""
    out: Params = {}
    for key, value in params.items():
        if isinstance(value, Mapping):
            sub = adapter_tree(value)
            if sub:
                out[key] = sub
        elif key in ADAPTER_NAMES:
            out[key] = value
    return out


def _flat(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        out.update(_flat(value, name) if isinstance(value, Mapping) else {name: value})
    return out


def _stacked_parts(path: str) -> tuple[str, str] | None:
    """``('encoder', 'attention/query/lora_a')`` for a scanned stack's path, else None."""
    parts = path.split("/")
    if "block" in parts:
        i = parts.index("block")
        return "/".join(parts[:i]), "/".join(parts[i + 1 :])
    return None


def per_layer_arrays(tree: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Flat ``{path: array}`` with scanned stacks unstacked to ``.../blocks/<i>/...``."""
    out: dict[str, np.ndarray] = {}
    for path, value in _flat(tree).items():
        value = np.asarray(value)
        stacked = _stacked_parts(path)
        if stacked is None:
            out[path] = value
        else:
            prefix, rest = stacked
            for i, layer in enumerate(value):
                out[f"{prefix}/blocks/{i}/{rest}"] = layer
    return out


def save_adapters(path: str | epath.Path, tree: Mapping[str, Any], metadata: dict) -> None:
    """Write the adapter leaves of ``tree`` (host arrays) to a safetensors file at ``path``."""
    from safetensors.numpy import save

    arrays = {k: np.ascontiguousarray(v, np.float32) for k, v in per_layer_arrays(tree).items()}
    header = {"format": FORMAT, **{k: json.dumps(v) for k, v in metadata.items()}}
    path = epath.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp"
    tmp.write_bytes(save(arrays, metadata=header))
    # Readers never see half a file; `replace` because a run killed after this export but
    # before its checkpoint committed resumes from an older step and exports this step again.
    tmp.replace(path)


def read_adapters(path: str | epath.Path, setting: str) -> tuple[dict[str, np.ndarray], dict]:
    """``({per-layer path: array}, metadata)`` from a file written by :func:`save_adapters`."""
    from safetensors.numpy import load

    path = epath.Path(path)
    if not path.exists():
        raise UserInputError(f"{setting}={str(path)!r}: no such adapter file.")
    data = path.read_bytes()
    try:
        arrays = load(data)
        (size,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + size]).get("__metadata__", {})
    except Exception as err:  # safetensors raises its own error types
        raise UserInputError(
            f"{setting}={str(path)!r} is not a safetensors adapter file ({err})."
        ) from err
    if header.get("format") != FORMAT:
        raise UserInputError(
            f"{setting}={str(path)!r} was not written by the LoRA plug-in (format "
            f"{header.get('format')!r}, expected {FORMAT!r})."
        )
    metadata = {k: json.loads(v) for k, v in header.items() if k != "format"}
    return arrays, metadata


def file_keys(module_path: str, name: str, num_layers: int | None) -> list[str]:
    """The per-layer file keys of adapter ``name`` of one wrapped layer.

    ``num_layers`` is the leading size of a scanned kernel (None for a per-layer one).
    """
    stacked = _stacked_parts(f"{module_path}/{name}")
    if stacked is None:
        return [f"{module_path}/{name}"]
    prefix, rest = stacked
    return [f"{prefix}/blocks/{i}/{rest}" for i in range(num_layers or 0)]


def layer_arrays(
    arrays: Mapping[str, np.ndarray], module_path: str, num_layers: int | None
) -> dict[str, np.ndarray] | None:
    """``lora_a`` / ``lora_b`` of one wrapped layer (stacked when scanned), None if absent."""
    out = {}
    for name in ADAPTER_NAMES:
        keys = file_keys(module_path, name, num_layers)
        if not all(k in arrays for k in keys):
            return None
        values = [arrays[k] for k in keys]
        out[name] = values[0] if num_layers is None else np.stack(values)
    return out


# ----------------------------------------------------------------------------- merge


def merged_kernel(kernel: Any, a: Any, b: Any, scale: float) -> jax.Array:
    """``W + scale * A @ B`` contracting the rank axis (per layer for stacked kernels)."""
    stacked = a.ndim + b.ndim - 2 == kernel.ndim + 1
    a2 = jnp.asarray(a, jnp.float32)
    b2 = jnp.asarray(b, jnp.float32)
    if stacked:
        delta = jnp.einsum("lir,lro->lio", _flat_in(a2, 1), _flat_out(b2, 1), precision="highest")
    else:
        delta = jnp.einsum("ir,ro->io", _flat_in(a2, 0), _flat_out(b2, 0), precision="highest")
    delta = delta.reshape(kernel.shape)
    return (jnp.asarray(kernel, jnp.float32) + scale * delta).astype(kernel.dtype)


def _flat_in(a: jax.Array, lead: int) -> jax.Array:
    return a.reshape((*a.shape[:lead], -1, a.shape[-1]))


def _flat_out(b: jax.Array, lead: int) -> jax.Array:
    return b.reshape((*b.shape[: lead + 1], -1))


def merge_adapters(
    params: Mapping[str, Any],
    scale: float,
    owns: Callable[[str], bool] | None = None,
    prefix: str = "",
) -> Params:
    """Params of the un-adapted model: every adapted kernel becomes ``W + scale * A @ B``.

    ``scale`` is ``alpha / rank`` (``LoRA.scale``); ``owns`` (a path predicate) limits the
    merge to one plug-in's adapters. Works on host or sharded device arrays; the result
    loads into the model built without that plug-in.
    """
    out: Params = {}
    for key, value in params.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if not isinstance(value, Mapping):
            out[key] = value
        elif all(n in value for n in ("kernel", *ADAPTER_NAMES)) and (
            owns is None or owns(f"{name}/{ADAPTER_NAMES[0]}")
        ):
            merged = {k: v for k, v in value.items() if k not in ADAPTER_NAMES}
            merged["kernel"] = merged_kernel(
                value["kernel"], value["lora_a"], value["lora_b"], scale
            )
            out[key] = merged
        else:
            out[key] = merge_adapters(value, scale, owns, name)
    return out
