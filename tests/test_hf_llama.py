"""Our decoder matches Hugging Face ``LlamaForCausalLM`` after conversion (MHA, GQA, MQA)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from helpers.hf_models import convert, numpy_state_dict, tiny_hf_llama, torch_ints
from helpers.models import forward, greedy

from t5x_instruct.convert import decoder_config_from_hf, llama_params_from_hf
from t5x_instruct.models import Decoder, DecoderConfig, build_model

EOS = 2
KV_HEADS = pytest.mark.parametrize("kv_heads", [4, 2, 1], ids=["mha", "gqa", "mqa"])


def _hf_logits(hf, tokens: np.ndarray, attention_mask: np.ndarray | torch.Tensor) -> np.ndarray:
    if not isinstance(attention_mask, torch.Tensor):
        attention_mask = torch_ints(attention_mask)
    with torch.no_grad():
        return hf(input_ids=torch_ints(tokens), attention_mask=attention_mask).logits.numpy()


@KV_HEADS
def test_logits_match_hf_on_padded_batch(kv_heads: int) -> None:
    hf = tiny_hf_llama(num_kv_heads=kv_heads, seed=kv_heads)
    ours = convert(hf, scan_layers=kv_heads == 2)
    assert ours.cfg.num_kv_heads == kv_heads
    rng = np.random.RandomState(kv_heads)
    lengths = np.array([11, 7, 3])
    tokens = rng.randint(3, 64, (3, 11))
    real = np.arange(11)[None] < lengths[:, None]
    tokens = np.where(real, tokens, 0)
    got = np.asarray(forward(ours, jnp.asarray(tokens)))
    want = _hf_logits(hf, tokens, real)
    # Padded positions predict nothing; only real tokens are compared.
    np.testing.assert_allclose(got[real], want[real], atol=1e-4, rtol=0)


def test_tied_embeddings_match_hf() -> None:
    hf = tiny_hf_llama(num_kv_heads=2, seed=5, tie_word_embeddings=True)
    ours = convert(hf)
    assert ours.cfg.tie_embeddings
    tokens = np.random.RandomState(5).randint(3, 64, (2, 9))
    got = np.asarray(forward(ours, jnp.asarray(tokens)))
    np.testing.assert_allclose(got, _hf_logits(hf, tokens, np.ones_like(tokens)), atol=1e-4, rtol=0)


@KV_HEADS
def test_greedy_matches_hf_generate(kv_heads: int) -> None:
    hf = tiny_hf_llama(num_kv_heads=kv_heads, seed=10 + kv_heads)
    ours = convert(hf)
    prompt = np.random.RandomState(kv_heads).randint(3, 64, (2, 6))  # equal lengths: no padding
    steps = 8
    with torch.no_grad():
        ref = hf.generate(
            input_ids=torch_ints(prompt),
            attention_mask=torch_ints(np.ones_like(prompt)),
            max_new_tokens=steps,
            do_sample=False,
            num_beams=1,
            eos_token_id=EOS,
            pad_token_id=0,
        ).numpy()[:, prompt.shape[1] :]
    out = greedy(
        ours, {"decoder_input_tokens": jnp.asarray(prompt)}, max_decode_length=steps, eos_id=EOS
    )
    tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
    for row in range(prompt.shape[0]):
        hf_row = ref[row]
        hf_len = next((i + 1 for i, t in enumerate(hf_row) if t == EOS), len(hf_row))
        np.testing.assert_array_equal(tokens[row, : lengths[row]], hf_row[:hf_len])


def _prefix_lm_additive_mask(prefix_lengths: list[int], length: int) -> torch.Tensor:
    """``[b, 1, q, k]``: inputs see each other fully, targets see everything before them."""
    q = np.arange(length)[:, None]
    k = np.arange(length)[None, :]
    masks = [(k <= q) | ((q < p) & (k < p)) for p in prefix_lengths]
    allowed = torch.from_numpy(np.stack(masks)[:, None])
    return torch.where(allowed, 0.0, torch.finfo(torch.float32).min)


def test_prefix_lm_matches_hf_with_explicit_mask() -> None:
    hf = tiny_hf_llama(num_kv_heads=2, seed=7)
    ours = convert(hf)
    prefix_lengths = [4, 7]
    tokens = np.random.RandomState(7).randint(3, 64, (2, 10))
    in_prefix = (np.arange(10)[None] < np.array(prefix_lengths)[:, None]).astype(np.int32)
    got = np.asarray(
        forward(ours, jnp.asarray(tokens), decoder_causal_attention=jnp.asarray(in_prefix))
    )
    want = _hf_logits(hf, tokens, _prefix_lm_additive_mask(prefix_lengths, 10))
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    # The prefix must matter: early prefix positions see later inputs, unlike causal LM.
    causal = np.asarray(forward(ours, jnp.asarray(tokens)))
    assert np.abs(causal[:, 0] - got[:, 0]).max() > 1e-2


def _abstract(cfg: DecoderConfig) -> Decoder:
    return nnx.eval_shape(lambda: build_model(cfg))


def test_converter_names_bad_keys() -> None:
    hf = tiny_hf_llama(num_kv_heads=2)
    cfg = decoder_config_from_hf(hf.config.to_dict())
    state = numpy_state_dict(hf)

    missing = dict(state)
    del missing["model.layers.1.mlp.up_proj.weight"]
    with pytest.raises(KeyError, match=r"model\.layers\.1\.mlp\.up_proj\.weight"):
        llama_params_from_hf(missing, _abstract(cfg))

    extra = {**state, "model.layers.2.input_layernorm.weight": state["model.norm.weight"]}
    with pytest.raises(ValueError, match=r"model\.layers\.2\.input_layernorm\.weight"):
        llama_params_from_hf(extra, _abstract(cfg))

    # GQA checkpoint into an MHA model: k_proj has too few rows.
    mha = decoder_config_from_hf({**hf.config.to_dict(), "num_key_value_heads": 4})
    k_proj = r"model\.layers\.0\.self_attn\.k_proj\.weight.*\(16, 32\)"
    with pytest.raises(ValueError, match=k_proj):
        llama_params_from_hf(state, _abstract(mha))


def test_config_rejects_scaled_rope() -> None:
    hf_cfg = tiny_hf_llama(num_kv_heads=2).config.to_dict()
    hf_cfg["rope_parameters"] = {"rope_type": "llama3", "rope_theta": 500.0, "factor": 8.0}
    with pytest.raises(NotImplementedError, match="llama3"):
        decoder_config_from_hf(hf_cfg)
