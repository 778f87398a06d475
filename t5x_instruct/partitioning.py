"""Device meshes and logical-axis partitioning (T5X semantics, jit + NamedSharding).

Every parameter carries a tuple of *logical* axis names (``('embed', 'mlp')``). A list of
rules maps logical names to *mesh* axes; the first rule for a name whose mesh axis is still
unused in that array wins (exactly T5X's / flax.linen's ``logical_to_mesh_axes``). Changing
the rules in gin turns a data-parallel run into FSDP or tensor parallelism without touching
model code.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import logging
import math
from collections.abc import Iterator, Sequence
from typing import Any

import gin
import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from t5x_instruct.config_validation import check_field_types

log = logging.getLogger(__name__)

MESH_AXES = ("data", "fsdp", "tensor")
LOGICAL_AXES_KEY = "logical_axes"

MeshAxes = str | tuple[str, ...] | None
AxisRules = Sequence[tuple[str, MeshAxes]]


# --------------------------------------------------------------------------- rules


def data_parallel_rules() -> list[tuple[str, MeshAxes]]:
    """Batch split across every device; parameters replicated."""
    return [("batch", ("data", "fsdp"))] + [(name, None) for name in _PARAM_AXES]


def fsdp_rules() -> list[tuple[str, MeshAxes]]:
    """Batch split across data x fsdp; parameters sharded over fsdp on their embed axis.

    ``vocab`` and ``mlp`` fall back to fsdp where ``embed`` is absent (T5X's 2-D parameter
    partitioning). ``heads`` never does: the only such parameter is the small relative-bias
    table, and head counts such as T5 v1.1's 6 or 12 do not divide 8 devices.
    """
    return [
        ("batch", ("data", "fsdp")),
        ("embed", "fsdp"),
        ("vocab", "fsdp"),
        ("mlp", "fsdp"),
    ] + [(name, None) for name in _PARAM_AXES]


def tensor_parallel_rules() -> list[tuple[str, MeshAxes]]:
    """Megatron-style: heads / mlp / vocab split over ``tensor``, batch over data x fsdp."""
    return [
        ("batch", ("data", "fsdp")),
        ("vocab", "tensor"),
        ("mlp", "tensor"),
        ("heads", "tensor"),
        ("kv_heads", "tensor"),
        ("embed", "fsdp"),
    ] + [(name, None) for name in _PARAM_AXES]


# Every logical name used by the models; rules above end with a catch-all `None` for each.
_PARAM_AXES = (
    "vocab",
    "embed",
    "mlp",
    "heads",
    "kv_heads",
    "kv",
    "relpos_buckets",
    "layers",
    "length",
    "kv_length",
    "prompt",
)


@gin.configurable
def standard_logical_axis_rules(
    parallelism: str = "fsdp",
    additional_rules: AxisRules = (),
) -> list[tuple[str, MeshAxes]]:
    """The rule set for a named layout; ``additional_rules`` take precedence (T5X behaviour)."""
    presets = {
        "data": data_parallel_rules,
        "fsdp": fsdp_rules,
        "tensor": tensor_parallel_rules,
    }
    if parallelism not in presets:
        raise ValueError(
            f"standard_logical_axis_rules.parallelism={parallelism!r}: expected one of "
            f"{sorted(presets)}"
        )
    return list(additional_rules) + presets[parallelism]()


def logical_to_mesh_axes(logical_axes: Sequence[str | None], rules: AxisRules) -> PartitionSpec:
    """Resolve logical names to a PartitionSpec: first unused rule per axis wins.

    Unlike flax.linen, a logical name with no rule at all is an error: a typo in the rules
    must not silently replicate a 7B embedding on every chip.
    """
    if len(set(a for a in logical_axes if a is not None)) != len(
        [a for a in logical_axes if a is not None]
    ):
        raise ValueError(f"Logical axes {tuple(logical_axes)} repeat a name.")
    known = {name for name, _ in rules}
    for name in logical_axes:
        if name is not None and name not in known:
            raise ValueError(
                f"Logical axis {name!r} (in {tuple(logical_axes)}) has no partitioning rule; "
                f"add one to the rules (known: {sorted(known)})."
            )
    unassigned = object()
    result: list[Any] = [unassigned] * len(logical_axes)
    used: set[str] = set()
    for rule_name, mesh_axes in rules:
        if rule_name not in logical_axes:
            continue
        pos = list(logical_axes).index(rule_name)
        if result[pos] is not unassigned:
            continue
        flat = (
            () if mesh_axes is None else (mesh_axes,) if isinstance(mesh_axes, str) else mesh_axes
        )
        if any(axis in used for axis in flat):
            continue
        result[pos] = mesh_axes
        used.update(flat)
    return PartitionSpec(*[None if r is unassigned else r for r in result])


# --------------------------------------------------------------------------- meshes


@gin.configurable
@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Shape of the ``(data, fsdp, tensor)`` mesh; one entry may be -1 to take what is left.

    ``dcn_*`` give the split across slices/hosts for multi-slice TPU pods (hybrid mesh);
    leave them at 1 on a single slice or GPU host.
    """

    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    dcn_data: int = 1
    dcn_fsdp: int = 1
    dcn_tensor: int = 1
    axis_type: str = "auto"

    def __post_init__(self) -> None:
        check_field_types(self)  # `MeshConfig.fsdp='8'` → one error naming the binding

    def shape(self, num_devices: int) -> tuple[int, int, int]:
        ici = [self.data, self.fsdp, self.tensor]
        dcn = [self.dcn_data, self.dcn_fsdp, self.dcn_tensor]
        total_dcn = math.prod(dcn)
        if num_devices % total_dcn:
            raise ValueError(f"MeshConfig dcn shape {dcn} does not divide {num_devices} devices.")
        per_slice = num_devices // total_dcn
        if ici.count(-1) > 1:
            raise ValueError(f"MeshConfig: at most one of data/fsdp/tensor may be -1, got {ici}.")
        known = math.prod(d for d in ici if d != -1)
        if -1 in ici:
            if per_slice % known:
                raise ValueError(
                    f"MeshConfig{tuple(ici)}: {per_slice} devices per slice are not divisible "
                    f"by {known}."
                )
            ici[ici.index(-1)] = per_slice // known
        if math.prod(ici) != per_slice:
            from t5x_instruct.errors import UserInputError

            raise UserInputError(
                f"MeshConfig(data={ici[0]}, fsdp={ici[1]}, tensor={ici[2]}) needs "
                f"{math.prod(ici) * total_dcn} devices but {num_devices} are available (on "
                "several hosts: every process's devices together); set --gin.MeshConfig.* so "
                "the product matches, or one of them to -1."
            )
        return tuple(i * d for i, d in zip(ici, dcn))  # type: ignore[return-value]


def create_mesh(config: MeshConfig | None = None, devices: Sequence[Any] | None = None) -> Mesh:
    """A ``(data, fsdp, tensor)`` mesh over all (or the given) devices, multi-host aware."""
    config = config or MeshConfig()
    devices = list(devices) if devices is not None else jax.devices()
    shape = config.shape(len(devices))
    axis_type = {"auto": AxisType.Auto, "explicit": AxisType.Explicit}[config.axis_type]
    dcn = (config.dcn_data, config.dcn_fsdp, config.dcn_tensor)
    if math.prod(dcn) > 1:
        from jax.experimental import mesh_utils

        ici = tuple(s // d for s, d in zip(shape, dcn))
        device_array = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices=devices)
    else:
        try:
            from jax.experimental import mesh_utils

            device_array = mesh_utils.create_device_mesh(shape, devices=devices)
        except (ValueError, NotImplementedError, AssertionError):
            device_array = np.asarray(devices).reshape(shape)
    return Mesh(device_array, MESH_AXES, axis_types=(axis_type,) * len(MESH_AXES))


# --------------------------------------------------------------------------- shardings


def param_logical_axes(variable: nnx.Variable) -> tuple[str | None, ...]:
    metadata = variable.get_metadata()
    axes = metadata.get(LOGICAL_AXES_KEY)
    if axes is None:
        ndim = np.ndim(variable.get_value()) if hasattr(variable, "get_value") else variable.ndim
        return (None,) * ndim
    return tuple(axes)


def _is_variable(x: Any) -> bool:
    return isinstance(x, nnx.Variable)


def logical_partition_specs(state: Any) -> Any:
    """Map each Variable leaf of an nnx State to its tuple of logical axis names."""
    return jax.tree.map(
        lambda v: param_logical_axes(v) if _is_variable(v) else None, state, is_leaf=_is_variable
    )


def fit_to_shape(
    spec: PartitionSpec,
    shape: Sequence[int],
    mesh: Mesh,
    logical_axes: Sequence[str | None] | None = None,
) -> PartitionSpec:
    """``spec`` with every dimension its mesh axes do not divide replicated instead.

    E.g. a GQA model's 4 KV heads on ``tensor=8``: the KV projections and K/V activations
    keep the whole KV-head dimension on every tensor shard (the query heads stay split; the
    attention kernels slice the KV head each query shard needs). Logged once per case.
    """
    entries = list(spec) + [None] * (len(shape) - len(spec))
    fitted = []
    for dim, (size, axes) in enumerate(zip(shape, entries)):
        flat = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
        ways = math.prod(mesh.shape[a] for a in flat)
        if ways > 1 and size % ways:
            name = logical_axes[dim] if logical_axes else f"dimension {dim}"
            key = (name, size, flat)
            if key not in _replicated_warned:
                _replicated_warned.add(key)
                log.warning(
                    "Logical axis %r of size %d does not split %d ways over mesh axes %s: "
                    "replicated instead (shape %s).", name, size, ways, flat, tuple(shape),
                )  # fmt: skip
            axes = None
        fitted.append(axes)
    return PartitionSpec(*fitted)


_replicated_warned: set[tuple] = set()


def state_shardings(state: Any, mesh: Mesh, rules: AxisRules) -> Any:
    """NamedShardings for an nnx State (same tree, Variables replaced by their sharding);
    dimensions their mesh axes do not divide are replicated (:func:`fit_to_shape`)."""

    def to_sharding(v: Any) -> NamedSharding:
        axes = param_logical_axes(v) if _is_variable(v) else (None,) * np.ndim(v)
        spec = logical_to_mesh_axes(axes, rules)
        value = v.get_value() if _is_variable(v) else v
        shape = tuple(getattr(value, "shape", np.shape(value)))
        return NamedSharding(mesh, fit_to_shape(spec, shape, mesh, axes))

    return jax.tree.map(to_sharding, state, is_leaf=_is_variable)


def batch_sharding(mesh: Mesh, rules: AxisRules, ndim: int = 2) -> NamedSharding:
    """Sharding of a ``[batch, length, ...]`` input array."""
    axes = ("batch",) + (None,) * (ndim - 1)
    return NamedSharding(mesh, logical_to_mesh_axes(axes, rules))


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh, rules: AxisRules) -> dict[str, jax.Array]:
    """Turn this process's slice of a batch into global arrays (works on 1 or many hosts)."""
    out = {}
    for name, local in batch.items():
        sharding = batch_sharding(mesh, rules, np.ndim(local))
        global_shape = (local.shape[0] * jax.process_count(), *local.shape[1:])
        out[name] = jax.make_array_from_process_local_data(sharding, local, global_shape)
    return out


# --------------------------------------------------------------------------- activations

_ACTIVE: contextvars.ContextVar[tuple[Mesh, tuple] | None] = contextvars.ContextVar(
    "t5x_instruct_axis_rules", default=None
)


@contextlib.contextmanager
def axis_rules(mesh: Mesh, rules: AxisRules) -> Iterator[None]:
    """Within this context (while tracing), models constrain activations by logical names."""
    token = _ACTIVE.set((mesh, tuple(rules)))
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def active_axis_rules() -> tuple[Mesh, tuple] | None:
    """``(mesh, rules)`` of the enclosing :func:`axis_rules`, else None.

    Pallas kernels read it to ``shard_map`` themselves over the layout being traced.
    """
    return _ACTIVE.get()


def with_logical_constraint(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
    """``with_sharding_constraint`` by logical names; a no-op outside :func:`axis_rules`."""
    active = _ACTIVE.get()
    if active is None:
        return x
    mesh, rules = active
    spec = fit_to_shape(logical_to_mesh_axes(logical_axes, rules), x.shape, mesh, logical_axes)
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))
