"""Logical-axis rules, mesh shapes, and where parameters actually land on a fake 8-device mesh.

Expected placements are written out by hand from the rule tables (T5X semantics), per
parameter name, so a change to either the rules or the models' logical annotations shows up.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from t5x_instruct import partitioning
from t5x_instruct.models import DecoderConfig, T5Config, build_model
from t5x_instruct.partitioning import (
    MeshConfig,
    create_mesh,
    logical_to_mesh_axes,
    state_shardings,
)

# --------------------------------------------------------------------------- rule semantics


def test_first_matching_rule_wins() -> None:
    rules = [("embed", "fsdp"), ("embed", "tensor"), ("mlp", "tensor")]
    assert logical_to_mesh_axes(("embed", "mlp"), rules) == P("fsdp", "tensor")


def test_rule_skipped_when_its_mesh_axis_is_taken() -> None:
    # 'mlp' wants fsdp first, but 'embed' claimed it (earlier rule): next mlp rule applies.
    rules = [("embed", "fsdp"), ("mlp", "fsdp"), ("mlp", "tensor")]
    assert logical_to_mesh_axes(("mlp", "embed"), rules) == P("tensor", "fsdp")
    # With no further rule the axis stays replicated.
    assert logical_to_mesh_axes(("mlp", "embed"), rules[:2]) == P(None, "fsdp")


def test_tuple_mesh_axes_take_all_their_axes() -> None:
    rules = [("batch", ("data", "fsdp")), ("embed", "fsdp"), ("embed", None), ("length", None)]
    assert logical_to_mesh_axes(("batch", "length", "embed"), rules) == P(
        ("data", "fsdp"), None, None
    )
    # A tuple rule is skipped when any one of its axes is already used.
    rules2 = [("embed", "fsdp"), ("batch", ("data", "fsdp")), ("batch", "data")]
    assert logical_to_mesh_axes(("batch", "embed"), rules2) == P("data", "fsdp")


def test_none_rule_pins_replication_before_later_rules() -> None:
    rules = [("embed", None), ("embed", "fsdp")]
    assert logical_to_mesh_axes(("embed",), rules) == P(None)


def test_unannotated_dims_stay_replicated() -> None:
    assert logical_to_mesh_axes((None, "embed"), [("embed", "fsdp")]) == P(None, "fsdp")


def test_unknown_logical_axis_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"'embd'.*no partitioning rule"):
        logical_to_mesh_axes(("embd", "mlp"), [("embed", "fsdp"), ("mlp", None)])


def test_repeated_logical_axis_is_an_error() -> None:
    with pytest.raises(ValueError, match="repeat"):
        logical_to_mesh_axes(("embed", "embed"), [("embed", "fsdp")])


def test_additional_rules_take_precedence() -> None:
    rules = partitioning.standard_logical_axis_rules("fsdp", additional_rules=[("embed", None)])
    assert logical_to_mesh_axes(("embed", "mlp"), rules) == P(None, "fsdp")
    with pytest.raises(ValueError, match="parallelism"):
        partitioning.standard_logical_axis_rules("pipeline")


# --------------------------------------------------------------------------- mesh shapes


@pytest.mark.parametrize(
    ("config", "devices", "shape"),
    [
        (MeshConfig(), 8, (8, 1, 1)),
        (MeshConfig(data=2, fsdp=-1), 8, (2, 4, 1)),
        (MeshConfig(data=-1, tensor=4), 8, (2, 1, 4)),
        (MeshConfig(data=2, fsdp=2, tensor=2), 8, (2, 2, 2)),
        (MeshConfig(data=1, fsdp=8), 8, (1, 8, 1)),
        # Two slices of 4: data=-1 takes the 4 of a slice, times the 2 slices.
        (MeshConfig(data=-1, dcn_data=2), 8, (8, 1, 1)),
        (MeshConfig(data=1, fsdp=-1, dcn_data=2), 8, (2, 4, 1)),
    ],
)
def test_mesh_shape(config: MeshConfig, devices: int, shape: tuple[int, int, int]) -> None:
    assert config.shape(devices) == shape


@pytest.mark.parametrize(
    ("config", "match"),
    [
        (MeshConfig(data=-1, fsdp=-1), "at most one"),
        (MeshConfig(data=-1, tensor=3), "not divisible"),
        (MeshConfig(data=2, fsdp=2, tensor=1), "needs 4 devices"),
        (MeshConfig(data=4, fsdp=4), "needs 16 devices"),
        (MeshConfig(data=-1, dcn_data=3), "does not divide"),
    ],
)
def test_mesh_shape_errors(config: MeshConfig, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        config.shape(8)


def test_create_mesh_uses_every_device() -> None:
    mesh = create_mesh(MeshConfig(data=2, fsdp=-1))
    assert mesh.axis_names == ("data", "fsdp", "tensor")
    assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 1}
    assert sorted(d.id for d in mesh.devices.flat) == sorted(d.id for d in jax.devices())


# --------------------------------------------------------------------------- placements

# What each parameter is, by the last two names in its path (T5X / Llama naming).
_ATTENTION = {"query": ("embed", "heads", "kv"), "out": ("heads", "kv", "embed")}
_KV = ("embed", "kv_heads", "kv")


def expected_logical_axes(path: tuple[str, ...]) -> tuple[str, ...]:
    module, name = path[-2], path[-1]
    if name == "embedding":
        axes = ("vocab", "embed")
    elif module == "logits_dense":
        axes = ("embed", "vocab")
    elif module in _ATTENTION:
        axes = _ATTENTION[module]
    elif module in ("key", "value"):
        axes = _KV
    elif module in ("wi_0", "wi_1"):
        axes = ("embed", "mlp")
    elif module == "wo":
        axes = ("mlp", "embed")
    elif name == "scale":
        axes = ("embed",)
    elif name == "rel_embedding":
        axes = ("heads", "relpos_buckets")
    else:
        raise AssertionError(f"unexpected parameter {'/'.join(path)}")
    return ("layers", *axes) if "block" in path else axes


# The rule tables of partitioning.py, resolved by hand: logical axes -> mesh axes per dim.
EXPECTED_SPECS: dict[str, dict[tuple[str, ...], tuple]] = {
    "data": {},  # everything replicated
    "fsdp": {
        ("vocab", "embed"): (None, "fsdp"),
        ("embed", "vocab"): ("fsdp", None),
        ("embed", "heads", "kv"): ("fsdp", None, None),
        ("embed", "kv_heads", "kv"): ("fsdp", None, None),
        ("heads", "kv", "embed"): (None, None, "fsdp"),
        ("embed", "mlp"): ("fsdp", None),
        ("mlp", "embed"): (None, "fsdp"),
        ("embed",): ("fsdp",),
        ("heads", "relpos_buckets"): (None, None),
    },
    "tensor": {
        ("vocab", "embed"): ("tensor", "fsdp"),
        ("embed", "vocab"): ("fsdp", "tensor"),
        ("embed", "heads", "kv"): ("fsdp", "tensor", None),
        ("embed", "kv_heads", "kv"): ("fsdp", "tensor", None),
        ("heads", "kv", "embed"): ("tensor", None, "fsdp"),
        ("embed", "mlp"): ("fsdp", "tensor"),
        ("mlp", "embed"): ("tensor", "fsdp"),
        ("embed",): ("fsdp",),
        ("heads", "relpos_buckets"): ("tensor", None),
    },
}

RULES = {
    "data": partitioning.data_parallel_rules,
    "fsdp": partitioning.fsdp_rules,
    "tensor": partitioning.tensor_parallel_rules,
}

LAYOUTS = [
    pytest.param("data", MeshConfig(data=8), id="dp8"),
    pytest.param("fsdp", MeshConfig(data=1, fsdp=8), id="fsdp8"),
    pytest.param("fsdp", MeshConfig(data=2, fsdp=4), id="dp2-fsdp4"),
    pytest.param("tensor", MeshConfig(data=2, tensor=4), id="dp2-tp4"),
    pytest.param("tensor", MeshConfig(data=2, fsdp=2, tensor=2), id="dp2-fsdp2-tp2"),
]

# Every sharded size divides 8: emb 32, vocab 256, mlp 64, (kv_)heads 4 or 8.
T5_TINY = T5Config(
    vocab_size=256,
    emb_dim=32,
    num_heads=4,
    head_dim=8,
    mlp_dim=64,
    num_encoder_layers=2,
    num_decoder_layers=2,
)
DECODER_TINY = DecoderConfig(
    vocab_size=256,
    emb_dim=32,
    num_heads=8,
    num_kv_heads=4,
    head_dim=8,
    mlp_dim=64,
    num_layers=2,
)


@functools.cache
def _tiny_params(family: str, scan: bool) -> nnx.State:
    base = T5_TINY if family == "t5" else DECODER_TINY
    model = build_model(dataclasses.replace(base, scan_layers=scan))
    return nnx.state(model, nnx.Param)


def expected_spec(layout: str, logical: tuple[str, ...]) -> P:
    scanned = logical[0] == "layers"
    core = logical[1:] if scanned else logical
    table = EXPECTED_SPECS[layout]
    mesh_axes = table[core] if table else (None,) * len(core)
    return P(*(((None,) if scanned else ()) + tuple(mesh_axes)))


def _path_names(path: tuple) -> tuple[str, ...]:
    return tuple(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


@pytest.mark.parametrize("scan", [False, True], ids=["loop", "scan"])
@pytest.mark.parametrize("family", ["t5", "decoder"])
@pytest.mark.parametrize(("layout", "mesh_config"), LAYOUTS)
def test_parameters_placed_as_rules_say(
    layout: str, mesh_config: MeshConfig, family: str, scan: bool
) -> None:
    mesh = create_mesh(mesh_config)
    rules = RULES[layout]()
    params = _tiny_params(family, scan)
    placed = jax.device_put(params, state_shardings(params, mesh, rules))

    leaves = jax.tree.leaves_with_path(placed, is_leaf=lambda x: isinstance(x, nnx.Variable))
    assert len(leaves) > 10
    for path, variable in leaves:
        names = _path_names(path)
        logical = expected_logical_axes(names)
        assert variable.get_metadata()["logical_axes"] == logical, names
        array = variable.get_value()
        spec = expected_spec(layout, logical)
        assert array.sharding.spec == spec, (names, array.sharding.spec, spec)
        # Each device holds the global shape divided by the mesh axes of that dimension.
        per_dim = []
        for size, entry in zip(array.shape, spec):
            axes = () if entry is None else (entry,) if isinstance(entry, str) else entry
            per_dim.append(size // math.prod(mesh.shape[a] for a in axes))
        shards = array.addressable_shards
        assert len(shards) == 8
        assert all(s.data.shape == tuple(per_dim) for s in shards), names
        # And the pieces put back together are the original values.
        original = params
        for n in names:
            original = original[int(n) if n.isdigit() else n]
        np.testing.assert_array_equal(np.asarray(array), np.asarray(original.get_value()))


def test_batch_sharding_splits_batch_over_data_and_fsdp() -> None:
    mesh = create_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    batch = {"tokens": np.arange(8 * 6, dtype=np.int32).reshape(8, 6)}
    sharded = partitioning.shard_batch(batch, mesh, partitioning.tensor_parallel_rules())
    tokens = sharded["tokens"]
    assert tokens.sharding.spec == P(("data", "fsdp"), None)
    assert {s.data.shape for s in tokens.addressable_shards} == {(2, 6)}
    np.testing.assert_array_equal(np.asarray(tokens), batch["tokens"])


def test_logical_constraint_only_inside_axis_rules() -> None:
    mesh = create_mesh(MeshConfig(data=2, tensor=4))
    rules = partitioning.tensor_parallel_rules()

    def f(x: jax.Array) -> jax.Array:
        return partitioning.with_logical_constraint(x * 2, ("batch", "length", "mlp"))

    x = jnp.ones((8, 4, 16))
    assert jax.jit(f)(x).sharding.is_fully_replicated
    # The rules are read while tracing, so this needs a fresh trace (jit caches per function).
    with partitioning.axis_rules(mesh, rules):
        out = jax.jit(lambda x: f(x))(x)
    expected = NamedSharding(mesh, P(("data", "fsdp"), None, "tensor"))
    assert out.sharding.is_equivalent_to(expected, x.ndim)
    assert {s.data.shape for s in out.addressable_shards} == {(4, 4, 4)}
