"""Mixture ablations: from a sweep file to a results table and plots (docs/ablations.md).

  JAX_PLATFORMS=cpu .venv/bin/python tools/ablate.py inspect gin/ablations/tasks_and_templates.yaml
  JAX_PLATFORMS=cpu .venv/bin/python tools/ablate.py run gin/ablations/tasks_and_templates.yaml \
      --out_dir=/tmp/ablation
  .venv/bin/python tools/ablate.py report --out_dir=/tmp/ablation
  JAX_PLATFORMS=cpu .venv/bin/python tools/ablate.py commands SWEEP --out_dir=gs://bucket/abl

``inspect`` shows every variant's effective sampling proportions per task and source;
``run`` trains the variants one after another (finished ones are skipped, a killed one
resumes from its checkpoint) and then writes the report; ``commands`` prints one training
command per variant instead; ``report`` (re)writes results.md / results.csv / runs.csv and
the PNG plots from the run folders. Every sweep error is reported before anything trains.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ROOT = "/tmp/t5x_instruct_ablation"


def _resolve(sweep: str):
    from t5x_instruct.ablation import SeqioCatalog, load_sweep, resolve_sweep

    spec = load_sweep(sweep)
    catalog = SeqioCatalog(spec.task_modules)
    return spec, resolve_sweep(spec, catalog)


def _out_dir(args: argparse.Namespace, name: str) -> Path:
    return Path(args.out_dir) if args.out_dir else Path(DEFAULT_ROOT) / name


def _select(variants, only: str | None):
    if not only:
        return variants
    chosen = [v for v in variants if only in v.name]
    if not chosen:
        from t5x_instruct.errors import UserInputError

        raise UserInputError(
            f"--only={only!r} matches no variant; variants: {[v.name for v in variants]}"
        )
    return chosen


def cmd_inspect(args: argparse.Namespace) -> int:
    from t5x_instruct.ablation.inspection import format_inspection

    spec, variants = _resolve(args.sweep)
    print(f"Sweep {spec.name} ({spec.path}, mode {spec.mode})")
    print(format_inspection(variants, spec.clusters, details=args.details))
    return 0


def cmd_commands(args: argparse.Namespace) -> int:
    from t5x_instruct.ablation.runner import get_launcher, write_manifest

    spec, variants = _resolve(args.sweep)
    out = _out_dir(args, spec.name)
    if not str(out).startswith("gs://"):
        write_manifest(out, spec, variants)  # so that `report` works on the finished folders
    launcher = get_launcher(spec.launcher, spec.path)
    for v in _select(variants, args.only):
        print(shlex.join(launcher.command(v, os.path.join(str(out), v.name))))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from t5x_instruct.ablation.report import write_report
    from t5x_instruct.ablation.runner import get_launcher, run_sweep, write_manifest

    spec, variants = _resolve(args.sweep)
    out = _out_dir(args, spec.name)
    write_manifest(out, spec, variants)
    kwargs = {"in_process": True} if args.in_process else {}
    launcher = get_launcher(spec.launcher, spec.path, **kwargs)
    statuses = run_sweep(_select(variants, args.only), out, launcher, keep_going=args.keep_going)
    paths = write_report(out, plots=not args.no_plots)
    print((out / "results.md").read_text(encoding="utf-8"))
    print("Wrote " + ", ".join(str(p) for p in paths.values()), file=sys.stderr)
    return 1 if "failed" in statuses.values() else 0


def cmd_report(args: argparse.Namespace) -> int:
    from t5x_instruct.ablation.report import write_report

    if args.out_dir:
        out = Path(args.out_dir)
    elif args.sweep:
        from t5x_instruct.ablation import load_sweep

        out = Path(DEFAULT_ROOT) / load_sweep(args.sweep).name
    else:
        from t5x_instruct.errors import UserInputError

        raise UserInputError("report needs the sweep file or --out_dir.")
    paths = write_report(out, plots=not args.no_plots, metric=args.metric)
    print(paths["markdown"].read_text(encoding="utf-8"))
    print("Wrote " + ", ".join(str(p) for p in paths.values()), file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tools/ablate.py", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("inspect", help="effective proportions of every variant")
    p.add_argument("sweep")
    p.add_argument("--details", action="store_true", help="each mixture's rate arithmetic")
    p.set_defaults(fn=cmd_inspect)
    for name, fn, text in (
        ("run", cmd_run, "train every unfinished variant, then report"),
        ("commands", cmd_commands, "print one training command per variant"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("sweep")
        p.add_argument("--out_dir", default=None, help=f"default {DEFAULT_ROOT}/<sweep name>")
        p.add_argument("--only", default=None, help="only variants whose name contains this")
        p.set_defaults(fn=fn)
        if name == "run":
            p.add_argument("--keep_going", action="store_true", help="continue after a failure")
            p.add_argument("--in_process", action="store_true", help="train in this process")
            p.add_argument("--no_plots", action="store_true")
    p = sub.add_parser("report", help="results table (Markdown + CSV) and plots")
    p.add_argument("sweep", nargs="?", default=None)
    p.add_argument("--out_dir", default=None)
    p.add_argument("--metric", default=None, help="default: each task's primary metric")
    p.add_argument("--no_plots", action="store_true")
    p.set_defaults(fn=cmd_report)
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))  # `tasks/` lives beside the package
    from t5x_instruct.errors import UserInputError

    try:
        return args.fn(args)
    except UserInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
