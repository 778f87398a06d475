"""Command-line tools run on the embedded demo tasks and print what they promise."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

TOOLS = Path(__file__).resolve().parents[1] / "tools"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_inspect_task_prints_rendered_examples_and_packing(capsys) -> None:
    tool = _load("inspect_task")
    tool.main(["demo_instructions", "-n", "3", "--module", "tasks.demo",
               "--inputs_length", "48", "--targets_length", "8"])  # fmt: skip
    out = capsys.readouterr().out
    assert len(re.findall(r"--- example \d+ ", out)) == 3
    blocks = re.findall(r"\[inputs\]\n(.+)\n\[targets\]\n(.+)\n", out)
    assert len(blocks) == 3 and all(inp.strip() and tgt.strip() for inp, tgt in blocks)
    efficiency = float(re.search(r"packing efficiency .*: ([\d.]+)%", out).group(1))
    assert 0.0 < efficiency <= 100.0


def test_list_tasks_shows_demo_mixture_and_tasks(capsys) -> None:
    tool = _load("list_tasks")
    tool.main(["--module", "tasks.demo", "--filter", "^demo_"])
    out = capsys.readouterr().out
    assert "demo_instructions" in out
    assert "demo_arithmetic" in out
    assert "flan_" not in out


def test_bench_attention_measures_every_case_and_checks_against_xla(tmp_path, capsys) -> None:
    """The benchmark runs end to end (interpret mode here) and its results match XLA's."""
    import json

    tool = _load("bench_attention")
    out_file = tmp_path / "bench.jsonl"
    tool.main(["--seq_lens=48", "--batch=2", "--heads=4", "--kv_heads=2", "--head_dim=16",
               "--block_q=32", "--block_kv=32", "--iters=1", "--dtype=float32",
               "--impls=xla,pallas,cudnn", f"--json_out={out_file}"])  # fmt: skip
    rows = [json.loads(line) for line in out_file.read_text().splitlines()]
    measured = {(r["case"], r["impl"], r["mode"]) for r in rows}
    for case in ("causal_packed", "t5_bias"):
        for mode in ("fwd", "fwd_bwd"):
            assert {(case, "xla", mode), (case, "pallas", mode)} <= measured
    assert ("decode", "pallas", "fwd") in measured
    for row in rows:
        assert row["ms"] > 0 and row["mem_mib"] > 0
        if row["impl"] == "pallas":
            assert row["rel_err_vs_xla"] < 1e-5, row
    assert "cudnn" in capsys.readouterr().out  # reported as skipped, not silently dropped
