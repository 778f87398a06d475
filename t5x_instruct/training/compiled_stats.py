"""What XLA says about a compiled program: its per-device memory and cost analyses.

Shared by ``tools/bench_train.py`` (a step measured on this host) and
``tools/aot_compile.py`` (a step compiled for a TPU slice it will never run on), so both
report memory by one definition.
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class CompiledMemory:
    """Per-device buffer bytes of one compiled program (XLA's memory analysis).

    ``total`` = arguments + outputs + temporaries - aliased + generated code: what the
    program holds at once. Donated arguments that the outputs reuse (the train state) are
    aliased, so they count once, not twice.
    """

    argument: int
    output: int
    temp: int
    alias: int
    generated_code: int

    @property
    def total(self) -> int:
        return self.argument + self.output + self.temp - self.alias + self.generated_code

    def as_dict(self) -> dict[str, int]:
        return {**dataclasses.asdict(self), "total": self.total}


def memory_analysis(compiled: Any) -> CompiledMemory | None:
    """``compiled.memory_analysis()`` as :class:`CompiledMemory`; None where the backend
    gives none."""
    try:
        stats = compiled.memory_analysis()
    except Exception:  # unsupported on this backend
        return None
    if stats is None:
        return None
    return CompiledMemory(
        **{
            f.name: int(getattr(stats, f"{f.name}_size_in_bytes", 0) or 0)
            for f in dataclasses.fields(CompiledMemory)
        }
    )


def cost_analysis(compiled: Any) -> dict[str, float | None]:
    """FLOPs, bytes accessed and transcendentals of one device's partitioned program (every
    op: forward, backward, loss, optimizer, elementwise); None where XLA gives none.

    Older jax returns a list with one dict per program, newer a dict; some backends omit
    keys or raise.
    """
    try:
        cost = compiled.cost_analysis()
    except Exception:  # unsupported on this backend: report nothing
        cost = None
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else None
    cost = cost or {}

    def get(key: str) -> float | None:
        value = cost.get(key)
        return None if value is None else float(value)

    return {
        "flops": get("flops"),
        "bytes_accessed": get("bytes accessed"),
        "transcendentals": get("transcendentals"),
    }
