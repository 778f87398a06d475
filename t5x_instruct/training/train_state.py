"""Parameters as plain nested dicts, and the state a training run checkpoints.

Models are NNX modules, but what travels through ``jit``, optax and orbax is a pure dict of
arrays: stable checkpoint keys, no framework objects inside optimizer state. ``ModelSpec``
keeps the graph definition and the abstract (shape-only) state to rebuild a module.

Only *trainable* parameters are differentiated and carry optimizer state
(:func:`split_params`); frozen ones (a plug-in's frozen base model) pass through the step
unchanged. ``TrainState.aux`` holds plug-ins' auxiliary state, keyed by plug-in name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct
from jax.sharding import Mesh, NamedSharding

from t5x_instruct import partitioning

Params = dict[str, Any]


@struct.dataclass
class TrainState:
    step: jax.Array
    params: Params
    opt_state: Any  # optimizer state of the trainable parameters only
    aux: dict[str, Any] = struct.field(default_factory=dict)


IsTrainable = Callable[[str], bool]


def _all_trainable(path: str) -> bool:
    del path
    return True


def split_params(params: Params, is_trainable: IsTrainable | None) -> tuple[Params, Params]:
    """``(trainable, frozen)`` nested dicts with the same keys as ``params``, pruned.

    Paths are ``'/'``-joined keys (``decoder/layers/blocks/0/mlp/wi_0/kernel``).
    """
    is_trainable = is_trainable or _all_trainable

    def split(tree: Mapping[Any, Any], prefix: str) -> tuple[dict, dict]:
        train, frozen = {}, {}
        for key, value in tree.items():
            name = f"{prefix}/{key}" if prefix else str(key)
            if isinstance(value, Mapping):
                t, f = split(value, name)
                if t:
                    train[key] = t
                if f:
                    frozen[key] = f
            elif is_trainable(name):
                train[key] = value
            else:
                frozen[key] = value
        return train, frozen

    return split(params, "")


def merge_params(trainable: Params, frozen: Params) -> Params:
    """Inverse of :func:`split_params`."""
    out = dict(frozen)
    for key, value in trainable.items():
        if key in out and isinstance(value, Mapping):
            out[key] = merge_params(value, out[key])
        else:
            out[key] = value
    return out


def _is_variable(x: Any) -> bool:
    return isinstance(x, nnx.Variable)


@dataclasses.dataclass
class ModelSpec:
    """Everything static about a model: how to rebuild it from a params dict, how to shard it."""

    graphdef: Any
    abstract_state: Any  # nnx.State of Variables holding ShapeDtypeStructs
    build: Callable[[], nnx.Module]

    @classmethod
    def create(cls, build: Callable[[], nnx.Module]) -> ModelSpec:
        graphdef, abstract_state = nnx.split(nnx.eval_shape(build))
        return cls(graphdef=graphdef, abstract_state=abstract_state, build=build)

    @property
    def config(self) -> Any:
        return self.module(self.abstract_params()).cfg

    def abstract_params(self) -> Params:
        return nnx.to_pure_dict(self.abstract_state)

    def logical_axes(self) -> Params:
        axes = jax.tree.map(
            partitioning.param_logical_axes, self.abstract_state, is_leaf=_is_variable
        )
        return nnx.to_pure_dict(axes)

    def param_shardings(self, mesh: Mesh, rules: partitioning.AxisRules) -> Params:
        return nnx.to_pure_dict(partitioning.state_shardings(self.abstract_state, mesh, rules))

    def module(self, params: Params) -> nnx.Module:
        """A module whose parameters are ``params`` (works on tracers inside ``jit``)."""
        state = jax.tree.map(lambda v: v, self.abstract_state, is_leaf=_is_variable)
        nnx.replace_by_pure_dict(state, params)
        return nnx.merge(self.graphdef, state)

    def init_params(self, mesh: Mesh, rules: partitioning.AxisRules) -> Params:
        """Initialise directly into the sharded layout (no full copy on any one device)."""
        shardings = self.param_shardings(mesh, rules)
        init = jax.jit(
            lambda: nnx.to_pure_dict(nnx.split(self.build())[1]), out_shardings=shardings
        )
        return init()

    def num_params(self) -> int:
        return sum(int(x.size) for x in jax.tree.leaves(self.abstract_params()))


def init_train_state(
    params: Params,
    optimizer: optax.GradientTransformation,
    is_trainable: IsTrainable | None = None,
    aux: dict[str, Any] | None = None,
) -> TrainState:
    trainable, _ = split_params(params, is_trainable)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=optimizer.init(trainable),
        aux=dict(aux or {}),
    )


def train_state_shardings(
    spec: ModelSpec,
    optimizer: optax.GradientTransformation,
    mesh: Mesh,
    rules: partitioning.AxisRules,
    is_trainable: IsTrainable | None = None,
    aux_shardings: dict[str, Any] | None = None,
) -> TrainState:
    """Shardings for every leaf of the train state.

    Optimizer slots shaped like a parameter inherit its sharding; factored Adafactor rows /
    columns and scalars are replicated (they are tiny).
    """
    param_shardings = spec.param_shardings(mesh, rules)
    abstract_params = spec.abstract_params()
    abstract_opt = jax.eval_shape(optimizer.init, split_params(abstract_params, is_trainable)[0])
    replicated = NamedSharding(mesh, jax.sharding.PartitionSpec())
    by_shape: dict[tuple, list[NamedSharding]] = {}
    for leaf, sharding in zip(jax.tree.leaves(abstract_params), jax.tree.leaves(param_shardings)):
        by_shape.setdefault(tuple(leaf.shape), []).append(sharding)

    def opt_sharding(path: Any, leaf: Any) -> NamedSharding:
        # Slots are trees mirroring params: match by key path suffix first, shape second.
        match = _lookup_param_by_path(path, param_shardings, abstract_params, leaf.shape)
        if match is not None:
            return match
        candidates = by_shape.get(tuple(leaf.shape), [])
        return candidates[0] if len(set(candidates)) == 1 else replicated

    opt_shardings = jax.tree_util.tree_map_with_path(opt_sharding, abstract_opt)
    return TrainState(
        step=replicated,
        params=param_shardings,
        opt_state=opt_shardings,
        aux=dict(aux_shardings or {}),
    )


def _lookup_param_by_path(
    path: tuple, shardings: Params, abstract: Params, shape: tuple
) -> NamedSharding | None:
    keys = [getattr(k, "key", getattr(k, "idx", None)) for k in path]
    for start in range(len(keys)):
        node_s: Any = shardings
        node_a: Any = abstract
        ok = True
        for key in keys[start:]:
            if isinstance(node_s, dict) and key in node_s:
                node_s, node_a = node_s[key], node_a[key]
            else:
                ok = False
                break
        if ok and isinstance(node_s, NamedSharding) and tuple(node_a.shape) == tuple(shape):
            return node_s
    return None
