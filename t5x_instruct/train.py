"""``python -m t5x_instruct.train --gin_file=... --gin.KEY=VALUE``: the training CLI.

Exit status: 0 when the run finished, 2 for bad input (including an unwritable MODEL_DIR,
or one whose checkpoints are all damaged),
:data:`~t5x_instruct.errors.STORAGE_ERROR_EXIT_CODE` (3) when the storage refused a write
(disk full, quota; checkpoint, metrics, summary: the previous checkpoint is kept, rerun to
resume from it) and
:data:`~t5x_instruct.runtime.preemption.PREEMPTED_EXIT_CODE` (42) when SIGTERM stopped it
after saving a checkpoint (rerun the same command to continue). Each error is one line
``error: ...`` on stderr. Multi-host flags:
``--coordinator_address=host:port --num_processes=N --process_id=i`` (see
:mod:`t5x_instruct.runtime.distributed`; auto-detected on TPU VMs, SLURM and Open MPI).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str]) -> int:
    from t5x_instruct.cli.runner import setup_process

    setup_process()  # logging, quiet start-up, `tasks/` importable
    from t5x_instruct.cli.compilation_cache import compilation_cache
    from t5x_instruct.cli.gin_flags import call_with_required_macros, configure
    from t5x_instruct.errors import (
        STORAGE_ERROR_EXIT_CODE,
        storage_failure_message,
        user_error_message,
    )
    from t5x_instruct.runtime import distributed
    from t5x_instruct.runtime.preemption import PREEMPTED_EXIT_CODE
    from t5x_instruct.training.loop import train

    try:
        flags, argv = distributed.split_flags(argv)
        configure(argv)
        compilation_cache()  # before the first compile
        distributed.initialize(flags)  # before anything starts a JAX backend
        summary = call_with_required_macros(train)
    except Exception as exc:
        # A write refused by the storage (disk full...; the last checkpoint is kept) and bad
        # input are one line each (gin appends "In call to configurable ..." lines; a
        # UserInputError raised inside tf.data arrives wrapped); a bug keeps its traceback.
        storage = storage_failure_message(exc)
        if storage is not None:
            print(f"error: {storage}", file=sys.stderr)
            return STORAGE_ERROR_EXIT_CODE
        message = user_error_message(exc)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2
    return PREEMPTED_EXIT_CODE if summary.get("preempted") else 0


def console_main() -> None:
    sys.exit(main(sys.argv[1:]))


if __name__ == "__main__":
    console_main()
