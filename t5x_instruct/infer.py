"""``python -m t5x_instruct.infer --mode=predict|score --gin_file=... --gin.KEY=VALUE``.

Decodes (``predict``) or scores the targets of (``score``) a JSONL file
(``--gin.infer.input_file=...``) or a task / mixture split; reads ``gin/cli/infer.gin``
(the command's defaults) first. See :func:`t5x_instruct.inference.infer_run.infer`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

MACROS = {"MODEL_DIR": "checkpoint_path", "TASK_FEATURE_LENGTHS": "task_feature_lengths"}


def main(argv: Sequence[str]) -> int:
    from t5x_instruct.cli.runner import run_gin_command, setup_process

    setup_process()  # before jax / absl imports install their own logging
    from t5x_instruct.inference.infer_run import MODES, infer

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--mode", choices=MODES, default=None)
    known, rest = parser.parse_known_args(list(argv))
    return run_gin_command(
        rest,
        infer,
        prog="python -m t5x_instruct.infer",
        description="Decode (--mode=predict) or score (--mode=score) inputs with a checkpoint.",
        defaults=["cli/infer.gin"],
        macros=MACROS,
        extra_bindings=[f"infer.mode='{known.mode}'"] if known.mode else [],
    )


def console_main() -> None:
    sys.exit(main(sys.argv[1:]))


if __name__ == "__main__":
    console_main()
