"""What the eval and infer command lines share with train's: logging, the repository on
``sys.path``, gin files with ``--gin.`` bindings, and bad input as one line and exit 2."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]


def setup_process() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for noisy in ("absl", "jax._src", "orbax", "tensorflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # `tasks/` (SeqIO registrations) lives beside the package; gin files import from it.
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from t5x_instruct.cli.quiet import quiet_startup

    quiet_startup()  # TensorFlow's C++ start-up lines filtered (it is imported here)


def run_gin_command(
    argv: Sequence[str],
    fn: Callable[[], Any],
    *,
    prog: str,
    description: str,
    defaults: Sequence[str],
    macros: Mapping[str, str | None],
    extra_bindings: Sequence[str] = (),
) -> int:
    """Parse ``defaults`` then the command line's gin files, call ``fn`` (a configurable).

    Returns the exit status: 0, or 2 after printing a :class:`UserInputError` as one line.
    """
    setup_process()
    # Run files and a run's config.gin also bind the trainer's configurables.
    import t5x_instruct.training.loop  # noqa: F401
    from t5x_instruct.cli.compilation_cache import compilation_cache
    from t5x_instruct.cli.gin_flags import call_with_required_macros, configure
    from t5x_instruct.errors import user_error_message
    from t5x_instruct.runtime import distributed

    try:
        flags, argv = distributed.split_flags(argv)
        configure(
            [*argv, *(f"--gin.{b}" for b in extra_bindings)],
            defaults=defaults,
            prog=prog,
            description=description,
        )
        compilation_cache()  # before the first compile
        distributed.initialize(flags)  # multi-host flags; before any JAX backend starts
        call_with_required_macros(fn, macros)
    except Exception as exc:
        # Gin appends "In call to configurable ..." lines; the first line is the message.
        # A UserInputError raised inside tf.data arrives wrapped in TensorFlow's error.
        message = user_error_message(exc)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2
    return 0
