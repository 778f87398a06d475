"""T5X's Adafactor: our optax transformation against a numpy implementation of T5X's update.

The oracle below is written from the update equations of T5X's ``t5x/adafactor.py``
(``Adafactor.apply_param_gradient`` / ``_factored_dims``) and works in T5X's own parameter
layout: T5X's T5 stores attention kernels flattened to 2-D (``[embed, heads*kv]``,
``[heads*kv, embed]``) and factors every rank <= 2 parameter by its heuristic (rows: the
smaller of the two dims, only if it has >= ``min_dim_size_to_factor`` entries). A scanned
``layers`` axis is a batch of independent parameters. Float64 throughout.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from t5x_instruct import partitioning
from t5x_instruct.errors import UserInputError
from t5x_instruct.models import T5Config, build_model
from t5x_instruct.training.adafactor import adafactor, state_bytes
from t5x_instruct.training.optimizers import make_optimizer
from t5x_instruct.training.step import LossConfig, train_step
from t5x_instruct.training.train_state import (
    ModelSpec,
    TrainState,
    init_train_state,
    train_state_shardings,
)

# LLVM optimisation level 0 halves CPU compile time; the program itself is unchanged.
FAST_COMPILE = {"xla_backend_optimization_level": 0}

# --------------------------------------------------------------------------- the oracle


@dataclasses.dataclass
class Hyper:
    lr: float = 0.01
    decay_rate: float = 0.8
    mbps: bool = True  # multiply_by_parameter_scale
    clip: float | None = 1.0
    beta1: float | None = None
    wd: float | None = None
    min_dim: int = 128
    eps1: float = 1e-30
    eps2: float = 1e-3


def _t5x_init(p: np.ndarray, hp: Hyper) -> dict:
    if p.ndim == 2 and min(p.shape) >= hp.min_dim:
        row, col = np.argsort(p.shape, kind="stable")
        state = {"vr": np.zeros(p.shape[row]), "vc": np.zeros(p.shape[col])}
    else:
        state = {"v": np.zeros(p.shape)}
    state["m"] = np.zeros(p.shape)
    return state


def _t5x_step(p: np.ndarray, g: np.ndarray, s: dict, step: int, hp: Hyper) -> np.ndarray:
    """One T5X Adafactor update of a rank <= 2 parameter; updates ``s`` in place."""
    decay = 1.0 - (step + 1.0) ** (-hp.decay_rate)
    g2 = g * g + hp.eps1
    if "vr" in s:
        row, col = np.argsort(p.shape, kind="stable")  # row: smaller dim, col: larger
        s["vr"] = decay * s["vr"] + (1 - decay) * g2.mean(axis=col)
        s["vc"] = decay * s["vc"] + (1 - decay) * g2.mean(axis=row)
        row_factor = (s["vr"] / s["vr"].mean()) ** -0.5
        col_factor = s["vc"] ** -0.5
        y = g * np.expand_dims(row_factor, col) * np.expand_dims(col_factor, row)
    else:
        s["v"] = decay * s["v"] + (1 - decay) * g2
        y = g * s["v"] ** -0.5
    if hp.clip is not None:
        y = y / max(1.0, np.sqrt(np.mean(y * y)) / hp.clip)
    scale = hp.lr * max(np.sqrt(np.mean(p * p)), hp.eps2) if hp.mbps else hp.lr
    sub = scale * y
    if hp.beta1 is not None:
        s["m"] = hp.beta1 * s["m"] + (1 - hp.beta1) * sub
        sub = s["m"]
    return ((1 - hp.wd) * p if hp.wd is not None else p) - sub


# ------------------------------------------------------------- parameters and layouts


@dataclasses.dataclass
class Case:
    """A parameter in our layout, and how T5X would store it: ``[L, ...]`` per-layer views."""

    shape: tuple[int, ...]
    axes: tuple[str, ...]
    t5x: Callable[[np.ndarray], np.ndarray]  # ours -> [L, a, b] or [L, n]
    # ours (v_row, v_col) -> T5X's (vr, vc), each [L, n]; None: unfactored in T5X
    stats: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]] | None


def _flat(x: np.ndarray, lead: int = 0) -> np.ndarray:
    return x.reshape(x.shape[:lead] + (-1,)) if lead else x.reshape(-1)


CASES = {
    # [embed, heads, kv] -> T5X [embed, heads*kv] (512 x 512: rows = embed)
    "query": Case(
        (512, 8, 64),
        ("embed", "heads", "kv"),
        lambda x: x.reshape(1, 512, 512),
        lambda vr, vc: (vr[None], _flat(vc)[None]),
    ),
    # [heads, kv, embed] -> T5X [heads*kv, embed] (rows = heads*kv: our v_col)
    "out": Case(
        (8, 64, 512),
        ("heads", "kv", "embed"),
        lambda x: x.reshape(1, 512, 512),
        lambda vr, vc: (_flat(vc)[None], vr[None]),
    ),
    # GQA key [embed, kv_heads, kv] -> T5X [256, 64]: 64 < 128, not factored
    "small_key": Case(
        (256, 4, 16), ("embed", "kv_heads", "kv"), lambda x: x.reshape(1, 256, 64), None
    ),
    # scanned [layers, embed, heads, kv] -> per layer [128, 128]
    "scanned_query": Case(
        (2, 128, 4, 32),
        ("layers", "embed", "heads", "kv"),
        lambda x: x.reshape(2, 128, 128),
        lambda vr, vc: (vr, _flat(vc, 1)),
    ),
    # scanned [layers, mlp, embed] -> per layer [256, 128]: rows = embed (smaller)
    "scanned_wo": Case(
        (2, 256, 128),
        ("layers", "mlp", "embed"),
        lambda x: x,
        lambda vr, vc: (vr, vc),
    ),
    # 2-D [embed, mlp] with embed the larger: T5X's rows = mlp
    "wide_embed": Case(
        (300, 130), ("embed", "mlp"), lambda x: x[None], lambda vr, vc: (vr[None], vc[None])
    ),
    "norm": Case((512,), ("embed",), lambda x: x[None], None),
    "relpos": Case((8, 32), ("heads", "relpos_buckets"), lambda x: x[None], None),
}


def _params(rng: np.random.Generator) -> dict:
    out = {}
    for name, case in CASES.items():
        if name == "norm":
            out[name] = 1.0 + 0.1 * rng.standard_normal(case.shape)
        else:
            out[name] = 0.05 * rng.standard_normal(case.shape)
    return {k: v.astype(np.float32) for k, v in out.items()}


SETTINGS = {
    "t5x_defaults": ([], Hyper()),
    "momentum_and_weight_decay": (
        ["adafactor.beta1 = 0.9", "make_optimizer.weight_decay = 0.001"],
        Hyper(beta1=0.9, wd=0.001),
    ),
    "absolute_steps_no_clipping": (
        [
            "adafactor.multiply_by_parameter_scale = False",
            "adafactor.clipping_threshold = None",
            "adafactor.decay_rate = 0.5",
            "adafactor.min_dim_size_to_factor = 200",
        ],
        Hyper(lr=1e-4, mbps=False, clip=None, decay_rate=0.5, min_dim=200),
    ),
}


def _ours(bindings: list[str], hp: Hyper):
    gin.parse_config(bindings)
    opt = make_optimizer(
        name="adafactor",
        learning_rate=hp.lr,
        logical_axes={k: c.axes for k, c in CASES.items()},
    )
    return opt, jax.jit(lambda g, s, p: opt.update(g, s, p))


def _close(got: np.ndarray, want: np.ndarray, rtol: float, what: str) -> None:
    """Within ``rtol`` of the largest entry: fp32 sums over up to 262k entries vs fp64."""
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * np.abs(want).max(), err_msg=what)


@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_matches_numpy_t5x_update_over_several_steps(setting: str) -> None:
    """Each step's update, from the same parameters, and the statistics after 5 steps."""
    bindings, hp = SETTINGS[setting]
    rng = np.random.default_rng(0)
    params = _params(rng)
    opt, update = _ours(bindings, hp)
    state = opt.init(params)
    layers = {name: case.t5x(params[name].astype(np.float64)) for name, case in CASES.items()}
    t5x_states = {name: [_t5x_init(layer, hp) for layer in layers[name]] for name in CASES}
    steps = 5
    for t in range(steps):
        grads = {
            k: (rng.standard_normal(v.shape) * 1e-2).astype(np.float32) for k, v in params.items()
        }
        updates, state = update(grads, state, params)
        for name, case in CASES.items():
            p_now = case.t5x(params[name].astype(np.float64))
            g_now = case.t5x(grads[name].astype(np.float64))
            want = np.stack(
                [
                    _t5x_step(p_now[i], g_now[i], t5x_states[name][i], t, hp) - p_now[i]
                    for i in range(p_now.shape[0])
                ]
            )
            _close(case.t5x(np.asarray(updates[name])), want, 1e-6, f"{name} step {t}")
        params = jax.tree.map(lambda p, u: np.asarray(p + u), params, updates)

    for name, case in CASES.items():
        want_states = t5x_states[name]
        vr, vc, v = (np.asarray(x[name]) for x in (state.v_row, state.v_col, state.v))
        t5x_factored = "vr" in want_states[0]
        assert t5x_factored == (case.stats is not None and vr.shape != (1,)), name
        if t5x_factored:
            got_vr, got_vc = case.stats(vr, vc)
            _close(got_vr, np.stack([s["vr"] for s in want_states]), 1e-6, name)
            _close(got_vc, np.stack([s["vc"] for s in want_states]), 1e-6, name)
            assert v.shape == (1,)
        else:
            _close(case.t5x(v), np.stack([s["v"] for s in want_states]), 1e-6, name)
        if hp.beta1 is not None:
            want_m = np.stack([s["m"] for s in want_states])
            _close(case.t5x(np.asarray(state.m[name])), want_m, 1e-6, name)
    assert int(state.count) == steps


# ----------------------------------------------------------------------- state shapes


def test_factored_state_shapes_of_3d_kernels() -> None:
    axes = {
        "query": ("embed", "heads", "kv"),
        "out": ("heads", "kv", "embed"),
        "scanned": ("layers", "embed", "heads", "kv"),
        "tiny": ("embed", "heads", "kv"),
    }
    shapes = {
        "query": (512, 8, 64),
        "out": (8, 64, 512),
        "scanned": (6, 512, 8, 64),
        "tiny": (64, 4, 16),  # 64 < 128: a full second moment, as T5X
    }
    params = {k: jax.ShapeDtypeStruct(s, jnp.float32) for k, s in shapes.items()}
    state = jax.eval_shape(adafactor(0.01, logical_axes=axes).init, params)
    got = {k: (state.v_row[k].shape, state.v_col[k].shape, state.v[k].shape) for k in shapes}
    assert got == {
        "query": ((512,), (8, 64), (1,)),
        "out": ((512,), (8, 64), (1,)),
        "scanned": ((6, 512), (6, 8, 64), (1,)),
        "tiny": ((1,), (1,), (64, 4, 16)),
    }
    assert state.m is None
    # [512, 8, 64]: 512 + 512 + 1 (placeholder) floats instead of 262,144; plus the count.
    floats = 2 * (512 + 512 + 1) + (6 * 512 + 6 * 8 * 64 + 1) + (1 + 1 + 64 * 4 * 16)
    assert state_bytes(state) == 4 * floats + 4


def test_rank3_parameter_with_unknown_axis_is_one_clear_error() -> None:
    opt = adafactor(0.01, logical_axes={"w": ("embed", "experts", "mlp")})
    with pytest.raises(UserInputError, match=r"experts.*adafactor\.logical_factor_rules"):
        opt.init({"w": jnp.zeros((4, 2, 8))})
    opt = adafactor(
        0.01,
        logical_axes={"w": ("embed", "experts", "mlp")},
        logical_factor_rules={"experts": "batch"},
    )
    state = opt.init({"w": jnp.zeros((256, 2, 512))})
    assert state.v_row["w"].shape == (256, 2) and state.v_col["w"].shape == (2, 512)


# ------------------------------------------------------------- in the real train state


def _tiny_t5(**overrides) -> T5Config:
    base = dict(
        vocab_size=64,
        emb_dim=128,
        num_heads=4,
        head_dim=32,
        mlp_dim=256,
        num_encoder_layers=1,
        num_decoder_layers=1,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=16,
        dtype="float32",
    )
    return T5Config(**{**base, **overrides})


def _compiled(fn, *args, out_shardings=None):
    return jax.jit(fn, out_shardings=out_shardings).lower(*args).compile(FAST_COMPILE)


@pytest.mark.parametrize("scan", [False, True], ids=["loop", "scan"])
def test_train_state_shardings_with_factored_slots_and_frozen_params(scan: bool) -> None:
    """FSDP over 8 devices; only the decoder trains (the optimizer sees a subtree)."""
    spec = ModelSpec.create(lambda: build_model(_tiny_t5(scan_layers=scan)))
    mesh = partitioning.create_mesh(partitioning.MeshConfig(fsdp=8))
    rules = partitioning.standard_logical_axis_rules("fsdp")
    opt = make_optimizer(name="adafactor", learning_rate=0.01, logical_axes=spec.logical_axes())

    def only_decoder(path: str) -> bool:
        return path.startswith("decoder/")

    def init() -> TrainState:
        params = nnx.to_pure_dict(nnx.split(spec.build())[1])
        return init_train_state(params, opt, only_decoder)

    shardings = train_state_shardings(spec, opt, mesh, rules, only_decoder)
    state = _compiled(init, out_shardings=shardings)()
    assert set(state.opt_state.v_row) == {"decoder"}
    layer = state.opt_state.v_col["decoder"]
    layer = layer["block"] if scan else layer["blocks"][0]
    lead = (1,) if scan else ()
    assert layer["self_attention"]["query"]["kernel"].shape == (*lead, 4, 32)
    assert layer["mlp"]["wi_0"]["kernel"].shape == (*lead, 256)
    for leaf, sharding in zip(
        jax.tree.leaves(state.opt_state), jax.tree.leaves(shardings.opt_state)
    ):
        assert leaf.sharding == sharding
    # A full second moment is sharded like its parameter (the norm scale: embed over fsdp).
    key = ["decoder", "block"] if scan else ["decoder", "blocks", 0]
    v_slot, param = shardings.opt_state.v, shardings.params
    for k in [*key, "pre_mlp_layer_norm", "scale"]:
        v_slot, param = v_slot[k], param[k]
    assert v_slot == param and "fsdp" in param.spec


def test_constant_lr_001_trains_a_tiny_t5() -> None:
    """T5X's recipe (Adafactor, constant LR 0.01) from scratch: the loss falls fast.

    Task: inputs ``[k] * 8``, targets ``k, k+1, k+2, ...``. ``min_dim_size_to_factor = 32``
    (gin) so that this small model's 2-D and 3-D kernels take the factored path.
    """
    gin.parse_config(["adafactor.min_dim_size_to_factor = 32"])
    cfg = _tiny_t5(vocab_size=32, emb_dim=64, num_heads=4, head_dim=16, mlp_dim=128)
    spec = ModelSpec.create(lambda: build_model(cfg))
    opt = make_optimizer(name="adafactor", learning_rate=0.01, logical_axes=spec.logical_axes())
    state = _compiled(lambda: init_train_state(nnx.to_pure_dict(nnx.split(spec.build())[1]), opt))()
    assert state.opt_state.v_col["encoder"]["blocks"][0]["attention"]["query"]["kernel"].shape == (
        4,
        16,
    )
    step = None
    rng = np.random.default_rng(0)
    losses = []
    for _ in range(30):
        k = rng.integers(0, 30, size=(16, 1))
        targets = ((k + np.arange(8)) % 30 + 2).astype(np.int32)
        batch = {
            "encoder_input_tokens": np.repeat(k + 2, 8, axis=1).astype(np.int32),
            "decoder_target_tokens": targets,
            "decoder_input_tokens": np.concatenate(
                [np.zeros((16, 1), np.int32), targets[:, :-1]], 1
            ),
            "decoder_loss_weights": np.ones((16, 8), np.float32),
        }
        if step is None:
            step = _compiled(
                lambda s, b: train_step(spec, opt, LossConfig(), s, b, jax.random.PRNGKey(0)),
                state,
                batch,
            )
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    assert np.isfinite(losses).all()
    # ln(32) = 3.5 at chance
    assert np.mean(losses[:3]) > 3.0, losses
    assert np.mean(losses[-3:]) < 0.5 * np.mean(losses[:3]), losses
