"""Programs every process of a multi-host job runs together, and a barrier between them.

Compilation times differ between hosts, and the first collective of a program waits for the
slowest one; CPU (gloo) collectives give up after 30 s. :class:`CompiledTogether` compiles
each new input signature ahead of time on every process and meets at a :func:`barrier`
before the first run. On real pods it only costs one coordination round per program.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_barrier_count = 0


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
