"""A persistent XLA compilation cache for the command lines (on by default).

A rerun of the same program (a run resumed after preemption, the next ablation arm with the
same shapes, eval after train on the same shapes) loads the compiled executable instead of
compiling it again (the quickstart's train step on the 2-core CPU VM: 20.6 s to trace and
compile, 5.5 s to trace and load). JAX keys an entry by the program, the compiler options,
the devices and the jax/XLA versions, so a hit is the executable a compile would have
produced. Programs quicker to compile than ``min_compile_seconds`` are not stored, nor (JAX's
rule) programs with host callbacks. ``JAX_COMPILATION_CACHE_DIR`` in the environment, when
set, wins over the gin settings (JAX's own ``JAX_PERSISTENT_CACHE_*`` variables then apply);
``compilation_cache.directory = None`` turns the cache off. The directory may be a ``gs://``
path, which every host of a pod (and the next VM after a preemption) can read.
"""

from __future__ import annotations

import logging
import os

import gin

from t5x_instruct.errors import UserInputError

log = logging.getLogger(__name__)

DEFAULT_DIRECTORY = "~/.cache/t5x_instruct/xla"
ENVIRONMENT_VARIABLE = "JAX_COMPILATION_CACHE_DIR"


@gin.configurable
def compilation_cache(
    directory: str | None = DEFAULT_DIRECTORY,
    max_size_gib: float | None = 10.0,
    min_compile_seconds: float = 1.0,
) -> str | None:
    """Point JAX's persistent cache at ``directory`` (``~`` expanded); the directory in use,
    or ``None`` when off. ``max_size_gib``: a local directory is trimmed to this size, least
    recently used entries first (``None``: unbounded). Call before the first compile."""
    import jax

    if min_compile_seconds < 0:
        raise UserInputError(
            f"compilation_cache.min_compile_seconds={min_compile_seconds!r}: must be >= 0."
        )
    if max_size_gib is not None and max_size_gib <= 0:
        raise UserInputError(
            f"compilation_cache.max_size_gib={max_size_gib!r}: must be > 0, or None for no limit."
        )
    from_environment = os.environ.get(ENVIRONMENT_VARIABLE)
    if from_environment:  # JAX read it (and its other JAX_* settings) at import
        log.info("XLA compilation cache: %s (from %s)", from_environment, ENVIRONMENT_VARIABLE)
        return from_environment
    if not directory:
        log.info("XLA compilation cache: off (compilation_cache.directory = None)")
        return None
    location = directory if "://" in directory else os.path.expanduser(directory)
    jax.config.update("jax_compilation_cache_dir", location)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_seconds))
    size = -1 if max_size_gib is None else int(max_size_gib * 2**30)
    jax.config.update("jax_compilation_cache_max_size", size)
    log.info("XLA compilation cache: %s", location)
    return location
