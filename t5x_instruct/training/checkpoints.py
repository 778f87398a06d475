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

Failures are reported as one line each: a save that the storage refuses (disk full, quota,
permissions), synchronous or in orbax's background thread, raises :class:`StorageError`
naming the step, the OS reason and the latest complete checkpoint, and the copies orbax,
asyncio and TensorStore would log or print of that failure are dropped. A damaged step folder
is described in a few words (:func:`describe_failure`) and set aside, never deleted
(:meth:`Checkpointer.set_aside`; the resume fallback is in ``state_init``).
"""

from __future__ import annotations

import contextlib
import gc
import inspect
import logging
import os
import re
import sys
import traceback
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NoReturn

import jax
import numpy as np
import orbax.checkpoint as ocp

from t5x_instruct.errors import StorageError, UserInputError, storage_reason
from t5x_instruct.errors import exception_chain as _chain
from t5x_instruct.errors import first_line as _first_line
from t5x_instruct.runtime import lockstep, paths
from t5x_instruct.training.train_state import Params, TrainState

log = logging.getLogger(__name__)

AssignmentMap = Sequence[tuple[str, str | None]]

ITEMS = ("state", "data", "shapes")  # the sub-folders of a training checkpoint's step folder
DAMAGED_SUFFIX = ".damaged"  # a step folder set aside: orbax lists digit-only names only


class CheckpointShapeError(UserInputError):
    """MODEL_DIR / INITIAL_CHECKPOINT_PATH holds parameters of another model shape."""


class NoIntactCheckpointError(UserInputError):
    """Every training checkpoint of MODEL_DIR is damaged: resuming would mean starting over,
    which the user decides (the message says how)."""


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
        quiet_reported_failures()
        self._pending: int | None = None  # the step whose (async) save may still be running
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
        self.wait()  # the previous save's failure is reported as that step's
        if step in self.manager.all_steps():
            return False
        if write_data_state is not None:
            write_data_state(self.data_state_dir(step), step)
        self._pending = step
        try:
            saved = self.manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state),
                    data=ocp.args.JsonSave(data_state),
                    shapes=ocp.args.JsonSave(param_shapes(state.params)),
                ),
                force=force,
            )
        except Exception as exc:
            self._raise_save_error(step, exc)
        if not saved:
            self._pending = None
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
        """Block until the pending save is on disk; :class:`StorageError` if it failed."""
        try:
            self.manager.wait_until_finished()
        except Exception as exc:
            self._raise_save_error(self._pending, exc)
        self._pending = None

    def close(self) -> None:
        self.wait()
        latest = self.manager.latest_step()
        if latest is not None:
            self._delete_stale_data_states(below=latest)
        self.manager.close()

    def _raise_save_error(self, step: int | None, exc: Exception) -> NoReturn:
        """One-line :class:`StorageError` for a storage failure; any other error unchanged."""
        reason = storage_reason(exc)
        if reason is None:
            raise exc
        self._pending = None
        try:
            complete = [s for s in ocp.utils.checkpoint_steps(self.directory) if s != step]
        except Exception:  # the listing may fail on the same broken storage
            complete = []
        latest = (
            f"the latest complete checkpoint is step {max(complete)} (rerun the same command "
            "to resume from it once there is space)"
            if complete
            else "no checkpoint was completed yet"
        )
        which = f"step {step}" if step is not None else "a checkpoint"
        raise StorageError(
            f"saving checkpoint {which} to {self.directory} failed: {reason}; {latest}."
        ) from exc

    # ------------------------------------------------------------- damaged step folders
    def step_dir(self, step: int) -> paths.epath.Path:
        return self.directory / str(step)

    def structural_problem(self, step: int) -> str | None:
        """What is missing from step's folder, in a few words (reading it finds the rest)."""
        names = paths.listdir(self.step_dir(step))
        if not names:
            return "empty folder"
        if "state" not in names:
            return "state/ missing"
        if not (self.step_dir(step) / "state" / "_METADATA").exists():
            return "state/_METADATA missing"
        return None

    def missing_items(self, step: int) -> str | None:
        """The items of a training checkpoint (not params-only) that its folder lacks."""
        names = paths.listdir(self.step_dir(step))
        missing = [f"{item}/" for item in ITEMS if item not in names]
        return f"{', '.join(missing)} missing" if missing else None

    def set_aside(self, step: int) -> paths.epath.Path:
        """Rename step's damaged folder to ``<step>.damaged`` (``.damaged-2``, ...) and return
        the new path: orbax then neither lists it nor trips over it when it saves that step
        again, and nothing is deleted. Process 0 renames; every process waits for it."""
        target = self.directory / f"{step}{DAMAGED_SUFFIX}"
        n = 1
        while target.exists():
            n += 1
            target = self.directory / f"{step}{DAMAGED_SUFFIX}-{n}"
        _sync_processes(f"t5x_instruct_set_aside_{step}_named")  # all chose the same name
        if jax.process_index() == 0:
            self.step_dir(step).rename(target)
        _sync_processes(f"t5x_instruct_set_aside_{step}_done")
        self.manager.reload()
        return target


def any_process(flag: bool) -> bool:
    """Whether ``flag`` holds on any process (every process must call this)."""
    return bool(lockstep.processes_where(flag))


def _sync_processes(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def check_writable(model_dir: str) -> None:
    """Create MODEL_DIR and write (then remove) a probe file in it, so that an unwritable
    MODEL_DIR is one error at start-up instead of a traceback at the first save."""
    root = paths.resolve(model_dir, what="MODEL_DIR", for_checkpoints=True)
    probe = root / f".write_check.{uuid.uuid4().hex[:12]}"
    try:
        paths.makedirs(root)
        probe.write_text("")
        probe.unlink()
    except Exception as exc:  # OSError locally; object stores raise their own types
        if root.exists() and not root.is_dir():
            reason = "it is a file, not a folder"
        else:
            reason = storage_reason(exc) or _first_line(f"{type(exc).__name__}: {exc}")
        raise UserInputError(
            f"MODEL_DIR={os.fspath(root)} is not writable ({reason}); choose a folder you can "
            "write to, or fix its permissions."
        ) from exc


# --------------------------------------------------------------- describing failures

_STATUS = re.compile(r"^[A-Z][A-Z_]{3,}: ")
_OCDBT_AT = re.compile(r' in OCDBT database at [^"]*"([^"]*)"')


def describe_failure(exc: BaseException, step_dir: paths.epath.Path | str) -> str:
    """A few words on why reading a step folder failed, paths relative to it: the innermost
    TensorStore status if there is one (not the outer wrapper with the whole spec)."""
    errors = list(_chain(exc))
    chosen = next((e for e in errors if _STATUS.match(str(e))), errors[-1])
    text = chosen.args[0] if isinstance(chosen, KeyError) and chosen.args else str(chosen)
    prefix = os.fspath(step_dir).rstrip("/")
    text = _OCDBT_AT.sub(lambda m: f" in {m.group(1)}", str(text))
    text = text.replace(prefix + "/", "").replace(prefix, ".")
    return _first_line(text) or type(chosen).__name__


# ------------------------------------------------ one report per failure, not a flood


def _is_closed_loop_noise(exc: BaseException | None, tb: Any = None) -> bool:
    """TensorStore's callbacks for reads/writes still in flight when orbax's event loop
    closed after the first failure: reported once per array, they repeat that failure."""
    tb = tb if tb is not None else getattr(exc, "__traceback__", None)
    return (
        isinstance(exc, RuntimeError)
        and str(exc) == "Event loop is closed"
        and any(f.name == "call_soon_threadsafe" for f in traceback.extract_tb(tb))
    )


def _is_abandoned_read(obj: Any, exc: BaseException | None) -> bool:
    """Orbax's read of one array shard, left unfinished when another read of the same restore
    failed (the restore raised that failure, and we report it). Orbax turns the
    ``GeneratorExit`` of its closing into an ``Exception``, which Python reports whenever the
    garbage collector meets the coroutine, possibly long after the restore."""
    return (
        inspect.iscoroutine(obj)
        and obj.__name__ == "_read_array_index_and_device_put"
        and isinstance(getattr(exc, "__cause__", None), GeneratorExit)  # closed unfinished
    )


class _DropReportedFailures(logging.Filter):
    """Orbax logs a failed background save once per thread (and asyncio its unretrieved
    tasks), each with a traceback; :class:`Checkpointer` raises it once, as a
    :class:`StorageError`. Drops those copies; other errors keep their logs. Also drops
    orbax's warning for a step folder without ``_CHECKPOINT_METADATA`` (commit time and
    metrics only, a restore does not need it): a damaged folder gets our own warning."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.WARNING:
            message = record.getMessage()
            return not (
                message.startswith("Metadata file does not exist")
                and message.endswith("_CHECKPOINT_METADATA")
            )
        if record.levelno < logging.ERROR or not record.exc_info:
            return True
        exc = record.exc_info[1]
        return exc is None or (storage_reason(exc) is None and not _is_closed_loop_noise(exc))


class _DropErrorTracebacks(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.ERROR or not record.exc_info


@contextlib.contextmanager
def read_failures_reported_once() -> Iterator[None]:
    """Around reading a checkpoint that may be damaged. One failed read leaves TensorStore's
    other reads of that step as unretrieved asyncio tasks, each logged with a traceback
    whenever the garbage collector meets it; the caller reports the damage once itself.
    Collected here, inside the filter, so none is logged later: catch the failure inside the
    context too, or the reads its traceback keeps alive outlive the collection."""
    quiet = _DropErrorTracebacks()
    loggers = [logging.getLogger(name) for name in ("asyncio", "absl")]
    for logger in loggers:
        logger.addFilter(quiet)
    try:
        yield
    finally:
        gc.collect()
        for logger in loggers:
            logger.removeFilter(quiet)


_QUIETED = False


def quiet_reported_failures() -> None:
    """Install :class:`_DropReportedFailures` and a ``sys.unraisablehook`` that drops the
    ``'Event loop is closed'`` errors of TensorStore callbacks and the abandoned reads of a
    failed restore (once per process)."""
    global _QUIETED
    if _QUIETED:
        return
    _QUIETED = True
    for name in ("absl", "asyncio"):
        logging.getLogger(name).addFilter(_DropReportedFailures())
    previous = sys.unraisablehook

    def unraisablehook(args: Any) -> None:
        noise = _is_closed_loop_noise(args.exc_value, args.exc_traceback)
        if not (noise or _is_abandoned_read(args.object, args.exc_value)):
            previous(args)

    sys.unraisablehook = unraisablehook


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
