"""Which rows of each global batch a process feeds, and the batch as one global array.

A global batch of ``B`` rows is the concatenation of ``num_shards`` *data shards* of
``B / num_shards`` rows each; shard ``k`` is SeqIO shard ``k`` of ``num_shards`` and fills
rows ``[k B/N, (k+1) B/N)``. The stream is therefore a function of ``num_shards``, never of
how many processes read it: a process reads only the shards overlapping the rows its
addressable devices hold under the batch ``NamedSharding``. When fsdp or tensor axes span
hosts, several processes hold the same rows, read the same shards and so feed identical
data, as the collectives require. A run saved by 2 processes resumes exactly on 1 or 4.

``num_shards`` defaults to the process count at a run's first start (T5X's one shard per
host) and is kept in the checkpoint's data state from then on.

Each shard's iterator checkpoint (for an O(1) resume) is a folder per shard, written by the
shard's *owner*, the lowest process that reads it, so any process count can read it back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import Any, Protocol

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding

from t5x_instruct import partitioning
from t5x_instruct.errors import UserInputError

HostBatch = Mapping[str, np.ndarray]

log = logging.getLogger(__name__)


def row_blocks(
    sharding: NamedSharding, num_rows: int, devices: Collection[Any] | None = None
) -> list[tuple[int, int]]:
    """Sorted, merged ``[start, stop)`` row ranges that ``devices`` hold of a ``num_rows``
    batch under ``sharding`` (default: this process's addressable devices)."""
    devices = set(sharding.addressable_devices if devices is None else devices)
    spans = set()
    for device, index in sharding.devices_indices_map((num_rows,)).items():
        if device in devices:
            start, stop, _ = index[0].indices(num_rows)
            spans.add((start, stop))
    merged: list[tuple[int, int]] = []
    for start, stop in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(stop, merged[-1][1]))
        else:
            merged.append((start, stop))
    return merged


def shards_for_rows(blocks: Sequence[tuple[int, int]], num_rows: int, num_shards: int) -> list[int]:
    """The data shards (of ``num_shards`` equal ones) that overlap any of ``blocks``."""
    rows = num_rows // num_shards
    found = {k for start, stop in blocks for k in range(start // rows, (stop - 1) // rows + 1)}
    return sorted(found)


def owned_shards(
    sharding: NamedSharding, num_rows: int, num_shards: int, process_index: int | None = None
) -> list[int]:
    """The data shards whose owner (the lowest process reading them) is ``process_index``
    (default: this process); the owner alone writes a shard's iterator checkpoint."""
    process_index = jax.process_index() if process_index is None else process_index
    by_process: dict[int, list[Any]] = {}
    for device in sharding.device_set:
        by_process.setdefault(device.process_index, []).append(device)
    owner: dict[int, int] = {}
    for process in sorted(by_process):
        blocks = row_blocks(sharding, num_rows, by_process[process])
        for k in shards_for_rows(blocks, num_rows, num_shards):
            owner.setdefault(k, process)
    return sorted(k for k, p in owner.items() if p == process_index)


def check_num_shards(batch_size: int, num_shards: int) -> None:
    if not isinstance(num_shards, int) or num_shards < 1 or batch_size % num_shards:
        raise UserInputError(
            f"train.data_shards={num_shards!r} must be a positive divisor of the batch size "
            f"{batch_size} (each data shard fills batch_size / data_shards rows)."
        )


def global_batch(
    shards: Mapping[int, HostBatch], num_shards: int, mesh: Mesh, rules: partitioning.AxisRules
) -> dict[str, jax.Array]:
    """One global ``jax.Array`` per feature, batch-sharded by ``rules``, from the host data
    of the shards this process read (``{shard index: {feature: [B / num_shards, ...]}}``).

    Only the rows this process's devices hold are read from ``shards``; every shard they
    overlap must be present.
    """
    first = next(iter(shards.values()))
    out = {}
    for name, sample in first.items():
        rows = sample.shape[0]
        global_shape = (rows * num_shards, *sample.shape[1:])
        sharding = partitioning.batch_sharding(mesh, rules, sample.ndim)

        def rows_of(index: tuple[slice, ...], name: str = name, rows: int = rows) -> np.ndarray:
            start, stop, _ = index[0].indices(rows * num_shards)
            parts = []
            for k in range(start // rows, (stop - 1) // rows + 1):
                lo, hi = max(start, k * rows) - k * rows, min(stop, (k + 1) * rows) - k * rows
                parts.append(np.asarray(shards[k][name])[lo:hi])
            block = parts[0] if len(parts) == 1 else np.concatenate(parts)
            return block[(slice(None), *index[1:])]

        out[name] = jax.make_array_from_callback(global_shape, sharding, rows_of)
    return out


def global_batch_spec(
    shard_spec: Mapping[str, tuple[tuple[int, ...], Any]],
    num_shards: int,
    mesh: Mesh,
    rules: partitioning.AxisRules,
) -> dict[str, jax.ShapeDtypeStruct]:
    """The abstract global batch :func:`global_batch` builds from shards of ``shard_spec``
    (``{feature: (shape, dtype)}``): what the train step is compiled for before data arrives."""
    return {
        name: jax.ShapeDtypeStruct(
            (shape[0] * num_shards, *shape[1:]),
            dtype,
            sharding=partitioning.batch_sharding(mesh, rules, len(shape)),
        )
        for name, (shape, dtype) in shard_spec.items()
    }


def check_matches_spec(
    shards: Mapping[int, HostBatch], shard_spec: Mapping[str, tuple[tuple[int, ...], Any]]
) -> None:
    """The batches the step was compiled for are the batches the data gives (a bug if not)."""
    for batch in shards.values():
        got = {k: (tuple(np.shape(v)), np.dtype(v.dtype)) for k, v in batch.items()}
        want = {k: (tuple(s), np.dtype(d)) for k, (s, d) in shard_spec.items()}
        if got != want:
            raise RuntimeError(f"data batches {got} differ from the element spec {want}")


def replicated_host_batch(
    batch: HostBatch, mesh: Mesh, rules: partitioning.AxisRules
) -> dict[str, jax.Array]:
    """A batch every process holds whole (validation, decoding) as batch-sharded arrays:
    each device takes its rows, so each process computes its share."""
    return global_batch({0: batch}, 1, mesh, rules)


class _ShardIterator(Protocol):
    def __next__(self) -> HostBatch: ...

    def state(self) -> dict[str, Any]: ...

    def restore(
        self,
        state: Mapping[str, Any],
        checkpoint_dir: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> str | None: ...

    def save(self, directory: str, metadata: Mapping[str, Any] | None = None) -> str | None: ...

    def close(self) -> None: ...

    @property
    def element_spec(self) -> dict[str, tuple[tuple[int, ...], Any]]: ...


class ShardedBatches:
    """The shards one process reads, advanced together: ``next()`` gives
    ``{shard index: host batch}`` for :func:`global_batch`.

    ``state()`` is what shard 0's iterator saves (its config names ``num_shards``); every
    shard has consumed the same number of batches, so that one state positions any shard,
    on any process count. ``save_iterators`` / ``restore(..., directory)`` add the O(1) path:
    ``directory/shard_<k>`` holds shard ``k``'s iterator checkpoint, written by its owner
    (``owned``, default every shard read).
    """

    def __init__(
        self,
        make_shard: Callable[[int], _ShardIterator],
        num_shards: int,
        shard_ids: Sequence[int],
        owned: Sequence[int] | None = None,
    ) -> None:
        if not shard_ids:
            raise ValueError("ShardedBatches needs at least one shard to read.")
        self.num_shards = num_shards
        self.shard_ids = list(shard_ids)
        self.owned = list(self.shard_ids if owned is None else owned)
        self._iterators = {k: make_shard(k) for k in self.shard_ids}
        self._save_warned = False

    def __iter__(self) -> Iterator[dict[int, HostBatch]]:
        return self

    def __next__(self) -> dict[int, HostBatch]:
        return {k: next(it) for k, it in self._iterators.items()}

    def state(self) -> dict[str, Any]:
        state = self._iterators[self.shard_ids[0]].state()
        return {**state, "config": {**state["config"], "shard_id": 0}}

    def restore(
        self, state: Mapping[str, Any], directory: str | None = None, step: int | None = None
    ) -> bool:
        """Position every shard where ``state`` says; the data config must match it (the
        shard index aside), else the shard's iterator names the differences.

        With ``directory`` (what :meth:`save_iterators` wrote at ``step``) each shard's
        iterator checkpoint is restored; a shard without a valid one skips to the position
        instead, with one warning saying why. Returns whether no shard had to skip.
        """
        reasons = []
        for k, it in self._iterators.items():
            reason = it.restore(
                {**state, "config": {**state["config"], "shard_id": k}},
                None if directory is None else f"{directory}/shard_{k}",
                {"step": step},
            )
            if reason is not None:
                reasons.append(f"shard {k}: {reason}")
        consumed = int(state["batches_consumed"])
        if reasons:
            log.warning(
                "Data position: skipping %d batches on shard(s) %s to resume (time grows with "
                "the step), because %s",
                consumed, self.shard_ids, "; ".join(reasons),
            )  # fmt: skip
        elif directory is not None:
            log.info(
                "Data position: restored the tf.data iterators of shard(s) %s at batch %d from "
                "%s (no skip)",
                self.shard_ids, consumed, directory,
            )  # fmt: skip
        return not reasons

    def save_iterators(self, directory: str, step: int) -> None:
        """Write the owned shards' iterator checkpoints into ``directory/shard_<k>``
        (synchronously: the iterator must not move meanwhile). A pipeline that cannot be
        checkpointed is warned about once; its resumes then skip."""
        for k in self.owned:
            reason = self._iterators[k].save(f"{directory}/shard_{k}", {"step": step})
            if reason is not None and not self._save_warned:
                self._save_warned = True
                log.warning(
                    "Data position: cannot checkpoint the data iterator of shard %d (%s); "
                    "a resume will skip the consumed batches instead (time grows with the "
                    "step).",
                    k, reason,
                )  # fmt: skip

    @property
    def element_spec(self) -> dict[str, tuple[tuple[int, ...], Any]]:
        """``{feature: (shape, dtype)}`` of one shard's batches (every shard's are alike)."""
        return self._iterators[self.shard_ids[0]].element_spec

    def close(self) -> None:
        """Releases every shard's pipeline now (the position is kept)."""
        for it in self._iterators.values():
            it.close()


def token_count(shards: Mapping[int, HostBatch], num_shards: int) -> float:
    """Non-padding input + target tokens of the global batch, estimated from the shards
    read (exact when a process reads every shard)."""
    total = 0
    for batch in shards.values():
        for name in ("encoder_input_tokens", "decoder_target_tokens"):
            if name in batch:
                total += int(np.count_nonzero(batch[name]))
    return total * num_shards / max(len(shards), 1)
