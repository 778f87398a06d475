"""``python -m t5x_instruct.eval --gin_file=... --gin.KEY=VALUE``: evaluate checkpoints.

Reads ``gin/cli/eval.gin`` (the command's defaults) and then the training run's gin files
(or its ``MODEL_DIR/config.gin``); see :func:`t5x_instruct.inference.eval_run.evaluate`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

MACROS = {
    "MODEL_DIR": "checkpoint_path",
    "MIXTURE_OR_TASK_NAME": "mixture_or_task_name",
    "TASK_FEATURE_LENGTHS": "task_feature_lengths",
}


def main(argv: Sequence[str]) -> int:
    from t5x_instruct.cli.runner import run_gin_command, setup_process

    setup_process()  # before jax / absl imports install their own logging
    from t5x_instruct.inference.eval_run import evaluate

    return run_gin_command(
        argv,
        evaluate,
        prog="python -m t5x_instruct.eval",
        description="Evaluate checkpoints of a MODEL_DIR on a task or mixture.",
        defaults=["cli/eval.gin"],
        macros=MACROS,
    )


def console_main() -> None:
    sys.exit(main(sys.argv[1:]))


if __name__ == "__main__":
    console_main()
