"""Coordinated preemption: SIGTERM on any process -> every process saves the same step.

A scheduler preempting a job (Cloud TPU maintenance, SLURM ``scancel``, Kubernetes) sends
SIGTERM, possibly to only one host. Each process must then save the *same* step, or the
processes that did not see the signal block forever in the next step's collectives while
the others are saving. Two ways to agree:

* multi-process (``jax.distributed`` initialized): JAX's preemption sync manager. Its
  notifier catches SIGTERM in C++, tells the coordination service, and
  ``multihost_utils.reached_preemption_sync_point(step)`` turns true on every process at the
  same step (the largest step any process had reached, plus one). It costs nothing per step
  (no device synchronisation), and no Python SIGTERM handler may be installed over it.
* one process: a Python SIGTERM handler sets a flag the loop polls after each step.

If the sync manager is switched off (``jax_enable_preemption_service=False``) in a
multi-process run, each process's flag is combined by an all-gather every step instead.

A preempted run exits with :data:`PREEMPTED_EXIT_CODE` after its checkpoint is written, so a
scheduler can tell it from a finished run (exit 0) and restart it on the same MODEL_DIR.
"""

from __future__ import annotations

import logging
import signal
from typing import Any

from t5x_instruct.runtime import lockstep

log = logging.getLogger(__name__)

# The exit status of a run that stopped for SIGTERM after saving its checkpoint (0: finished,
# 2: bad input, 3: the storage refused a write). Restart the same command to continue.
PREEMPTED_EXIT_CODE = 42


def _sync_manager() -> Any:
    from jax._src import distributed as jax_distributed

    return jax_distributed.global_state.preemption_sync_manager


class PreemptionGuard:
    """``with PreemptionGuard(start_step) as guard: ... if guard.should_stop(step): break``.

    Every process must call :meth:`should_stop` once per step with the same step numbers
    (the step just completed); all of them get ``True`` at the same step. ``start_step``
    (the restored step) is reported on entry: JAX's sync manager keeps the last step it was
    given for the life of the process, and a stale one from an earlier run in the same
    process would put the agreed step out of this run's reach.
    """

    def __init__(self, start_step: int = 0) -> None:
        self.start_step = start_step
        self.requested = False  # this process saw SIGTERM (Python handler paths only)
        self.stopped_at: int | None = None
        self._previous: Any = None
        self._installed = False
        self._mode = "local"

    def __enter__(self) -> PreemptionGuard:
        import jax

        multi = jax.process_count() > 1
        if multi and _sync_manager() is not None:
            self._mode = "jax_sync_point"  # the C++ notifier owns SIGTERM
            self.should_stop(self.start_step)  # a notice during start-up stops here
            return self
        self._mode = "allgather" if multi else "local"
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
            self._installed = True
        except ValueError:  # not the main thread (e.g. inside a notebook worker)
            log.warning("SIGTERM handler not installed (not the main thread)")
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        del signum, frame
        self.requested = True

    def should_stop(self, step: int) -> bool:
        """Whether every process agrees to stop (and save) after ``step``."""
        if self.stopped_at is not None:
            return True
        if self._mode == "jax_sync_point":
            from jax.experimental import multihost_utils

            stop = bool(multihost_utils.reached_preemption_sync_point(step))
        elif self._mode == "allgather":
            stop = bool(lockstep.processes_where(self.requested))
        else:
            stop = self.requested
        if stop:
            self.stopped_at = step
        return stop

    @property
    def preempted(self) -> bool:
        return self.stopped_at is not None

    def __exit__(self, *exc: Any) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous)
            self._installed = False
