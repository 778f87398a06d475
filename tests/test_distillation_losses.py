"""Distillation without models: each divergence, the tau^2 factor, the JSD limits and the
top-k buckets against direct numpy computations; the offline store's keys, shards and
resume; the settings' errors and the gin file's teacher scope."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.distillation import mesh_and_rules, np_kl, np_log_softmax

from t5x_instruct.errors import UserInputError
from t5x_instruct.models import T5Config, build_model
from t5x_instruct.plugins import SetupContext
from t5x_instruct.plugins.distillation import Distillation, losses
from t5x_instruct.plugins.distillation.topk_store import (
    TopKStore,
    TopKWriter,
    batch_segments,
    example_key,
)
from t5x_instruct.training.train_state import ModelSpec


def _np_divergence(name: str, s: np.ndarray, t: np.ndarray, beta: float, alpha: float):
    """Probabilities in (student s, teacher t), per-position divergence out."""
    if name == "forward_kl":
        return np_kl(t, s)
    if name == "reverse_kl":
        return np_kl(s, t)
    if name == "jsd":
        m = beta * t + (1 - beta) * s
        return beta * np_kl(t, m) + (1 - beta) * np_kl(s, m)
    if name == "skew_kl":
        return np_kl(t, alpha * t + (1 - alpha) * s)
    return np_kl(s, alpha * s + (1 - alpha) * t)


def _logits(seed: int, shape=(3, 5, 11), scale=2.0) -> np.ndarray:
    return (scale * np.random.default_rng(seed).normal(size=shape)).astype(np.float32)


# ------------------------------------------------------------------------------ divergences


@pytest.mark.parametrize("name", losses.DIVERGENCES)
@pytest.mark.parametrize("tau", [1.0, 2.5])
def test_divergence_sums_match_numpy_with_tau_squared(name: str, tau: float) -> None:
    zs, zt = _logits(0), _logits(1)
    weights = (np.random.default_rng(2).random(zs.shape[:2]) > 0.3).astype(np.float32)
    fn = losses.divergence_fn(name, beta=0.3, alpha=0.2)
    got = losses.kd_sum(
        fn, losses.tempered_log_probs(zs, tau), losses.tempered_log_probs(zt, tau), weights, tau
    )
    s, t = np.exp(np_log_softmax(zs / tau)), np.exp(np_log_softmax(zt / tau))
    want = tau**2 * np.sum(weights * _np_divergence(name, s, t, beta=0.3, alpha=0.2))
    np.testing.assert_allclose(float(got), want, rtol=1e-5)


def test_divergences_vanish_for_equal_distributions_with_zeros() -> None:
    """``p = q``, some categories of probability 0: every divergence is 0, without NaN."""
    logp = np_log_softmax(_logits(7))
    logp[..., :3] = -np.inf  # impossible categories (as a top-k "rest" of 0 mass)
    logp = np_log_softmax(logp).astype(np.float32)
    for name in losses.DIVERGENCES:
        value = np.asarray(losses.divergence_fn(name, beta=0.3, alpha=0.2)(logp, logp))
        assert np.all(np.isfinite(value)) and np.max(np.abs(value)) < 1e-6, name


def test_jsd_limits_are_forward_and_reverse_kl() -> None:
    # Mild distributions: the limits need beta (or 1 - beta) well below every ratio q/p.
    s = np.exp(np_log_softmax(_logits(3, scale=0.5)))
    t = np.exp(np_log_softmax(_logits(4, scale=0.5)))
    ls, lt = np.log(s).astype(np.float32), np.log(t).astype(np.float32)
    forward, reverse = np_kl(t, s), np_kl(s, t)
    # JSD_beta / beta -> KL(P || Q) as beta -> 0 and JSD_beta / (1 - beta) -> KL(Q || P) as
    # beta -> 1 (first-order limits: the gap shrinks with eps).
    for limit, beta_of, want in ((0, lambda e: e, forward), (1, lambda e: 1 - e, reverse)):
        gaps = []
        for eps in (1e-2, 1e-3):  # float32: a smaller eps drowns in rounding
            got = np.asarray(losses.generalized_jsd(ls, lt, beta_of(eps))) / eps
            gaps.append(np.max(np.abs(got - want) / want))
        assert gaps[1] < 5e-3, (limit, gaps)
        assert gaps[1] < 0.5 * gaps[0], (limit, gaps)
    # Skew KLs with alpha = 0 are the plain KLs.
    np.testing.assert_allclose(losses.skew_kl(ls, lt, 0.0), forward, rtol=1e-5)
    np.testing.assert_allclose(losses.skew_reverse_kl(ls, lt, 0.0), reverse, rtol=1e-5)
    with pytest.raises(UserInputError, match=r"beta=0\.0 must be in"):
        losses.divergence_fn("jsd", beta=0.0)
    with pytest.raises(UserInputError, match=r"alpha=1\.0 must be in"):
        losses.divergence_fn("skew_kl", alpha=1.0)
    with pytest.raises(UserInputError, match="divergence='kl'"):
        losses.divergence_fn("kl")


def test_topk_buckets_match_numpy() -> None:
    zs, zt = _logits(5, (2, 3, 11)), _logits(6, (2, 3, 11))
    k = 4
    lt = np_log_softmax(zt)
    ids = np.argsort(-lt, -1)[..., :k].astype(np.int32)
    top = np.take_along_axis(lt, ids, -1)
    in_top = np.zeros(lt.shape, bool)
    np.put_along_axis(in_top, ids, True, -1)
    rest = np.log(np.exp(lt)[~in_top].reshape(2, 3, -1).sum(-1))
    s = np.exp(np_log_softmax(zs))
    s_bucket = np.concatenate(
        [np.take_along_axis(s, ids, -1), (s * ~in_top).sum(-1)[..., None]], -1
    )
    t_bucket = np.concatenate([np.exp(top), np.exp(rest)[..., None]], -1)
    f32 = np.float32
    gs, gt = losses.topk_bucket_log_probs(
        np_log_softmax(zs).astype(f32), ids, top.astype(f32), rest.astype(f32)
    )
    np.testing.assert_allclose(np.exp(gs), s_bucket, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.exp(gt), t_bucket, rtol=1e-5, atol=1e-7)
    # Renormalised: both restricted to the top-k and rescaled to sum to 1.
    rs, rt = losses.topk_renormalized_log_probs(np_log_softmax(zs).astype(f32), ids, top)
    s_top = np.take_along_axis(s, ids, -1)
    np.testing.assert_allclose(np.exp(rs), s_top / s_top.sum(-1, keepdims=True), rtol=1e-5)
    t_top = np.exp(top)
    np.testing.assert_allclose(np.exp(rt), t_top / t_top.sum(-1, keepdims=True), rtol=1e-5)


# ------------------------------------------------------------------------------ top-k store


def test_batch_segments_key_packed_and_unpacked_rows_alike() -> None:
    a = (np.array([5, 6, 1]), np.array([7, 1]))
    b = (np.array([9, 1]), np.array([3, 4, 1]))
    packed_encdec = {
        "encoder_input_tokens": np.array([[5, 6, 1, 9, 1, 0]]),
        "encoder_segment_ids": np.array([[1, 1, 1, 2, 2, 0]]),
        "decoder_target_tokens": np.array([[7, 1, 3, 4, 1, 0]]),
        "decoder_segment_ids": np.array([[1, 1, 2, 2, 2, 0]]),
        "decoder_loss_weights": np.array([[1, 1, 1, 1, 1, 0]]),
    }
    packed_lm = {
        "decoder_target_tokens": np.array([[5, 6, 1, 7, 1, 9, 1, 3, 4, 1, 0]]),
        "decoder_segment_ids": np.array([[1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 0]]),
        "decoder_loss_weights": np.array([[0, 0, 0, 1, 1, 0, 0, 1, 1, 1, 0]]),
    }
    unpacked_lm = {
        "decoder_target_tokens": np.array([[9, 1, 3, 4, 1, 0]]),
        "decoder_loss_weights": np.array([[0, 0, 1, 1, 1, 0]]),
    }
    key_a, key_b = example_key(*a), example_key(*b)
    assert key_a != key_b
    # Lengths are part of the key: the same tokens split differently are another example.
    assert example_key(np.array([5, 6]), np.array([1, 7, 1])) != key_a
    got = [(row, key, pos.tolist()) for row, key, pos in batch_segments(packed_encdec)]
    assert got == [(0, key_a, [0, 1]), (0, key_b, [2, 3, 4])]
    got = [(row, key, pos.tolist()) for row, key, pos in batch_segments(packed_lm)]
    assert got == [(0, key_a, [3, 4]), (0, key_b, [7, 8, 9])]
    assert [k for _, k, _ in batch_segments(unpacked_lm)] == [key_b]


STORE_FIELDS = dict(task="t", split="train", task_feature_lengths={"inputs": 7, "targets": 6},
                    temperature=1.0, vocab_size=40, teacher_checkpoint="x", teacher_step=0,
                    teacher_config="c", logprob_dtype="float32")  # fmt: skip


def test_store_shards_resume_and_lookup(tmp_path) -> None:
    rng = np.random.default_rng(0)
    examples = [
        (rng.integers(2, 40, n), rng.integers(2, 40, m), rng.normal(size=(m, 3)))
        for n, m in ((3, 2), (4, 5), (2, 3), (5, 1), (3, 4))
    ]

    def write(stop_after: int | None = None, k: int = 3) -> TopKWriter:
        writer = TopKWriter(str(tmp_path), {**STORE_FIELDS, "k": k}, examples_per_shard=2)
        for number, (x, y, lp) in enumerate(examples):
            if number < writer.examples_done:
                continue
            if number == stop_after:
                return writer  # killed: the buffered example is lost, whole shards stay
            ids = np.tile(np.arange(3, dtype=np.int32) + number, (len(y), 1))
            writer.add(example_key(x, y), ids, lp, lp[:, 0] - 1.0)
        writer.finish()
        return writer

    partial = write(stop_after=3)
    assert partial.examples_done == 2 and not partial.complete
    with pytest.raises(UserInputError, match="incomplete"):
        TopKStore(str(tmp_path))
    resumed = write()
    assert resumed.examples_done == 5 and resumed.complete
    assert resumed.manifest["shards"] == [f"topk-0000{i}.safetensors" for i in range(3)]
    with pytest.raises(UserInputError, match="other settings"):
        write(k=4)

    store = TopKStore(str(tmp_path))
    assert len(store) == 5 and store.k == 3 and store.vocab_size == 40
    # A packed encoder-decoder row holding examples 1 and 4, and a row the store lacks.
    (x1, y1, lp1), (x4, y4, lp4) = examples[1], examples[4]
    enc = np.zeros((2, 10), np.int64)
    enc[0, : len(x1) + len(x4)] = np.concatenate([x1, x4])
    enc[1, :2] = [7, 1]
    enc_seg = np.zeros_like(enc)
    enc_seg[0, : len(x1)], enc_seg[0, len(x1) : len(x1) + len(x4)] = 1, 2
    enc_seg[1, :2] = 1
    dec = np.zeros((2, 10), np.int64)
    dec[0, : len(y1) + len(y4)] = np.concatenate([y1, y4])
    dec[1, :1] = 9
    dec_seg = (dec != 0) * 1
    dec_seg[0, len(y1) : len(y1) + len(y4)] = 2
    batch = {
        "encoder_input_tokens": enc, "encoder_segment_ids": enc_seg,
        "decoder_target_tokens": dec, "decoder_segment_ids": dec_seg,
        "decoder_loss_weights": (dec != 0).astype(np.float32),
    }  # fmt: skip
    with pytest.raises(UserInputError, match=r"no entry for an example .*row 1"):
        store.lookup(batch, strict=True)
    ids, logprobs, rest, found = store.lookup(batch, strict=False)
    assert store.misses == 1
    want_found = np.zeros((2, 10))
    want_found[0, : len(y1) + len(y4)] = 1
    np.testing.assert_array_equal(found, want_found)
    np.testing.assert_array_equal(logprobs[0, : len(y1)], lp1.astype(np.float32))
    np.testing.assert_array_equal(logprobs[0, len(y1) : len(y1) + len(y4)], lp4.astype(np.float32))
    np.testing.assert_array_equal(rest[0, : len(y1)], (lp1[:, 0] - 1.0).astype(np.float32))
    np.testing.assert_array_equal(ids[0, len(y1)], [4, 5, 6])
    # Positions without an entry hold a finite uniform teacher over distinct ids.
    assert np.all(np.isfinite(logprobs)) and len(set(ids[1, 0].tolist())) == 3


# ------------------------------------------------------------------------------ settings


def test_settings_errors_name_the_binding(tmp_path) -> None:
    student = T5Config(vocab_size=40, emb_dim=8, num_heads=1, head_dim=8, mlp_dim=8,
                       num_encoder_layers=1, num_decoder_layers=1)  # fmt: skip
    teacher = T5Config(**{**student.__dict__, "vocab_size": 48})
    plugin = Distillation(teacher_config=teacher, teacher_checkpoint=str(tmp_path))
    spec = ModelSpec.create(lambda: build_model(student))
    setup = SetupContext(spec, *mesh_and_rules(), str(tmp_path))
    with pytest.raises(UserInputError, match=r"student's vocab_size is 40 .* vocab_size 48"):
        plugin.aux_state(setup)
    with pytest.raises(UserInputError, match="teacher_checkpoint is not set"):
        Distillation(teacher_config=student)
    with pytest.raises(UserInputError, match="teacher_config is not set"):
        Distillation(teacher_checkpoint=str(tmp_path))
    with pytest.raises(UserInputError, match="not both"):
        Distillation(teacher_config=student, topk_dir=str(tmp_path))
    with pytest.raises(UserInputError, match="needs an online teacher"):
        Distillation(topk_dir=str(tmp_path), on_policy_fraction=0.5)
    with pytest.raises(UserInputError, match=r"kd_weight=0\.0 must be in"):
        Distillation(teacher_config=student, teacher_checkpoint="x", kd_weight=0.0)
    with pytest.raises(UserInputError, match=r"teacher_dtype='float16'"):
        Distillation(teacher_config=student, teacher_checkpoint="x", teacher_dtype="float16")
    with pytest.raises(UserInputError, match="holds no top-k store"):
        Distillation(topk_dir=str(tmp_path)).store()


def test_gin_file_scopes_the_teacher_apart_from_the_student() -> None:
    import gin

    import t5x_instruct.training.loop  # noqa: F401  (run files bind `train`)
    from t5x_instruct.gin_utils import parse_gin

    parse_gin(
        ["models/t5_1_1/mini.gin", "plugins/distillation.gin"],  # no run file: no data
        ["T5Config.emb_dim = 64", "T5Config.head_dim = 16", "KD_DIVERGENCE = 'jsd'",
         "TEACHER_CHECKPOINT = '/tmp/teacher'", "SCAN_LAYERS = True"],
        clear=True,
    )  # fmt: skip
    plugin = gin.query_parameter("train.plugins")[0].scoped_configurable_fn()
    teacher = plugin.teacher.config
    assert (teacher.emb_dim, teacher.head_dim, teacher.vocab_size) == (128, 32, 640)
    assert not teacher.scan_layers and teacher.dropout_rate == 0.0  # not the student's
    assert plugin.divergence_name == "jsd" and plugin.teacher_checkpoint == "/tmp/teacher"
    config = gin.query_parameter("build_model.config").scoped_configurable_fn()
    assert (config.emb_dim, config.head_dim, config.scan_layers) == (64, 16, True)
