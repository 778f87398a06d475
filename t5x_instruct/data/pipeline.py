"""Training input pipeline: a SeqIO mixture or task as batches of model features, per host.

:func:`get_dataset` builds the ``tf.data`` pipeline; :class:`DataIterator` wraps it as a Python
iterator of ``dict[str, np.ndarray]`` whose position can be checkpointed and restored.

Determinism: with a fixed ``seed`` the stream of batches is a pure function of the arguments
(shuffling, mixture sampling and parallel maps are seeded / order-preserving, and
``tf.data.Options.deterministic`` is set). Sharding happens on examples *before* shuffling and
packing, so different ``shard_id`` values see disjoint examples.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
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
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


class DataIterator:
    """Python iterator over :func:`get_dataset` batches with a checkpointable position.

    ``state()`` is a small JSON-able dict: ``{'batches_consumed': n, 'config': {...}}``.
    Restoring rebuilds the (deterministic) pipeline and skips the first ``n`` batches, so the
    batches after a restore are exactly those an uninterrupted run would have produced.

    Trade-off: skipping re-reads and re-processes ``n`` batches, so a restore costs time
    linear in the training progress (seconds for the demo's scale; for large runs a tf.data
    iterator checkpoint would be O(1) but stores shuffle buffers and ties checkpoints to
    TensorFlow internals). Exactness needs ``seed`` not ``None``.
    """

    def __init__(
        self, mixture_or_task_name: str, *, batches_consumed: int = 0, **kwargs: Any
    ) -> None:
        """Takes the arguments of :func:`get_dataset`."""
        self.config = DatasetConfig(mixture_or_task_name, **kwargs)
        _validate(self.config)
        self._batches_consumed = 0
        self._iterator: Iterator[dict[str, np.ndarray]] | None = None
        self._seek(batches_consumed)

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> DataIterator:
        """A new iterator positioned where the one that produced ``state`` was."""
        config = dict(state["config"])
        name = config.pop("mixture_or_task_name")
        return cls(name, batches_consumed=int(state["batches_consumed"]), **config)

    def state(self) -> dict[str, Any]:
        return {"batches_consumed": self._batches_consumed, "config": self.config.to_dict()}

    def restore(self, state: Mapping[str, Any]) -> None:
        """Moves this iterator to the position in ``state``; the configs must agree."""
        saved = dict(state.get("config", self.config.to_dict()))
        saved["task_feature_lengths"] = dict(sorted(saved["task_feature_lengths"].items()))
        ours = self.config.to_dict()
        diff = {k: (saved.get(k), v) for k, v in ours.items() if saved.get(k) != v}
        if diff:
            raise ValueError(
                "Cannot restore data iterator: its config differs from the checkpointed one "
                f"(field: (checkpoint, current)) {diff}; the skipped batches would not match."
            )
        self._seek(int(state["batches_consumed"]))

    @property
    def batches_consumed(self) -> int:
        return self._batches_consumed

    def _seek(self, batches_consumed: int) -> None:
        # Lazy: the pipeline is (re)built on the next batch, so restore() right after
        # construction builds it once.
        if batches_consumed < 0:
            raise ValueError(f"batches_consumed must be >= 0, got {batches_consumed}.")
        self._iterator = None
        self._batches_consumed = batches_consumed

    def close(self) -> None:
        """Releases the pipeline (tf.data's prefetch threads) deliberately, at a known point,
        instead of in a destructor at interpreter exit; the position is kept, and the next
        batch rebuilds the pipeline there."""
        self._seek(self._batches_consumed)

    def __iter__(self) -> DataIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._iterator is None:
            ds = _build(self.config)
            if self._batches_consumed:
                ds = ds.skip(self._batches_consumed)
            self._iterator = ds.as_numpy_iterator()
        batch = next(self._iterator)
        self._batches_consumed += 1
        return batch

    @property
    def element_spec(self) -> dict[str, tuple[tuple[int, ...], type[np.int32]]]:
        """``{feature: (shape, dtype)}`` of every batch, e.g. to initialise a model."""
        c = self.config
        lengths = get_model_feature_lengths(c.model_type, c.task_feature_lengths, c.pack)
        return {k: ((c.batch_size, n), np.int32) for k, n in lengths.items()}
