"""``tools/bench_decode.py`` runs end to end on a tiny preset and reports every method."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

TOOL = Path(__file__).resolve().parents[1] / "tools" / "bench_decode.py"


def test_bench_decode_reports_each_method(tmp_path, capsys) -> None:
    spec = importlib.util.spec_from_file_location("bench_decode", TOOL)
    assert spec and spec.loader
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    out_file = tmp_path / "decode.jsonl"
    tool.main(["--gin_file=gin/models/decoder/tiny.gin", "--gin=DecoderConfig.vocab_size = 256",
               "--batch_size=2", "--inputs_length=8", "--decode_length=3", "--iters=1",
               "--methods=greedy,beam4", f"--output={out_file}"])  # fmt: skip
    rows = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert [(r["method"], r["num_decodes"]) for r in rows] == [("greedy", 1), ("beam4", 4)]
    for row in rows:
        assert row["tokens_per_s"] > 0 and row["call_s"] > 0
        # Every decode generated decode_length tokens (EOS is never emitted).
        assert row["generated_tokens"] == 2 * row["num_decodes"] * 3
    assert "| beam4 | 4 |" in capsys.readouterr().out
