"""Prompt tuning: packed batches, both families, every placement, decoding and frozen training.

The oracle for where the prompt goes is the *base* model with the prompt written into spare
rows of its embedding table and those token ids written into each example's tokens by hand
(numpy), one example per row: a prompt-tuned packed batch must give the same per-example
logits (fp32, 1e-5).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers.models import greedy

from t5x_instruct.errors import UserInputError
from t5x_instruct.models import DecoderConfig, T5Config, build_model
from t5x_instruct.plugins import PluginSet
from t5x_instruct.plugins.prompt_tuning import PromptTuning, UniformPromptInit
from t5x_instruct.training.step import LossConfig, train_step
from t5x_instruct.training.train_state import ModelSpec, init_train_state, split_params

P = 3
SPARE = {0: [61, 62, 63], 1: [58, 59, 60]}  # token ids standing in for task t's prompt
T5 = T5Config(
    vocab_size=64, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32,
    num_encoder_layers=1, num_decoder_layers=1,
    relative_attention_num_buckets=8, relative_attention_max_distance=20,
)  # fmt: skip
DEC = DecoderConfig(
    vocab_size=64, emb_dim=16, num_heads=4, num_kv_heads=2, head_dim=4, mlp_dim=32,
    num_layers=1, rope_theta=500.0,
)  # fmt: skip
PLACEMENTS = ["prefix", "after_bos", "suffix_of_inputs"]
NEVER_EOS = -1
STEPS = 5

# (inputs, targets): two packed rows, the first with three segments.
EXAMPLES = [([5, 9, 12], [7, 3]), ([14, 2, 8, 20, 6], [11, 4, 9]), ([30, 31], [22, 1])]
EXAMPLES_ROW2 = [([40, 41, 42, 43], [44, 45, 46, 47]), ([50, 51], [52])]


@functools.cache
def _prompted(family: str, placement: str, num_tasks: int = 1, on_overflow: str = "error"):
    """Plug-ins, spec and (numpy-drawn) params of a prompt-tuned tiny model."""
    plugin = PromptTuning(
        length=P,
        placement=placement,
        init=UniformPromptInit(scale=1.0),
        num_tasks=num_tasks,
        max_segments_per_row=3,
        on_overflow=on_overflow,
    )
    plugins = PluginSet([plugin])
    config = T5 if family == "t5" else DEC
    spec = ModelSpec.create(plugins.build(lambda: build_model(config)))
    return plugins, spec, _numpy_params(spec)


@functools.cache
def _base_spec(family: str) -> ModelSpec:
    return ModelSpec.create(lambda: build_model(T5 if family == "t5" else DEC))


def _numpy_params(spec: ModelSpec, seed: int = 0):
    """Random parameters from numpy: compiling JAX's random init is slow on CPU."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = str(getattr(path[-1], "key", path[-1]))
        if name == "scale":
            value = 1.0 + 0.2 * rng.standard_normal(leaf.shape)
        elif name in ("embedding", "rel_embedding", "prompt"):
            value = rng.standard_normal(leaf.shape)
        else:
            value = rng.standard_normal(leaf.shape) / np.sqrt(leaf.shape[0])
        return jnp.asarray(value, leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, spec.abstract_params())


_JITTED: dict[int, tuple] = {}


def _logits(spec: ModelSpec, params, batch) -> np.ndarray:
    if id(spec) not in _JITTED:  # one jitted function per spec: compiles once per shape
        _JITTED[id(spec)] = (spec, jax.jit(lambda p, b: spec.module(p).logits_from_batch(b)))
    fn = _JITTED[id(spec)][1]
    return np.asarray(fn(params, {k: jnp.asarray(v) for k, v in batch.items()}))


def _reference_params(params, prompts: np.ndarray):
    """Base parameters whose spare embedding rows hold each task's prompt."""
    ref = {k: v for k, v in params.items() if k != "sequence_hooks"}
    table = np.asarray(ref["token_embedder"]["embedding"]).copy()
    for task, rows in enumerate(prompts):
        table[SPARE[task]] = rows
    ref["token_embedder"] = {"embedding": jnp.asarray(table)}
    return ref


def _prompts_of(params) -> np.ndarray:
    prompt = np.asarray(params["sequence_hooks"]["prompt_tuning"]["prompt"])
    return prompt[None] if prompt.ndim == 2 else prompt


# ------------------------------------------------------------------------ batches by hand


def _pad(rows: list[list[int]], length: int) -> np.ndarray:
    out = np.zeros((len(rows), length), np.int32)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


def _insert(seq: list[int], at: int, task: int = 0) -> list[int]:
    return seq[:at] + SPARE[task] + seq[at:]


def _t5_at(placement: str, inputs: list[int]) -> int:
    return {"prefix": 0, "after_bos": 1, "suffix_of_inputs": len(inputs)}[placement]


def _t5_packed(rows: list[list[tuple]], tasks: list[list[int]] | None = None) -> dict:
    enc, enc_seg, dec_in, dec_tgt, dec_seg, task_ids = [], [], [], [], [], []
    for r, row in enumerate(rows):
        e, es, di, dt, ds, tk = [], [], [], [], [], []
        for s, (inputs, targets) in enumerate(row, start=1):
            e += inputs
            es += [s] * len(inputs)
            di += [0] + targets[:-1]
            dt += targets
            ds += [s] * len(targets)
            tk += [tasks[r][s - 1] if tasks else 0] * len(inputs)
        enc.append(e), enc_seg.append(es), dec_in.append(di), dec_tgt.append(dt)
        dec_seg.append(ds), task_ids.append(tk)
    batch = {
        "encoder_input_tokens": _pad(enc, 14),
        "encoder_segment_ids": _pad(enc_seg, 14),
        "decoder_input_tokens": _pad(dec_in, 9),
        "decoder_target_tokens": _pad(dec_tgt, 9),
        "decoder_segment_ids": _pad(dec_seg, 9),
    }
    if tasks:
        batch["prompt_task_id"] = _pad(task_ids, 14)
    return batch


def _t5_alone(examples: list[tuple], placement: str | None, tasks: list[int]) -> dict:
    """One example per row; with ``placement``, the spare prompt tokens written in."""
    enc = [
        list(i) if placement is None else _insert(list(i), _t5_at(placement, i), task)
        for (i, _), task in zip(examples, tasks)
    ]
    return {
        "encoder_input_tokens": _pad(enc, 12),
        "decoder_input_tokens": _pad([[0] + t[:-1] for _, t in examples], 5),
    }


def _dec_rows(inputs: list[int], targets: list[int], prefix_lm: bool):
    full = inputs + targets if prefix_lm else targets
    tokens = [0] + full[:-1]
    n_prefix = len(inputs) + 1 if prefix_lm else 0
    return tokens, full, n_prefix


def _dec_at(placement: str, inputs: list[int]) -> int:
    return {"prefix": 0, "after_bos": 1, "suffix_of_inputs": len(inputs) + 1}[placement]


def _dec_packed(rows: list[list[tuple]], prefix_lm: bool) -> dict:
    tok, tgt, seg, pos, pre = [], [], [], [], []
    for row in rows:
        a, b, c, d, e = [], [], [], [], []
        for s, (inputs, targets) in enumerate(row, start=1):
            tokens, full, n_prefix = _dec_rows(inputs, targets, prefix_lm)
            a += tokens
            b += full
            c += [s] * len(tokens)
            d += list(range(len(tokens)))
            e += [1] * n_prefix + [0] * (len(tokens) - n_prefix)
        tok.append(a), tgt.append(b), seg.append(c), pos.append(d), pre.append(e)
    batch = {
        "decoder_input_tokens": _pad(tok, 24),
        "decoder_target_tokens": _pad(tgt, 24),
        "decoder_segment_ids": _pad(seg, 24),
        "decoder_positions": _pad(pos, 24),
    }
    if prefix_lm:
        batch["decoder_causal_attention"] = _pad(pre, 24)
    return batch


def _dec_alone(examples: list[tuple], placement: str | None, prefix_lm: bool):
    """Rows of the examples alone, and where each original token sits in its row."""
    tok, pre, where = [], [], []
    for inputs, targets in examples:
        tokens, _, n_prefix = _dec_rows(inputs, targets, prefix_lm)
        index = list(range(len(tokens)))
        if placement is not None:
            at = _dec_at(placement, inputs)
            tokens = _insert(tokens, at)
            index = [i if i < at else i + P for i in index]
            n_prefix += P if prefix_lm else 0
        tok.append(tokens), where.append(index)
        pre.append([1] * n_prefix)
    batch = {"decoder_input_tokens": _pad(tok, 16)}
    if prefix_lm:
        batch["decoder_causal_attention"] = _pad(pre, 16)
    return batch, where


def _segment_logits(logits: np.ndarray, segment_ids: np.ndarray) -> list[np.ndarray]:
    out = []
    for r in range(len(logits)):
        for s in range(1, segment_ids[r].max() + 1):
            out.append(logits[r][segment_ids[r] == s])
    return out


# ------------------------------------------------------------------------ packing


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_t5_packed_prompt_equals_each_example_alone_with_prompt_tokens(placement: str) -> None:
    _, spec, params = _prompted("t5", placement)
    ref = _reference_params(params, _prompts_of(params))
    examples = EXAMPLES + EXAMPLES_ROW2
    packed = _t5_packed([EXAMPLES, EXAMPLES_ROW2])
    got = _segment_logits(_logits(spec, params, packed), packed["decoder_segment_ids"])
    # Oracle: the base model, each example alone, prompt as spare tokens placed by hand.
    alone = _logits(_base_spec("t5"), ref, _t5_alone(examples, placement, [0] * 5))
    for i, (_, targets) in enumerate(examples):
        np.testing.assert_allclose(got[i], alone[i, : len(targets)], atol=1e-5, rtol=0)
    if placement == "suffix_of_inputs":  # unpacked rows (one prompt each, before padding)
        unpacked = _logits(spec, params, _t5_alone(examples, None, [0] * 5))
        for i, (_, targets) in enumerate(examples):
            np.testing.assert_allclose(unpacked[i, : len(targets)], got[i], atol=1e-5, rtol=0)


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_prefix_lm_packed_prompt_equals_each_example_alone(placement: str) -> None:
    prefix_lm = True
    _, spec, params = _prompted("decoder", placement)
    ref = _reference_params(params, _prompts_of(params))
    examples = EXAMPLES + EXAMPLES_ROW2
    packed = _dec_packed([EXAMPLES, EXAMPLES_ROW2], prefix_lm)
    got = _segment_logits(_logits(spec, params, packed), packed["decoder_segment_ids"])
    alone_batch, where = _dec_alone(examples, placement, prefix_lm)
    alone = _logits(_base_spec("decoder"), ref, alone_batch)
    for i in range(len(examples)):
        np.testing.assert_allclose(got[i], alone[i, where[i]], atol=1e-5, rtol=0)
    if placement == "suffix_of_inputs":  # unpacked rows: padding is segment 1 here
        unpacked = _logits(spec, params, _dec_alone(examples, None, prefix_lm)[0])
        for i in range(len(examples)):
            n = len(where[i])
            np.testing.assert_allclose(unpacked[i, :n], got[i], atol=1e-5, rtol=0)


def test_causal_lm_has_no_inputs_to_suffix() -> None:
    _, spec, params = _prompted("decoder", "suffix_of_inputs")
    with pytest.raises(UserInputError, match=r"prompt_tuning.*suffix_of_inputs.*prefix_lm"):
        _logits(spec, params, _dec_packed([EXAMPLES], prefix_lm=False))


def test_per_task_prompts_follow_the_task_feature_per_segment() -> None:
    _, spec, params = _prompted("t5", "prefix", num_tasks=2)
    prompts = _prompts_of(params)
    assert prompts.shape == (2, P, T5.emb_dim) and not np.allclose(prompts[0], prompts[1])
    ref = _reference_params(params, prompts)
    tasks = [[1, 0, 1], [0, 1]]
    packed = _t5_packed([EXAMPLES, EXAMPLES_ROW2], tasks)
    got = _segment_logits(_logits(spec, params, packed), packed["decoder_segment_ids"])
    alone_batch = _t5_alone(EXAMPLES + EXAMPLES_ROW2, "prefix", tasks[0] + tasks[1])
    alone = _logits(_base_spec("t5"), ref, alone_batch)
    for i, (_, targets) in enumerate(EXAMPLES + EXAMPLES_ROW2):
        np.testing.assert_allclose(got[i], alone[i, : len(targets)], atol=1e-5, rtol=0)
    # One id per row ([b]) also works; a batch without the feature uses default_task_id=0.
    examples = EXAMPLES + EXAMPLES_ROW2
    row_batch = _t5_alone(examples, None, [0] * 5)
    row_tasks = np.array([1, 0, 0, 1, 1], np.int32)
    by_row = _logits(spec, params, {**row_batch, "prompt_task_id": row_tasks})
    expected = _logits(_base_spec("t5"), ref, _t5_alone(examples, "prefix", list(row_tasks)))
    np.testing.assert_allclose(by_row, expected, atol=1e-5, rtol=0)
    default = _logits(spec, params, row_batch)
    expected = _logits(_base_spec("t5"), ref, _t5_alone(examples, "prefix", [0] * 5))
    np.testing.assert_allclose(default, expected, atol=1e-5, rtol=0)
    with pytest.raises(Exception, match=r"task ids .* outside \[0, 2\)"):
        _logits(spec, params, {**row_batch, "prompt_task_id": row_tasks + 1})


def test_more_segments_than_max_segments_per_row(caplog) -> None:
    """'error' stops the step with a message naming the setting; 'warn' logs it and leaves
    the extra segment without a prompt (it then equals the example alone without one)."""
    rows = [EXAMPLES + [([33, 34], [35, 36])], EXAMPLES_ROW2]  # four segments, room for 3
    packed = _t5_packed(rows)
    _, spec, params = _prompted("t5", "prefix")
    with pytest.raises(Exception, match=r"4 segments but PromptTuning\.max_segments_per_row=3"):
        _logits(spec, params, packed)
    _, spec, params = _prompted("t5", "prefix", on_overflow="warn")
    with caplog.at_level("WARNING"):
        got = _segment_logits(_logits(spec, params, packed), packed["decoder_segment_ids"])
    assert "4 segments but PromptTuning.max_segments_per_row=3" in caplog.text
    ref = _reference_params(params, _prompts_of(params))
    examples = rows[0] + rows[1][:1]
    with_prompt = _logits(_base_spec("t5"), ref, _t5_alone(examples, "prefix", [0] * 5))
    without = _logits(_base_spec("t5"), ref, _t5_alone(examples, None, [0] * 5))
    for i, (_, targets) in enumerate(examples):
        expected = (without if i == 3 else with_prompt)[i, : len(targets)]
        np.testing.assert_allclose(got[i], expected, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------ decoding


def _prompts_for_decoding() -> list[list[int]]:
    return [[5, 9, 12, 7], [14, 2], [30, 31, 33, 34, 35, 36, 37]]  # the last fills its row


def test_t5_greedy_with_cache_equals_recompute() -> None:
    _, spec, params = _prompted("t5", "prefix")
    model = spec.module(params)
    enc = _pad(_prompts_for_decoding(), 7)
    out = greedy(
        model, {"encoder_input_tokens": jnp.asarray(enc)},
        max_decode_length=STEPS, eos_id=NEVER_EOS, return_logits=True,
    )  # fmt: skip
    tokens = np.asarray(out.tokens)
    dec_in = np.concatenate([np.zeros((len(enc), 1), np.int32), tokens[:, :-1]], axis=1)
    full = _logits(spec, params, {"encoder_input_tokens": enc, "decoder_input_tokens": dec_in})
    np.testing.assert_allclose(np.asarray(out.logits), full, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(full.argmax(-1), tokens)


@pytest.mark.parametrize(
    "placement,prefix_lm",
    [("suffix_of_inputs", True), ("prefix", False)],
)
def test_decoder_greedy_with_cache_equals_recompute(placement: str, prefix_lm: bool) -> None:
    """Prompts of mixed length, right-padded as the evaluator sends them; the cache holds
    the prompt, and generation continues after it (after a suffix prompt too)."""
    _, spec, params = _prompted("decoder", placement)
    model = spec.module(params)
    prompts = [[0] + p for p in _prompts_for_decoding()]
    lengths = np.array([len(p) for p in prompts], np.int32)
    batch = {"decoder_input_tokens": _pad(prompts, 8), "prompt_lengths": lengths}
    if prefix_lm:
        batch["decoder_causal_attention"] = (np.arange(8)[None] < lengths[:, None]).astype(np.int32)
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    _, state = jax.eval_shape(lambda b: spec.module(params).prefill(b, STEPS), batch)
    assert state["cache"][0]["k"].shape[1] == 8 + P + STEPS  # the cache holds the prompt
    out = greedy(model, batch, max_decode_length=STEPS, eos_id=NEVER_EOS, return_logits=True)
    generated = np.asarray(out.tokens)
    full_rows = [p + list(generated[i, :-1]) for i, p in enumerate(prompts)]
    full = {"decoder_input_tokens": _pad(full_rows, 12)}
    if prefix_lm:
        full["decoder_causal_attention"] = _pad([[1] * len(p) for p in prompts], 12)
    recomputed = _logits(spec, params, full)
    for i, n in enumerate(lengths):
        steps = recomputed[i, n - 1 : n - 1 + STEPS]
        np.testing.assert_allclose(np.asarray(out.logits[i]), steps, atol=1e-5, rtol=0)
        np.testing.assert_array_equal(steps.argmax(-1), generated[i])


# ------------------------------------------------------------------------ frozen training


@pytest.mark.parametrize("family", ["t5", "decoder"])
def test_only_the_prompt_trains_and_holds_optimizer_state(family: str) -> None:
    plugins, spec, params = _prompted(family, "prefix")
    paths = [
        "/".join(str(getattr(k, "key", k)) for k in path)
        for path, _ in jax.tree_util.tree_leaves_with_path(params)
    ]
    assert [p for p in paths if plugins.is_trainable(p)] == ["sequence_hooks/prompt_tuning/prompt"]
    opt = optax.adam(1e-2)
    state = init_train_state(params, opt, plugins.is_trainable)
    step = jax.jit(
        lambda s, b: train_step(
            spec, opt, LossConfig(), s, b, jax.random.key(0), plugins=plugins,
            is_trainable=plugins.is_trainable,
        )
    )  # fmt: skip
    batch = _t5_packed([EXAMPLES, EXAMPLES_ROW2])
    if family == "decoder":
        batch = _dec_packed([EXAMPLES, EXAMPLES_ROW2], prefix_lm=True)
    batch["decoder_loss_weights"] = (batch["decoder_target_tokens"] > 0).astype(np.float32)
    losses = []
    for _ in range(3):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    assert losses[-1] < losses[0]
    _, frozen_before = split_params(params, plugins.is_trainable)
    _, frozen_after = split_params(state.params, plugins.is_trainable)
    for a, b in zip(jax.tree.leaves(frozen_before), jax.tree.leaves(frozen_after), strict=True):
        np.testing.assert_array_equal(a, b)  # bit for bit
    before, after = _prompts_of(params), _prompts_of(state.params)
    assert not np.allclose(before, after)
    # Adam's moments exist for the prompt and nothing else.
    shapes = [x.shape for x in jax.tree.leaves(state.opt_state) if np.ndim(x) > 0]
    emb = (T5 if family == "t5" else DEC).emb_dim
    assert shapes == [(P, emb), (P, emb)]


def test_prompt_shards_like_the_embedding_width() -> None:
    from t5x_instruct import partitioning

    plugins, spec, _ = _prompted("t5", "prefix", num_tasks=2)
    mesh = partitioning.create_mesh(partitioning.MeshConfig(data=1, fsdp=8))
    for parallelism in ("fsdp", "tensor"):
        rules = plugins.axis_rules(partitioning.standard_logical_axis_rules(parallelism))
        shardings = spec.param_shardings(mesh, rules)
        prompt = shardings["sequence_hooks"]["prompt_tuning"]["prompt"].spec
        embedding = shardings["token_embedder"]["embedding"].spec
        assert tuple(prompt) == (None, None, embedding[1])


def test_exporting_a_step_again_replaces_the_file(tmp_path) -> None:
    """A run killed between a step's export and its checkpoint commit exports that step again."""
    from t5x_instruct.plugins.prompt_tuning.plugin import export_prompt, prompt_path

    path = prompt_path(str(tmp_path), "prompt_tuning", 8)
    export_prompt(np.zeros((4, 3)), path)
    second = np.arange(12, dtype=np.float32).reshape(4, 3)
    export_prompt(second, path)
    np.testing.assert_array_equal(np.load(str(path)), second)
    assert sorted(p.name for p in path.parent.iterdir()) == ["prompt_8.npy"]
