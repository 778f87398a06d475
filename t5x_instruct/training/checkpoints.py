"""Orbax checkpoints: async periodic saves, resume from MODEL_DIR, warm starts.

Orbax writes each step into a temporary folder and renames it when complete, so a crash or
SIGKILL mid-save leaves the previous checkpoint intact. Next to the train state we save the
data iterator position (JSON) and the parameter shapes, to refuse a MODEL_DIR that holds a
different model with a readable message instead of a shape error deep inside orbax.

The data iterators' own checkpoints (O(1) resume, written through TensorFlow by the data
layer) live next to them in ``MODEL_DIR/data_state/<step>/``: orbax's renamed step folders
cannot take foreign files. They are written before orbax's save of the same step and checked
against the orbax data state on restore, so a crash in between only leaves an unused folder;
folders of steps orbax no longer keeps are deleted at the next save.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from t5x_instruct.errors import UserInputError
from t5x_instruct.runtime import paths
from t5x_instruct.training.train_state import Params, TrainState

log = logging.getLogger(__name__)

AssignmentMap = Sequence[tuple[str, str | None]]


class CheckpointShapeError(UserInputError):
    """MODEL_DIR / INITIAL_CHECKPOINT_PATH holds parameters of another model shape."""


def _flat(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(_flat(value, name))
        else:
            out[name] = value
    return out


def param_shapes(params: Params) -> dict[str, list[int]]:
    return {name: list(np.shape(x)) for name, x in _flat(params).items()}


class Checkpointer:
    """Saves/restores ``TrainState`` + data-iterator state under ``{model_dir}/checkpoints``.

    ``model_dir`` is local or ``gs://`` (:func:`t5x_instruct.runtime.paths.resolve`). Every
    process of a multi-host run constructs one and calls :meth:`save` at the same steps:
    each writes its own array shards, process 0 the JSON items.
    """

    def __init__(self, model_dir: str, *, keep: int = 3, async_save: bool = True) -> None:
        self.directory = paths.resolve(model_dir, what="MODEL_DIR", for_checkpoints=True) / (
            "checkpoints"
        )
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            enable_async_checkpointing=async_save,
            create=True,
            cleanup_tmp_directories=True,
        )
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "data", "shapes")
        )
        self.data_state_root = self.directory.parent / "data_state"

    def data_state_dir(self, step: int) -> str:
        """Where the data iterators' checkpoints of ``step`` go (a plain string for TF)."""
        return str(self.data_state_root / str(step))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(
        self,
        state: TrainState,
        data_state: dict[str, Any],
        *,
        force: bool = False,
        write_data_state: Callable[[str, int], None] | None = None,
    ) -> bool:
        """Save ``step`` unless it exists; ``write_data_state(folder, step)`` first writes
        this process's data iterator checkpoints (synchronously)."""
        step = int(jax.device_get(state.step))
        if step in self.manager.all_steps():
            return False
        if write_data_state is not None:
            write_data_state(self.data_state_dir(step), step)
        saved = self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=ocp.args.JsonSave(data_state),
                shapes=ocp.args.JsonSave(param_shapes(state.params)),
            ),
            force=force,
        )
        self._delete_stale_data_states(below=step)
        return saved

    def _delete_stale_data_states(self, below: int) -> None:
        """Process 0 deletes data-state folders of steps before ``below`` that orbax does
        not keep (later ones may be being written by other processes)."""
        if jax.process_index() != 0:
            return
        kept = set(self.manager.all_steps())
        for name in paths.listdir(self.data_state_root):
            if name.isdigit() and int(name) < below and int(name) not in kept:
                paths.remove_tree(self.data_state_root / name)

    def missing_params(self, step: int, params: Params) -> list[str]:
        """Names of ``params`` (abstract is fine) that checkpoint ``step`` does not hold."""
        saved = self.manager.restore(step, args=ocp.args.Composite(shapes=ocp.args.JsonRestore()))
        return sorted(set(param_shapes(params)) - set(saved["shapes"]))

    def check_shapes(self, step: int, params: Params) -> None:
        """Raise :class:`CheckpointShapeError` listing parameters whose shapes differ."""
        saved = self.manager.restore(step, args=ocp.args.Composite(shapes=ocp.args.JsonRestore()))
        mismatch = shape_mismatches(saved["shapes"], param_shapes(params))
        if mismatch:
            raise CheckpointShapeError(
                f"{self.directory} step {step} holds a different model: "
                + "; ".join(mismatch[:8])
                + (" ..." if len(mismatch) > 8 else "")
                + ". Use a fresh MODEL_DIR, or load it as INITIAL_CHECKPOINT_PATH with an "
                "assignment map."
            )

    def restore(self, step: int, abstract_state: TrainState) -> tuple[TrainState, dict[str, Any]]:
        """Restore into the shardings carried by ``abstract_state`` (ShapeDtypeStructs)."""
        self.check_shapes(step, abstract_state.params)
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                data=ocp.args.JsonRestore(),
            ),
        )
        return restored["state"], dict(restored["data"])

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        latest = self.manager.latest_step()
        if latest is not None:
            self._delete_stale_data_states(below=latest)
        self.manager.close()


def shape_mismatches(
    saved: Mapping[str, Sequence[int]], expected: Mapping[str, Sequence[int]]
) -> list[str]:
    problems = []
    for name in sorted(set(saved) | set(expected)):
        if name not in saved:
            problems.append(f"{name} missing from checkpoint")
        elif name not in expected:
            problems.append(f"{name} not in model")
        elif list(saved[name]) != list(expected[name]):
            problems.append(
                f"{name}: checkpoint {list(saved[name])} vs model {list(expected[name])}"
            )
    return problems


def load_params_for_warm_start(
    path: str,
    abstract_params: Params,
    init_params: Params,
    *,
    assignment_map: AssignmentMap = (),
    fallback_to_scratch: bool = False,
) -> Params:
    """Parameters from a t5x_instruct checkpoint at ``path`` (a step folder or a MODEL_DIR).

    Each model parameter name (``encoder/blocks/0/mlp/wi_0/kernel``) goes through
    ``assignment_map``: the first ``(regex, replacement)`` whose regex fully matches renames
    it (``re.sub`` groups allowed); a ``None`` replacement skips loading it. Parameters not
    found in the checkpoint keep their fresh initialisation only if ``fallback_to_scratch``.
    """
    step_dir = _resolve_step_dir(path)
    checkpointer = ocp.StandardCheckpointer()
    saved_tree = checkpointer.restore(step_dir / "state")
    saved = _flat(saved_tree["params"])
    model_flat = _flat(abstract_params)
    init_flat = _flat(init_params)
    loaded: dict[str, Any] = {}
    missing = []
    for name, abstract in model_flat.items():
        source = name
        skip = False
        for pattern, replacement in assignment_map:
            if re.fullmatch(pattern, name):
                if replacement is None:
                    skip = True
                else:
                    source = re.sub(pattern, replacement, name)
                break
        if skip or source not in saved:
            if not skip:
                missing.append(name)
            loaded[name] = init_flat[name]
            continue
        value = np.asarray(saved[source])
        if tuple(value.shape) != tuple(abstract.shape):
            raise CheckpointShapeError(
                f"{path}: parameter {source} has shape {list(value.shape)} but the model's "
                f"{name} needs {list(abstract.shape)}."
            )
        sharding = getattr(init_flat[name], "sharding", None)
        loaded[name] = jax.device_put(value.astype(abstract.dtype), sharding)
    if missing and not fallback_to_scratch:
        raise KeyError(
            f"{path} lacks {len(missing)} model parameters (e.g. {missing[:3]}); map them with "
            "an assignment map or set fallback_to_scratch=True to initialise them from scratch."
        )
    if missing:
        log.warning("Initialised %d parameters from scratch: %s", len(missing), missing[:5])
    return _unflatten_like(abstract_params, loaded)


def _resolve_step_dir(path: str) -> paths.epath.Path:
    root = paths.resolve(path, what="INITIAL_CHECKPOINT_PATH", for_checkpoints=True)
    if (root / "state").is_dir():
        return root
    for base in (root / "checkpoints", root):
        steps = sorted(int(d) for d in paths.listdir(base) if d.isdigit())
        if steps:
            return base / str(steps[-1])
    raise FileNotFoundError(f"INITIAL_CHECKPOINT_PATH={path!r} holds no t5x_instruct checkpoint.")


def _unflatten_like(
    template: Mapping[str, Any], flat: Mapping[str, Any], prefix: str = ""
) -> Params:
    out: dict[Any, Any] = {}
    for key, value in template.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        out[key] = _unflatten_like(value, flat, name) if isinstance(value, Mapping) else flat[name]
    return out
