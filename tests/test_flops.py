"""Analytic training FLOPs (``training/flops.py``) against hand counts and XLA's own count.

Oracles: (a) the counts written out by hand below; (b) ``cost_analysis()['flops']`` of the
compiled forward pass, which counts a dot as ``2*M*N*K`` plus every elementwise op (norms,
softmax, masking, activations), so XLA's figure is a little *above* the matmul-only count.
"""

from __future__ import annotations

import importlib
import json
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from t5x_instruct.models import DecoderConfig, T5Config, build_model
from t5x_instruct.training.flops import StepFlops, step_flops

TINY_T5 = T5Config(
    vocab_size=100, emb_dim=8, num_heads=2, head_dim=4, mlp_dim=16,
    num_encoder_layers=2, num_decoder_layers=3,
)  # fmt: skip
TINY_GQA = DecoderConfig(
    vocab_size=50, emb_dim=8, num_heads=4, num_kv_heads=2, head_dim=2, mlp_dim=12, num_layers=2
)


def test_t5_hand_count() -> None:
    # batch 2, encoder 5 tokens, decoder 3 tokens; d=8, 2 heads x 4 = 8, f=16, V=100.
    per_token_layer = 4 * (2 * 8 * 8) + 3 * (2 * 8 * 16)  # Q,K,V,O + wi_0,wi_1,wo = 1280
    encoder = 2 * (2 * 5 * per_token_layer)  # batch * 2 layers * 5 tokens = 25600
    decoder = 2 * (3 * 3 * per_token_layer)  # batch * 3 layers * 3 tokens = 23040
    # cross-attention: Q,O on 3 decoder tokens, K,V on 5 encoder tokens, in each of 3 layers
    cross = 2 * 3 * (3 * 2 * (2 * 8 * 8) + 5 * 2 * (2 * 8 * 8))  # 12288
    scores = 2 * (  # QK^T and AV: 2 matmuls of 2*q*kv*(heads*head_dim)
        2 * (2 * 2 * 5 * 5 * 8)  # encoder self, 2 layers
        + 3 * (2 * 2 * 3 * 3 * 8)  # decoder self, full 3x3 square, 3 layers
        + 3 * (2 * 2 * 3 * 5 * 8)  # cross, 3x5, 3 layers
    )  # 7808
    logits = 2 * 3 * (2 * 8 * 100)  # 9600
    assert (encoder, decoder, cross, scores, logits) == (25600, 23040, 12288, 7808, 9600)

    got = step_flops(TINY_T5, batch=2, encoder_length=5, decoder_length=3)
    assert got.breakdown() == {
        "encoder": 3 * 25600,
        "decoder": 3 * 23040,
        "cross_attention": 3 * 12288,
        "attention_scores": 3 * 7808,
        "logits": 3 * 9600,
        "total": 3 * 78336,
    }
    assert got.train == 235008 and got.hardware == got.train  # no remat


def test_gqa_decoder_hand_count_and_remat() -> None:
    # batch 3, length 7; d=8, 4 query heads and 2 KV heads of size 2, f=12, V=50.
    q_o = 2 * (2 * 8 * (4 * 2))  # 256
    k_v = 2 * (2 * 8 * (2 * 2))  # 128: GQA projects only 2 KV heads
    mlp = 3 * (2 * 8 * 12)  # 576
    decoder = 3 * 2 * 7 * (q_o + k_v + mlp)  # 40320
    scores = 3 * 2 * (2 * (2 * 7 * 7 * (4 * 2)))  # every query head, full 7x7 square: 9408
    logits = 3 * 7 * (2 * 8 * 50)  # 16800
    got = step_flops(TINY_GQA, batch=3, decoder_length=7)
    assert got.forward == {
        "encoder": 0,
        "decoder": decoder,
        "cross_attention": 0,
        "attention_scores": scores,
        "logits": logits,
    }
    assert got.train == 3 * 66528

    # Remat adds recomputation to the hardware count only (MFU stays the same).
    full = StepFlops(got.forward, remat_policy="full")
    assert full.train == got.train and full.hardware == 3 * 66528 + 40320 + 9408
    assert StepFlops(got.forward, remat_policy="dots_no_batch").hardware == 3 * 66528 + 9408
    assert StepFlops(got.forward, remat_policy="dots").hardware == got.train


def test_lengths_must_fit_the_family() -> None:
    with pytest.raises(ValueError, match="encoder_length"):
        step_flops(TINY_T5, batch=1, decoder_length=4)
    with pytest.raises(ValueError, match="one sequence"):
        step_flops(TINY_GQA, batch=1, encoder_length=4, decoder_length=4)


def _xla_forward_flops(cfg, lengths: dict[str, int], batch: int = 2) -> float:
    """XLA's FLOP count of the compiled forward pass (logits only, no loss, no backward)."""
    graphdef, state = nnx.split(nnx.eval_shape(lambda: build_model(cfg)))

    def forward(state, tokens):
        return nnx.merge(graphdef, state).logits_from_batch(tokens)

    tokens = {k: jax.ShapeDtypeStruct((batch, n), jnp.int32) for k, n in lengths.items()}
    return float(jax.jit(forward).lower(state, tokens).compile().cost_analysis()["flops"])


def _num_params(cfg) -> int:
    abstract = nnx.state(nnx.eval_shape(lambda: build_model(cfg)))
    return sum(int(x.size) for x in jax.tree.leaves(abstract))


MATMUL_T5 = T5Config(
    vocab_size=512, emb_dim=256, num_heads=4, head_dim=64, mlp_dim=1024,
    num_encoder_layers=1, num_decoder_layers=1,
)  # fmt: skip


def test_t5_matches_xla_and_the_old_estimate_is_twice_too_high() -> None:
    # Matmul-dominated widths: XLA's extra elementwise work is < 1% here (measured 0.6%).
    # Unequal lengths, so counting cross-attention K/V per decoder token would be 3% off.
    analytic = step_flops(MATMUL_T5, batch=2, encoder_length=64, decoder_length=32)
    xla = _xla_forward_flops(MATMUL_T5, {"encoder_input_tokens": 64, "decoder_input_tokens": 32})
    assert analytic.forward_total <= xla <= 1.02 * analytic.forward_total

    # The bug this module fixes: 6 * params * (encoder + decoder tokens) with equal lengths,
    # against the count just checked against XLA.
    equal = step_flops(MATMUL_T5, batch=2, encoder_length=64, decoder_length=64)
    old = 6 * _num_params(MATMUL_T5) * 2 * (64 + 64)
    assert 1.9 < old / equal.train < 2.2
    # At T5 v1.1 small's shapes (a 32k vocabulary the old formula also counts as matmul
    # weights) it is ~2.45x at 128 + 128 tokens.
    small = step_flops(T5Config(), batch=1, encoder_length=128, decoder_length=128)
    assert 2.3 < 6 * _num_params(T5Config()) * 256 / small.train < 2.6


def test_gqa_decoder_matches_xla() -> None:
    cfg = DecoderConfig(
        vocab_size=512, emb_dim=256, num_heads=8, num_kv_heads=2, head_dim=32, mlp_dim=1024,
        num_layers=1,
    )  # fmt: skip
    analytic = step_flops(cfg, batch=2, decoder_length=64).forward_total
    xla = _xla_forward_flops(cfg, {"decoder_input_tokens": 64})
    assert analytic <= xla <= 1.02 * analytic


@pytest.mark.parametrize("family", ["t5", "decoder"])
def test_attention_dominated_shapes_match_xla(family: str) -> None:
    """Narrow models on long sequences: the score matmuls are > half of the count, so a
    halved causal square or a wrong cross-attention length would miss by 25% or more.
    Softmax, masks and the relative bias add ~4% in XLA's count here."""
    shape = dict(vocab_size=64, emb_dim=64, num_heads=8, head_dim=32, mlp_dim=128)
    if family == "t5":
        cfg = T5Config(num_encoder_layers=1, num_decoder_layers=1, **shape)
        lengths = {"encoder_input_tokens": 256, "decoder_input_tokens": 128}
        analytic = step_flops(cfg, batch=2, encoder_length=256, decoder_length=128)
    else:
        cfg = DecoderConfig(num_layers=1, num_kv_heads=2, **shape)
        lengths = {"decoder_input_tokens": 256}
        analytic = step_flops(cfg, batch=2, decoder_length=256)
    assert analytic.forward["attention_scores"] > 0.5 * analytic.forward_total
    xla = _xla_forward_flops(cfg, lengths)
    assert analytic.forward_total <= xla <= 1.06 * analytic.forward_total


def _bench_tool():
    return importlib.import_module("tools.bench_train")  # the repository root is on sys.path


def test_bench_train_reports_costs_memory_and_mfu(tmp_path) -> None:
    tool = _bench_tool()
    out_file = tmp_path / "bench.jsonl"
    tool.main(["--gin_file=gin/models/t5_1_1/mini.gin", "--gin=T5Config.vocab_size = 256",
               "--gin=T5Config.num_encoder_layers = 1", "--gin=T5Config.num_decoder_layers = 1",
               "--batch_size=8", "--inputs_length=16", "--targets_length=8", "--steps=1",
               "--optimizer=adamw", "--peak_tflops=2.0", f"--output={out_file}"])  # fmt: skip
    (row,) = [json.loads(line) for line in out_file.read_text().splitlines()]
    # Hand count for the tiny preset cut to 1+1 layers (d=64, 4x16 heads, f=128, V=256),
    # batch 8, encoder 16 and decoder 8 tokens; per token per layer Q,K,V,O + MLP =
    # 4*(2*64*64) + 3*(2*64*128) = 32768 + 49152 = 81920.
    per_row = (
        16 * 81920 + 8 * 81920  # encoder, decoder stacks
        + (2 * 64 * 64 * 2) * (8 + 16)  # cross-attention Q,O (decoder) and K,V (encoder)
        + 4 * 64 * (16 * 16 + 8 * 8 + 8 * 16)  # attention scores: enc, dec self, cross
        + 2 * 64 * 256 * 8  # logits
    )  # fmt: skip
    assert row["model_flops_per_step"] == 3 * 8 * per_row
    # fp32 parameters: embedding 256*64, 2 relative-bias tables 4*32, the encoder layer
    # 4*64*64 + 3*64*128 + 2 norms of 64, the decoder layer 8*64*64 + 3*64*128 + 3*64,
    # 2 final norms, the untied output projection 64*256.
    n_params = 16384 + 256 + 41088 + 57536 + 128 + 16384
    assert row["param_bytes"] == 4 * n_params
    # AdamW keeps two fp32 moments per parameter plus an int32 step count.
    assert row["opt_state_bytes"] == 2 * row["param_bytes"] + 4
    # XLA's count of one device's share of the step: at least its share of the model FLOPs.
    n_devices = jax.device_count()
    assert row["model_flops_per_step"] / n_devices <= row["xla_flops_per_device"]
    assert row["xla_flops_per_device"] <= row["model_flops_per_step"]
    assert row["xla_bytes_accessed_per_device"] > 0
    assert row["mem_argument_bytes"] > 0 and row["mem_total_bytes"] > 0
    assert row["compile_s"] >= row["lower_s"] > 0 and row["first_step_s"] > 0
    assert row["peak_memory_source"] == "host ru_maxrss" and row["peak_host_rss_gib"] > 0
    # MFU = model TFLOP/s / (--peak_tflops per device x devices); both rounded to 4 digits.
    assert row["mfu"] == pytest.approx(row["tflops_per_s"] / (2.0 * n_devices), rel=2e-3)


def test_bench_peak_table_and_cost_fallbacks() -> None:
    tool = _bench_tool()

    def peak(kind: str):
        return tool.peak_tflops_per_device(SimpleNamespace(device_kind=kind), None)[0]

    assert peak("TPU v5 lite") == 197.0 and peak("TPU v5") == 459.0 and peak("TPU v4") == 275.0
    assert peak("NVIDIA H100 PCIe") == 756.0 and peak("NVIDIA H100 80GB HBM3") == 989.0
    assert peak("NVIDIA H200") == 989.0 and peak("NVIDIA A100-SXM4-80GB") == 312.0
    assert peak("TPU v4 lite") is None and peak("cpu") is None
    assert tool.peak_tflops_per_device(SimpleNamespace(device_kind="cpu"), 1.5)[0] == 1.5

    class Compiled:
        def __init__(self, cost):
            self.cost = cost

        def cost_analysis(self):
            if isinstance(self.cost, Exception):
                raise self.cost
            return self.cost

    as_list = tool.xla_cost(Compiled([{"flops": 10.0, "bytes accessed": 4.0}]))
    assert as_list == {
        "xla_flops_per_device": 10.0,
        "xla_bytes_accessed_per_device": 4.0,
        "xla_transcendentals_per_device": None,
    }
    assert set(tool.xla_cost(Compiled(NotImplementedError())).values()) == {None}
    assert set(tool.xla_cost(Compiled(None)).values()) == {None}
