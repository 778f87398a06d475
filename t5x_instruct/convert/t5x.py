"""T5X checkpoints -> our parameters (T5 v1.1 / Flan-T5), read sharded, one parameter at a time.

Layouts (what ``t5x/checkpoints.py`` writes):

* **msgpack + tensorstore** (T5X's ``Checkpointer``): ``checkpoint_<step>/checkpoint`` is a
  msgpack tree ``{'version': 3, 'optimizer': {'target': params, 'state': {...}}}``. Partitioned
  leaves are tensorstore specs of zarr folders beside it, named by the '.'-joined path
  (``target.encoder.layers_0.attention.query.kernel``); other leaves are inline arrays.
  An orbax ``state`` folder with an aggregate ``checkpoint`` file (older orbax) is read the
  same way: its leaves are ``PLACEHOLDER://<name>`` with the zarr folder ``<name>`` beside.
* **orbax** (T5X's ``OrbaxCheckpointManagerInterface``): ``checkpoint_<step>/state``, the same
  ``{'target', 'state'}`` tree written by orbax's PyTree handler (OCDBT or not).

Parameter names follow ``t5x/examples/t5/network.py``: ``token_embedder/embedding``,
``{encoder,decoder}/layers_<i>/...`` whose sub-names equal ours, one ``relpos_bias`` per stack,
``{encoder,decoder}/{encoder,decoder}_norm/scale`` and ``decoder/logits_dense/kernel``.
T5X stores attention kernels flattened to 2-D (``[embed, heads*head_dim]``,
``[heads*head_dim, embed]``); ours keep heads apart, a reshape of the same memory order.

Only ``target`` (the parameters) is read. T5X's optimizer state (Adafactor's factored second
moments ``state/param_states/.../v_row|v_col|v`` and its step) is skipped without reading a
byte: our optax optimizers keep their statistics in another structure, and a run started from
the converted checkpoint begins with fresh optimizer state, as a T5X fine-tune from a
pre-trained checkpoint does. The number of skipped arrays is logged.

Not importable (one clear error each): T5X's decoder-only example
(``t5x/examples/decoder_only``: a relative position table in every layer, no rotary
embedding, which our Llama-style ``Decoder`` cannot hold) and ``t5x/examples/scalable_t5``
(scanned or not, it also has a table per layer where T5 v1.1 shares one per stack).
"""

from __future__ import annotations

import abc
import dataclasses
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from t5x_instruct import partitioning
from t5x_instruct.convert.assembly import assemble, plan_read
from t5x_instruct.errors import UserInputError
from t5x_instruct.models.encoder_decoder import T5Config
from t5x_instruct.training.checkpoints import CheckpointShapeError
from t5x_instruct.training.param_checkpoints import (
    flat_tree,
    mismatch_summary,
    read_tree_metadata,
    save_params,
    unflatten_like,
)
from t5x_instruct.training.train_state import ModelSpec, Params

log = logging.getLogger(__name__)

_MSGPACK_FILE = "checkpoint"
_ORBAX_STATE = "state"
_PLACEHOLDER = re.compile(r"^PLACEHOLDER://(.+)$")
_STEP_DIR = re.compile(r"^checkpoint_(\d+)$")


class T5XCheckpointError(UserInputError):
    """A path that is not a readable T5X checkpoint, or one of another architecture."""


@dataclasses.dataclass(frozen=True)
class StoredArray:
    shape: tuple[int, ...]
    dtype: np.dtype


# ---------------------------------------------------------------------------------- readers


class T5XCheckpoint(abc.ABC):
    """The parameters (``target`` tree) of one T5X checkpoint, read lazily by name."""

    def __init__(self, path: str, step: int | None) -> None:
        self.path = path
        self.step = step
        self.arrays: dict[str, StoredArray] = {}  # 'encoder/layers_0/mlp/wo/kernel' -> info
        self.skipped: list[str] = []  # optimizer-state leaves, never read

    @abc.abstractmethod
    def read(self, name: str, sharding: jax.sharding.Sharding) -> jax.Array:
        """Parameter ``name`` as a global array in ``sharding``; each device reads its slice."""

    def read_many(self, requests: Sequence[tuple[str, jax.sharding.Sharding]]) -> list[jax.Array]:
        """Several parameters at once (one pass over the checkpoint where the format allows)."""
        return [self.read(name, sharding) for name, sharding in requests]


class _MsgpackCheckpoint(T5XCheckpoint):
    """msgpack tree whose leaves are inline arrays, tensorstore specs or orbax placeholders."""

    def __init__(self, directory: str, step: int | None) -> None:
        super().__init__(directory, step)
        from flax import serialization

        with open(os.path.join(directory, _MSGPACK_FILE), "rb") as f:
            raw = f.read()
        if raw.startswith(b"model_checkpoint_path"):
            raise T5XCheckpointError(
                f"{directory} is a TensorFlow (Mesh TF) checkpoint; convert it to T5X format "
                "with T5X first (python -m t5x.scripts.convert_tf_checkpoint)."
            )
        contents = serialization.msgpack_restore(raw)
        version = contents.get("version", 0)
        if version == 1:
            raise T5XCheckpointError(f"{directory}: T5X checkpoint version 1 is not supported.")
        tree = contents if version == 0 else contents["optimizer"]
        if "target" not in tree:
            raise T5XCheckpointError(
                f"{directory}/{_MSGPACK_FILE} has no 'target' (parameter) tree; keys: "
                f"{sorted(tree)}."
            )
        self._leaves: dict[str, Any] = {}
        for name, leaf in _flat_leaves(tree["target"]).items():
            self._leaves[name] = leaf
            self.arrays[name] = self._info(name, leaf)
        self.skipped = [n for n in _flat_leaves(tree) if not n.startswith("target/")]

    def _spec(self, name: str, leaf: Any) -> dict[str, Any]:
        """An absolute-path zarr spec for a tensorstore leaf (T5X writes relative paths)."""
        match = _PLACEHOLDER.match(leaf) if isinstance(leaf, str) else None
        if match:
            return {"driver": "zarr", "kvstore": _file_kvstore(self.path, match.group(1))}
        kvstore = leaf.get("kvstore", {})
        relative = kvstore.get("path", leaf.get("path"))  # tensorstore<0.1.14 put it outside
        if relative is None:
            raise T5XCheckpointError(f"{self.path}: tensorstore spec of {name} has no path.")
        # Written to GCS (a dummy bucket): the folder now sits beside the msgpack file.
        return {"driver": leaf.get("driver", "zarr"), "kvstore": _file_kvstore(self.path, relative)}

    def _info(self, name: str, leaf: Any) -> StoredArray:
        if isinstance(leaf, np.ndarray | np.generic | int | float):
            array = np.asarray(leaf)
            return StoredArray(tuple(array.shape), array.dtype)
        if not (isinstance(leaf, str) or (isinstance(leaf, Mapping) and "kvstore" in leaf)):
            raise T5XCheckpointError(f"{self.path}: unreadable leaf target/{name}: {leaf!r:.80}")
        store = self._open(name, leaf)
        dtype = np.dtype(store.dtype.numpy_dtype)
        if dtype == np.uint16:
            raise T5XCheckpointError(
                f"{self.path}: target/{name} is stored as uint16 (bfloat16 of T5X checkpoint "
                "version 2); re-save it with a newer T5X first."
            )
        return StoredArray(tuple(int(d) for d in store.shape), dtype)

    def _open(self, name: str, leaf: Any) -> Any:
        import tensorstore as ts

        try:
            return ts.open(self._spec(name, leaf), open=True, read=True).result()
        except ValueError as exc:  # missing or corrupt folder: name it
            raise T5XCheckpointError(f"{self.path}: cannot open target/{name}: {exc}") from exc

    def read(self, name: str, sharding: jax.sharding.Sharding) -> jax.Array:
        leaf = self._leaves[name]
        info = self.arrays[name]
        if isinstance(leaf, np.ndarray | np.generic | int | float):
            return jax.device_put(np.asarray(leaf), sharding)
        store = self._open(name, leaf)
        return jax.make_array_from_callback(
            info.shape, sharding, lambda index: np.asarray(store[index].read().result())
        )


class _OrbaxCheckpoint(T5XCheckpoint):
    """An orbax PyTree folder; each parameter restored alone, straight into its sharding."""

    def __init__(self, state_dir: str, step: int | None) -> None:
        super().__init__(state_dir, step)
        tree = read_tree_metadata(state_dir)
        if "target" not in tree:
            raise T5XCheckpointError(
                f"{state_dir} has no 'target' (parameter) tree; keys: {sorted(tree)}."
            )
        for name, meta in flat_tree(tree["target"]).items():
            self.arrays[name] = StoredArray(tuple(meta.shape), np.dtype(meta.dtype))
        self.skipped = [n for n in flat_tree(tree) if not n.startswith("target/")]

    def read(self, name: str, sharding: jax.sharding.Sharding) -> jax.Array:
        return self.read_many([(name, sharding)])[0]

    def read_many(self, requests: Sequence[tuple[str, jax.sharding.Sharding]]) -> list[jax.Array]:
        import orbax.checkpoint as ocp

        item: dict[str, Any] = {}
        args: dict[str, Any] = {}
        for name, sharding in requests:
            info = self.arrays[name]
            keys = ["target", *name.split("/")]
            abstract = jax.ShapeDtypeStruct(info.shape, info.dtype, sharding=sharding)
            _set(item, keys, abstract)
            _set(args, keys, ocp.ArrayRestoreArgs(sharding=sharding, global_shape=info.shape))
        restored = ocp.PyTreeCheckpointer().restore(
            self.path,
            args=ocp.args.PyTreeRestore(item=item, restore_args=args, partial_restore=True),
        )
        return [_get(restored, ["target", *name.split("/")]) for name, _ in requests]


def open_t5x_checkpoint(path: str, step: int | None = None) -> T5XCheckpoint:
    """Open a T5X checkpoint: a MODEL_DIR (latest or ``step``), a ``checkpoint_<step>`` folder,
    its ``state`` folder (orbax) or its ``checkpoint`` file (msgpack).

    Raises:
      T5XCheckpointError: the path does not exist or holds no T5X checkpoint.
    """
    if str(path).startswith("gs://"):
        raise T5XCheckpointError(
            f"{path}: copy the checkpoint to a local disk first (gsutil -m cp -r {path} .)."
        )
    path = os.path.abspath(os.fspath(path))
    if os.path.isfile(path) and os.path.basename(path) == _MSGPACK_FILE:
        path = os.path.dirname(path)
    if not os.path.isdir(path):
        raise T5XCheckpointError(f"T5X checkpoint {path} does not exist.")
    match = _STEP_DIR.match(os.path.basename(path))
    found = int(match.group(1)) if match else None
    if os.path.basename(path) == _ORBAX_STATE:
        return _open_state_dir(path, found)
    if os.path.isfile(os.path.join(path, _MSGPACK_FILE)):
        return _MsgpackCheckpoint(path, found)
    if os.path.isdir(os.path.join(path, _ORBAX_STATE)):
        return _open_state_dir(os.path.join(path, _ORBAX_STATE), found)
    steps = sorted(
        int(m.group(1)) for d in os.listdir(path) if (m := _STEP_DIR.match(d)) is not None
    )
    if not steps:
        raise T5XCheckpointError(
            f"{path} holds no T5X checkpoint (expected checkpoint_<step>/checkpoint or "
            "checkpoint_<step>/state)."
        )
    chosen = steps[-1] if step is None else step
    if chosen not in steps:
        raise T5XCheckpointError(f"{path} has no checkpoint_{step}; it has steps {steps}.")
    return open_t5x_checkpoint(os.path.join(path, f"checkpoint_{chosen}"))


def _open_state_dir(state_dir: str, step: int | None) -> T5XCheckpoint:
    if step is None:
        parent = _STEP_DIR.match(os.path.basename(os.path.dirname(state_dir)))
        step = int(parent.group(1)) if parent else None
    if os.path.isfile(os.path.join(state_dir, _MSGPACK_FILE)):
        return _MsgpackCheckpoint(state_dir, step)  # orbax's older aggregate-file layout
    return _OrbaxCheckpoint(state_dir, step)


# ---------------------------------------------------------------------------------- mapping

# Architectures we cannot hold, recognised by a parameter only they have.
_FOREIGN = (
    (
        re.compile(r"^decoder/layers_\d+/relpos_bias/"),
        "a T5X decoder-only model (t5x/examples/decoder_only: a relative position table in "
        "every layer and no rotary embedding); t5x_instruct's decoder-only model is "
        "Llama-style (rotary positions) and cannot hold it",
    ),
    (
        re.compile(r"^(encoder|decoder)/layers(_\d+)?/relative_posemb/"),
        "a t5x/examples/scalable_t5 model (a relative position table in every layer); "
        "T5 v1.1 and t5x_instruct share one table per stack",
    ),
)

_JOINED_IN = ("query/kernel", "key/kernel", "value/kernel")  # ours [in, heads, d]: T5X [in, h*d]


def t5x_sources(cfg: T5Config, model_params: Mapping[str, Sequence[int]]) -> dict[str, list[str]]:
    """For each of our parameter names, the T5X names it is made of (in layer order)."""
    plan: dict[str, list[str]] = {}
    fixed = {
        "token_embedder/embedding": "token_embedder/embedding",
        "encoder_relpos_bias/rel_embedding": "encoder/relpos_bias/rel_embedding",
        "decoder_relpos_bias/rel_embedding": "decoder/relpos_bias/rel_embedding",
        "encoder_norm/scale": "encoder/encoder_norm/scale",
        "decoder_norm/scale": "decoder/decoder_norm/scale",
        "logits_dense/kernel": "decoder/logits_dense/kernel",
    }
    layers = {"encoder": cfg.num_encoder_layers, "decoder": cfg.num_decoder_layers}
    for name in model_params:
        if name in fixed:
            plan[name] = [fixed[name]]
            continue
        stack, kind, *rest = [*name.split("/"), "", ""]
        rest = [r for r in rest if r]
        if stack in layers and kind == "blocks" and rest:  # loop layout: one per layer
            plan[name] = [f"{stack}/layers_{rest[0]}/{'/'.join(rest[1:])}"]
        elif stack in layers and kind == "block":  # scanned: layers on a leading axis
            plan[name] = [f"{stack}/layers_{i}/{'/'.join(rest)}" for i in range(layers[stack])]
        else:  # e.g. a plug-in's parameter: reported as missing from the checkpoint
            plan[name] = [f"{name} (no T5X counterpart)"]
    return plan


def t5x_shape(name: str, shape: Sequence[int]) -> tuple[int, ...]:
    """The shape T5X stores for one layer's parameter of our (per-layer) ``shape``."""
    if name.endswith(_JOINED_IN):
        return (shape[0], shape[1] * shape[2])
    if name.endswith("out/kernel") and len(shape) == 3:
        return (shape[0] * shape[1], shape[2])
    return tuple(shape)


def check_t5x_architecture(
    ckpt: T5XCheckpoint, cfg: Any, model_params: Mapping[str, Sequence[int]]
) -> dict[str, list[str]]:
    """The read plan, or one :class:`CheckpointShapeError` naming every mismatch."""
    for pattern, what in _FOREIGN:
        hit = next((n for n in sorted(ckpt.arrays) if pattern.match(n)), None)
        if hit is not None:
            raise T5XCheckpointError(f"{ckpt.path} holds {what} (e.g. target/{hit}).")
    if not isinstance(cfg, T5Config):
        raise T5XCheckpointError(
            f"{ckpt.path} is a T5X encoder-decoder checkpoint but the gin file builds a "
            f"{type(cfg).__name__} model; use a T5 preset (gin/models/t5_1_1/<size>.gin)."
        )
    plan = t5x_sources(cfg, model_params)
    missing, wrong = [], []
    for name, sources in plan.items():
        per_layer = model_params[name][1:] if len(sources) > 1 or "/block/" in name else None
        ours = tuple(per_layer if per_layer is not None else model_params[name])
        for source in sources:
            info = ckpt.arrays.get(source)
            if info is None:
                missing.append(source)
            elif info.shape not in (t5x_shape(source, ours), ours):
                wrong.append(
                    f"{source}: checkpoint {list(info.shape)} vs model "
                    f"{list(t5x_shape(source, ours))}"
                )
    used = {s for sources in plan.values() for s in sources}
    unexpected = sorted(set(ckpt.arrays) - used)
    if missing or wrong or unexpected:
        raise CheckpointShapeError(
            f"{ckpt.path} holds a different model than the gin file describes: "
            + mismatch_summary(missing, unexpected, wrong)
            + ". Pick the model preset / --gin. overrides that match the checkpoint."
        )
    return plan


# ------------------------------------------------------------------------------- assembling


def load_t5x_params(
    path: str,
    spec: ModelSpec,
    mesh: Mesh,
    rules: partitioning.AxisRules,
    *,
    step: int | None = None,
    batch_bytes: int = 1 << 30,
) -> tuple[Params, T5XCheckpoint]:
    """Our parameters from a T5X checkpoint, in ``spec``'s shardings under ``mesh``/``rules``.

    Parameters are read in batches of about ``batch_bytes`` (one at a time when larger), each
    device reading only its own slice, then laid out as ours where they lie
    (:mod:`t5x_instruct.convert.assembly`); no array is ever whole on one device or host.

    Raises:
      T5XCheckpointError: not a T5X checkpoint, or an architecture we cannot hold.
      CheckpointShapeError: the checkpoint's parameters differ from the model's (named).
    """
    ckpt = open_t5x_checkpoint(path, step)
    abstract = flat_tree(spec.abstract_params())
    shardings = flat_tree(spec.param_shardings(mesh, rules))
    plan = check_t5x_architecture(ckpt, spec.config, {n: a.shape for n, a in abstract.items()})
    out: dict[str, jax.Array] = {}
    for batch in _batches(plan, ckpt, batch_bytes):
        reads = {}
        for name in batch:
            stacked = len(plan[name]) > 1 or "/block/" in name
            shapes = [ckpt.arrays[s].shape for s in plan[name]]
            reads[name] = (
                plan_read(abstract[name].shape, shardings[name], shapes, stacked),
                stacked,
            )
        requests = [
            (source, sharding)
            for name in batch
            for source, sharding in zip(plan[name], reads[name][0].part_shardings)
        ]
        arrays = iter(ckpt.read_many(requests))
        for name in batch:
            read, stacked = reads[name]
            parts = [next(arrays) for _ in plan[name]]
            target = abstract[name]
            out[name] = assemble(
                parts,
                target.shape,
                target.dtype,
                shardings[name],
                stacked=stacked,
                local=read.local,
            )
    if ckpt.skipped:
        log.info(
            "Skipped %d non-parameter arrays of %s (T5X optimizer state, e.g. %s): not imported.",
            len(ckpt.skipped),
            ckpt.path,
            ckpt.skipped[0],
        )
    return unflatten_like(spec.abstract_params(), out), ckpt


def _batches(
    plan: Mapping[str, list[str]], ckpt: T5XCheckpoint, batch_bytes: int
) -> list[list[str]]:
    """Our parameter names in groups whose stored parts total about ``batch_bytes``."""
    batches: list[list[str]] = [[]]
    size = 0
    for name, sources in plan.items():
        nbytes = sum(
            math.prod(ckpt.arrays[s].shape) * ckpt.arrays[s].dtype.itemsize for s in sources
        )
        if batches[-1] and size + nbytes > batch_bytes:
            batches.append([])
            size = 0
        batches[-1].append(name)
        size += nbytes
    return [b for b in batches if b]


def convert_t5x_checkpoint(
    path: str,
    model_dir: str,
    spec: ModelSpec,
    mesh: Mesh,
    rules: partitioning.AxisRules,
    *,
    step: int | None = None,
) -> str:
    """Import a T5X checkpoint as a params-only checkpoint of ours; returns its step folder.

    The result is usable as ``INITIAL_CHECKPOINT_PATH`` and by eval / infer. It keeps the
    T5X step number (0 if the path does not tell it).
    """
    params, ckpt = load_t5x_params(path, spec, mesh, rules, step=step)
    return save_params(model_dir, params, step=ckpt.step or 0)


# ---------------------------------------------------------------------------------- helpers


def _flat_leaves(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten a msgpack tree; tensorstore spec dicts are leaves, not subtrees."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping) and "kvstore" not in value and "driver" not in value:
            out.update(_flat_leaves(value, name))
        elif value is not None:
            out[name] = value
    return out


def _file_kvstore(directory: str, relative: str) -> dict[str, str]:
    return {"driver": "file", "path": os.path.join(directory, relative)}


def _set(tree: dict[str, Any], keys: Sequence[str], leaf: Any) -> None:
    for key in keys[:-1]:
        tree = tree.setdefault(key, {})
    tree[keys[-1]] = leaf


def _get(tree: Any, keys: Sequence[str]) -> Any:
    for key in keys:
        tree = tree[key]
    return tree
