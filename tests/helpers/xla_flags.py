"""The XLA flags of every test process and of the CLI subprocesses tests start.

``--xla_backend_optimization_level=0``: the suite is dominated by XLA:CPU compiling many
small programs once each, and LLVM's optimisation passes are most of that (a tiny T5's
initialiser in the 2-process test: 10.4 s -> 2.8 s on the 2-core CI machine; the suite:
35-39 -> 19-23 min). Results agree with the optimised build up to float rounding (the generated
code differs: a tiny T5's initial parameters differ in the last bit, its loss and gradients
on one batch not at all), so every tolerance holds; programs run slower, which tiny test
models do not notice. Set your own ``--xla_backend_optimization_level`` in ``XLA_FLAGS`` to
override it.
"""

from __future__ import annotations

import os

LEVEL = "--xla_backend_optimization_level"
FAST_COMPILE = f"{LEVEL}=0"


def _level(flags: list[str]) -> list[str]:
    """The optimisation level among ``flags`` if one is set, else :data:`FAST_COMPILE`."""
    return [f for f in flags if f.startswith(LEVEL)] or [FAST_COMPILE]


def xla_flags(devices: int | None = None) -> str:
    """``XLA_FLAGS`` for a subprocess: ``devices`` fake CPU devices (``None``: XLA's one)."""
    flags = _level(os.environ.get("XLA_FLAGS", "").split())
    if devices is not None:
        flags.append(f"--xla_force_host_platform_device_count={devices}")
    return " ".join(flags)


def add_to_environment(devices: int) -> None:
    """This process's flags (before JAX starts a backend), kept where already set."""
    current = os.environ.get("XLA_FLAGS", "").split()
    others = [f for f in current if not f.startswith(LEVEL)]
    if not any(f.startswith("--xla_force_host_platform_device_count") for f in others):
        others.append(f"--xla_force_host_platform_device_count={devices}")
    os.environ["XLA_FLAGS"] = " ".join([*others, *_level(current)])
