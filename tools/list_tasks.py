"""Lists registered tasks and mixtures with their sizes (when known) and rates.

.venv/bin/python tools/list_tasks.py --filter '^flan2021'
.venv/bin/python tools/list_tasks.py --filter 'rte' --module tasks.flan
.venv/bin/python tools/list_tasks.py --module tasks.xp3 --compute-rates   # counts the files

Listing reads no data: a mixture whose rates are counted from its data (xP3's temperature
mixing without given sizes) shows 'lazy' unless --compute-rates asks to count them now.
Unreachable data (offline, a missing path) is one error line naming what to point where.
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


LAZY = "lazy"


def _total_rate(mixture, compute: bool) -> str:
    """The mixture's summed rates; ``LAZY`` if one must count data and ``compute`` is off."""
    import seqio

    total = 0.0
    for name, rate in mixture.rate_per_task_name.items():
        if callable(rate):
            if getattr(rate, "reads_data", False) and not compute:
                return LAZY
            rate = rate(seqio.TaskRegistry.get(name))
        total += float(rate)
    return f"{total:.1f}"


def main(argv: list[str] | None = None) -> int:
    from t5x_instruct.errors import UserInputError

    try:
        return _main(argv)
    except UserInputError as exc:
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2


def _main(argv: list[str] | None) -> int:
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
    parser.add_argument(
        "--compute-rates",
        action="store_true",
        help="count the data of mixtures whose rates depend on it (instead of 'lazy')",
    )
    args = parser.parse_args(argv)

    from t5x_instruct.cli.quiet import quiet_startup

    quiet_startup()
    import seqio

    from t5x_instruct import data

    data.import_task_modules(args.module or ["tasks.demo", "tasks.flan"])
    pattern = re.compile(args.filter)
    mixtures = sorted(n for n in seqio.MixtureRegistry.names() if pattern.search(n))
    tasks = sorted(n for n in seqio.TaskRegistry.names() if pattern.search(n))
    if args.kind in ("all", "mixtures"):
        rows = []
        for name in mixtures:
            mix = seqio.get_mixture_or_task(name)
            rate = _total_rate(mix, args.compute_rates)
            rows.append(f"{name:<48} {len(mix.tasks):>6} {rate:>12}")
        note = ""
        if any(row.endswith(LAZY) for row in rows):
            note = f"  ({LAZY}: counted from the data when first read; --compute-rates counts now)"
        print(f"{'mixture':<48} {'tasks':>6} {'total rate':>12}{note}")
        for row in rows:
            print(row)
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
