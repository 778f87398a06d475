"""Distillation with models: the teacher beside the student (zero loss when they are equal,
other families, frozen and outside the optimizer), on-policy batches, the offline top-k loss,
exact gradient accumulation and exact resume through the loop's checkpoint/restore path."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers.distillation import (
    DEC_STUDENT,
    DEC_TEACHER,
    STUDENT,
    TEACHER,
    V,
    encdec_batch,
    mesh_and_rules,
    np_kl,
    np_log_softmax,
    prefix_lm_batch,
    random_params,
    save_teacher,
)

from t5x_instruct.decoding import temperature_sample
from t5x_instruct.errors import UserInputError
from t5x_instruct.models import build_model
from t5x_instruct.plugins import PluginSet, SetupContext, StepContext
from t5x_instruct.plugins.distillation import Distillation, losses
from t5x_instruct.plugins.distillation import features as F
from t5x_instruct.plugins.distillation.teacher import Teacher
from t5x_instruct.plugins.distillation.topk_store import TopKWriter, example_key
from t5x_instruct.training.checkpoints import Checkpointer
from t5x_instruct.training.state_init import make_layout, restore_or_initialise
from t5x_instruct.training.step import LossConfig, train_step
from t5x_instruct.training.train_state import ModelSpec, init_train_state, split_params

STEP_SEED = 4  # its step keys draw "keep" for the first batch and "sample" for the second


@pytest.fixture(scope="module")
def teacher_dirs(tmp_path_factory) -> dict[str, str]:
    """Random teachers saved as t5x_instruct checkpoints (one of them the student's shape)."""
    root = tmp_path_factory.mktemp("teachers")
    configs = {"t5": TEACHER, "decoder": DEC_TEACHER, "student": STUDENT}
    return {name: save_teacher(str(root / name), config) for name, config in configs.items()}


# ------------------------------------------------------------------------------ the teacher


def test_zero_loss_when_student_is_the_teacher(teacher_dirs) -> None:
    """Teacher = the student's architecture and parameters: every divergence is 0."""
    path = teacher_dirs["student"]
    mesh, rules = mesh_and_rules()
    plugins = [
        Distillation(teacher_config=STUDENT, teacher_checkpoint=path, divergence=name,
                     temperature=2.0)
        for name in losses.DIVERGENCES
    ]  # fmt: skip
    params = plugins[0].teacher.restore(path, mesh, rules)
    spec = ModelSpec.create(lambda: build_model(STUDENT))

    @jax.jit
    def terms(params, batch):
        model = spec.module(params)
        logits = model.logits_from_batch(batch)
        ctx = StepContext(model, params, batch, logits, params, jnp.int32(0), None, True)
        return [p.loss_terms(ctx)["kd"] for p in plugins]

    for name, value in zip(losses.DIVERGENCES, terms(params, encdec_batch(0))):
        assert abs(float(value)) < 1e-5, name


def test_teacher_of_the_other_family_reads_the_same_examples(teacher_dirs) -> None:
    """Converted batches give the teacher the logits it gives the hand-built batch of its own
    family, at the positions that predict each student target."""
    mesh, rules = mesh_and_rules()
    encdec = encdec_batch(1)
    lm, lengths = prefix_lm_batch(encdec)
    dec, t5 = Teacher.create(DEC_TEACHER), Teacher.create(TEACHER)
    dec_params = dec.restore(teacher_dirs["decoder"], mesh, rules)
    t5_params = t5.restore(teacher_dirs["t5"], mesh, rules)

    @jax.jit
    def run(dec_params, t5_params, encdec, lm):
        return (
            dec.logits(dec_params, encdec, student_enc_dec=True),  # T5 student, decoder teacher
            dec.spec.module(dec_params).logits_from_batch(lm),
            t5.logits(t5_params, lm, student_enc_dec=False),  # decoder student, T5 teacher
            t5.spec.module(t5_params).logits_from_batch(encdec),
        )

    converted_dec, native_dec, converted_t5, native_t5 = run(dec_params, t5_params, encdec, lm)
    for r, (n_in, n_t) in enumerate(lengths):
        np.testing.assert_allclose(
            converted_dec[r, :n_t], native_dec[r, n_in : n_in + n_t], rtol=1e-5, atol=1e-5
        )
        np.testing.assert_allclose(
            converted_t5[r, n_in : n_in + n_t], native_t5[r, :n_t], rtol=1e-5, atol=1e-5
        )
    packed = {**encdec, "decoder_segment_ids": (encdec["decoder_target_tokens"] > 0) * 1}
    with pytest.raises(UserInputError, match=r"train\.pack = False"):
        jax.eval_shape(lambda p, b: dec.logits(p, b, True), dec_params, packed)


# ------------------------------------------------------------------------------ train steps

OPTIMIZER = optax.sgd(0.1, momentum=0.9)
KD = dict(divergence="jsd", temperature=2.0, kd_weight=0.7, on_policy_fraction=0.5,
          on_policy_max_length=4)  # fmt: skip


@pytest.fixture(scope="module")
def kd_runs(tmp_path_factory, teacher_dirs):
    """Online KD with on-policy batches (lambda = 0.5): 4 steps straight; the first 2 again as
    4 microbatches each; steps 3-4 again after a checkpoint of step 2 restored into a new
    layout (teacher rebuilt from its own checkpoint, as at a restart).

    Prefix-LM student and teacher: their steps compile in about half the time of T5's, and
    nothing here depends on the family (T5 batches are the other tests' subject).
    """
    tmp = tmp_path_factory.mktemp("kd")
    mesh, rules = mesh_and_rules()
    # Linear in the gradients (AdamW's 1/sqrt(v) would magnify the rounding of near-zero
    # gradients, which differs between 1 and 4 microbatches, past any tight tolerance).
    optimizer = OPTIMIZER

    def new_layout():
        plugin = Distillation(
            teacher_config=DEC_TEACHER, teacher_checkpoint=teacher_dirs["decoder"], **KD
        )
        plugins = PluginSet([plugin])
        spec = ModelSpec.create(plugins.build(lambda: build_model(DEC_STUDENT)))
        return make_layout(spec, optimizer, mesh, rules, plugins, str(tmp))

    layout = new_layout()
    init = jax.jit(
        lambda p, a: init_train_state(p, optimizer, layout.is_trainable, a),
        out_shardings=layout.shardings,
    )
    initial = init(random_params(layout.spec, 0), layout.rebuilt_aux(False))

    def step_fn(k: int):
        return jax.jit(
            lambda s, b: train_step(
                layout.spec, optimizer, LossConfig(), s, b, jax.random.PRNGKey(STEP_SEED),
                num_microbatches=k, plugins=layout.plugins, is_trainable=layout.is_trainable,
            )
        )  # fmt: skip

    def run(step, state, batches):
        states, metrics = [], []
        for batch in batches:
            state, m = step(state, batch)
            states.append(state)
            metrics.append(jax.device_get(m))
        return states, metrics

    one = step_fn(1)
    batches = [prefix_lm_batch(encdec_batch(10 + i))[0] for i in range(4)]
    straight = run(one, initial, batches)
    accumulated = run(step_fn(4), initial, batches[:2])
    checkpointer = Checkpointer(str(tmp / "run"), async_save=False)
    checkpointer.save(layout.for_checkpoint(straight[0][1]), {})
    restored, _ = restore_or_initialise(
        new_layout(), Checkpointer(str(tmp / "run"), async_save=False), None, (), False
    )
    resumed = run(one, restored, batches[2:])
    return dict(layout=layout, initial=initial, straight=straight, accumulated=accumulated,
                restored=restored, resumed=resumed, teacher=teacher_dirs["decoder"])  # fmt: skip


def test_gradient_accumulation_is_exact_with_kd(kd_runs) -> None:
    (s1, m1), (s4, m4) = kd_runs["straight"], kd_runs["accumulated"]
    removed = "distillation/on_policy_ce_removed"
    # Step 1 trained on the data's targets, step 2 on the student's samples (no CE there).
    assert m1[0][removed] == 0 and m1[1][removed] < 0
    for a, b in zip(m1[:2], m4):
        assert a["distillation/kd"] > 0
        for key in ("loss", "cross_entropy", "distillation/kd", removed):
            np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-7, err_msg=key)
    for a, b in zip(jax.tree.leaves(s1[1].params), jax.tree.leaves(s4[1].params)):
        np.testing.assert_allclose(a, b, atol=1e-6)
    # The sampled batch is trained by the divergence alone: its core cross-entropy (scaled by
    # 1 - kd_weight) is cancelled exactly; the data's batch keeps it.
    sampled, kept = m1[1], m1[0]
    np.testing.assert_allclose(sampled[removed], -0.3 * sampled["cross_entropy"], rtol=1e-6)
    np.testing.assert_allclose(
        sampled["loss"], sampled["distillation/kd"] + sampled["z_loss"], rtol=1e-5
    )
    np.testing.assert_allclose(
        kept["loss"],
        0.3 * kept["cross_entropy"] + kept["distillation/kd"] + kept["z_loss"],
        rtol=1e-5,
    )


def test_resume_is_exact_with_kd(kd_runs) -> None:
    (states, metrics), (resumed_states, resumed_metrics) = kd_runs["straight"], kd_runs["resumed"]
    assert int(kd_runs["restored"].step) == 2
    assert any(m["distillation/on_policy_ce_removed"] < 0 for m in resumed_metrics)
    for a, b in zip(metrics[2:], resumed_metrics):
        for key in ("loss", "cross_entropy", "distillation/kd", "grad_norm"):
            assert a[key] == b[key], key
    for a, b in zip(jax.tree.leaves(states[3]), jax.tree.leaves(resumed_states[1])):
        np.testing.assert_array_equal(a, b)


def test_teacher_is_frozen_and_outside_the_optimizer(kd_runs) -> None:
    layout, initial = kd_runs["layout"], kd_runs["initial"]
    state = kd_runs["straight"][0][-1]
    mesh, rules = mesh_and_rules()
    saved = Teacher.create(DEC_TEACHER).restore(kd_runs["teacher"], mesh, rules)
    # Unchanged after four updates (two on-policy), bit for bit, while the student moved;
    # and rebuilt from its own checkpoint on restore.
    for aux in (state.aux["distillation"], kd_runs["restored"].aux["distillation"]):
        for a, b in zip(jax.tree.leaves(aux), jax.tree.leaves(saved)):
            np.testing.assert_array_equal(a, b)
    assert any(
        not np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(initial.params))
    )
    # The optimizer state is exactly the momentum of the student's parameters.
    student = jax.tree.leaves(split_params(state.params, layout.is_trainable)[0])
    expected = jax.eval_shape(OPTIMIZER.init, state.params)
    assert jax.tree.structure(expected) == jax.tree.structure(state.opt_state)
    opt_elements = sum(x.size for x in jax.tree.leaves(state.opt_state))
    assert opt_elements == sum(x.size for x in student)
    assert sum(x.size for x in jax.tree.leaves(saved)) != sum(x.size for x in student)
    # And it is not checkpointed.
    assert "distillation" not in layout.for_checkpoint(state).aux
    # A bf16 teacher holds the same values rounded to bf16 (half the memory).
    half = Teacher.create(DEC_TEACHER, "bfloat16").restore(kd_runs["teacher"], mesh, rules)
    for a, b in zip(jax.tree.leaves(half), jax.tree.leaves(saved)):
        assert a.dtype == jnp.bfloat16
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b).astype(jnp.bfloat16))


# ------------------------------------------------------------------------------ on-policy


def test_on_policy_batches_hold_the_students_samples() -> None:
    plugin = Distillation(teacher_config=TEACHER, teacher_checkpoint="unused", kd_weight=0.6,
                          on_policy_fraction=1.0, on_policy_max_length=4)  # fmt: skip
    spec = ModelSpec.create(lambda: build_model(STUDENT))
    params = random_params(spec, 0)
    batch = encdec_batch(3)
    rng = jax.random.PRNGKey(5)

    @jax.jit
    def run(params, batch):
        model = spec.module(params)
        ctx = StepContext(model, params, batch, None, None, jnp.int32(0), rng, True)
        sample = temperature_sample(
            model, {"encoder_input_tokens": batch["encoder_input_tokens"]}, max_decode_length=4,
            rng=jax.random.split(rng)[1],
        )  # fmt: skip
        return plugin.prepare_batch(ctx), sample

    new, sample = jax.device_get(run(params, batch))
    tokens, lengths = sample.tokens[:, 0], sample.lengths[:, 0]
    assert lengths.min() > 0 and lengths.max() <= 4
    for r in range(tokens.shape[0]):
        n = lengths[r]
        want = np.zeros(6, np.int32)
        want[:n] = tokens[r, :n]
        np.testing.assert_array_equal(new["decoder_target_tokens"][r], want)
        np.testing.assert_array_equal(new["decoder_input_tokens"][r], np.append(0, want[:-1]))
        np.testing.assert_array_equal(new["decoder_loss_weights"][r], np.arange(6) < n)
    np.testing.assert_array_equal(new["encoder_input_tokens"], batch["encoder_input_tokens"])
    assert new["distillation_on_policy"].tolist() == [1.0] * 8


def test_on_policy_prefix_lm_keeps_the_prompt() -> None:
    spec = ModelSpec.create(lambda: build_model(DEC_STUDENT))
    params = random_params(spec, 0)
    lm, lengths = prefix_lm_batch(encdec_batch(4))
    rng = jax.random.PRNGKey(1)

    @jax.jit
    def run(params, batch):
        model = spec.module(params)
        new = F.on_policy_batch(model, batch, rng, encoder_decoder=False, max_length=5,
                                temperature=1.0, top_k=0, top_p=1.0)  # fmt: skip
        prompt_len = jnp.sum(batch["decoder_causal_attention"], axis=1)
        prompt = jnp.where(jnp.arange(13)[None] < prompt_len[:, None],
                           batch["decoder_input_tokens"], 0)  # fmt: skip
        sample = temperature_sample(
            model, {"decoder_input_tokens": prompt, "prompt_lengths": prompt_len,
                    "decoder_causal_attention": batch["decoder_causal_attention"]},
            max_decode_length=5, rng=rng,
        )  # fmt: skip
        return new, sample

    new, sample = jax.device_get(run(params, lm))
    for r, (n_in, _) in enumerate(lengths):
        n = min(int(sample.lengths[r, 0]), 13 - n_in)
        want = np.zeros(13, np.int32)
        want[:n_in] = lm["decoder_target_tokens"][r, :n_in]
        want[n_in : n_in + n] = sample.tokens[r, 0, :n]
        np.testing.assert_array_equal(new["decoder_target_tokens"][r], want)
        np.testing.assert_array_equal(new["decoder_input_tokens"][r], np.append(0, want[:-1]))
        np.testing.assert_array_equal(
            new["decoder_loss_weights"][r], (np.arange(13) >= n_in) & (np.arange(13) < n_in + n)
        )
        np.testing.assert_array_equal(new["decoder_causal_attention"][r],
                                      lm["decoder_causal_attention"][r])  # fmt: skip


# ------------------------------------------------------------------------------ offline top-k


def test_offline_topk_loss_reads_the_store(tmp_path) -> None:
    """The loss from a store equals numpy's reverse KL over the k + 1 buckets, in the train
    step (looked up in prepare_batch) and in validation (looked up in loss_terms)."""
    k = 5
    batch = encdec_batch(5)
    lt = np_log_softmax(np.random.default_rng(9).normal(size=(8, 6, V)) * 2)
    fields = dict(task="t", split="train", task_feature_lengths={"inputs": 7, "targets": 6},
                  k=k, temperature=1.0, vocab_size=V, teacher_checkpoint="x", teacher_step=0,
                  teacher_config="c", logprob_dtype="float32")  # fmt: skip
    writer = TopKWriter(str(tmp_path / "store"), fields, examples_per_shard=3)
    top_ids = np.argsort(-lt, -1)[..., :k]
    in_top = np.zeros(lt.shape, bool)
    np.put_along_axis(in_top, top_ids, True, -1)
    for r in range(8):
        n = int((batch["decoder_target_tokens"][r] != 0).sum())
        x = batch["encoder_input_tokens"][r]
        rest = np.log((np.exp(lt[r, :n]) * ~in_top[r, :n]).sum(-1))
        top = np.take_along_axis(lt[r, :n], top_ids[r, :n], -1)
        writer.add(example_key(x[x != 0], batch["decoder_target_tokens"][r, :n]),
                   top_ids[r, :n], top, rest)  # fmt: skip
    writer.finish()

    mesh, rules = mesh_and_rules()
    spec = ModelSpec.create(lambda: build_model(STUDENT))
    params = random_params(spec, 0)
    plugin = Distillation(topk_dir=str(tmp_path / "store"), divergence="reverse_kl",
                          kd_weight=0.5)  # fmt: skip
    assert plugin.aux_state(SetupContext(spec, mesh, rules, str(tmp_path))) is None

    @jax.jit
    def run(params, batch):
        model = spec.module(params)
        logits = model.logits_from_batch(batch)
        ctx = StepContext(model, params, batch, None, None, jnp.int32(0), None, True)
        prepared = plugin.prepare_batch(ctx)
        kd_train = plugin.loss_terms(StepContext(model, params, prepared, logits, None,
                                                 jnp.int32(0), None, True))["kd"]  # fmt: skip
        kd_eval = plugin.loss_terms(StepContext(model, params, batch, logits, None,
                                                jnp.int32(0), None, True))["kd"]  # fmt: skip
        return logits, kd_train, kd_eval

    logits, kd_train, kd_eval = jax.device_get(run(params, batch))
    ls = np_log_softmax(logits)
    want = 0.0
    for r in range(8):
        n = int((batch["decoder_target_tokens"][r] != 0).sum())
        ids, keep = top_ids[r, :n], in_top[r, :n]
        t = np.concatenate([np.take_along_axis(np.exp(lt[r, :n]), ids, -1),
                            (np.exp(lt[r, :n]) * ~keep).sum(-1, keepdims=True)], -1)  # fmt: skip
        s = np.concatenate([np.take_along_axis(np.exp(ls[r, :n]), ids, -1),
                            (np.exp(ls[r, :n]) * ~keep).sum(-1, keepdims=True)], -1)  # fmt: skip
        want += np_kl(s, t).sum()
    np.testing.assert_allclose(kd_train, 0.5 * want, rtol=1e-5)
    np.testing.assert_allclose(kd_eval, 0.5 * want, rtol=1e-5)

    other = {**batch, "decoder_target_tokens": batch["decoder_target_tokens"] + 1}
    with pytest.raises(Exception, match="no entry for an example"):
        jax.block_until_ready(run(params, other))
    with pytest.raises(UserInputError, match="temperature"):
        Distillation(topk_dir=str(tmp_path / "store"), temperature=2.0).store()
