"""Parameters-only checkpoints, and restoring only the parameters of any of our checkpoints.

A params-only checkpoint uses a training run's layout, so everything that reads checkpoints
finds it (``INITIAL_CHECKPOINT_PATH``, eval, infer, ``Checkpointer.latest_step``)::

    MODEL_DIR/checkpoints/<step>/state    orbax tree {'step': int32, 'params': {...}}
    MODEL_DIR/checkpoints/<step>/shapes   JSON {parameter name: shape}

A training checkpoint's ``state`` also holds ``opt_state``. :func:`restore_params` reads only
the ``params`` subtree, straight into the requested shardings: every device reads its own
slice from disk, so no whole array is ever gathered on one device or host.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import Mesh

from t5x_instruct import partitioning
from t5x_instruct.errors import UserInputError
from t5x_instruct.runtime import paths
from t5x_instruct.training.checkpoints import CheckpointShapeError, param_shapes
from t5x_instruct.training.train_state import ModelSpec, Params

log = logging.getLogger(__name__)

_CHECKPOINTS = "checkpoints"
_STATE = "state"


class CheckpointNotFoundError(UserInputError, FileNotFoundError):
    """The path holds no t5x_instruct checkpoint (or not the requested step)."""


# ------------------------------------------------------------------------------- locating


def checkpoint_steps(path: str) -> list[int]:
    """Steps saved under ``path`` (a MODEL_DIR or its ``checkpoints`` folder), ascending.

    A step folder counts only once complete (orbax renames it into place when done, so a
    half-written save never shows up here).
    """
    base = _checkpoints_dir(path)
    if base is None:
        return []
    return sorted(int(d) for d in paths.listdir(base) if d.isdigit() and (base / d).is_dir())


def resolve_checkpoint(path: str, step: int | None = None) -> tuple[str, int]:
    """``(step_dir, step)`` for ``path``: a step folder, a ``checkpoints`` folder or a MODEL_DIR.

    Without ``step`` a MODEL_DIR resolves to its latest checkpoint.

    Raises:
      CheckpointNotFoundError: naming the path (and the steps it does hold).
    """
    root = _resolve(path)
    path = os.fspath(root)
    if (root / _STATE).is_dir():
        found = int(root.name) if root.name.isdigit() else 0
        if step is not None and step != found:
            raise CheckpointNotFoundError(f"{path} is the checkpoint of step {found}, not {step}.")
        return path, found
    steps = checkpoint_steps(path)
    if not steps:
        raise CheckpointNotFoundError(
            f"{path} holds no t5x_instruct checkpoint (expected {path}/checkpoints/<step>/state); "
            "convert other formats with tools/convert_checkpoint.py."
        )
    chosen = steps[-1] if step is None else step
    if chosen not in steps:
        raise CheckpointNotFoundError(f"{path} has no checkpoint at step {step}; it has {steps}.")
    base = _checkpoints_dir(path)
    assert base is not None
    return os.fspath(base / str(chosen)), chosen


def _resolve(path: str | os.PathLike[str]) -> paths.epath.Path:
    return paths.resolve(path, what="checkpoint path", for_checkpoints=True)


def _checkpoints_dir(path: str | os.PathLike[str]) -> paths.epath.Path | None:
    root = _resolve(path)
    for base in (root / _CHECKPOINTS, root):
        if any(d.isdigit() for d in paths.listdir(base)):
            return base
    return None


# --------------------------------------------------------------------------------- saving


def save_params(model_dir: str, params: Params, *, step: int = 0) -> str:
    """Write ``params`` as a params-only checkpoint at ``model_dir`` and return its step folder.

    ``params`` may be sharded ``jax.Array``s (each host writes its own shards) or host arrays.
    Refuses to overwrite an existing step: conversions never clobber a training run.
    """
    root = _resolve(model_dir)
    model_dir = os.fspath(root)
    if step in checkpoint_steps(model_dir):
        raise UserInputError(
            f"{model_dir} already has a checkpoint at step {step}; choose another output "
            "folder or step."
        )
    manager = ocp.CheckpointManager(
        root / _CHECKPOINTS,
        options=ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=False),
        item_names=(_STATE, "shapes"),
    )
    try:
        manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave({"step": np.asarray(step, np.int32), "params": params}),
                shapes=ocp.args.JsonSave(param_shapes(params)),
            ),
            force=True,
        )
        manager.wait_until_finished()
    finally:
        manager.close()
    return os.fspath(root / _CHECKPOINTS / str(step))


# ------------------------------------------------------------------------------ restoring


def abstract_params(spec: ModelSpec, mesh: Mesh, rules: partitioning.AxisRules) -> Params:
    """``ShapeDtypeStruct``s of the model's parameters, each carrying its ``NamedSharding``."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        spec.abstract_params(),
        spec.param_shardings(mesh, rules),
    )


def restore_params(path: str, target: Params, *, step: int | None = None) -> Params:
    """Only the parameters of the checkpoint at ``path``, laid out as ``target`` says.

    Args:
      path: a MODEL_DIR, its ``checkpoints`` folder, or one step folder. Training checkpoints
        and params-only ones (:func:`save_params`) both work; the optimizer state is never read.
      target: the model's parameter tree of ``jax.ShapeDtypeStruct``s with a ``sharding`` each
        (:func:`abstract_params`). Values are cast to its dtypes.
      step: which step of a MODEL_DIR (default: the latest).

    Raises:
      CheckpointNotFoundError: no checkpoint at ``path`` / ``step``.
      CheckpointShapeError: the checkpoint holds another architecture; the message names the
        parameters that are missing, unexpected or of another shape.
    """
    step_dir, found_step = resolve_checkpoint(path, step)
    state_dir = paths.join(step_dir, _STATE)
    tree = read_tree_metadata(state_dir)
    if "params" not in tree:
        raise CheckpointShapeError(f"{state_dir} has no 'params' tree (keys: {sorted(tree)}).")
    saved = {name: list(m.shape) for name, m in flat_tree(tree["params"]).items()}
    wanted = param_shapes(target)
    missing = [n for n in wanted if n not in saved]
    unexpected = [n for n in saved if n not in wanted]
    wrong = [
        f"{n}: checkpoint {saved[n]} vs model {wanted[n]}"
        for n in wanted
        if n in saved and saved[n] != wanted[n]
    ]
    if missing or unexpected or wrong:
        raise CheckpointShapeError(
            f"{step_dir} holds a different model: "
            + mismatch_summary(missing, unexpected, wrong)
            + ". Check the model gin file (or --gin. overrides) against the checkpoint."
        )
    restore_args = jax.tree.map(
        lambda t: ocp.ArrayRestoreArgs(sharding=t.sharding, global_shape=t.shape, dtype=t.dtype),
        target,
    )
    restored = ocp.PyTreeCheckpointer().restore(
        state_dir,
        args=ocp.args.PyTreeRestore(
            item={"params": target},
            restore_args={"params": restore_args},
            partial_restore=True,
        ),
    )
    log.info("Restored %d parameters from %s (step %d)", len(saved), step_dir, found_step)
    return restored["params"]


def restore_model_params(
    path: str,
    spec: ModelSpec,
    mesh: Mesh,
    rules: partitioning.AxisRules,
    *,
    step: int | None = None,
) -> Params:
    """:func:`restore_params` into the shardings ``spec`` gets under ``mesh`` and ``rules``."""
    return restore_params(path, abstract_params(spec, mesh, rules), step=step)


def is_params_only(path: str, step: int | None = None) -> bool:
    """Whether the checkpoint holds parameters without optimizer state (cannot resume)."""
    step_dir, _ = resolve_checkpoint(path, step)
    tree = read_tree_metadata(paths.join(step_dir, _STATE))
    return "opt_state" not in tree


def read_tree_metadata(state_dir: str | os.PathLike[str]) -> Mapping[str, Any]:
    """The saved tree with array metadata (shape, dtype) at its leaves, read from disk only."""
    state_dir = _resolve(state_dir)
    if not state_dir.is_dir():
        raise CheckpointNotFoundError(f"{state_dir} does not exist.")
    logging.getLogger("absl").setLevel(max(logging.getLogger("absl").level, logging.ERROR))
    metadata = ocp.PyTreeCheckpointer().metadata(state_dir)
    tree = getattr(getattr(metadata, "item_metadata", metadata), "tree", metadata)
    return _as_dict(tree)


def _as_dict(node: Any) -> Any:
    """Orbax metadata trees: nested Mappings (and lists for optax tuples) -> plain dicts."""
    if isinstance(node, Mapping):
        return {str(k): _as_dict(v) for k, v in node.items()}
    if isinstance(node, list | tuple):
        return {str(i): _as_dict(v) for i, v in enumerate(node)}
    return node


def flat_tree(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flat_tree(value, name))
        else:
            out[name] = value
    return out


def unflatten_like(
    template: Mapping[Any, Any], flat: Mapping[str, Any], prefix: str = ""
) -> Params:
    """Rebuild ``template``'s nesting (with its key types, e.g. int layer indices) from
    '/'-joined names, as :func:`flat_tree` writes them."""
    out: dict[Any, Any] = {}
    for key, value in template.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        out[key] = unflatten_like(value, flat, name) if isinstance(value, Mapping) else flat[name]
    return out


def mismatch_summary(
    missing: Sequence[str], unexpected: Sequence[str], wrong: Sequence[str]
) -> str:
    """One line listing (the first few of) each kind of parameter mismatch."""
    parts = []
    for label, names in (
        ("missing from the checkpoint", missing),
        ("not in the model", unexpected),
        ("other shape", wrong),
    ):
        if names:
            shown = _collapse_layers(names)
            text = ", ".join(shown[:6]) + (f" (+{len(shown) - 6} more)" if len(shown) > 6 else "")
            parts.append(f"{len(names)} {label}: {text}")
    return "; ".join(parts)


_LAYER_INDEX = re.compile(r"(layers_|blocks/|block\.|layers\.)(\d+)(?=[./])")


def _collapse_layers(names: Sequence[str]) -> list[str]:
    """Shorten per-layer repeats: ``decoder/layers_*/mlp/wo/kernel (3 layers)`` for one name
    in several layers, ``decoder/layers_2/* (14)`` for most of one layer."""
    by_pattern: dict[str, list[str]] = {}
    for name in names:
        by_pattern.setdefault(_LAYER_INDEX.sub(r"\1*", name, count=1), []).append(name)
    out: list[str] = []
    by_layer: dict[str, list[str]] = {}
    for pattern, members in by_pattern.items():
        match = _LAYER_INDEX.search(members[0])
        if len(members) > 1:
            out.append(f"{pattern} ({len(members)} layers)")
        elif match is None:
            out.append(members[0])
        else:
            by_layer.setdefault(members[0][: match.end()], []).append(members[0])
    for prefix, members in by_layer.items():
        sep = members[0][len(prefix)]  # '/' or '.', as the names write it
        out.extend([f"{prefix}{sep}* ({len(members)})"] if len(members) > 2 else members)
    return out
