"""tools/aot_table.py: aot_compile's JSON lines -> the benchmarks table (hand-written rows)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location(
    "aot_table", Path(__file__).resolve().parents[1] / "tools" / "aot_table.py"
)
aot_table = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(aot_table)


def _result(**overrides) -> dict:
    result = {
        "topology": "v5p-128",
        "libtpu_topology": "v5p:4x4x4",
        "mesh": {"data": 1, "fsdp": 16, "tensor": 4},
        "gin_files": ["gin/models/t5_1_1/xxl.gin"],
        "params_b": 11.13,
        "mosaic_kernels": 12,
        "batch": 256,
        "lower_s": 30.0,
        "compile_s": 690.0,
        "arguments_gib": 0.664,
        "temporaries_gib": 8.151,
        "outputs_gib": 0.664,
        "aliased_gib": 0.664,
        "total_gib": 8.902,
        "hbm_gib": 95.0,
        "fits": True,
    }
    result.update(overrides)
    return result


def test_row_matches_the_hand_written_table_line() -> None:
    assert aot_table.row(_result()) == (
        "| T5 v1.1 XXL | 11.13 | v5p-128 (v5p:4x4x4) | FSDP+tensor | 1x16x4 | 16 | 0.66 | 8.15 "
        "| 0.66 | 0.66 | **8.90** / 95 | yes | 12 | 12.0 |"
    )
    decoder = _result(
        gin_files=["gin/models/decoder/7b.gin"], mesh={"data": 1, "fsdp": 256, "tensor": 1},
        topology="v5e-256", libtpu_topology="v5e:16x16", hbm_gib=16.0, total_gib=17.5,
        fits=False, lower_s=6.0, compile_s=84.0,
    )  # fmt: skip
    line = aot_table.row(decoder)
    assert line.startswith("| decoder 7b | 11.13 | v5e-256 (v5e:16x16) | FSDP | 1x256x1 | 1 |")
    assert line.endswith("| **17.50** / 16 | **no** | 12 | 1.5 |")


def test_reruns_replace_rows_and_rows_sort_by_size_then_slice(tmp_path) -> None:
    small = _result(gin_files=["gin/models/t5_1_1/base.gin"], params_b=0.25)
    first = tmp_path / "a.jsonl"
    first.write_text("\n".join(json.dumps(r) for r in [_result(), small]) + "\n\n")
    rerun = tmp_path / "b.jsonl"
    rerun.write_text(json.dumps(_result(total_gib=9.5)) + "\n")
    rows = aot_table.read_results([str(first), str(rerun)])
    assert [(r["params_b"], r["total_gib"]) for r in rows] == [(0.25, 8.902), (11.13, 9.5)]
    lines = aot_table.table(rows).splitlines()
    assert len(lines) == 4 and lines[0] == aot_table.HEADER
    assert lines[1].count("---") == lines[0].count("|") - 1 == 14


def test_a_line_that_is_not_json_names_file_and_line(tmp_path) -> None:
    path = tmp_path / "aot.jsonl"
    path.write_text(json.dumps(_result()) + "\n{truncated\n")
    with pytest.raises(SystemExit, match=rf"{path}:2: not JSON"):
        aot_table.read_results([str(path)])
