"""Create a Cloud TPU VM, install this checkout on every worker, start one command on all.

``tools/launch_tpu.py`` prints (``--dry_run``, the default) or runs (``--run``) the
``gcloud compute tpus tpu-vm`` commands of up to six steps, in the order ``--steps`` gives:

* ``create``: the TPU VM (``--accelerator_type``, runtime ``--version``, spot / preemptible /
  reserved capacity);
* ``install``: the code on every worker. By default ``git archive`` packs the commit
  ``--rev`` (HEAD) of this checkout, ``scp --worker=all`` copies it and each worker unpacks
  it into ``~/t5x_instruct``; with ``--repo URL`` each worker clones that commit instead.
  The project needs Python >= 3.11 and the Ubuntu 22.04 TPU images ship 3.10, so ``uv`` makes
  ``~/t5x_instruct_venv`` with ``--python`` (a managed CPython when the image lacks it) and
  installs the checkout with the ``gcs`` and ``tpu`` extras. A reinstall keeps the venv.
* ``train``: ``python -m t5x_instruct.<module>`` with the same arguments on every worker
  (``--worker=all``), detached (SIGHUP ignored, as by nohup) with its output appended to
  ``~/t5x_instruct_logs/<module>.log`` and its exit status written to ``<module>.exit``.
  ``jax.distributed`` finds the other workers by itself on TPU VMs, so no coordinator flags.
  Gin files identical to the installed commit's copy are referred to by their path in the
  checkout; others (uncommitted, edited, outside the checkout) are uploaded first.
* ``status`` (log tail and exit status of every worker), ``stop`` (SIGTERM: the run saves
  and exits 42), ``delete`` (the TPU VM).

Preemption: a Spot / preemptible TPU that is preempted takes its processes with it (on the
shutdown's SIGTERM the run saves a checkpoint, if the grace period allows, and exits 42), so
a restart loop on the workers could never run; the VM has to be recreated. Rerun the
launcher with the same ``--model_dir`` and ``--steps=delete,create,install,train`` (or
``--steps=train`` when the VM is still up) and training continues from the last checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from t5x_instruct.errors import UserInputError

REPO_ROOT = Path(__file__).resolve().parents[2]
# Worker-side paths, relative to the worker's home directory (where ssh starts).
REMOTE_DIR = "t5x_instruct"
REMOTE_VENV = "t5x_instruct_venv"
REMOTE_LOGS = "t5x_instruct_logs"
REMOTE_GIN = f"{REMOTE_DIR}/launch_gin"
ARCHIVE_NAME = "t5x_instruct.tar.gz"

STEPS = ("create", "install", "train", "status", "stop", "delete")
DEFAULT_STEPS = "create,install,train"
MODULES = ("train", "eval", "infer")
_PASS_THROUGH = ("--gin.", "--gin_bindings=", "--gin_search_paths=")


# Default runtime (software) version per generation: the PyTorch/JAX row of Cloud's "TPU
# software versions" page. v2-v5p accelerator types count TensorCores (8 per host), v5e and
# v6e count chips (one host up to 8 chips, then 4 chips per host).
GENERATIONS = {
    "v2": ("tpu-ubuntu2204-base", "pod cores"),
    "v3": ("tpu-ubuntu2204-base", "pod cores"),
    "v4": ("tpu-ubuntu2204-base", "cores"),
    "v5p": ("v2-alpha-tpuv5", "cores"),
    "v5litepod": ("v2-alpha-tpuv5-lite", "chips"),
    "v6e": ("v2-alpha-tpuv6e", "chips"),
}
_CHIP_SIZES = (1, 4, 8, 16, 32, 64, 128, 256)
_SIZE_TEXT = {
    "pod cores": "8, 32, 64, 128, ... (8 or a power of two >= 32 TensorCores)",
    "cores": "a multiple of 8 TensorCores (8, 16, 32, ...)",
    "chips": ", ".join(map(str, _CHIP_SIZES)) + " chips",
}
_ALIASES = {"v5e": "v5litepod"}
ACCELERATOR_HELP = "Cloud accelerator type: v5litepod-16 (or v5e-16), v6e-64, v4-32, v5p-128, v3-32"


def _valid_size(counting: str, n: int) -> bool:
    if counting == "chips":
        return n in _CHIP_SIZES
    if counting == "cores":
        return n >= 8 and n % 8 == 0
    return n == 8 or (n >= 32 and n & (n - 1) == 0)  # v2 / v3 pod slices


def _workers(counting: str, n: int) -> int:
    if counting == "chips":
        return 1 if n <= 8 else n // 4
    return n // 8


@dataclasses.dataclass(frozen=True)
class Accelerator:
    name: str  # as Cloud spells it, e.g. 'v5litepod-16'
    generation: str
    size: int
    workers: int


def parse_accelerator(text: str) -> Accelerator:
    """``'v4-32'`` -> Accelerator; one clear error for a form Cloud does not offer."""
    match = re.fullmatch(r"([a-z0-9]+)-(\d+)", text.strip().lower())
    generation = _ALIASES.get(match.group(1), match.group(1)) if match else None
    if generation not in GENERATIONS:
        raise UserInputError(
            f"--accelerator_type={text!r} is not a TPU accelerator type: expected "
            f"GENERATION-SIZE with GENERATION one of {', '.join(GENERATIONS)} (v5e = v5litepod), "
            "e.g. v5litepod-16, v4-32, v5p-128."
        )
    size = int(match.group(2))
    counting = GENERATIONS[generation][1]
    if not _valid_size(counting, size):
        raise UserInputError(
            f"--accelerator_type={text!r}: {generation} slices come in sizes of "
            f"{_SIZE_TEXT[counting]}, not {size}."
        )
    return Accelerator(f"{generation}-{size}", generation, size, _workers(counting, size))


@dataclasses.dataclass(frozen=True)
class Step:
    name: str
    commands: tuple[tuple[str, ...], ...]


@dataclasses.dataclass(frozen=True)
class Launch:
    """Everything the commands depend on, validated."""

    tpu: str
    zone: str
    accelerator: Accelerator
    version: str
    project: str | None
    capacity: str | None  # 'spot', 'preemptible', 'reserved' or None (on demand)
    create_flags: tuple[str, ...]
    model_dir: str
    gin_refs: tuple[str, ...]  # --gin_file values on the workers, in the user's order
    gin_uploads: tuple[Path, ...]  # local files copied to REMOTE_GIN
    bindings: tuple[str, ...]  # pass-through --gin.* arguments, verbatim
    module: str
    env: tuple[str, ...]  # KEY=VALUE for the run
    rev: str | None  # full commit hash installed (None: --repo with no local checkout)
    repo_url: str | None
    python: str
    extras: str
    steps: tuple[str, ...]


# --- commands ------------------------------------------------------------------------------

HEREDOC = "REMOTE"  # delimiter of the printed remote scripts


def _gcloud(launch: Launch, verb: str, *args: str) -> tuple[str, ...]:
    project = (f"--project={launch.project}",) if launch.project else ()
    return ("gcloud", "compute", "tpus", "tpu-vm", verb, *args, f"--zone={launch.zone}", *project)


def _ssh_all(launch: Launch, lines: Sequence[str]) -> tuple[str, ...]:
    """``ssh --worker=all`` running the shell script ``lines`` (``--command`` comes last)."""
    return (*_gcloud(launch, "ssh", launch.tpu, "--worker=all"), "--command=" + "\n".join(lines))


def _scp_all(launch: Launch, sources: Sequence[str], dest: str) -> tuple[str, ...]:
    return _gcloud(launch, "scp", *sources, f"{launch.tpu}:{dest}", "--worker=all")


def archive_path(rev: str) -> Path:
    return Path(tempfile.gettempdir()) / f"t5x_instruct-{rev[:12]}.tar.gz"


def _install(launch: Launch) -> list[tuple[str, ...]]:
    q = shlex.quote
    commands: list[tuple[str, ...]] = []
    if launch.repo_url:
        fetch = [
            f"rm -rf {REMOTE_DIR}",
            f"git clone --quiet {q(launch.repo_url)} {REMOTE_DIR}",
            f"git -C {REMOTE_DIR} checkout --quiet --detach {q(launch.rev or 'HEAD')}",
        ]
    else:
        assert launch.rev is not None
        archive = archive_path(launch.rev)
        git = ("git", "-C", str(REPO_ROOT), "archive", "--format=tar.gz")
        commands.append((*git, f"--output={archive}", launch.rev))
        commands.append(_scp_all(launch, [str(archive)], ARCHIVE_NAME))
        fetch = [
            f"rm -rf {REMOTE_DIR} && mkdir -p {REMOTE_DIR}",
            f"tar -xzf {ARCHIVE_NAME} -C {REMOTE_DIR} && rm -f {ARCHIVE_NAME}",
        ]
    uv = ".local/bin/uv"
    pip_uv = "python3 -m pip install --user --quiet --upgrade uv"
    editable = q(f"./{REMOTE_DIR}[{launch.extras}]")
    script = [
        "set -e",
        *fetch,
        # Ubuntu 24.04 images refuse --user installs without --break-system-packages.
        f"{pip_uv} || {pip_uv} --break-system-packages",
        f"[ -x {REMOTE_VENV}/bin/python ] || "
        f"{uv} venv --quiet --python {q(launch.python)} {REMOTE_VENV}",
        f"{uv} pip install --quiet --python {REMOTE_VENV}/bin/python -e {editable}",
        'echo "installed on $(hostname)"',
    ]
    commands.append(_ssh_all(launch, script))
    return commands


def run_argv(launch: Launch) -> list[str]:
    """The command every worker runs (from inside ``~/t5x_instruct``)."""
    model_dir = launch.model_dir
    if not re.fullmatch(r"[\w./:~+-]+", model_dir):
        model_dir = repr(model_dir)  # gin string literal; bare words are quoted by the CLI
    return [
        f"../{REMOTE_VENV}/bin/python", "-m", f"t5x_instruct.{launch.module}",
        *(f"--gin_file={ref}" for ref in launch.gin_refs),
        *launch.bindings,
        f"--gin.MODEL_DIR={model_dir}",
    ]  # fmt: skip


def _quote(word: str) -> str:
    """``shlex.quote``, but a word with single quotes (a gin string or dict) and nothing
    special to a shell inside double quotes is double-quoted, which reads better."""
    if "'" in word and not set('"$`\\!\n') & set(word):
        return f'"{word}"'
    return shlex.quote(word)


def _command_lines(head: Sequence[str], args: Sequence[str]) -> str:
    """``head`` on one line, then one argument per continuation line."""
    return " \\\n      ".join([" ".join(map(_quote, head)), *map(_quote, args)])


def _files(launch: Launch) -> tuple[str, str, str]:
    base = f"{REMOTE_LOGS}/{launch.module}"
    return f"{base}.log", f"{base}.pid", f"{base}.exit"


def _running(pid_file: str) -> str:
    return f'[ -f {pid_file} ] && kill -0 "$(cat {pid_file})" 2>/dev/null'


def _train(launch: Launch) -> list[tuple[str, ...]]:
    log, pid, exit_file = _files(launch)
    commands: list[tuple[str, ...]] = []
    if launch.gin_uploads:
        commands.append(_ssh_all(launch, [f"mkdir -p {REMOTE_GIN}"]))
        commands.append(_scp_all(launch, [str(p) for p in launch.gin_uploads], f"{REMOTE_GIN}/"))
    program = run_argv(launch)
    env = ["env", *launch.env] if launch.env else []
    missing = f'"no ~/{REMOTE_DIR} on $(hostname): run --steps=install first"'
    # A background subshell that ignores SIGHUP (as nohup does), owns no terminal and writes
    # the run's pid (for `stop`) and then its exit status (0 done, 2 bad input, 42 preempted).
    script = [
        f"mkdir -p {REMOTE_LOGS}",
        f"if {_running(pid)}; then",
        f'  echo "{launch.module} is already running on $(hostname) (pid $(cat {pid})): '
        'stop it first (--steps=stop)" >&2',
        "  exit 1",
        "fi",
        f"rm -f {exit_file}",
        f"cd {REMOTE_DIR} || {{ echo {missing} >&2; exit 1; }}",
        "(",
        '  trap "" HUP',
        '  echo "=== start $(date -u +%FT%TZ) on $(hostname)"',
        f"  {_command_lines([*env, *program[:3]], program[3:])} &",
        f"  echo $! > ../{pid}",
        "  wait $!",
        f"  echo $? > ../{exit_file}",
        f") >> ../{log} 2>&1 < /dev/null &",
        f'echo "started on $(hostname), log: ~/{log}"',
    ]
    commands.append(_ssh_all(launch, script))
    return commands


def _status(launch: Launch) -> list[str]:
    log, pid, exit_file = _files(launch)
    return [
        'echo "== $(hostname)"',
        f"tail -n 5 {log} 2>/dev/null",
        f"if [ -f {exit_file} ]; then",
        f'  echo "exit status: $(cat {exit_file}) (0 finished, 2 bad input, 42 preempted)"',
        f"elif {_running(pid)}; then echo running",
        'else echo "not started"',
        "fi",
    ]


def _stop(launch: Launch) -> list[str]:
    _, pid, _ = _files(launch)
    return [
        f"if {_running(pid)}; then",
        f'  kill -TERM "$(cat {pid})"',
        '  echo "SIGTERM sent on $(hostname): the run saves a checkpoint and exits 42"',
        'else echo "nothing running on $(hostname)"',
        "fi",
    ]


def _create(launch: Launch) -> tuple[str, ...]:
    capacity = (f"--{launch.capacity}",) if launch.capacity else ()
    flags = (f"--accelerator-type={launch.accelerator.name}", f"--version={launch.version}")
    return _gcloud(launch, "create", launch.tpu, *flags, *capacity, *launch.create_flags)


def plan(launch: Launch) -> list[Step]:
    """The commands of each requested step, in order; nothing is executed."""
    build: dict[str, Callable[[], list[tuple[str, ...]]]] = {
        "create": lambda: [_create(launch)],
        "install": lambda: _install(launch),
        "train": lambda: _train(launch),
        "status": lambda: [_ssh_all(launch, _status(launch))],
        "stop": lambda: [_ssh_all(launch, _stop(launch))],
        "delete": lambda: [_gcloud(launch, "delete", launch.tpu, "--quiet")],
    }
    return [Step(name, tuple(build[name]())) for name in launch.steps]


def describe(launch: Launch, dry_run: bool) -> str:
    acc = launch.accelerator
    code = (
        f"clone of {launch.repo_url} at {launch.rev or 'HEAD'}"
        if launch.repo_url
        else f"git archive of commit {launch.rev} of {REPO_ROOT}"
    )
    lines = [
        f"# TPU {launch.tpu}: {acc.name} in {launch.zone}, {acc.workers} worker(s), "
        f"runtime {launch.version}" + (f", {launch.capacity}" if launch.capacity else ""),
        f"# code: {code} -> ~/{REMOTE_DIR} on every worker (venv ~/{REMOTE_VENV})",
        f"# run: t5x_instruct.{launch.module}, MODEL_DIR={launch.model_dir}, "
        f"log ~/{_files(launch)[0]} on each worker",
        f"# steps: {', '.join(launch.steps)}"
        + ("  (dry run: nothing executed; add --run to execute)" if dry_run else ""),
    ]
    return "\n".join(lines)


def format_command(command: Sequence[str]) -> str:
    """A shell line for ``command``; a multi-line ``--command`` script is printed verbatim
    in a quoted here-document, so it reads as the workers' shell will run it."""
    *head, last = command
    if not (last.startswith("--command=") and "\n" in last):
        return shlex.join(command)
    script = last.removeprefix("--command=")
    assert HEREDOC not in script.splitlines()
    return f"{shlex.join(head)} --command=\"$(cat <<'{HEREDOC}'\n{script}\n{HEREDOC}\n)\""


def format_plan(steps: Sequence[Step]) -> str:
    """The steps as a shell script (comments name the steps); pasteable as it is."""
    blocks = [
        "\n".join([f"# {step.name}", *(format_command(c) for c in step.commands)]) for step in steps
    ]
    return "\n\n".join(blocks)


def _short(command: Sequence[str]) -> str:
    """The command on one line, a ``--command`` script cut to its first line."""
    *head, last = command
    if last.startswith("--command=") and "\n" in last:
        last = last.split("\n", 1)[0] + " ..."
    return shlex.join([*head, last])


class StepFailed(RuntimeError):
    """A command of a step exited with a non-zero status (``--run``)."""


def execute(steps: Sequence[Step], out: Callable[[str], None] = print) -> None:
    """Run the steps' commands in order; stop at the first failure."""
    if shutil.which("gcloud") is None:
        raise StepFailed(
            "gcloud is not on PATH: install the Google Cloud CLI "
            "(https://cloud.google.com/sdk/docs/install) and run `gcloud auth login`."
        )
    for step in steps:
        out(f"# {step.name}")
        for command in step.commands:
            out(f"+ {format_command(command)}")
            sys.stdout.flush()
            status = subprocess.run(list(command), check=False).returncode
            if status != 0:
                raise StepFailed(
                    f"step {step.name!r} failed (exit status {status}) running: {_short(command)}"
                )


# --- command line --------------------------------------------------------------------------


def _git(*args: str) -> subprocess.CompletedProcess[bytes]:
    command = ["git", "-C", str(REPO_ROOT), *args]
    try:
        return subprocess.run(command, capture_output=True, check=False)
    except FileNotFoundError:  # no git installed: same as "not a checkout"
        return subprocess.CompletedProcess(command, 127, b"", b"git not found")


def resolve_rev(rev: str | None, repo_url: str | None) -> str | None:
    """The full commit hash of ``rev`` in this checkout (``None`` for --repo without one)."""
    found = _git("rev-parse", "--verify", "--quiet", f"{rev or 'HEAD'}^{{commit}}")
    if found.returncode == 0:
        return found.stdout.decode().strip()
    if repo_url:
        return rev  # a ref only the remote repository knows; its clone checks it out
    if rev is None:
        raise UserInputError(
            f"{REPO_ROOT} is not a git checkout, so there is no commit to `git archive`: "
            "pass --repo=URL (and --rev) to clone the code on the workers instead."
        )
    raise UserInputError(f"--rev={rev!r} is not a commit of {REPO_ROOT}.")


def resolve_gin_files(files: Sequence[str], rev: str | None) -> tuple[list[str], list[Path]]:
    """Remote ``--gin_file`` values and the local files to upload, in the given order.

    A file is looked up as given, then under the checkout and its ``gin/`` folder (the CLI's
    search path). It is used in place when the installed commit holds the same bytes.
    """
    refs: list[str] = []
    uploads: list[Path] = []
    for name in files:
        candidates = [Path(name), REPO_ROOT / name, REPO_ROOT / "gin" / name]
        path = next((p.resolve() for p in candidates if p.is_file()), None)
        if path is None:
            raise UserInputError(
                f"--gin_file={name}: no such file (looked in {Path.cwd()}, {REPO_ROOT} and "
                f"{REPO_ROOT / 'gin'})."
            )
        if rev is not None and path.is_relative_to(REPO_ROOT):
            rel = path.relative_to(REPO_ROOT).as_posix()
            committed = _git("show", f"{rev}:{rel}")
            if committed.returncode == 0 and committed.stdout == path.read_bytes():
                refs.append(rel)
                continue
        if any(u.name == path.name for u in uploads):
            raise UserInputError(
                f"--gin_file={name}: another uploaded gin file is also named {path.name!r}; "
                "rename one (uploads share one folder on the workers)."
            )
        uploads.append(path)
        refs.append(f"launch_gin/{path.name}")
    return refs, uploads


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tools/launch_tpu.py",
        description="Create a Cloud TPU VM, install this checkout on every worker and start "
        "the same t5x_instruct command on all of them. Other arguments: --gin.KEY=VALUE "
        "bindings, passed on unchanged.",
        allow_abbrev=False,
    )
    parser.add_argument("--tpu", required=True, help="TPU VM name, e.g. my-pod")
    parser.add_argument("--zone", required=True, help="e.g. us-central2-b")
    parser.add_argument("--accelerator_type", required=True, help=ACCELERATOR_HELP)
    parser.add_argument(
        "--version", help="TPU runtime (software) version; default: the JAX one of the generation"
    )
    parser.add_argument("--project", help="Google Cloud project (default: gcloud's)")
    capacity = parser.add_mutually_exclusive_group()
    for kind, text in (
        ("spot", "Spot capacity (cheap, preemptible any time, no time limit)"),
        ("preemptible", "preemptible capacity (older kind: preemptible, time-limited)"),
        ("reserved", "use the project's TPU reservation"),
    ):
        capacity.add_argument(
            f"--{kind}", dest="capacity", action="store_const", const=kind, help=text
        )
    parser.add_argument(
        "--create_flag", action="append", default=[],
        help="extra flag for `tpu-vm create`, e.g. --create_flag=--scopes=cloud-platform",
    )  # fmt: skip
    parser.add_argument("--model_dir", help="gs://BUCKET/PATH (or give --gin.MODEL_DIR=gs://...)")
    parser.add_argument("--gin_file", action="append", default=[], help="gin file (repeatable)")
    parser.add_argument("--module", choices=MODULES, default="train", help="t5x_instruct.<module>")
    parser.add_argument(
        "--env", action="append", default=[], help="KEY=VALUE for the run, e.g. LIBTPU_INIT_ARGS"
    )
    parser.add_argument("--repo", help="git URL the workers clone (default: scp a git archive)")
    parser.add_argument("--rev", help="commit to install (default: this checkout's HEAD)")
    parser.add_argument("--python", default="3.11", help="Python of the workers' venv (uv)")
    parser.add_argument("--extras", default="gcs,tpu", help="extras installed on the workers")
    parser.add_argument(
        "--steps",
        default=DEFAULT_STEPS,
        help="comma-separated, run in the order given: " + ", ".join(STEPS),
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--dry_run", action="store_true", help="print the commands (default)")
    mode.add_argument("--run", action="store_true", help="execute them, stop at a failure")
    return parser


def parse(argv: Sequence[str]) -> tuple[Launch, bool]:
    """Validate the command line into a :class:`Launch`; returns it and whether to run."""
    parser = build_parser()
    args, rest = parser.parse_known_args(list(argv))
    bindings = []
    model_dir = args.model_dir
    for arg in rest:
        if not arg.startswith(_PASS_THROUGH):
            parser.error(f"unrecognised argument {arg!r} (gin bindings are --gin.KEY=VALUE)")
        if arg.startswith("--gin.MODEL_DIR="):
            if model_dir is not None:
                raise UserInputError("MODEL_DIR given twice: pass --model_dir or --gin.MODEL_DIR.")
            model_dir = arg.split("=", 1)[1].strip().strip("'\"")
            continue
        bindings.append(arg)
    if not re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", args.tpu):
        raise UserInputError(
            f"--tpu={args.tpu!r}: TPU names are lowercase letters, digits and hyphens, "
            "starting with a letter."
        )
    if not re.fullmatch(r"[a-z]+-[a-z]+\d+-[a-z]", args.zone):
        raise UserInputError(f"--zone={args.zone!r} is not a zone name (e.g. us-central2-b).")
    accelerator = parse_accelerator(args.accelerator_type)
    if model_dir is None:
        raise UserInputError("No MODEL_DIR: pass --model_dir=gs://BUCKET/PATH.")
    if not re.fullmatch(r"gs://[a-z0-9][a-z0-9._-]*[a-z0-9](/.*)?", model_dir):
        raise UserInputError(
            f"--model_dir={model_dir!r} must be a gs://BUCKET/PATH: every worker writes its "
            "checkpoint shards there and a local path would differ per worker."
        )
    if not args.gin_file:
        raise UserInputError("No --gin_file given; e.g. --gin_file=gin/runs/finetune.gin")
    steps = tuple(s.strip() for s in args.steps.split(",") if s.strip())
    unknown = [s for s in steps if s not in STEPS]
    if unknown or not steps or len(set(steps)) != len(steps):
        raise UserInputError(
            f"--steps={args.steps!r}: expected distinct names from {', '.join(STEPS)}."
        )
    for item in args.env:
        if not re.fullmatch(r"[A-Za-z_]\w*=.*", item):
            raise UserInputError(f"--env={item!r}: expected KEY=VALUE.")
    for name, value in (("--python", args.python), ("--extras", args.extras)):
        if not re.fullmatch(r"[\w.,-]+", value):
            raise UserInputError(f"{name}={value!r}: letters, digits, '.', ',' and '-' only.")
    rev = resolve_rev(args.rev, args.repo)
    gin_refs, gin_uploads = resolve_gin_files(args.gin_file, rev)
    if args.repo is None and _git("status", "--porcelain", "--untracked-files=no").stdout:
        print(
            f"warning: {REPO_ROOT} has uncommitted changes; the workers get commit "
            f"{rev[:12] if rev else '?'} (gin files given on the command line are uploaded "
            "as they are).",
            file=sys.stderr,
        )
    launch = Launch(
        tpu=args.tpu,
        zone=args.zone,
        accelerator=accelerator,
        version=args.version or GENERATIONS[accelerator.generation][0],
        project=args.project,
        capacity=args.capacity,
        create_flags=tuple(args.create_flag),
        model_dir=model_dir,
        gin_refs=tuple(gin_refs),
        gin_uploads=tuple(gin_uploads),
        bindings=tuple(bindings),
        module=args.module,
        env=tuple(args.env),
        rev=rev,
        repo_url=args.repo,
        python=args.python,
        extras=args.extras,
        steps=steps,
    )
    return launch, bool(args.run)


def main(argv: Sequence[str]) -> int:
    """Exit status: 0 done, 1 a step failed (``--run``), 2 bad input."""
    try:
        launch, run = parse(argv)
    except UserInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    steps = plan(launch)
    print(describe(launch, dry_run=not run))
    if not run:
        print()
        print(format_plan(steps))
        return 0
    try:
        execute(steps)
    except StepFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
