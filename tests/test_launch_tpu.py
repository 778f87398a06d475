"""tools/launch_tpu.py: the gcloud commands it prints and runs, and the script each worker runs.

Oracles: the printed plan is read back with the test's own parser (shlex for command lines,
the quoted here-document taken verbatim), and real ``bash`` runs both the printed plan and
the worker script; ``gcloud`` is always a fake that records its argv (never the real one).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import stat
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from t5x_instruct.cli import tpu_launch

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / "tools" / "launch_tpu.py"
GIN_FILES = ["gin/models/t5_1_1/base.gin", "gin/runs/finetune.gin"]
BINDINGS = [
    "--gin.MIXTURE_OR_TASK_NAME='demo_instructions'",
    "--gin.TASK_FEATURE_LENGTHS={'inputs': 512, 'targets': 128}",
    "--gin.TRAIN_STEPS=20000",
]
BASE = [
    "--tpu=demo-pod",
    "--zone=us-west4-a",
    "--accelerator_type=v5litepod-16",
    "--model_dir=gs://demo-bucket/runs/flan",
    *(f"--gin_file={f}" for f in GIN_FILES),
    *BINDINGS,
]
GCLOUD_TPU = ["gcloud", "compute", "tpus", "tpu-vm"]


def head_commit() -> str:
    return subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()


def parse_plan(text: str) -> list[tuple[str, list[str]]]:
    """(step, argv) for every command of a printed plan, as a POSIX shell would read it."""
    commands, step = [], None
    lines = iter(text.splitlines())
    for line in lines:
        if line.startswith("# "):
            step = line[2:].split(":")[0]
        if not line.strip() or line.startswith("#"):
            continue
        opener = "--command=\"$(cat <<'REMOTE'"
        if line.endswith(opener):
            body = []
            for inner in lines:
                if inner == "REMOTE":
                    break
                body.append(inner)
            assert next(lines) == ')"'
            argv = [*shlex.split(line[: -len(opener)]), "--command=" + "\n".join(body)]
        else:
            argv = shlex.split(line)
        commands.append((step, argv))
    return commands


def payload(argv: list[str]) -> str:
    (arg,) = [a for a in argv if a.startswith("--command=")]
    return arg.removeprefix("--command=")


def worker_argv(script: str) -> list[str]:
    """The program line of the worker script, split as the worker's shell would split it."""
    joined = script.replace("\\\n", "")  # bash drops backslash-newline before splitting
    (line,) = [ln for ln in joined.splitlines() if " -m t5x_instruct." in ln]
    words = shlex.split(line)
    assert words[-1] == "&"
    words = words[:-1]
    if words[0] == "env":
        words = words[1:]
        while re.fullmatch(r"[A-Za-z_]\w*=.*", words[0], re.DOTALL):
            words = words[1:]
    return words


def expected_worker_argv(gin_refs: list[str], module: str = "train") -> list[str]:
    return [
        "../t5x_instruct_venv/bin/python", "-m", f"t5x_instruct.{module}",
        *(f"--gin_file={ref}" for ref in gin_refs),
        *BINDINGS,
        "--gin.MODEL_DIR=gs://demo-bucket/runs/flan",
    ]  # fmt: skip


def test_dry_run_prints_create_install_and_the_same_command_on_every_worker(capsys) -> None:
    assert tpu_launch.main(BASE) == 0
    out = capsys.readouterr().out
    assert "v5litepod-16 in us-west4-a, 4 worker(s)" in out
    commands = parse_plan(out)
    assert [step for step, _ in commands] == ["create", "install", "install", "install", "train"]

    assert commands[0][1] == [
        *GCLOUD_TPU, "create", "demo-pod", "--accelerator-type=v5litepod-16",
        "--version=v2-alpha-tpuv5-lite", "--zone=us-west4-a",
    ]  # fmt: skip
    rev = head_commit()
    archive, scp, install = (argv for _, argv in commands[1:4])
    assert archive[:5] == ["git", "-C", str(REPO), "archive", "--format=tar.gz"]
    assert archive[-1] == rev and archive[5].endswith(f"t5x_instruct-{rev[:12]}.tar.gz")
    assert scp == [
        *GCLOUD_TPU, "scp", archive[5].removeprefix("--output="), "demo-pod:t5x_instruct.tar.gz",
        "--worker=all", "--zone=us-west4-a",
    ]  # fmt: skip
    assert install[:8] == [*GCLOUD_TPU, "ssh", "demo-pod", "--worker=all", "--zone=us-west4-a"]
    script = payload(install)
    assert "tar -xzf t5x_instruct.tar.gz -C t5x_instruct" in script
    assert shlex.split(script.splitlines()[-2])[-2:] == ["-e", "./t5x_instruct[gcs,tpu]"]

    train = commands[4][1]
    assert train[:8] == [*GCLOUD_TPU, "ssh", "demo-pod", "--worker=all", "--zone=us-west4-a"]
    # In-checkout gin files identical to the commit are used in place; bindings round-trip.
    assert worker_argv(payload(train)) == expected_worker_argv(GIN_FILES)


def test_uploaded_gin_file_capacity_project_version_and_module(tmp_path, capsys) -> None:
    own = tmp_path / "my_experiment.gin"
    own.write_text("TRAIN_STEPS = 10\n")
    argv = [*BASE, f"--gin_file={own}", "--spot", "--project=my-proj", "--version=v2-custom",
            "--module=eval", "--steps=create,train,status,stop,delete"]  # fmt: skip
    assert tpu_launch.main(argv) == 0
    commands = parse_plan(capsys.readouterr().out)
    steps = [step for step, _ in commands]
    assert steps == ["create", "train", "train", "train", "status", "stop", "delete"]
    assert all(a[:4] == GCLOUD_TPU and "--project=my-proj" in a for _, a in commands)
    create = commands[0][1]
    assert "--spot" in create and "--version=v2-custom" in create
    assert payload(commands[1][1]) == "mkdir -p t5x_instruct/launch_gin"
    assert commands[2][1][4:7] == ["scp", str(own), "demo-pod:t5x_instruct/launch_gin/"]
    start = payload(commands[3][1])
    refs = [*GIN_FILES, "launch_gin/my_experiment.gin"]
    assert worker_argv(start) == expected_worker_argv(refs, module="eval")
    assert ">> ../t5x_instruct_logs/eval.log" in start
    assert commands[-1][1][4:7] == ["delete", "demo-pod", "--quiet"]


def test_repo_install_clones_the_commit_on_every_worker(capsys) -> None:
    """--repo: no archive, each worker clones; --gin.MODEL_DIR works like --model_dir."""
    argv = [a for a in BASE if not a.startswith("--model_dir")]
    url = "https://example.com/me/t5x_instruct.git"
    argv += ["--gin.MODEL_DIR=gs://demo-bucket/runs/flan", f"--repo={url}", "--rev=HEAD"]
    assert tpu_launch.main([*argv, "--steps=install,train"]) == 0
    commands = parse_plan(capsys.readouterr().out)
    assert [step for step, _ in commands] == ["install", "train"]
    script = payload(commands[0][1]).splitlines()
    assert shlex.split(script[2]) == ["git", "clone", "--quiet", url, "t5x_instruct"]
    assert shlex.split(script[3])[-1] == head_commit()
    assert worker_argv(payload(commands[1][1])) == expected_worker_argv(GIN_FILES)


@pytest.mark.parametrize(
    ("name", "cloud_name", "workers", "version"),
    [
        ("v4-32", "v4-32", 4, "tpu-ubuntu2204-base"),
        ("v5p-128", "v5p-128", 16, "v2-alpha-tpuv5"),
        ("v5litepod-8", "v5litepod-8", 1, "v2-alpha-tpuv5-lite"),
        ("v5e-256", "v5litepod-256", 64, "v2-alpha-tpuv5-lite"),
        ("v6e-64", "v6e-64", 16, "v2-alpha-tpuv6e"),
        ("v3-32", "v3-32", 4, "tpu-ubuntu2204-base"),
    ],
)
def test_accelerator_types_workers_and_default_runtime(name, cloud_name, workers, version) -> None:
    """Worker counts and runtimes as Cloud's TPU pages list them."""
    acc = tpu_launch.parse_accelerator(name)
    assert (acc.name, acc.workers) == (cloud_name, workers)
    launch, run = tpu_launch.parse([*BASE[:2], f"--accelerator_type={name}", *BASE[3:]])
    assert launch.version == version and not run


def _run_tool(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(TOOL), *args], capture_output=True, text=True, env=env, timeout=60
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--model_dir": "/tmp/run"}, "--model_dir='/tmp/run' must be a gs://BUCKET/PATH"),
        ({"--model_dir": None, "--gin.MODEL_DIR": "/x"}, "--model_dir='/x' must be a gs://"),
        ({"--accelerator_type": "v5x-16"}, "'v5x-16' is not a TPU accelerator type"),
        ({"--accelerator_type": "v4-12"}, "v4 slices come in sizes of a multiple of 8"),
        ({"--accelerator_type": "v5litepod-12"}, "v5litepod slices come in sizes of 1, 4, 8"),
        ({"--gin_file": "gin/runs/nope.gin"}, "--gin_file=gin/runs/nope.gin: no such file"),
        ({"--steps": "create,train,deploy"}, "--steps='create,train,deploy': expected"),
        ({"--zone": "uswest4"}, "--zone='uswest4' is not a zone name"),
    ],
)
def test_bad_input_is_one_error_and_exit_status_2(change, message) -> None:
    args = [a for a in BASE if a.split("=")[0] not in change]
    args += [f"{k}={v}" for k, v in change.items() if v is not None]
    result = _run_tool(*args)
    assert result.returncode == 2
    assert result.stdout == ""  # nothing printed before the error
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
    assert message in result.stderr


def _fake_gcloud(tmp_path: Path, log: Path, fail: str = "") -> dict[str, str]:
    """An environment whose PATH starts with a ``gcloud`` that appends its argv to ``log``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "gcloud"
    fake.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        "with open(os.environ['FAKE_GCLOUD_LOG'], 'a') as f:\n"
        "    f.write(json.dumps(sys.argv[1:]) + '\\n')\n"
        "fail = os.environ.get('FAKE_GCLOUD_FAIL')\n"
        "sys.exit(3 if fail and fail in sys.argv[1:5] else 0)\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    env.update(FAKE_GCLOUD_LOG=str(log), FAKE_GCLOUD_FAIL=fail, TMPDIR=str(tmp_path))
    return env


def _recorded(log: Path) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_run_executes_exactly_the_printed_commands(tmp_path) -> None:
    run_log, bash_log = tmp_path / "run.jsonl", tmp_path / "bash.jsonl"
    result = _run_tool(*BASE, "--run", env=_fake_gcloud(tmp_path, run_log))
    assert result.returncode == 0, result.stderr
    calls = _recorded(run_log)
    assert [c[3] for c in calls] == ["create", "scp", "ssh", "ssh"]
    assert worker_argv(payload(calls[-1])) == expected_worker_argv(GIN_FILES)

    # `git archive` ran for real: the archive holds the checkout.
    rev = head_commit()
    with tarfile.open(tmp_path / f"t5x_instruct-{rev[:12]}.tar.gz") as tar:
        assert {"pyproject.toml", "t5x_instruct/train.py"} <= set(tar.getnames())

    # The dry run's output, run by bash, makes the same gcloud calls (it is a faithful script).
    dry = _run_tool(*BASE, env=_fake_gcloud(tmp_path, bash_log))
    assert dry.returncode == 0 and not _recorded(bash_log)
    gcloud_calls = [argv[1:] for _, argv in parse_plan(dry.stdout) if argv[0] == "gcloud"]
    assert gcloud_calls == calls
    subprocess.run(["bash", "-c", dry.stdout], env=_fake_gcloud(tmp_path, bash_log), check=True)
    assert _recorded(bash_log) == calls


def test_run_stops_at_the_first_failing_step(tmp_path) -> None:
    log = tmp_path / "calls.jsonl"
    result = _run_tool(*BASE, "--run", env=_fake_gcloud(tmp_path, log, fail="scp"))
    assert result.returncode == 1
    # One error (a warning about uncommitted changes in a working copy may precede it).
    assert [ln for ln in result.stderr.splitlines() if ln.startswith("error")] == [
        result.stderr.splitlines()[-1]
    ]
    failed = "error: step 'install' failed (exit status 3) running: gcloud compute tpus tpu-vm scp"
    assert result.stderr.splitlines()[-1].startswith(failed)
    assert [c[3] for c in _recorded(log)] == ["create", "scp"]  # nothing after the failure


def _wait_for(path: Path, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text()
        time.sleep(0.05)
    raise AssertionError(f"{path} did not appear")


def test_worker_script_detaches_guards_double_start_and_stops_with_42(tmp_path) -> None:
    """The train / status / stop scripts, run by bash in a fake worker home directory with a
    fake venv Python that, like a preempted run, exits 42 on SIGTERM."""
    home = tmp_path / "home"
    (home / "t5x_instruct").mkdir(parents=True)
    python = home / "t5x_instruct_venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(
        "#!/bin/sh\n"
        'printf "%s\\0" "$0" "$@" > "$HOME/argv.bin"\n'
        'printf "%s" "$LIBTPU_INIT_ARGS" > "$HOME/env.txt"\n'
        "trap 'exit 42' TERM\n"
        "while :; do sleep 0.05; done\n"
    )
    python.chmod(0o755)
    flags = "--xla_tpu_enable_async_collective_fusion=true --foo='a b'"
    steps = "--steps=train,status,stop"
    launch, _ = tpu_launch.parse([*BASE, f"--env=LIBTPU_INIT_ARGS={flags}", steps])
    train, status, stop = (payload(list(s.commands[-1])) for s in tpu_launch.plan(launch))

    def worker(script: str) -> subprocess.CompletedProcess:
        env = dict(os.environ, HOME=str(home))
        return subprocess.run(
            ["bash", "-c", script], cwd=home, env=env, capture_output=True, text=True, timeout=20
        )

    logs = home / "t5x_instruct_logs"
    try:
        started = worker(train)  # returns while the run goes on in the background
        assert started.returncode == 0 and "started on" in started.stdout
        argv = _wait_for(home / "argv.bin").split("\0")[:-1]
        assert argv == expected_worker_argv(GIN_FILES)
        assert (home / "env.txt").read_text() == flags
        assert "running" in worker(status).stdout
        again = worker(train)
        assert again.returncode == 1 and "already running" in again.stderr
        assert "SIGTERM sent" in worker(stop).stdout
        assert _wait_for(logs / "train.exit").strip() == "42"
        assert "exit status: 42" in worker(status).stdout
        assert "=== start" in (logs / "train.log").read_text()
    finally:
        pid = logs / "train.pid"
        if pid.exists():
            subprocess.run(["kill", "-9", pid.read_text().strip()], capture_output=True)
