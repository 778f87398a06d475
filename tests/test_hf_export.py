"""Export to Hugging Face: HF -> ours -> HF is bit-exact, and transformers scores as we do."""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import torch
from flax import nnx
from helpers.hf_models import tiny_hf_llama, tiny_hf_t5, torch_ints
from helpers.models import build, forward, tiny_decoder_config, tiny_t5_config
from safetensors.numpy import load_file
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

from t5x_instruct import partitioning
from t5x_instruct.convert.hf_export import SAFETENSORS_INDEX, save_hf_checkpoint
from t5x_instruct.convert.hf_files import load_hf_params, model_config_from_hf, read_hf_config
from t5x_instruct.models import build_model
from t5x_instruct.training.train_state import ModelSpec


def _mesh() -> tuple[jax.sharding.Mesh, list]:
    mesh = partitioning.create_mesh(partitioning.MeshConfig(data=1, fsdp=8))
    return mesh, partitioning.standard_logical_axis_rules("fsdp")


def _bits(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x).view(np.uint8)


HF_MODELS = {
    "t5_untied": lambda: tiny_hf_t5(tie_word_embeddings=False, seed=4),
    "t5_tied": lambda: tiny_hf_t5(tie_word_embeddings=True, seed=5),
    "llama_gqa": lambda: tiny_hf_llama(num_kv_heads=2, seed=6),
    "llama_tied_mqa": lambda: tiny_hf_llama(num_kv_heads=1, seed=7, tie_word_embeddings=True),
}


@pytest.mark.parametrize("name", sorted(HF_MODELS))
def test_hf_to_ours_to_hf_gives_back_the_same_state_dict(tmp_path, name: str) -> None:
    hf = HF_MODELS[name]()
    hf.save_pretrained(tmp_path / "hf")
    cfg = model_config_from_hf(read_hf_config(str(tmp_path / "hf")))
    spec = ModelSpec.create(lambda: build_model(cfg))
    mesh, rules = _mesh()
    params = load_hf_params(str(tmp_path / "hf"), spec, mesh, rules)  # sharded over 8 devices
    save_hf_checkpoint(params, cfg, str(tmp_path / "out"))

    # The files: every tensor we write is bit-identical to the one transformers wrote; what we
    # leave out is only what HF itself ties back on load.
    original = load_file(tmp_path / "hf" / "model.safetensors")
    exported = load_file(tmp_path / "out" / "model.safetensors")
    for key, value in exported.items():
        assert value.dtype == original[key].dtype and value.shape == original[key].shape, key
        np.testing.assert_array_equal(_bits(value), _bits(original[key]), err_msg=key)
    tied = {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight"}
    assert set(original) - set(exported) <= tied

    # The models: transformers loads our folder into exactly the original state dict.
    auto = AutoModelForSeq2SeqLM if name.startswith("t5") else AutoModelForCausalLM
    reloaded = auto.from_pretrained(tmp_path / "out").state_dict()
    want = hf.state_dict()
    assert set(reloaded) == set(want)
    for key, value in want.items():
        assert torch.equal(reloaded[key], value), key


def _t5_inputs() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.RandomState(1)
    enc = rng.randint(2, 64, (3, 24))
    for row, length in enumerate((24, 13, 4)):
        enc[row, length:] = 0
    dec = rng.randint(2, 64, (3, 22))
    dec[:, 0] = 0
    return enc, dec


CASES = {
    "t5_scan_sharded_files": (tiny_t5_config(scan=True), 8 * 1024),
    "t5_tied_gelu_exact": (
        dataclasses.replace(
            tiny_t5_config(), logits_via_embedding=True, mlp_activation="gelu_exact"
        ),
        None,
    ),
    "llama_gqa": (tiny_decoder_config(num_kv_heads=2), None),
    "llama_tied_scan": (
        dataclasses.replace(tiny_decoder_config(scan=True, num_kv_heads=1), tie_embeddings=True),
        None,
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_exported_model_scores_like_ours(tmp_path, name: str) -> None:
    cfg, shard_bytes = CASES[name]
    ours = build(cfg)
    params = nnx.to_pure_dict(nnx.state(ours, nnx.Param))
    kwargs = {} if shard_bytes is None else {"max_shard_bytes": shard_bytes}
    files = save_hf_checkpoint(params, cfg, str(tmp_path), **kwargs)
    if shard_bytes is not None:
        assert os.path.exists(tmp_path / SAFETENSORS_INDEX) and len(files) > 3
    with torch.no_grad():
        if name.startswith("t5"):
            enc, dec = _t5_inputs()
            hf = AutoModelForSeq2SeqLM.from_pretrained(tmp_path).eval()
            want = hf(
                input_ids=torch_ints(enc),
                attention_mask=torch_ints(enc != 0),
                decoder_input_ids=torch_ints(dec),
            ).logits.numpy()
            got = np.asarray(forward(ours, jnp.asarray(enc), jnp.asarray(dec)))
        else:
            tokens = np.random.RandomState(2).randint(1, 64, (2, 20))
            hf = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
            want = hf(input_ids=torch_ints(tokens)).logits.numpy()
            got = np.asarray(forward(ours, jnp.asarray(tokens)))
    # Both sides run fp32 and differ only in summation order: measured <= 1e-6 of the largest
    # logit (which reaches ~30 for the tied Llama), so bound by 2e-6 of it.
    np.testing.assert_allclose(got, want, atol=2e-6 * np.abs(want).max(), rtol=0)


def test_bfloat16_export_and_config_without_clobbering(tmp_path) -> None:
    cfg = tiny_decoder_config()
    params = nnx.to_pure_dict(nnx.state(build(cfg), nnx.Param))
    save_hf_checkpoint(params, cfg, str(tmp_path), dtype=jnp.bfloat16)
    tensors = load_file(tmp_path / "model.safetensors")
    embed = tensors["model.embed_tokens.weight"]
    assert embed.dtype == ml_dtypes.bfloat16
    expected = np.asarray(params["token_embedder"]["embedding"]).astype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(_bits(embed), _bits(expected))
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["num_key_value_heads"] == 2 and config["rope_parameters"]["rope_theta"] == 500.0
    with pytest.raises(ValueError, match="already holds a checkpoint"):
        save_hf_checkpoint(params, cfg, str(tmp_path))
