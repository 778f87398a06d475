"""A tiny random Flan-T5-shaped Hugging Face model on the demo vocabulary, converted into a
params-only checkpoint by tools/convert_checkpoint.py, and numpy oracles computed with the
Hugging Face model itself (greedy decoding and target log-likelihoods)."""

from __future__ import annotations

import contextlib
import importlib.util
import io
from pathlib import Path

import numpy as np
import sentencepiece as spm
import torch
from transformers import T5Config, T5ForConditionalGeneration

import tasks.demo

REPO = Path(__file__).resolve().parents[2]
TOOL = REPO / "tools" / "convert_checkpoint.py"
VOCAB_SIZE = 640  # the demo SentencePiece model has 600 pieces


def tiny_flan_t5(seed: int = 0) -> T5ForConditionalGeneration:
    """T5 v1.1 / Flan-T5 architecture (gated GELU, untied head), tiny; norms away from 1."""
    torch.manual_seed(seed)
    cfg = T5Config(
        vocab_size=VOCAB_SIZE, d_model=32, d_kv=8, d_ff=48, num_heads=4, num_layers=2,
        num_decoder_layers=2, relative_attention_num_buckets=8,
        relative_attention_max_distance=20, feed_forward_proj="gated-gelu",
        tie_word_embeddings=False, dropout_rate=0.0, decoder_start_token_id=0,
        pad_token_id=0, eos_token_id=1,
    )  # fmt: skip
    model = T5ForConditionalGeneration(cfg).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        # Untied head of its own (transformers may share it with the embedding otherwise).
        head = torch.randn(model.lm_head.weight.shape, generator=gen) * cfg.d_model**-0.5
        model.lm_head.weight = torch.nn.Parameter(head)
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(1.0 + 0.2 * torch.randn(param.shape, generator=gen))
    return model


def convert_to_ours(hf_model: T5ForConditionalGeneration, hf_dir: Path, out_dir: Path) -> Path:
    """save_pretrained + ``convert_checkpoint.py hf-to-ours``; returns the written model.gin."""
    hf_model.save_pretrained(hf_dir)
    spec = importlib.util.spec_from_file_location("convert_checkpoint_tool", TOOL)
    assert spec is not None and spec.loader is not None
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    with contextlib.redirect_stdout(io.StringIO()):
        assert tool.main(["hf-to-ours", "--input", str(hf_dir), "--output", str(out_dir)]) == 0
    return out_dir / "model.gin"


@contextlib.contextmanager
def _no_grad():
    with torch.no_grad():
        yield


class DemoTokenizer:
    """The demo vocabulary read with sentencepiece directly (T5 ids: pad 0, EOS 1)."""

    def __init__(self) -> None:
        self.sp = spm.SentencePieceProcessor(model_file=tasks.demo.VOCAB_PATH)

    def ids(self, text: str, length: int) -> list[int]:
        """Ids + EOS, cut as training cuts them (first ``length - 1`` ids and the EOS)."""
        ids = [*self.sp.encode(text), 1]
        return ids if len(ids) <= length else [*ids[: length - 1], 1]

    def text(self, ids: list[int]) -> str:
        if 1 in ids:
            ids = ids[: ids.index(1)]
        return self.sp.decode([i for i in ids if i != 0])


def hf_greedy(model: T5ForConditionalGeneration, input_ids: list[int], steps: int) -> list[int]:
    """Argmax decoding by plain forward passes (no ``generate`` defaults involved)."""
    decoder = [0]
    with _no_grad():
        for _ in range(steps):
            logits = model(
                input_ids=torch.tensor([input_ids]), decoder_input_ids=torch.tensor([decoder])
            ).logits[0, -1]
            decoder.append(int(torch.argmax(logits)))
            if decoder[-1] == 1:
                break
    return decoder[1:]


def hf_log_likelihood(
    model: T5ForConditionalGeneration, input_ids: list[int], target_ids: list[int]
) -> float:
    """Sum over target tokens of log p(token), teacher-forced, in float64 numpy."""
    with _no_grad():
        decoder_input_ids = torch.tensor([[0, *target_ids[:-1]]])
        logits = model(input_ids=torch.tensor([input_ids]), decoder_input_ids=decoder_input_ids)
        logits = logits.logits[0].double().numpy()
    logits = logits - logits.max(axis=-1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
    return float(sum(log_probs[t, tok] for t, tok in enumerate(target_ids)))
