"""Running a sweep: one launch per variant, resumable, with progress and an ETA on stderr.

A variant's folder is ``<out_dir>/<variant name>`` and is its ``MODEL_DIR``. A variant whose
``summary.json`` exists is finished and skipped; any other is (re)launched into the same
folder, where the trainer resumes from the latest checkpoint, so a killed sweep continues
with the variant it was running. Launchers are pluggable (:func:`register_launcher`): the
local one runs ``python -m t5x_instruct.train`` in a subprocess (or in this process); a
cluster / TPU-VM launcher would implement the same two methods.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, TextIO

from t5x_instruct.ablation.resolve import ResolvedVariant
from t5x_instruct.errors import UserInputError

REPO = Path(__file__).resolve().parents[2]
MANIFEST = "sweep.json"


class Launcher(Protocol):
    """Starts one variant's training. ``command`` is what ``tools/ablate.py commands``
    prints; ``run`` trains to completion (blocking) and returns the exit status."""

    def command(self, variant: ResolvedVariant, model_dir: str) -> list[str]: ...

    def run(self, variant: ResolvedVariant, model_dir: str, log_path: Path) -> int: ...


def train_args(
    variant: ResolvedVariant,
    model_dir: str,
    extra: Sequence[str] = (),
    gin_files: Sequence[str] | None = None,
) -> list[str]:
    """The trainer's command-line arguments for ``variant`` (gin files, then bindings)."""
    args = [f"--gin_file={f}" for f in (variant.gin_files if gin_files is None else gin_files)]
    args.append(f"--gin.MODEL_DIR={model_dir!r}")
    args += [f"--gin.{key}={value}" for key, value in variant.bindings.items()]
    return args + list(extra)


class LocalLauncher:
    """Trains on this machine: a ``python -m t5x_instruct.train`` subprocess per variant
    (run from the repository root), or ``in_process`` (tests; shares JAX's caches)."""

    def __init__(self, *, in_process: bool = False, python: str = sys.executable) -> None:
        self.in_process = in_process
        self.python = python

    def command(self, variant: ResolvedVariant, model_dir: str) -> list[str]:
        return ["python", "-m", "t5x_instruct.train", *train_args(variant, model_dir)]

    def run(self, variant: ResolvedVariant, model_dir: str, log_path: Path) -> int:
        quiet = ["--gin.train.progress_bar=False"]  # a log file has no use for a live bar
        if self.in_process:
            return self._run_in_process(variant, model_dir, log_path, quiet)
        cmd = [self.python, "-m", "t5x_instruct.train", *train_args(variant, model_dir, quiet)]
        env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}
        with open(log_path, "a", encoding="utf-8") as log:
            log.write("$ " + shlex.join(cmd) + "\n")
            log.flush()
            return subprocess.run(
                cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
            ).returncode

    def _run_in_process(
        self, variant: ResolvedVariant, model_dir: str, log_path: Path, extra: list[str]
    ) -> int:
        from t5x_instruct import train

        files = [str(REPO / f) if (REPO / f).exists() else f for f in variant.gin_files]
        args = train_args(variant, model_dir, extra, gin_files=files)
        with open(log_path, "a", encoding="utf-8") as log, contextlib.redirect_stdout(log):
            return train.main(args)


LAUNCHERS: dict[str, Callable[..., Launcher]] = {"local": LocalLauncher}


def register_launcher(name: str, factory: Callable[..., Launcher]) -> None:
    """Makes ``launcher: <name>`` available to sweep files (e.g. a TPU-VM launcher)."""
    LAUNCHERS[name] = factory


def get_launcher(name: str, sweep_path: str, **kwargs: Any) -> Launcher:
    if name not in LAUNCHERS:
        raise UserInputError(
            f"{sweep_path}: launcher: unknown launcher {name!r}; available: "
            f"{sorted(LAUNCHERS)} (add one with t5x_instruct.ablation.register_launcher)."
        )
    return LAUNCHERS[name](**kwargs)


def is_finished(run_dir: Path) -> bool:
    """A variant is finished once its final evaluation wrote ``summary.json``."""
    path = run_dir / "summary.json"
    if not path.exists():
        return False
    try:
        return "eval" in json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False


def write_manifest(out_dir: Path, spec: Any, variants: Sequence[ResolvedVariant]) -> Path:
    """``sweep.json``: what the report needs, without re-resolving the sweep."""
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = {
        "sweep": spec.name,
        "path": spec.path,
        "description": spec.description,
        "mode": spec.mode,
        "axes": [{"setting": a.setting, "labels": a.labels()} for a in spec.axes],
        "base": {a.setting: spec.base.get(a.setting, a.labels()[0]) for a in spec.axes},
        "variants": [v.record() for v in variants],
    }
    path = out_dir / MANIFEST
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    os.replace(tmp, path)
    return path


def variant_seconds(run_dir: Path) -> float | None:
    """Total training wall time over every attempt of a variant (``run.json``)."""
    path = run_dir / "run.json"
    if not path.exists():
        return None
    attempts = json.loads(path.read_text(encoding="utf-8")).get("attempts", [])
    return sum(a["seconds"] for a in attempts) if attempts else None


def _record_attempt(run_dir: Path, seconds: float, rc: int, started: str) -> None:
    path = run_dir / "run.json"
    record = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    record.setdefault("attempts", []).append({"started": started, "seconds": seconds, "rc": rc})
    path.write_text(json.dumps(record, indent=1), encoding="utf-8")


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def run_sweep(
    variants: Sequence[ResolvedVariant],
    out_dir: Path,
    launcher: Launcher,
    *,
    keep_going: bool = False,
    stream: TextIO | None = None,
) -> dict[str, str]:
    """Runs every unfinished variant in order; returns ``{variant: status}`` with status
    ``skipped`` (finished earlier), ``done`` or ``failed``."""
    stream = stream or sys.stderr
    n = len(variants)
    statuses: dict[str, str] = {}
    durations = [
        s
        for v in variants
        if is_finished(out_dir / v.name) and (s := variant_seconds(out_dir / v.name)) is not None
    ]

    def say(message: str) -> None:
        print(f"[ablate] {message}", file=stream, flush=True)

    for i, variant in enumerate(variants, 1):
        run_dir = out_dir / variant.name
        prefix = f"{i}/{n} {variant.name}"
        if is_finished(run_dir):
            statuses[variant.name] = "skipped"
            say(f"{prefix}: finished earlier, skipped")
            continue
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "variant.json").write_text(
            json.dumps(variant.record(), indent=1), encoding="utf-8"
        )
        left = sum(1 for v in variants[i - 1 :] if not is_finished(out_dir / v.name))
        eta = (
            f"ETA {_duration(left * sum(durations) / len(durations))} for {left} left"
            if durations
            else "ETA after the first variant"
        )
        resumed = " (resuming)" if (run_dir / "checkpoints").exists() else ""
        say(f"{prefix}: training{resumed}; {eta}; log {run_dir / 'train.log'}")
        started = datetime.datetime.now().isoformat(timespec="seconds")
        t0 = time.perf_counter()
        rc = launcher.run(variant, str(run_dir), run_dir / "train.log")
        seconds = time.perf_counter() - t0
        _record_attempt(run_dir, seconds, rc, started)
        if rc == 0 and is_finished(run_dir):
            statuses[variant.name] = "done"
            total = variant_seconds(run_dir) or seconds
            durations.append(total)
            say(f"{prefix}: done in {_duration(seconds)}")
            continue
        statuses[variant.name] = "failed"
        why = f"exit {rc}" if rc else "exit 0 but no summary.json: is train.final_eval off?"
        say(f"{prefix}: FAILED ({why}) after {_duration(seconds)}; see {run_dir / 'train.log'}")
        if not keep_going:
            break
    return statuses
