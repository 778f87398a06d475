"""Render ``tools/aot_compile.py --output`` results (JSON lines) as docs/benchmarks.md's table.

    python tools/aot_table.py aot.jsonl [more.jsonl ...] > table.md

One row per preset, slice and mesh, ordered by model size, then slice, then mesh; a later
result for the same row replaces an earlier one (re-running a row updates the table).
Memory is per chip in GiB; compile time is lowering + XLA compile, in minutes.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

HEADER = (
    "| model | params (B) | slice | layout | mesh (data x fsdp x tensor) "
    "| sequences per batch shard | arguments (GiB) | temporaries (GiB) | outputs (GiB) "
    "| aliased (GiB) | total / HBM (GiB) | fits | Mosaic | compile (min) |"
)
_AXIS_LABELS = {"data": "data", "fsdp": "FSDP", "tensor": "tensor"}
_UPPER_SIZES = {"xl", "xxl"}


def model_name(gin_files: Iterable[str]) -> str:
    """``gin/models/t5_1_1/xxl.gin`` -> ``T5 v1.1 XXL``; ``decoder/7b.gin`` -> ``decoder 7b``."""
    for path in gin_files:
        parts = Path(path).with_suffix("").parts
        if "models" not in parts or len(parts) < 2:
            continue
        family, size = parts[-2], parts[-1]
        if family == "t5_1_1":
            return f"T5 v1.1 {size.upper() if size in _UPPER_SIZES else size}"
        return f"{family} {size}"
    return " + ".join(gin_files) or "?"


def layout_name(mesh: Mapping[str, int]) -> str:
    """The mesh axes that split something, joined: ``FSDP``, ``FSDP+tensor``, ``data``."""
    used = [_AXIS_LABELS[a] for a in ("data", "fsdp", "tensor") if mesh.get(a, 1) > 1]
    return "+".join(used) or "single chip"


def row(result: Mapping[str, Any]) -> str:
    mesh = result["mesh"]
    batch_shards = mesh.get("data", 1) * mesh.get("fsdp", 1)
    slice_name = f"{result['topology']} ({result['libtpu_topology']})"
    minutes = (result.get("lower_s", 0.0) + result["compile_s"]) / 60
    cells = [
        model_name(result["gin_files"]),
        f"{result['params_b']:.2f}",
        slice_name,
        layout_name(mesh),
        "x".join(str(mesh.get(a, 1)) for a in ("data", "fsdp", "tensor")),
        f"{result['batch'] // batch_shards}",
        f"{result['arguments_gib']:.2f}",
        f"{result['temporaries_gib']:.2f}",
        f"{result['outputs_gib']:.2f}",
        f"{result['aliased_gib']:.2f}",
        f"**{result['total_gib']:.2f}** / {result['hbm_gib']:g}",
        "yes" if result["fits"] else "**no**",
        str(result.get("mosaic_kernels", 0)),
        f"{minutes:.1f}",
    ]
    return "| " + " | ".join(cells) + " |"


def _key(result: Mapping[str, Any]) -> tuple:
    mesh = result["mesh"]
    return (
        tuple(result["gin_files"]),
        result["libtpu_topology"],
        tuple(mesh.get(a, 1) for a in ("data", "fsdp", "tensor")),
    )


def read_results(paths: Iterable[str]) -> list[dict[str, Any]]:
    """One result per row (the last one where a row was compiled again), sorted by model
    size, slice and mesh."""
    latest: dict[tuple, dict[str, Any]] = {}
    for path in paths:
        for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                result = json.loads(line)
            except json.JSONDecodeError as err:
                raise SystemExit(f"error: {path}:{number}: not JSON ({err.msg})") from None
            latest[_key(result)] = result
    return sorted(latest.values(), key=lambda r: (r["params_b"], *_key(r)[1:]))


def table(results: Iterable[Mapping[str, Any]]) -> str:
    separator = "|" + "---|" * HEADER.count(" | ") + "---|"
    return "\n".join([HEADER, separator, *(row(r) for r in results)])


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results", nargs="+", help="JSON-lines files from aot_compile --output")
    args = parser.parse_args(argv)
    print(table(read_results(args.results)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
