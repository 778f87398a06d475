"""Lists registered tasks and mixtures with their sizes (when known) and rates.

.venv/bin/python tools/list_tasks.py --filter '^flan2021'
.venv/bin/python tools/list_tasks.py --filter 'rte' --module tasks.flan
"""

from __future__ import annotations

import argparse
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _size(task, split: str) -> str:
    """Examples in ``split`` if the source knows without reading data, else '?'."""
    if split not in task.splits:
        return "-"
    try:
        n = task.source.num_input_examples(split)
    except Exception:
        n = None
    return "?" if n is None else str(n)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--filter", default="", help="regular expression on names")
    parser.add_argument(
        "--module",
        action="append",
        default=None,
        help="task module to import (repeatable); default tasks.demo, tasks.flan",
    )
    parser.add_argument("--split", default="train", help="split whose size is shown")
    parser.add_argument("--kind", choices=("all", "tasks", "mixtures"), default="all")
    args = parser.parse_args(argv)

    import seqio

    from t5x_instruct import data

    data.import_task_modules(args.module or ["tasks.demo", "tasks.flan"])
    pattern = re.compile(args.filter)
    mixtures = sorted(n for n in seqio.MixtureRegistry.names() if pattern.search(n))
    tasks = sorted(n for n in seqio.TaskRegistry.names() if pattern.search(n))
    if args.kind in ("all", "mixtures"):
        print(f"{'mixture':<48} {'tasks':>6} {'total rate':>12}")
        for name in mixtures:
            mix = seqio.get_mixture_or_task(name)
            print(f"{name:<48} {len(mix.tasks):>6} {mix.total_rate:>12.1f}")
        print(f"({len(mixtures)} mixtures)\n")
    if args.kind in ("all", "tasks"):
        print(f"{'task':<56} {'group':<18} {args.split + ' size':>12}  splits")
        for name in tasks:
            task = seqio.get_mixture_or_task(name)
            print(
                f"{name:<56} {data.task_group(name):<18} {_size(task, args.split):>12}  "
                f"{','.join(task.splits)}"
            )
        print(f"({len(tasks)} tasks)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
