"""T5X checkpoints (written here in T5X's layouts) load into our T5 and score as the HF oracle.

The weights come from a tiny random Hugging Face T5; the test maps them to T5X names by hand
(tests/helpers/t5x_layout.py), writes them the way T5X does, imports them with our
converter and compares our logits with HF's on the same inputs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers.models import forward
from helpers.t5x_layout import (
    adafactor_states,
    t5x_target_from_hf,
    write_msgpack_checkpoint,
    write_orbax_checkpoint,
)

from t5x_instruct import partitioning
from t5x_instruct.convert.t5x import T5XCheckpointError, convert_t5x_checkpoint, load_t5x_params
from t5x_instruct.models import T5Config, build_model
from t5x_instruct.training.checkpoints import CheckpointShapeError
from t5x_instruct.training.param_checkpoints import restore_model_params
from t5x_instruct.training.train_state import ModelSpec

STEP = 1000


def _hf():
    """helpers.hf_models (torch, transformers): imported by the tests that use it only, so the
    second test environment (`make test-next`, no torch) still runs the others."""
    import helpers.hf_models

    return helpers.hf_models


def _config(*, tie: bool, scan: bool = False, **overrides) -> T5Config:
    """Our config for tiny_hf_t5, written out by hand (not derived by our converter)."""
    fields = dict(
        vocab_size=64,
        emb_dim=32,
        num_heads=4,
        head_dim=8,
        mlp_dim=48,
        num_encoder_layers=2,
        num_decoder_layers=3,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=20,
        logits_via_embedding=tie,
        scan_layers=scan,
    )
    return T5Config(**{**fields, **overrides})


def _mesh(fsdp: int = 8) -> tuple[jax.sharding.Mesh, list]:
    mesh = partitioning.create_mesh(partitioning.MeshConfig(data=8 // fsdp, fsdp=fsdp))
    return mesh, partitioning.standard_logical_axis_rules("fsdp")


def _write(tmp_path, hf, layout: str, *, tie: bool) -> str:
    sd = _hf().numpy_state_dict(hf)
    target = t5x_target_from_hf(sd, encoder_layers=2, decoder_layers=3, tied=tie)
    states = adafactor_states(target)
    model_dir = tmp_path / "t5x_model"
    ckpt_dir = str(model_dir / f"checkpoint_{STEP}")
    if layout == "msgpack":
        norms = tuple(n for n in target if n.endswith("norm/scale"))  # unpartitioned: inline
        write_msgpack_checkpoint(ckpt_dir, target, states, step=STEP, inline=norms)
    else:
        write_orbax_checkpoint(ckpt_dir, target, states, step=STEP, use_ocdbt=layout == "ocdbt")
    return str(model_dir)


def _batch() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.RandomState(0)
    enc = rng.randint(2, 64, (3, 30))
    for row, length in enumerate((30, 17, 6)):
        enc[row, length:] = 0
    dec = rng.randint(2, 64, (3, 26))
    dec[:, 0] = 0
    return enc, dec


def _hf_logits(hf, enc: np.ndarray, dec: np.ndarray) -> np.ndarray:
    import torch

    torch_ints = _hf().torch_ints
    with torch.no_grad():
        return hf(
            input_ids=torch_ints(enc),
            attention_mask=torch_ints(enc != 0),
            decoder_input_ids=torch_ints(dec),
        ).logits.numpy()


@pytest.mark.parametrize(
    ("layout", "tie", "scan"),
    [
        ("msgpack", False, False),
        ("ocdbt", False, False),
        ("orbax", False, False),
        ("msgpack", True, True),
    ],
)
def test_t5x_checkpoint_scores_like_hf(tmp_path, layout: str, tie: bool, scan: bool) -> None:
    hf = _hf().tiny_hf_t5(tie_word_embeddings=tie, seed=1)
    path = _write(tmp_path, hf, layout, tie=tie)
    spec = ModelSpec.create(lambda: build_model(_config(tie=tie, scan=scan)))
    mesh, rules = _mesh()
    params, ckpt = load_t5x_params(path, spec, mesh, rules)
    assert ckpt.step == STEP
    assert any("param_states" in n for n in ckpt.skipped)  # Adafactor state: listed, not read
    # Each parameter arrives in the sharding the model asks for.
    expected = spec.param_shardings(mesh, rules)
    for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(expected)):
        assert got.sharding.is_equivalent_to(want, got.ndim)
    enc, dec = _batch()  # 30 positions: offsets up to 29 reach the log-spaced buckets (> 20)
    ours = np.asarray(forward(spec.module(params), jnp.asarray(enc), jnp.asarray(dec)))
    # fp32 on both sides, differing in summation order only: measured <= 1e-6 of the largest
    # logit (~5), so bound by 2e-6 of it.
    want = _hf_logits(hf, enc, dec)
    np.testing.assert_allclose(ours, want, atol=2e-6 * np.abs(want).max(), rtol=0)


def test_convert_writes_params_only_checkpoint_that_restores_sharded(tmp_path) -> None:
    hf = _hf().tiny_hf_t5(tie_word_embeddings=False, seed=2)
    path = _write(tmp_path, hf, "msgpack", tie=False)
    spec = ModelSpec.create(lambda: build_model(_config(tie=False)))
    mesh, rules = _mesh()
    out = tmp_path / "ours"
    step_dir = convert_t5x_checkpoint(path, str(out), spec, mesh, rules)
    assert step_dir.endswith(f"checkpoints/{STEP}")
    params = restore_model_params(str(out), spec, mesh, rules)
    enc, dec = _batch()
    ours = np.asarray(forward(spec.module(params), jnp.asarray(enc), jnp.asarray(dec)))
    want = _hf_logits(hf, enc, dec)
    np.testing.assert_allclose(ours, want, atol=2e-6 * np.abs(want).max(), rtol=0)


def test_orbax_aggregate_file_layout_reads_the_stored_arrays(tmp_path) -> None:
    """``state/checkpoint`` with placeholder leaves (older orbax): arrays land unchanged."""
    hf = _hf().tiny_hf_t5(tie_word_embeddings=False, seed=4)
    target = t5x_target_from_hf(
        _hf().numpy_state_dict(hf), encoder_layers=2, decoder_layers=3, tied=False
    )
    ckpt_dir = str(tmp_path / "checkpoint_7")
    write_msgpack_checkpoint(
        ckpt_dir, target, adafactor_states(target), step=7, orbax_aggregate=True
    )
    spec = ModelSpec.create(lambda: build_model(_config(tie=False, scan=True)))
    mesh, rules = _mesh()
    params, ckpt = load_t5x_params(ckpt_dir, spec, mesh, rules)
    assert ckpt.step == 7
    for layer in range(3):
        np.testing.assert_array_equal(
            np.asarray(params["decoder"]["block"]["mlp"]["wo"]["kernel"][layer]),
            target[f"decoder/layers_{layer}/mlp/wo/kernel"],
        )
        np.testing.assert_array_equal(  # [heads*head_dim, embed] -> [heads, head_dim, embed]
            np.asarray(params["decoder"]["block"]["self_attention"]["out"]["kernel"][layer]),
            target[f"decoder/layers_{layer}/self_attention/out/kernel"].reshape(4, 8, 32),
        )
    np.testing.assert_array_equal(
        np.asarray(params["decoder_relpos_bias"]["rel_embedding"]),
        target["decoder/relpos_bias/rel_embedding"],
    )


def test_other_architecture_names_the_mismatching_parameters(tmp_path) -> None:
    hf = _hf().tiny_hf_t5(tie_word_embeddings=False, seed=3)
    path = _write(tmp_path, hf, "msgpack", tie=False)
    mesh, rules = _mesh()
    # Two decoder layers and a tied output layer, where the checkpoint has three and a dense.
    spec = ModelSpec.create(lambda: build_model(_config(tie=True, num_decoder_layers=2)))
    with pytest.raises(CheckpointShapeError) as err:
        load_t5x_params(path, spec, mesh, rules)
    message = str(err.value)
    assert "decoder/layers_2/* (14)" in message  # the checkpoint's third decoder layer
    assert "decoder/logits_dense/kernel" in message
    assert "not in the model" in message
    spec = ModelSpec.create(lambda: build_model(_config(tie=False, mlp_dim=64)))
    wi_0 = r"encoder/layers_\*/mlp/wi_0/kernel: checkpoint \[32, 48\] vs model \[32, 64\]"
    with pytest.raises(CheckpointShapeError, match=wi_0 + r" \(2 layers\)"):
        load_t5x_params(path, spec, mesh, rules)


def test_t5x_decoder_only_and_missing_checkpoints_are_refused(tmp_path) -> None:
    # The decoder-only example's names (t5x/examples/decoder_only/network.py).
    target = {
        "decoder/token_embedder/embedding": np.zeros((64, 32), np.float32),
        "decoder/layers_0/relpos_bias/rel_embedding": np.zeros((4, 32), np.float32),
        "decoder/layers_0/self_attention/query/kernel": np.zeros((32, 32), np.float32),
        "decoder/decoder_norm/scale": np.ones((32,), np.float32),
    }
    write_msgpack_checkpoint(str(tmp_path / "lm" / "checkpoint_5"), target, {}, step=5)
    spec = ModelSpec.create(lambda: build_model(_config(tie=True)))
    mesh, rules = _mesh()
    with pytest.raises(T5XCheckpointError, match="decoder-only"):
        load_t5x_params(str(tmp_path / "lm"), spec, mesh, rules)
    with pytest.raises(T5XCheckpointError, match="holds no T5X checkpoint"):
        load_t5x_params(str(tmp_path), spec, mesh, rules)
    with pytest.raises(T5XCheckpointError, match="does not exist"):
        load_t5x_params(str(tmp_path / "nowhere"), spec, mesh, rules)


def test_assembly_reads_in_place_when_it_can_and_relayouts_when_it_cannot() -> None:
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from t5x_instruct.convert.assembly import assemble, plan_read, source_spec

    # [embed, heads*head_dim] -> [embed, heads, head_dim]: heads' sharding moves to the join.
    assert source_spec(P("fsdp", "tensor", None), (32, 4, 8), (32, 32)) == P("fsdp", "tensor")
    assert source_spec(P("tensor", None, "fsdp"), (4, 8, 32), (32, 32)) == P("tensor", "fsdp")
    assert source_spec(P(None, None, "fsdp"), (32, 4, 8), (32, 32)) is None  # interleaved
    mesh = partitioning.create_mesh(partitioning.MeshConfig(data=1, fsdp=2, tensor=4))
    stored = np.arange(4 * 32 * 32, dtype=np.float32).reshape(4, 32, 32)  # 4 layers
    for spec, local in (
        (P(None, "fsdp", "tensor", None), True),
        (P(None, None, None, "fsdp"), False),
    ):
        target = NamedSharding(mesh, spec)
        plan = plan_read((4, 32, 4, 8), target, [(32, 32)] * 4, stacked=True)
        assert plan.local == local
        parts = [jax.device_put(stored[i], s) for i, s in enumerate(plan.part_shardings)]
        out = assemble(parts, (4, 32, 4, 8), jnp.float32, target, stacked=True, local=plan.local)
        assert out.sharding.is_equivalent_to(target, 4)
        np.testing.assert_array_equal(np.asarray(out), stored.reshape(4, 32, 4, 8))
