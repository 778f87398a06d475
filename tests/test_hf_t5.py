"""Our T5 v1.1 matches Hugging Face ``T5ForConditionalGeneration`` after conversion."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from helpers.hf_models import convert, numpy_state_dict, tiny_hf_t5, torch_ints
from helpers.models import forward, greedy

from t5x_instruct.convert import t5_config_from_hf, t5_params_from_hf
from t5x_instruct.models import EncoderDecoder, T5Config, build_model

EOS = 1


def _padded_batch(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded encoder inputs (lengths 12, 9, 5) and full-length decoder inputs."""
    rng = np.random.RandomState(seed)
    enc = rng.randint(2, 64, (3, 12))
    for row, length in enumerate((12, 9, 5)):
        enc[row, length:] = 0
    dec = rng.randint(2, 64, (3, 10))
    dec[:, 0] = 0  # decoder start token
    return enc, dec


def _hf_logits(hf, enc: np.ndarray, dec: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out = hf(
            input_ids=torch_ints(enc),
            attention_mask=torch_ints(enc != 0),
            decoder_input_ids=torch_ints(dec),
        )
    return out.logits.numpy()


@pytest.mark.parametrize(
    ("tie", "scan"), [(False, False), (False, True), (True, False)], ids=["untied", "scan", "tied"]
)
def test_logits_match_hf_on_padded_batch(tie: bool, scan: bool) -> None:
    hf = tiny_hf_t5(tie_word_embeddings=tie)
    ours = convert(hf, scan_layers=scan)
    assert ours.cfg.logits_via_embedding == tie
    enc, dec = _padded_batch()
    # Padding lives in the encoder only, so every decoder position is meaningful.
    got = np.asarray(forward(ours, jnp.asarray(enc), jnp.asarray(dec)))
    np.testing.assert_allclose(got, _hf_logits(hf, enc, dec), atol=1e-4, rtol=0)


def test_greedy_matches_hf_generate() -> None:
    # HF generate sizes its KV cache by the encoder depth, so keep both stacks equally deep.
    hf = tiny_hf_t5(tie_word_embeddings=False, seed=3, num_decoder_layers=2)
    ours = convert(hf)
    enc, _ = _padded_batch(seed=3)
    steps = 8
    with torch.no_grad():
        ref = hf.generate(
            input_ids=torch_ints(enc),
            attention_mask=torch_ints(enc != 0),
            max_new_tokens=steps,
            do_sample=False,
            num_beams=1,
            eos_token_id=EOS,
            pad_token_id=0,
            decoder_start_token_id=0,
        ).numpy()[:, 1:]  # drop the start token
    out = greedy(
        ours, {"encoder_input_tokens": jnp.asarray(enc)}, max_decode_length=steps, eos_id=EOS
    )
    tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
    for row in range(enc.shape[0]):
        hf_row = ref[row]
        hf_len = next((i + 1 for i, t in enumerate(hf_row) if t == EOS), len(hf_row))
        np.testing.assert_array_equal(tokens[row, : lengths[row]], hf_row[:hf_len])


def _abstract(cfg: T5Config) -> EncoderDecoder:
    return nnx.eval_shape(lambda: build_model(cfg))


def test_converter_names_bad_keys() -> None:
    hf = tiny_hf_t5(tie_word_embeddings=False)
    cfg = t5_config_from_hf(hf.config.to_dict())
    state = numpy_state_dict(hf)

    missing = dict(state)
    del missing["decoder.block.2.layer.1.EncDecAttention.k.weight"]
    with pytest.raises(KeyError, match=r"decoder\.block\.2\.layer\.1\.EncDecAttention\.k\.weight"):
        t5_params_from_hf(missing, _abstract(cfg))

    extra = {**state, "encoder.block.2.layer.0.SelfAttention.q.weight": state["shared.weight"]}
    with pytest.raises(ValueError, match=r"encoder\.block\.2\.layer\.0\.SelfAttention\.q\.weight"):
        t5_params_from_hf(extra, _abstract(cfg))

    bad = {**state, "encoder.final_layer_norm.weight": np.ones(7, np.float32)}
    with pytest.raises(ValueError, match=r"encoder\.final_layer_norm\.weight.*\(7,\)"):
        t5_params_from_hf(bad, _abstract(cfg))

    # A tied model must not silently drop a distinct output projection.
    tied_cfg = t5_config_from_hf({**hf.config.to_dict(), "scale_decoder_outputs": True})
    with pytest.raises(ValueError, match=r"lm_head\.weight"):
        t5_params_from_hf(state, _abstract(tied_cfg))
