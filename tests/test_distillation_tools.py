"""The offline distillation tools on the demo data: the top-k store (killed, resumed, joined
to the real pipeline's batches of both families) and the sequence-level KD data set."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from helpers.distillation import TEACHER, save_teacher

import tasks.demo  # noqa: F401  (registers the demo tasks)
from t5x_instruct.errors import UserInputError
from t5x_instruct.models import T5Config
from t5x_instruct.plugins.distillation import offline
from t5x_instruct.plugins.distillation.topk_store import TopKStore

TOOLS = Path(__file__).resolve().parents[1] / "tools"
DEMO_TEACHER = T5Config(**{**TEACHER.__dict__, "vocab_size": 640})  # the demo vocabulary
LENGTHS = {"inputs": 48, "targets": 8}


def _tool(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def teacher_args(tmp_path_factory) -> list[str]:
    """A random demo-vocabulary teacher: its gin file and checkpoint as tool arguments."""
    root = tmp_path_factory.mktemp("teacher")
    fields = ("vocab_size", "emb_dim", "num_heads", "head_dim", "mlp_dim",
              "num_encoder_layers", "num_decoder_layers")  # fmt: skip
    gin_file = root / "teacher.gin"
    gin_file.write_text(
        "import t5x_instruct.models\nbuild_model.config = @T5Config()\n"
        + "".join(f"T5Config.{k} = {getattr(DEMO_TEACHER, k)}\n" for k in fields)
    )
    checkpoint = save_teacher(str(root / "checkpoint"), DEMO_TEACHER)
    return [
        f"--gin_file={gin_file}", f"--teacher_checkpoint={checkpoint}", "--task=demo_sentiment",
        "--split=validation", f"--inputs_length={LENGTHS['inputs']}",
        f"--targets_length={LENGTHS['targets']}",
    ]  # fmt: skip


def test_teacher_topk_store_resumes_and_joins_training_batches(
    teacher_args, tmp_path, monkeypatch
) -> None:
    """The tool's keys (from the task's examples) are the keys of the training pipeline's
    batches, for both families' layouts, packed or not; a killed run resumes."""
    from t5x_instruct.data import DataIterator

    store_dir = tmp_path / "store"
    args = [*teacher_args, "--k=4", f"--out_dir={store_dir}", "--examples_per_shard=16",
            "--batch_size=16", "--max_examples=40"]  # fmt: skip
    tool = _tool("teacher_topk")
    real_batches, real_topk_fn = offline.batches, offline.topk_fn
    compiled: list = []

    def killed_after_two(examples, size):
        for number, chunk in enumerate(real_batches(examples, size)):
            if number == 2:
                raise KeyboardInterrupt  # as if killed: two whole shards are on disk
            yield chunk

    def compiled_once(*args):  # the rerun would compile the same function again
        if not compiled:
            compiled.append(real_topk_fn(*args))
        return compiled[0]

    monkeypatch.setattr(offline, "topk_fn", compiled_once)
    monkeypatch.setattr(offline, "batches", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        tool.main(args)
    with pytest.raises(UserInputError, match="incomplete"):
        TopKStore(str(store_dir))
    monkeypatch.setattr(offline, "batches", real_batches)
    manifest = tool.main(args)  # resumes after example 32
    assert manifest["complete"] and manifest["num_examples"] == 40
    assert manifest["shards"] == [f"topk-0000{i}.safetensors" for i in range(3)]
    store = TopKStore(str(store_dir))
    assert len(store) == 40  # every example once: none lost or written twice by the rerun
    # (Unpacked encoder-decoder rows are the plugin tests' hand-built layout.)
    for model_type, pack in (("encoder_decoder", True), ("prefix_lm", False), ("prefix_lm", True)):
        batch = next(DataIterator(
            "demo_sentiment", task_feature_lengths=LENGTHS, split="validation", batch_size=4,
            model_type=model_type, pack=pack, shuffle=False,
        ))  # fmt: skip
        _, logprobs, rest, found = store.lookup(batch, strict=True)
        np.testing.assert_array_equal(found, batch["decoder_loss_weights"] > 0)
        total = np.exp(logprobs).sum(-1) + np.exp(rest)
        np.testing.assert_allclose(total[found > 0], 1.0, rtol=2e-3)  # fp16 log-probs
    with pytest.raises(UserInputError, match="other settings"):
        tool.main([*args, "--k=5"])  # argparse: the last --k wins


def test_distill_sequences_writes_a_registrable_task(teacher_args, tmp_path) -> None:
    from t5x_instruct.data.registry import get_mixture_or_task
    from t5x_instruct.gin_utils import parse_gin

    out = tmp_path / "seqkd.jsonl"
    gin_file = _tool("distill_sequences").main(
        [*teacher_args, f"--out={out}", "--max_examples=12", "--batch_size=8"]
    )
    records = [json.loads(line) for line in out.read_text().splitlines()]
    source = offline.task_examples("demo_sentiment", "validation", LENGTHS, max_examples=12)
    # Every source example once, in a shuffled order (a JSONL task only shuffles in a buffer).
    inputs = [ex.inputs_text for ex in source]
    assert sorted(r["inputs"] for r in records) == sorted(inputs)
    assert [r["inputs"] for r in records] != inputs
    assert all(r["task"] == "demo_sentiment" for r in records)
    parse_gin([gin_file], clear=True)
    # The trainer's lookup: it re-runs registrations whose bindings changed since their
    # import (`import tasks.custom` is a no-op in a process that imported it before).
    task = get_mixture_or_task("seqkd")
    ds = task.get_dataset(LENGTHS, split="train", shuffle=False)
    examples = list(ds.as_numpy_iterator())
    assert [ex["inputs_pretokenized"].decode() for ex in examples] == [r["inputs"] for r in records]
    assert [ex["targets_pretokenized"].decode() for ex in examples] == [
        r["targets"] for r in records
    ]
