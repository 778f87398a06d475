"""IFS tools: the plot of a run's IFS curve (stop step, axes, table) and the classifier
trainer end to end on a small chat file (data files, instruction set, checkpoint, metrics)."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

import plot_ifs  # noqa: E402


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_plot_marks_the_first_eval_where_the_rule_fires(tmp_path, capsys) -> None:
    ifs = [(250, 0.40), (500, 0.80), (750, 0.92), (1000, 0.925), (1250, 0.935), (1500, 0.95)]
    lines = [{"step": 50, "loss": 3.0}]
    for step, value in ifs:
        lines.append({"step": step, "loss": 1.0, "ifs/ifs": value,
                      "ifs/ifs_partial": value - 0.1, "ifs/ifs_full": value + 0.05})  # fmt: skip
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    (tmp_path / "config.gin").write_text("BATCH_SIZE = 32\ntrain.batch_size = %BATCH_SIZE\n")
    # An older run without ifs/empty: its share comes from the responses file, if any.
    (tmp_path / "ifs").mkdir()
    responses = [{"response": r} for r in ("a", "", " ", "b")]
    (tmp_path / "ifs" / "responses_500.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in responses)
    )
    out = tmp_path / "plot.png"
    result = plot_ifs.main([f"--model_dir={tmp_path}", f"--out={out}", "--patience=2",
                            "--epsilon=0.01", "--examples_per_row=2.5"])  # fmt: skip
    # By hand, patience 2: at 1250 the best of (0.925, 0.935) gains 0.015 over 0.92; at 1500
    # the best of (0.935, 0.95) gains 0.025 over 0.925. It never fires...
    assert result["stop_step"] is None
    # ... and with patience 1 it fires at 1000 (0.925 - 0.92 = 0.005 < 0.01).
    result = plot_ifs.main([f"--model_dir={tmp_path}", f"--out={out}", "--patience=1"])
    assert result["stop_step"] == 1000
    assert result["examples_per_step"] == 32
    width, height = _png_size(out)
    assert width > 600 and height > 300
    printed = capsys.readouterr().out
    assert "| 750 | 24,000 | 0.920 | 0.820 | 0.970 | — |" in printed
    assert "| 500 | 16,000 | 0.800 | 0.700 | 0.850 | 0.500 |" in printed
    assert "early stop (gain < 0.01 over 1 evals): step 1000" in printed


def test_plot_without_ifs_values_says_what_is_missing(tmp_path) -> None:
    (tmp_path / "metrics.jsonl").write_text('{"step": 10, "loss": 1.0}\n')
    with pytest.raises(SystemExit, match="no 'ifs/ifs' values"):
        plot_ifs.main([f"--model_dir={tmp_path}", "--batch_size=8"])


def _chat(i: int) -> str:
    verbs = ["Describe", "Explain briefly", "Give me a short note on", "Tell me about"]
    topics = ["the moon", "green tea", "paper planes", "river otters", "old maps"]
    user = f"{verbs[i % 4]} {topics[i % 5]} number {i}."
    reply = f"Sure: fact {i} here"
    turns = [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
    return json.dumps({"messages": turns})


def test_classifier_trainer_on_a_chat_file(tmp_path) -> None:
    import train_ifs_classifier

    from t5x_instruct.plugins.ifs import ToneClassifier
    from t5x_instruct.plugins.ifs.data import read_instructions

    chats = tmp_path / "chat.jsonl"
    chats.write_text("\n".join(_chat(i) for i in range(60)) + "\n{broken\n")
    model_dir = tmp_path / "classifier"
    extra = train_ifs_classifier.main([
        f"--model_dir={model_dir}", f"--dialogues={chats}", "--num_instructions=10",
        "--steps=4", "--batch_size=16", "--input_length=24", "--eval_period=0",
    ])  # fmt: skip
    items = read_instructions(str(model_dir / "instructions.jsonl"))
    assert len(items) == 10
    assert all(i.inputs == f"User: {i.instruction}\nAssistant:" for i in items)
    rows = {s: [json.loads(x) for x in (model_dir / "data" / f"{s}.jsonl").open()]
            for s in ("train", "validation", "test")}  # fmt: skip
    for split_rows in rows.values():
        targets = [r["targets"] for r in split_rows]
        assert targets.count("answer") == targets.count("continuation")
    # 50 classifier dialogues -> 50 responses and 50 continuations, 80/10/10 by label.
    assert [len(rows[s]) for s in ("train", "validation", "test")] == [80, 10, 10]
    saved = json.loads((model_dir / "ifs_classifier.json").read_text())
    metrics = saved["test_metrics"]
    assert metrics["examples"] == 10 and 0.0 <= metrics["accuracy"] <= 1.0
    assert saved == {**saved, **extra}
    assert (model_dir / "checkpoints" / "4").is_dir()
    probs = ToneClassifier.load(str(model_dir)).answer_probability(["Sure: fact 1 here"])
    assert 0.0 < probs[0] < 1.0
