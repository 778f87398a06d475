"""Start JAX's multi-process runtime (``jax.distributed.initialize``) before any backend use.

One training (or eval / infer) job on a TPU pod, a multi-GPU cluster or several CPU hosts is
one process per host running the same command. Where each process finds the others comes,
in this order of precedence, from:

1. the command line: ``--coordinator_address=host:port --num_processes=N --process_id=i``;
2. gin: ``DistributedConfig.coordinator_address = ...`` (also ``num_processes``,
   ``process_id``, ``local_device_ids``, ``mode``);
3. the environment: ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``;
4. JAX's cluster detection (Cloud TPU VMs and pods, SLURM, Open MPI) for whatever is unset.

``mode='auto'`` (default) initializes when any of 1-3 is given or a cluster is detected, and
otherwise runs as one process (a laptop, one GPU host). ``'on'`` requires initialization,
``'off'`` never does it. These settings describe how one process was launched, not the
experiment, so they are not written to ``config.gin`` (gin's record of called functions):
:func:`initialize` reads the gin bindings without calling a configurable.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import gin

from t5x_instruct.errors import UserInputError

log = logging.getLogger(__name__)

MODES = ("auto", "on", "off")
ENV = {
    "coordinator_address": "JAX_COORDINATOR_ADDRESS",
    "num_processes": "JAX_NUM_PROCESSES",
    "process_id": "JAX_PROCESS_ID",
}


class DistributedSetupError(UserInputError):
    """Inconsistent multi-process settings (count, id, address) or a too-late initialization."""


@gin.configurable
@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """How this process joins a multi-process job (see the module docstring)."""

    mode: str = "auto"
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    local_device_ids: Sequence[int] | None = None
    initialization_timeout: int = 300


def config_from(
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> DistributedConfig:
    """The settings from command-line ``flags``, gin bindings and ``environ`` (that order)."""
    environ = os.environ if environ is None else environ
    try:
        bound = dict(gin.get_bindings(DistributedConfig))
    except (ValueError, KeyError):
        bound = {}
    values: dict[str, Any] = {}
    for field in dataclasses.fields(DistributedConfig):
        name = field.name
        if flags and flags.get(name) is not None:
            values[name] = flags[name]
        elif name in bound:
            values[name] = bound[name]
        elif name in ENV and environ.get(ENV[name]):
            values[name] = _from_env(ENV[name], environ[ENV[name]], name)
    return DistributedConfig(**values)


def _from_env(var: str, text: str, name: str) -> Any:
    if name == "coordinator_address":
        return text
    try:
        return int(text)
    except ValueError:
        raise DistributedSetupError(f"{var}={text!r} must be an integer.") from None


def validate(config: DistributedConfig) -> None:
    """Raise :class:`DistributedSetupError` for settings that cannot describe a real job."""
    if config.mode not in MODES:
        raise DistributedSetupError(
            f"DistributedConfig.mode={config.mode!r}: expected one of {MODES}."
        )
    count, index = config.num_processes, config.process_id
    for name, value in (("num_processes", count), ("process_id", index)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise DistributedSetupError(
                f"{name}={value!r} must be an integer (--{name}, DistributedConfig.{name} "
                f"or {ENV[name]})."
            )
    if count is not None and count < 1:
        raise DistributedSetupError(f"num_processes={count} must be at least 1.")
    if index is not None and index < 0:
        raise DistributedSetupError(f"process_id={index} must be >= 0.")
    if count is not None and index is not None and index >= count:
        raise DistributedSetupError(
            f"process_id={index} is not below num_processes={count}: ids run from 0 to "
            f"{count - 1}, one per process of the job."
        )
    address = config.coordinator_address
    if address is not None and (":" not in address or not address.rsplit(":", 1)[1].isdigit()):
        raise DistributedSetupError(
            f"coordinator_address={address!r} must be host:port (process 0's host and a free "
            "port, the same on every process)."
        )


def is_initialized() -> bool:
    """Whether ``jax.distributed.initialize`` has run in this process."""
    import jax

    return bool(jax.distributed.is_initialized())


def _backend_started() -> bool:
    """Whether a JAX backend already exists (then it is too late to join a job)."""
    try:
        from jax._src import xla_bridge

        return bool(xla_bridge._backends)  # private: no public query exists
    except (ImportError, AttributeError):
        return False


def _cluster_detected() -> str | None:
    """The name of the cluster JAX's own detection finds (TPU VM, SLURM, Open MPI), if any."""
    try:
        from jax._src.clusters import ClusterEnv
    except ImportError:
        return None
    for env in ClusterEnv._cluster_types:  # JAX's own detection order
        if getattr(env, "opt_in_only_method", False):
            continue
        try:
            if env.is_env_present():
                return env.__name__
        except Exception:  # a detector that cannot run here (e.g. no metadata server)
            continue
    return None


def initialize(
    flags: Mapping[str, Any] | None = None, *, environ: Mapping[str, str] | None = None
) -> bool:
    """Join the multi-process job this process belongs to, if any; returns whether it did.

    Call first thing in a command, after gin is parsed and before any JAX computation.
    Idempotent: a second call (or one after the runtime was started elsewhere) does nothing.

    Raises:
      DistributedSetupError: inconsistent settings, ``mode='on'`` with nothing to join, or
        settings given after JAX already started a single-process backend.
    """
    config = config_from(flags, environ)
    validate(config)
    if config.mode == "off" or is_initialized():
        return is_initialized()
    explicit = {
        name: getattr(config, name)
        for name in ("coordinator_address", "num_processes", "process_id")
        if getattr(config, name) is not None
    }
    cluster = _cluster_detected() if len(explicit) < len(ENV) else None
    if not explicit and cluster is None:
        if config.mode == "on":
            raise DistributedSetupError(
                "DistributedConfig.mode='on' but no cluster was detected and no "
                "--coordinator_address / --num_processes / --process_id were given."
            )
        return False
    if explicit and cluster is None and len(explicit) < len(ENV):
        missing = [f"--{n}" for n in ENV if n not in explicit]
        raise DistributedSetupError(
            f"Multi-process settings {explicit} are incomplete and no cluster (TPU VM, SLURM, "
            f"Open MPI) was detected to fill in the rest: also pass {', '.join(missing)}."
        )
    if _backend_started():
        raise DistributedSetupError(
            "jax.distributed must be initialized before JAX starts a backend; here a backend "
            "already exists. Call t5x_instruct.runtime.distributed.initialize() first."
        )
    import jax

    log.info("Joining a multi-process job (%s)", explicit or f"detected cluster: {cluster}")
    jax.distributed.initialize(
        coordinator_address=config.coordinator_address,
        num_processes=config.num_processes,
        process_id=config.process_id,
        local_device_ids=config.local_device_ids,
        initialization_timeout=config.initialization_timeout,
    )
    log.info(
        "Process %d of %d: %d local devices, %d in all",
        jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count(),
    )  # fmt: skip
    return True


def describe_devices() -> str:
    """``'8 devices (2 processes x 4 local)'``: for errors about mesh sizes."""
    import jax

    count, local = jax.device_count(), jax.local_device_count()
    if jax.process_count() == 1:
        return f"{count} devices"
    return f"{count} devices ({jax.process_count()} processes x {local} local)"


def split_flags(argv: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """Take ``--coordinator_address``, ``--num_processes`` and ``--process_id`` out of a
    command line; returns them and the remaining arguments."""
    import argparse

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--coordinator_address", default=None)
    parser.add_argument("--num_processes", type=int, default=None)
    parser.add_argument("--process_id", type=int, default=None)
    try:
        known, rest = parser.parse_known_args(list(argv))
    except SystemExit as exc:  # argparse's own message (e.g. a non-integer) is on stderr
        raise DistributedSetupError(
            "--num_processes and --process_id take integers, --coordinator_address host:port."
        ) from exc
    return {k: v for k, v in vars(known).items() if v is not None}, rest
