"""``python -m t5x_instruct.train --gin_file=... --gin.KEY=VALUE``: the training CLI."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def main(argv: Sequence[str]) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for noisy in ("absl", "jax._src", "orbax", "tensorflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # `tasks/` (SeqIO registrations) lives beside the package; gin files import from it.
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))

    from t5x_instruct.cli.gin_flags import call_with_required_macros, configure
    from t5x_instruct.errors import UserInputError
    from t5x_instruct.training.loop import train

    try:
        configure(argv)
        call_with_required_macros(train)
    except UserInputError as exc:
        # Gin appends "In call to configurable ..." lines; the first line is the message.
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    return 0


def console_main() -> None:
    sys.exit(main(sys.argv[1:]))


if __name__ == "__main__":
    console_main()
