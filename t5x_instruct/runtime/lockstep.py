"""Programs every process of a multi-host job runs together, and a barrier between them.

Compilation times differ between hosts, and the first collective of a program waits for the
slowest one; CPU (gloo) collectives give up after 30 s. :class:`CompiledTogether` compiles
each new input signature ahead of time on every process and meets at a :func:`barrier`
before the first run. On real pods it only costs one coordination round per program.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

_barrier_count = 0
T = TypeVar("T")


def barrier(name: str, *, timeout_s: int = 3600) -> None:
    """Every process waits here for the others (the coordination service; no device work).
    A no-op in a single-process run."""
    import jax

    global _barrier_count
    if jax.process_count() == 1:
        return
    from jax._src import distributed as jax_distributed

    _barrier_count += 1  # ids must be unique per use
    client = jax_distributed.global_state.client
    client.wait_at_barrier(f"t5x_instruct:{name}:{_barrier_count}", timeout_in_ms=timeout_s * 1000)


class CompiledTogether:
    """A jitted function whose programs every process compiles before any of them runs one
    (one process: the jitted function as it is)."""

    def __init__(self, jitted: Any, name: str) -> None:
        self._jitted = jitted
        self._name = name
        self._compiled: dict[Any, Any] = {}

    def __call__(self, *args: Any) -> Any:
        import jax

        if jax.process_count() == 1:
            return self._jitted(*args)
        leaves, treedef = jax.tree.flatten(args)
        key = (
            treedef,
            tuple((np.shape(x), str(getattr(x, "dtype", type(x))), getattr(x, "sharding", None))
                  for x in leaves),
        )  # fmt: skip
        compiled = self._compiled.get(key)
        if compiled is None:
            compiled = self._jitted.lower(*args).compile()
            barrier(f"compiled:{self._name}")
            self._compiled[key] = compiled
        return compiled(*args)


def processes_where(flag: bool) -> list[int]:
    """The indices of the processes on which ``flag`` holds: one all-gather, which every
    process must reach (one process: no collective)."""
    import jax

    if jax.process_count() == 1:
        return [0] if flag else []
    from jax.experimental import multihost_utils

    flags = multihost_utils.process_allgather(np.asarray(int(flag), np.int32))
    return [index for index, value in enumerate(np.ravel(flags)) if value]


def write_together(what: str, write: Callable[[], T] | None) -> T | None:
    """``write()`` here (``None``: this process writes nothing, e.g. not process 0); every
    process raises if the write failed on any of them. Every process calls this at the same
    point, and gets ``write``'s result (``None`` where it had none).

    Process 0 alone writes metrics, the run's config and its summary: when its storage refuses
    a write (an ``OSError``), the others would otherwise run on into the next step's
    collectives and wait there until the coordination service times out. One all-gather of a
    flag (at each log point, not each step) lets them stop at once, with a
    :class:`~t5x_instruct.errors.StorageError` naming the process that failed. One process:
    ``write``'s error propagates unchanged.
    """
    import jax

    result, error = None, None
    try:
        result = write() if write is not None else None
    except OSError as err:
        error = err
    failed = processes_where(error is not None)
    if error is not None:
        raise error
    if failed:
        from t5x_instruct.errors import RERUN_HINT, StorageError

        raise StorageError(
            f"{what} failed on process {failed[0]} (its log says why); process "
            f"{jax.process_index()} stops with it: {RERUN_HINT}"
        )
    return result
