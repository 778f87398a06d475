"""Which kernel family a Pallas attention call uses, and whether it is compiled or interpreted.

Two kernel families exist because the hardware wants different shapes of program:

* ``'gpu'`` (Pallas on Triton): one program per query tile loops over the key tiles itself;
  BlockSpecs are just pointers, so whole-sequence K/V "blocks" cost nothing.
* ``'tpu'`` (Pallas Mosaic): the key-tile loop is the innermost *grid* axis, so Pallas
  double-buffers each K/V tile into VMEM; running statistics live in VMEM scratch.

``target`` picks the family, ``interpret`` runs it in the Pallas interpreter (how CPU tests
run both families). Passing ``target`` explicitly also lets a CPU host lower kernels for a
GPU or TPU (``jax.jit(...).trace(...).lower(lowering_platforms=...)``): that is how the test
suite checks, without the hardware, that every kernel still lowers to Triton and Mosaic.
"""

from __future__ import annotations

from typing import Any

import jax

TARGETS = ("gpu", "tpu")


def resolve_target(target: str | None) -> str:
    """The kernel family: as given, else the TPU family on TPU and the GPU family elsewhere."""
    if target is None:
        return "tpu" if jax.default_backend() == "tpu" else "gpu"
    if target not in TARGETS:
        raise ValueError(f"Pallas target {target!r} is not one of {TARGETS}.")
    return target


def resolve_interpret(interpret: bool | None) -> bool:
    """Pallas has no CPU lowering: interpret there unless told otherwise, compile elsewhere."""
    if interpret is None:
        return jax.default_backend() == "cpu"
    return bool(interpret)


def compiler_params(target: str, interpret: bool, dimension_semantics: tuple[str, ...]) -> Any:
    """Backend knobs for ``pallas_call``; their type is also what selects Triton vs Mosaic.

    ``dimension_semantics`` (``'parallel'`` / ``'arbitrary'`` per grid axis) matters on TPU
    only: Triton runs every grid point as an independent program.
    """
    if interpret:
        return None
    if target == "gpu":
        from jax.experimental.pallas import triton as pl_triton

        return pl_triton.CompilerParams(num_warps=4, num_stages=2)
    from jax.experimental.pallas import tpu as pltpu

    return pltpu.CompilerParams(dimension_semantics=dimension_semantics)


def platform_overrides(platform: str) -> dict[str, Any]:
    """``target`` / ``interpret`` for kernels placed on ``platform`` devices (a mesh's).

    Empty for CPU (the defaults above apply). A TPU mesh built from compile-only topology
    devices on a CPU host (ahead-of-time compilation) thus gets compiled Mosaic kernels
    although ``jax.default_backend()`` is ``'cpu'``.
    """
    if platform == "tpu":
        return {"target": "tpu", "interpret": False}
    if platform in ("gpu", "cuda", "rocm"):
        return {"target": "gpu", "interpret": False}
    return {}
