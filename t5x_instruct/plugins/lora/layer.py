"""The LoRA projection and the module surgery that puts it in place of ``DenseGeneral``.

``y = x @ W + (alpha / r) * (dropout(x) @ A) @ B`` with ``A [in..., r]``, ``B [r, out...]``.
The wrapper keeps the base kernel as its own ``kernel`` attribute, so its parameter path
(``encoder/blocks/0/attention/query/kernel``) and a base checkpoint's layout do not change;
``lora_a`` / ``lora_b`` sit beside it. A and B take the base kernel's logical axis names
(``None`` on the rank axis), so every sharding layout splits them like the kernel; under
``scan_layers`` they carry the stacked kernel's leading ``layers`` axis too, and the scan
slices them per layer like every other parameter of the block.
"""

from __future__ import annotations

import zlib
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from t5x_instruct.layers.linear import DenseGeneral
from t5x_instruct.layers.params import dropout, fan_in_init, logical_param
from t5x_instruct.layers.stack import block_dropout_rng
from t5x_instruct.partitioning import LOGICAL_AXES_KEY, param_logical_axes

ADAPTER_NAMES = ("lora_a", "lora_b")


class LoRADenseGeneral(DenseGeneral):
    """A ``DenseGeneral`` plus a trainable low-rank update of its kernel.

    Built from an existing layer (its kernel Variable is taken over, not copied). ``B``
    starts at zero, so a fresh wrapper computes exactly what the base layer computed.
    """

    def __init__(
        self,
        base: DenseGeneral,
        *,
        rank: int,
        scale: float,
        dropout_rate: float,
        salt: int,
        rngs: nnx.Rngs,
        initial: dict[str, Any] | None = None,
    ) -> None:
        for key, value in vars(base).items():  # every attribute of the base layer, kernel too
            if not key.startswith("_"):
                setattr(self, key, value)
        self.rank = rank
        self.scale = float(scale)
        self.dropout_rate = float(dropout_rate)
        self.salt = salt  # tells this layer's dropout mask apart from its block siblings'
        shapes = adapter_shapes(base, rank)
        axes = adapter_axes(base)
        n_lead = len(shapes["lora_a"]) - len(self.in_features) - 1
        if initial is None:
            fan_in_axes = tuple(range(n_lead, n_lead + len(self.in_features)))
            self.lora_a = logical_param(
                rngs, fan_in_init(1.0, fan_in_axes), shapes["lora_a"], axes["lora_a"]
            )
            self.lora_b = logical_param(rngs, _zeros, shapes["lora_b"], axes["lora_b"])
        else:
            for name in ADAPTER_NAMES:
                value = jnp.asarray(initial[name], jnp.float32)
                setattr(self, name, nnx.Param(value, **{LOGICAL_AXES_KEY: axes[name]}))

    def __call__(self, x: jax.Array) -> jax.Array:
        y = super().__call__(x)
        n_in = len(self.in_features)
        h = x
        key = block_dropout_rng() if self.dropout_rate else None
        if key is not None:  # training forward pass inside a layer stack
            key = jax.random.fold_in(key, self.salt)
            h = dropout(h, self.dropout_rate, key, deterministic=False)
        a = self.lora_a.get_value().astype(self.dtype)
        b = self.lora_b.get_value().astype(self.dtype)
        contract = tuple(range(x.ndim - n_in, x.ndim))
        h = jax.lax.dot_general(h.astype(self.dtype), a, ((contract, tuple(range(n_in))), ((), ())))
        delta = jax.lax.dot_general(h, b, (((h.ndim - 1,), (0,)), ((), ())))
        return y + (self.scale * delta).astype(y.dtype)


def _zeros(key: jax.Array, shape: tuple[int, ...], dtype: jnp.dtype) -> jax.Array:
    del key
    return jnp.zeros(shape, dtype)


def _leading_dims(layer: DenseGeneral) -> int:
    """1 for a kernel stacked over layers (``scan_layers``), else 0."""
    ndim = len(layer.kernel.get_value().shape)
    return ndim - len(layer.in_features) - len(layer.out_features)


def stacked_layers(layer: DenseGeneral) -> int | None:
    """The leading ``layers`` size of a scanned kernel, None for a per-layer one."""
    return layer.kernel.get_value().shape[0] if _leading_dims(layer) else None


def adapter_shapes(layer: DenseGeneral, rank: int) -> dict[str, tuple[int, ...]]:
    lead = tuple(layer.kernel.get_value().shape[: _leading_dims(layer)])
    return {
        "lora_a": (*lead, *layer.in_features, rank),
        "lora_b": (*lead, rank, *layer.out_features),
    }


def adapter_axes(layer: DenseGeneral) -> dict[str, tuple[str | None, ...]]:
    """A: ``(*lead, *in_axes, None)``, B: ``(*lead, None, *out_axes)`` from the kernel's."""
    axes = param_logical_axes(layer.kernel)
    n_lead, n_in = _leading_dims(layer), len(layer.in_features)
    lead, ins, outs = axes[:n_lead], axes[n_lead : n_lead + n_in], axes[n_lead + n_in :]
    return {"lora_a": (*lead, *ins, None), "lora_b": (*lead, None, *outs)}


# ----------------------------------------------------------------------------- surgery

Path = tuple[Any, ...]


def dense_layers(model: nnx.Module) -> dict[str, tuple[Path, DenseGeneral]]:
    """Every ``DenseGeneral`` of ``model`` keyed by its kernel's ``'/'``-joined path."""
    out = {}
    for path, node in nnx.iter_graph(model):
        if isinstance(node, DenseGeneral):
            out["/".join(map(str, path)) + "/kernel"] = (tuple(path), node)
    return out


def replace_module(model: nnx.Module, path: Path, new: nnx.Module) -> None:
    """Put ``new`` where ``path`` leads (attributes, ``nnx.List`` indices, ``nnx.Dict`` keys)."""
    parent: Any = model
    for key in path[:-1]:
        parent = _child(parent, key)
    last = path[-1]
    if isinstance(parent, nnx.List | nnx.Dict) or isinstance(last, int):
        parent[last] = new
    else:
        setattr(parent, last, new)


def _child(node: Any, key: Any) -> Any:
    if isinstance(node, nnx.List | nnx.Dict) or isinstance(key, int):
        return node[key]
    return getattr(node, key)


def within_block(kernel_path: str) -> str:
    """The part of a path below its layer-stack block (``attention/query/kernel``)."""
    parts = kernel_path.split("/")
    for i, part in enumerate(parts):
        if part == "block":
            return "/".join(parts[i + 1 :])
        if part == "blocks" and i + 1 < len(parts):
            return "/".join(parts[i + 2 :])
    return kernel_path


def dropout_salt(kernel_path: str) -> int:
    return zlib.crc32(within_block(kernel_path).encode()) & 0x7FFFFFFF


def example_paths(paths: list[str], limit: int = 24) -> list[str]:
    """The paths of a stack's first layer and those outside stacks: what a user needs to see."""
    seen: list[str] = []
    for path in paths:
        parts = path.split("/")
        in_first_layer = all(
            not (parts[i] == "blocks" and i + 1 < len(parts) and parts[i + 1] != "0")
            for i in range(len(parts))
        )
        if in_first_layer and path not in seen:
            seen.append(path)
    return seen[:limit]
