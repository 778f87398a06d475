"""Training input pipeline: a SeqIO mixture or task as batches of model features, per host.

:func:`get_dataset` builds the ``tf.data`` pipeline; :class:`DataIterator` wraps it as a Python
iterator of ``dict[str, np.ndarray]`` whose position can be checkpointed and restored, in
constant time from a ``tf.data`` iterator checkpoint, else by replaying the consumed batches.

Determinism: with a fixed ``seed`` the stream of batches is a pure function of the arguments
(shuffling, mixture sampling and parallel maps are seeded / order-preserving, and
``tf.data.Options.deterministic`` is set). Sharding happens on examples *before* shuffling and
packing, so different ``shard_id`` values see disjoint examples.
"""

from __future__ import annotations

import dataclasses
import json
import re
import uuid
from collections.abc import Mapping
from typing import Any

import numpy as np
import seqio
import tensorflow as tf

from t5x_instruct.data.feature_converters import (
    get_feature_converter,
    get_model_feature_lengths,
    required_task_features,
)
from t5x_instruct.data.registry import get_mixture_or_task, leaf_tasks


@dataclasses.dataclass(frozen=True)
class DatasetConfig:
    """Every argument that determines the batch stream (stored in :meth:`DataIterator.state`)."""

    mixture_or_task_name: str
    task_feature_lengths: Mapping[str, int]
    split: str = "train"
    batch_size: int = 32
    model_type: str = "encoder_decoder"
    pack: bool = False
    shuffle: bool = True
    seed: int | None = 0
    shard_id: int = 0
    num_shards: int = 1
    num_epochs: int | None = None
    use_cached: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        d = dataclasses.asdict(self)
        d["task_feature_lengths"] = dict(sorted(self.task_feature_lengths.items()))
        return d


def get_dataset(
    mixture_or_task_name: str,
    *,
    task_feature_lengths: Mapping[str, int],
    split: str = "train",
    batch_size: int,
    model_type: str = "encoder_decoder",
    pack: bool = False,
    shuffle: bool = True,
    seed: int | None = 0,
    shard_id: int = 0,
    num_shards: int = 1,
    num_epochs: int | None = None,
    use_cached: bool = False,
) -> tf.data.Dataset:
    """Batches of model features from a registered SeqIO mixture or task.

    Args:
      mixture_or_task_name: a registered task or mixture (unknown names list close matches).
      task_feature_lengths: e.g. ``{'inputs': 48, 'targets': 8}``; longer examples are
        truncated by SeqIO. ``decoder`` only uses ``'targets'``.
      split: ``'train'``, ``'validation'``, ...
      batch_size: examples per batch *on this shard* (host-local batch size); the last partial
        batch is dropped so every batch has the same shape (one compilation).
      model_type: ``'encoder_decoder'``, ``'decoder'`` or ``'prefix_lm'`` (see
        :mod:`t5x_instruct.data.feature_converters` for the features each produces).
      pack: pack several examples per row (adds ``*_segment_ids`` and ``*_positions``).
      shuffle: shuffle examples (seeded by ``seed``).
      seed: seeds shuffling and mixture sampling; ``None`` gives a non-reproducible stream.
      shard_id, num_shards: this host's slice of the examples (``jax.process_index()`` and
        ``jax.process_count()`` in a multi-host run).
      num_epochs: passes over the data; ``None`` repeats forever.
      use_cached: read SeqIO's offline cache of the tasks instead of preprocessing on the fly.

    Returns:
      A ``tf.data.Dataset`` of dicts of int32 ``[batch_size, length]`` tensors.
    """
    config = DatasetConfig(
        mixture_or_task_name, dict(task_feature_lengths), split, batch_size, model_type, pack,
        shuffle, seed, shard_id, num_shards, num_epochs, use_cached,
    )  # fmt: skip
    return _build(config)


def _validate(config: DatasetConfig) -> seqio.Task | seqio.Mixture:
    """Checks the arguments (cheaply, before any pipeline is built); returns the provider."""
    name = config.mixture_or_task_name
    if config.batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {config.batch_size}.")
    if not 0 <= config.shard_id < config.num_shards:
        raise ValueError(
            f"shard_id={config.shard_id} is not in [0, num_shards={config.num_shards})."
        )
    provider = get_mixture_or_task(name)
    required = required_task_features(config.model_type)
    missing = [k for k in required if k not in config.task_feature_lengths]
    if missing:
        raise ValueError(
            f"task_feature_lengths={dict(config.task_feature_lengths)} lacks {missing}, "
            f"needed for model_type={config.model_type!r}."
        )
    if config.model_type == "decoder" and "inputs" in provider.output_features:
        raise ValueError(
            f"{name!r} has 'inputs', which model_type='decoder' (plain LM on targets) would "
            "silently drop; use model_type='prefix_lm' for a decoder-only model."
        )
    available = sorted({s for task in leaf_tasks(name) for s in task.splits})
    if config.split not in available:
        raise ValueError(f"{name!r} has no split {config.split!r}; available: {available}.")
    return provider


def _build(config: DatasetConfig) -> tf.data.Dataset:
    provider = _validate(config)
    required = required_task_features(config.model_type)
    ds = seqio.get_dataset(
        provider,
        task_feature_lengths={k: config.task_feature_lengths[k] for k in required},
        feature_converter=get_feature_converter(config.model_type, config.pack),
        dataset_split=config.split,
        use_cached=config.use_cached,
        shuffle=config.shuffle,
        num_epochs=config.num_epochs,
        shard_info=seqio.ShardInfo(index=config.shard_id, num_shards=config.num_shards),
        verbose=False,
        seed=config.seed,
    )
    ds = ds.batch(config.batch_size, drop_remainder=True)
    options = tf.data.Options()
    options.deterministic = True
    # An iterator checkpoint must fail on state tf.data cannot save (a Python generator,
    # py_function) rather than save around it and restore a different position.
    options.experimental_external_state_policy = tf.data.experimental.ExternalStatePolicy.FAIL
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


ITERATOR_PREFIX = "iterator"  # tf.train.Checkpoint files: iterator.index, iterator.data-*
POSITION_FILE = "position.json"  # written last: the folder's commit marker


class DataIterator:
    """Python iterator over :func:`get_dataset` batches with a checkpointable position.

    ``state()`` is a small JSON-able dict: ``{'batches_consumed': n, 'config': {...}}``.
    Two ways back to a position, both giving exactly the batches an uninterrupted run has:

    * O(1): :meth:`save` writes the ``tf.data`` iterator's own checkpoint (buffers, shuffle
      and sampling state, via ``tf.train.Checkpoint``; TF's file API, so ``gs://`` works)
      and :meth:`restore` with ``checkpoint_dir`` reads it back. Its cost does not grow with
      ``n``, but its size is that of the pipeline's buffers (the demo sources shuffle all
      their examples: 16 MB for the quickstart's one shard), and pipelines with Python
      state (``Dataset.from_generator``, ``py_function``) cannot be saved. TF's
      ``experimental_symbolic_checkpoint`` did not help: shuffle buffers are still stored
      and the pipeline ran >10x slower.
    * Fallback: rebuild the (deterministic) pipeline and draw and drop ``n`` batches, time
      linear in ``n``. Used when no valid iterator checkpoint is given; :meth:`restore`
      says why. Exactness needs ``seed`` not ``None``.

    One pipeline graph serves both, so a run resumed by skipping saves restorable iterator
    checkpoints again. ``skipped_batches`` counts the batches the last positioning dropped.
    """

    def __init__(
        self, mixture_or_task_name: str, *, batches_consumed: int = 0, **kwargs: Any
    ) -> None:
        """Takes the arguments of :func:`get_dataset`."""
        self.config = DatasetConfig(mixture_or_task_name, **kwargs)
        _validate(self.config)
        self._batches_consumed = 0
        self._to_skip = 0
        self._iterator: Any = None  # a tf.data OwnedIterator once built
        self._unsaveable: str | None = None  # why save() cannot work, once it failed
        self.skipped_batches = 0
        self._seek(batches_consumed)

    @classmethod
    def from_state(
        cls, state: Mapping[str, Any], checkpoint_dir: str | None = None
    ) -> DataIterator:
        """A new iterator positioned where the one that produced ``state`` was (restored from
        ``checkpoint_dir`` when it holds a valid iterator checkpoint, see :meth:`restore`)."""
        config = dict(state["config"])
        name = config.pop("mixture_or_task_name")
        it = cls(name, **config)
        it.restore(state, checkpoint_dir)
        return it

    def state(self) -> dict[str, Any]:
        return {"batches_consumed": self._batches_consumed, "config": self.config.to_dict()}

    def restore(
        self,
        state: Mapping[str, Any],
        checkpoint_dir: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> str | None:
        """Moves this iterator to the position in ``state``; the configs must agree.

        With ``checkpoint_dir`` (a folder :meth:`save` wrote, with the same ``metadata``)
        the iterator is restored from it; if that is impossible (missing, written at another
        position or config, unreadable) the position is reached by skipping and the reason
        is returned. Returns ``None`` when the checkpoint was used or none was given.
        """
        saved = dict(state.get("config", self.config.to_dict()))
        saved["task_feature_lengths"] = dict(sorted(saved["task_feature_lengths"].items()))
        ours = self.config.to_dict()
        diff = {k: (saved.get(k), v) for k, v in ours.items() if saved.get(k) != v}
        if diff:
            raise ValueError(
                "Cannot restore data iterator: its config differs from the checkpointed one "
                f"(field: (checkpoint, current)) {diff}; the skipped batches would not match."
            )
        position = int(state["batches_consumed"])
        self._seek(position)
        if checkpoint_dir is None:
            return None
        expected = {**(metadata or {}), "batches_consumed": position, "config": ours}
        reason = self._restore_checkpoint(checkpoint_dir, expected)
        if reason is not None:
            self._seek(position)  # discard a half-restored iterator
        return reason

    @property
    def batches_consumed(self) -> int:
        return self._batches_consumed

    def save(self, directory: str, metadata: Mapping[str, Any] | None = None) -> str | None:
        """Writes the iterator's checkpoint and position into ``directory`` (replacing it).

        ``metadata`` (JSON-able, e.g. the training step) is stored with the position and
        must match on :meth:`restore`. Returns ``None``, or why this pipeline cannot be
        checkpointed (then nothing is left in ``directory``; later calls return at once).
        """
        if self._unsaveable is not None:
            return self._unsaveable
        iterator = self._ensure_iterator()
        if tf.io.gfile.exists(directory):
            tf.io.gfile.rmtree(directory)
        tf.io.gfile.makedirs(directory)
        try:
            tf.train.Checkpoint(iterator=iterator).write(f"{directory}/{ITERATOR_PREFIX}")
        except (tf.errors.OpError, ValueError) as exc:
            tf.io.gfile.rmtree(directory)
            name = self.config.mixture_or_task_name
            self._unsaveable = f"tf.data cannot checkpoint {name!r}: {_first_line(exc)}"
            return self._unsaveable
        position = {**(metadata or {}), **self.state()}
        tmp = f"{directory}/.{POSITION_FILE}.{uuid.uuid4().hex[:8]}"
        with tf.io.gfile.GFile(tmp, "w") as f:
            f.write(json.dumps(position, sort_keys=True))
        tf.io.gfile.rename(tmp, f"{directory}/{POSITION_FILE}", overwrite=True)
        return None

    def _restore_checkpoint(self, directory: str, expected: Mapping[str, Any]) -> str | None:
        position_file = f"{directory}/{POSITION_FILE}"
        if not tf.io.gfile.exists(position_file):
            return f"no iterator checkpoint at {position_file}"
        try:
            with tf.io.gfile.GFile(position_file) as f:
                found = json.loads(f.read())
        except (tf.errors.OpError, ValueError) as exc:
            return f"unreadable {position_file}: {_first_line(exc)}"
        if isinstance(found.get("config"), dict):
            lengths = found["config"].get("task_feature_lengths") or {}
            found["config"]["task_feature_lengths"] = dict(sorted(lengths.items()))
        wrong = {k: (found.get(k), v) for k, v in expected.items() if found.get(k) != v}
        if wrong:  # e.g. written for a step whose orbax save never committed
            return f"{position_file} is for another position (field: (file, expected)) {wrong}"
        iterator = iter(_build(self.config))
        try:
            tf.train.Checkpoint(iterator=iterator).read(
                f"{directory}/{ITERATOR_PREFIX}"
            ).assert_consumed()
        except (tf.errors.OpError, ValueError, AssertionError) as exc:
            return f"cannot restore the iterator checkpoint in {directory}: {_first_line(exc)}"
        self._iterator = iterator
        self._to_skip = 0
        return None

    def _seek(self, batches_consumed: int) -> None:
        # Lazy: the pipeline is (re)built on the next batch, so restore() right after
        # construction builds it once.
        if batches_consumed < 0:
            raise ValueError(f"batches_consumed must be >= 0, got {batches_consumed}.")
        self._iterator = None
        self._batches_consumed = batches_consumed
        self._to_skip = batches_consumed
        self.skipped_batches = 0

    def _ensure_iterator(self) -> Any:
        if self._iterator is None:
            self._iterator = iter(_build(self.config))
        # Draw and drop in Python rather than ds.skip(n): the graph stays the one an
        # iterator checkpoint is restored into (per-batch overhead: microseconds).
        while self._to_skip:
            next(self._iterator)
            self._to_skip -= 1
            self.skipped_batches += 1
        return self._iterator

    def close(self) -> None:
        """Releases the pipeline (tf.data's prefetch threads) deliberately, at a known point,
        instead of in a destructor at interpreter exit; the position is kept, and the next
        batch rebuilds the pipeline there."""
        self._seek(self._batches_consumed)

    def __iter__(self) -> DataIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = next(self._ensure_iterator())
        self._batches_consumed += 1
        return {k: v.numpy() for k, v in batch.items()}

    @property
    def element_spec(self) -> dict[str, tuple[tuple[int, ...], type[np.int32]]]:
        """``{feature: (shape, dtype)}`` of every batch, e.g. to initialise a model."""
        c = self.config
        lengths = get_model_feature_lengths(c.model_type, c.task_feature_lengths, c.pack)
        return {k: ((c.batch_size, n), np.int32) for k, n in lengths.items()}


def _first_line(exc: BaseException) -> str:
    """``'FailedPreconditionError: PyFunc is stateful.'``, without TF's op decorations."""
    lines = str(exc).strip().splitlines()
    text = re.sub(r"\{\{[^}]*\}\}\s*|\s*\[Op:.*$", "", lines[0] if lines else "")
    return f"{type(exc).__name__}: {text.strip()}"
