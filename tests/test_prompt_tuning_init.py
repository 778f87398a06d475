"""Prompt tuning: initialisers (against numpy on the embedding table), bad input, export,
loading a saved prompt, warm starts re-reading the loaded vocabulary, and the gin file."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import gin
import jax
import numpy as np
import optax
import pytest
import sentencepiece
from flax import nnx
from helpers.models import build

from t5x_instruct import partitioning
from t5x_instruct.errors import UserInputError
from t5x_instruct.gin_utils import parse_gin
from t5x_instruct.models import T5Config, build_model
from t5x_instruct.plugins import CheckpointContext, PluginSet
from t5x_instruct.plugins.prompt_tuning import (
    ClassLabelPromptInit,
    NpyPromptInit,
    PromptTuning,
    TextPromptInit,
    UniformPromptInit,
    VocabSamplePromptInit,
    prompt_path,
)
from t5x_instruct.training import state_init
from t5x_instruct.training.loop import train  # noqa: F401  (registers `train`'s bindings)
from t5x_instruct.training.train_state import ModelSpec

REPO = Path(__file__).resolve().parents[1]
VOCAB = sentencepiece.SentencePieceProcessor(
    model_file=str(REPO / "tasks" / "demo" / "vocab" / "demo.model")
)
# The demo vocabulary has 600 pieces; the model's table covers them.
CFG = T5Config(
    vocab_size=640, emb_dim=8, num_heads=2, head_dim=4, mlp_dim=16,
    num_encoder_layers=1, num_decoder_layers=1,
    relative_attention_num_buckets=8, relative_attention_max_distance=20,
)  # fmt: skip
TEXT = "Classify the sentiment"


def _prompt(plugin: PromptTuning, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The prompt ``plugin`` builds on a concrete model, and that model's embedding table."""
    model = nnx.clone(build(CFG, seed))
    table = np.asarray(model.token_embedder.embedding.get_value())
    plugin.transform_model(model, nnx.Rngs(params=0))
    return np.asarray(model.sequence_hooks[plugin.name].prompt.get_value()), table


def _row_ids(prompt: np.ndarray, table: np.ndarray) -> list[int]:
    """The table row each prompt vector equals exactly (-1: none)."""
    out = []
    for vector in prompt:
        hits = np.flatnonzero((table == vector).all(axis=1))
        out.append(int(hits[0]) if len(hits) else -1)
    return out


# ------------------------------------------------------------------------ initialisers


def test_uniform_init_fills_the_range() -> None:
    prompt, _ = _prompt(PromptTuning(length=50, init=UniformPromptInit(scale=0.3)))
    assert prompt.shape == (50, CFG.emb_dim)
    assert prompt.min() >= -0.3 and prompt.max() <= 0.3
    assert prompt.min() < -0.25 and prompt.max() > 0.25 and np.unique(prompt).size == prompt.size


def test_vocab_sample_init_is_distinct_rows_of_the_table_in_range() -> None:
    plugin = PromptTuning(length=12, init=VocabSamplePromptInit(min_id=3, max_id=100, seed=1))
    prompt, table = _prompt(plugin)
    ids = _row_ids(prompt, table)
    assert all(3 <= i < 100 for i in ids) and len(set(ids)) == 12
    # Per-task prompts draw different rows.
    tasks, _ = _prompt(PromptTuning(length=12, num_tasks=2, init=VocabSamplePromptInit()))
    assert tasks.shape == (2, 12, CFG.emb_dim)
    assert _row_ids(tasks[0], table) != _row_ids(tasks[1], table)


def test_class_label_init_averages_each_label_and_cycles() -> None:
    labels = ["positive", "negative", "no idea"]
    plugin = PromptTuning(length=7, init=ClassLabelPromptInit(labels=labels))
    prompt, table = _prompt(plugin)
    means = [table[VOCAB.encode(label)].mean(axis=0) for label in labels]
    assert len(VOCAB.encode("no idea")) > 1  # one label really is averaged
    expected = np.stack([means[i % 3] for i in range(7)])
    np.testing.assert_allclose(prompt, expected, rtol=1e-6, atol=1e-7)


def test_text_init_is_the_embedding_rows_of_its_tokens() -> None:
    ids = VOCAB.encode(TEXT)
    prompt, table = _prompt(PromptTuning(length=len(ids), init=TextPromptInit(text=TEXT)))
    np.testing.assert_array_equal(prompt, table[ids])
    # A longer prompt: the text first, then sampled vocabulary rows.
    longer, _ = _prompt(PromptTuning(length=len(ids) + 4, init=TextPromptInit(text=TEXT)))
    np.testing.assert_array_equal(longer[: len(ids)], table[ids])
    assert min(_row_ids(longer[len(ids) :], table)) >= 3


def test_text_longer_than_the_prompt_is_one_clear_error() -> None:
    n = len(VOCAB.encode(TEXT))
    with pytest.raises(UserInputError) as err:
        _prompt(PromptTuning(length=5, init=TextPromptInit(text=TEXT)))
    assert str(err.value) == (
        f"prompt_tuning: TextPromptInit.text is {n} tokens long but PromptTuning.length is 5; "
        f"shorten the text or raise PromptTuning.length to at least {n}."
    )


def test_label_and_vocabulary_errors_name_the_setting() -> None:
    with pytest.raises(UserInputError, match=r"ClassLabelPromptInit\.labels has 3 labels .* 2"):
        _prompt(PromptTuning(length=2, init=ClassLabelPromptInit(labels=["a", "b", "c"])))
    with pytest.raises(UserInputError, match=r"ClassLabelPromptInit\.labels is empty"):
        _prompt(PromptTuning(length=2, init=ClassLabelPromptInit()))
    small = dataclasses.replace(CFG, vocab_size=64)
    model = nnx.clone(build(small))
    with pytest.raises(UserInputError, match="outside the model's vocabulary of 64"):
        PromptTuning(length=20, init=TextPromptInit(text=TEXT)).transform_model(
            model, nnx.Rngs(params=0)
        )


def test_saved_array_init_and_its_shape_errors(tmp_path: Path) -> None:
    saved = np.random.default_rng(0).standard_normal((6, CFG.emb_dim)).astype(np.float32)
    np.save(tmp_path / "p.npy", saved)
    init = NpyPromptInit(path=str(tmp_path / "p.npy"))
    prompt, _ = _prompt(PromptTuning(length=6, init=init))
    np.testing.assert_array_equal(prompt, saved)
    both, _ = _prompt(PromptTuning(length=6, num_tasks=2, init=init))  # every task starts there
    np.testing.assert_array_equal(both, np.stack([saved, saved]))
    np.save(tmp_path / "wide.npy", np.zeros((6, 12), np.float32))
    with pytest.raises(UserInputError) as err:
        _prompt(PromptTuning(length=6, init=NpyPromptInit(path=str(tmp_path / "wide.npy"))))
    message = str(err.value)
    assert message.startswith("prompt_tuning: NpyPromptInit.path=")
    assert "shape [6, 12]" in message and "needs [6, 8]" in message
    assert "embeddings 12 wide; this model's are 8" in message
    with pytest.raises(UserInputError, match=r"shape \[6, 8\] .* needs \[4, 8\]"):
        _prompt(PromptTuning(length=4, init=init))
    with pytest.raises(UserInputError, match=r"NpyPromptInit\.path=.*does not exist"):
        _prompt(PromptTuning(length=4, init=NpyPromptInit(path=str(tmp_path / "none.npy"))))


@pytest.mark.parametrize(
    "setting,message",
    [
        (dict(placement="middle"), "PromptTuning.placement='middle'"),
        (dict(length=0), "PromptTuning.length=0"),
        (dict(num_tasks=2, default_task_id=2), "PromptTuning.default_task_id=2"),
        (dict(max_segments_per_row=0), "PromptTuning.max_segments_per_row=0"),
        (dict(on_overflow="drop"), "PromptTuning.on_overflow='drop'"),
    ],
)
def test_bad_settings_are_named(setting: dict, message: str) -> None:
    with pytest.raises(UserInputError, match=re.escape(message)):
        PromptTuning(**setting)


def test_every_init_builds_shape_only() -> None:
    """``ModelSpec.create`` traces the build with ``nnx.eval_shape``: abstract tables work."""
    for init in (
        UniformPromptInit(),
        VocabSamplePromptInit(),
        ClassLabelPromptInit(labels=["yes", "no"]),
        TextPromptInit(text=TEXT),
    ):
        plugins = PluginSet([PromptTuning(length=16, num_tasks=3, init=init)])
        spec = ModelSpec.create(plugins.build(lambda: build_model(CFG)))
        prompt = spec.abstract_params()["sequence_hooks"]["prompt_tuning"]["prompt"]
        assert prompt.shape == (3, 16, CFG.emb_dim), init


# ------------------------------------------------------------------------ warm starts


def _params_with_prompt(plugin: PromptTuning, seed: int) -> tuple[ModelSpec, dict]:
    spec = ModelSpec.create(PluginSet([plugin]).build(lambda: build_model(CFG)))
    model = nnx.clone(build(CFG, seed))
    plugin.transform_model(model, nnx.Rngs(params=0))
    return spec, nnx.to_pure_dict(nnx.state(model, nnx.Param))


def test_warm_start_rereads_the_loaded_embeddings(monkeypatch, tmp_path: Path) -> None:
    """The prompt is skipped when loading the base, then re-derived from the loaded table."""
    plugin = PromptTuning(length=14, init=TextPromptInit(text=TEXT, fill=UniformPromptInit()))
    plugins = PluginSet([plugin])
    spec, fresh = _params_with_prompt(plugin, seed=0)
    _, other = _params_with_prompt(plugin, seed=1)  # stands in for the loaded base
    loaded = {**other, "sequence_hooks": fresh["sequence_hooks"]}
    seen = {}

    def fake_load(path, abstract, init_params, *, assignment_map, fallback_to_scratch):
        seen["map"] = assignment_map
        return loaded

    monkeypatch.setattr(state_init.ckpt_lib, "load_params_for_warm_start", fake_load)
    monkeypatch.setattr(spec, "init_params", lambda mesh, rules: fresh)
    mesh = partitioning.create_mesh(partitioning.MeshConfig(data=1), devices=jax.devices()[:1])
    rules = plugins.axis_rules(partitioning.standard_logical_axis_rules("data"))
    layout = state_init.make_layout(spec, optax.adam(0.1), mesh, rules, plugins, "/tmp/unused")

    empty = state_init.ckpt_lib.Checkpointer(str(tmp_path / "run"), async_save=False)
    state, _ = state_init.restore_or_initialise(layout, empty, "/base", [], False)
    assert seen["map"][0] == ("sequence_hooks/prompt_tuning/.*", None)
    assert re.fullmatch(seen["map"][0][0], "sequence_hooks/prompt_tuning/prompt")
    ids = VOCAB.encode(TEXT)
    prompt = np.asarray(state.params["sequence_hooks"]["prompt_tuning"]["prompt"])
    table = np.asarray(other["token_embedder"]["embedding"])
    np.testing.assert_array_equal(prompt[: len(ids)], table[ids])  # the loaded vocabulary
    before = np.asarray(fresh["sequence_hooks"]["prompt_tuning"]["prompt"])
    np.testing.assert_array_equal(prompt[len(ids) :], before[len(ids) :])  # uniform fill kept
    assert not np.array_equal(before[: len(ids)], prompt[: len(ids)])


def test_init_from_base_leaves_a_saved_or_random_prompt_alone() -> None:
    plugin = PromptTuning(length=4, init=UniformPromptInit())
    _, params = _params_with_prompt(plugin, seed=0)
    assert PluginSet([plugin]).init_from_base(params) is params


# ------------------------------------------------------------------------ export


def test_checkpoint_exports_the_prompt_and_one_gin_line_loads_it(tmp_path: Path) -> None:
    plugin = PromptTuning(length=5, init=UniformPromptInit())
    _, params = _params_with_prompt(plugin, seed=0)

    def context(writer: bool, model_dir: Path) -> CheckpointContext:
        return CheckpointContext(
            step=120, params=params, aux={}, model_dir=str(model_dir),
            fetch=lambda tree: jax.tree.map(np.asarray, tree), is_writer=writer,
        )  # fmt: skip

    plugin.on_checkpoint(context(False, tmp_path / "other_host"))
    assert not (tmp_path / "other_host").exists()  # only the writer writes
    plugin.on_checkpoint(context(True, tmp_path))
    path = tmp_path / "prompt_tuning" / "prompt_120.npy"
    assert str(prompt_path(str(tmp_path), "prompt_tuning", 120)) == str(path)
    exported = np.load(path)
    np.testing.assert_array_equal(
        exported, np.asarray(params["sequence_hooks"]["prompt_tuning"]["prompt"])
    )
    # Loading it over another base checkpoint of the same width: one gin line.
    parse_gin([], [f"NpyPromptInit.path = '{path}'", "PromptTuning.init = @NpyPromptInit()"])
    loaded, _ = _prompt(PromptTuning(length=5), seed=3)
    np.testing.assert_array_equal(loaded, exported)


def test_gin_file_configures_the_plugin() -> None:
    parse_gin(["plugins/prompt_tuning.gin"], ["PROMPT_PLACEMENT = 'suffix_of_inputs'"])
    (plugin,) = gin.query_parameter("train.plugins")
    assert plugin.selector == "PromptTuning"
    configured = PromptTuning()
    assert (configured.length, configured.placement, configured.max_segments_per_row) == (
        20, "suffix_of_inputs", 8,
    )  # fmt: skip
    assert isinstance(configured.init, VocabSamplePromptInit) and configured.init.max_id == 5000
    assert configured.freeze_base and configured.name == "prompt_tuning"
    spec = ModelSpec.create(PluginSet([configured]).build(lambda: build_model(CFG)))
    shape = spec.abstract_params()["sequence_hooks"]["prompt_tuning"]["prompt"].shape
    assert shape == (20, CFG.emb_dim)
