"""T5X's Adafactor as an optax transformation, factored by the parameters' logical axes.

The update of one parameter ``p`` with gradient ``g`` at step ``t`` (0 for the first update):

    decay  = 1 - (t - step_offset + 1) ** -decay_rate          (0 at t = step_offset)
    g2     = g**2 + epsilon1
    factored:   R = decay R + (1 - decay) mean_cols(g2),   C = decay C + (1 - decay) mean_rows(g2)
                y = g / sqrt(R / mean_rows(R)) / sqrt(C)
    otherwise:  V = decay V + (1 - decay) g2,   y = g / sqrt(V)
    y     /= max(1, rms(y) / clipping_threshold)
    step   = lr * max(rms(p), epsilon2)   (or lr alone without multiply_by_parameter_scale)
    m      = beta1 m + (1 - beta1) step y  (only with beta1); the update is -m, else -step y
    p_new  = p - update - weight_decay_rate * p

``rms`` and the parameter scale average over every dimension except *batch* ones.

Which dimensions are rows and columns comes from the parameter's logical axis names, with
T5X's ``standard_logical_factor_rules`` (``embed`` a row; ``vocab``, ``mlp``, ``heads``,
``kv`` columns; ``layers`` a batch axis; ``relpos_buckets`` never factored). T5X's T5 stores
attention kernels flattened, ``[embed, heads*kv]``, and factors every parameter of rank <= 2
with its heuristic: the two dims are factored when the smaller is at least
``min_dim_size_to_factor`` (which is the row makes no difference to the update). Our kernels
keep ``[embed, heads, kv]``, so a rank >= 3 parameter is grouped into its row dims and its
column dims first and then gets the same test on the grouped sizes: the updates equal T5X's
on its flattened kernels. A ``layers`` axis (``lax.scan``) is a batch of independent
parameters, so a scanned model updates exactly like the unscanned one.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import gin
import jax
import jax.numpy as jnp
import optax

from t5x_instruct.errors import UserInputError

log = logging.getLogger(__name__)

ROW, COLUMN, BATCH, NONE = "row", "column", "batch", "none"
_FACTOR_NAMES = {
    "row": ROW,
    "col": COLUMN,
    "column": COLUMN,
    "batch": BATCH,
    "none": NONE,
    "unfactorized": NONE,
}

LogicalAxes = tuple[str | None, ...]


def standard_logical_factor_rules() -> dict[str, str]:
    """T5X's rules for its logical axis names, plus ours (``kv_heads``, plug-in axes)."""
    return {
        "vocab": COLUMN,
        "embed": ROW,
        "mlp": COLUMN,
        "heads": COLUMN,
        "kv_heads": COLUMN,
        "kv": COLUMN,
        "joined_kv": COLUMN,
        "relpos_buckets": NONE,
        "layers": BATCH,
        "stack": BATCH,
        "prompt": NONE,
        "prompt_tasks": BATCH,
    }


@dataclasses.dataclass(frozen=True)
class Factoring:
    """How one parameter's second moment is kept.

    ``rows`` / ``cols``: the dims averaged away by ``v_col`` / ``v_row`` (both empty when
    the parameter keeps a full ``v``); ``batch``: dims every statistic keeps.
    """

    ndim: int
    batch: tuple[int, ...] = ()
    rows: tuple[int, ...] = ()
    cols: tuple[int, ...] = ()

    @property
    def factored(self) -> bool:
        return bool(self.rows) and bool(self.cols)

    @property
    def averaging(self) -> tuple[int, ...]:
        return tuple(d for d in range(self.ndim) if d not in self.batch)


def _drop(shape: tuple[int, ...], dims: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(s for d, s in enumerate(shape) if d not in dims)


def _heuristic(
    shape: tuple[int, ...], dims: tuple[int, ...], batch: tuple[int, ...], min_dim: int
) -> Factoring:
    """T5X's rank <= 2 rule over ``dims``: row = second largest, column = largest."""
    ndim = len(shape)
    if len(dims) < 2:
        return Factoring(ndim, batch)
    ordered = sorted(dims, key=lambda d: shape[d])  # stable: ties keep their order
    row, col = ordered[-2], ordered[-1]
    if shape[row] < min_dim:
        return Factoring(ndim, batch)
    return Factoring(ndim, batch, (row,), (col,))


def factoring_for(
    path: str,
    shape: tuple[int, ...],
    axes: LogicalAxes | None,
    *,
    rules: Mapping[str, str],
    factored: bool = True,
    min_dim_size_to_factor: int = 128,
) -> Factoring:
    """The factoring of the parameter at ``path`` (see the module docstring)."""
    ndim = len(shape)
    if axes is None:
        # No names: T5X's heuristic, over the two largest dims whatever the rank.
        if not factored:
            return Factoring(ndim)
        return _heuristic(shape, tuple(range(ndim)), (), min_dim_size_to_factor)
    if len(axes) != ndim:
        raise ValueError(f"{path}: logical axes {axes} do not match shape {shape}")
    kinds = []
    for name in axes:
        if name is None:
            kinds.append(NONE)
        elif name in rules:
            kinds.append(_FACTOR_NAMES[rules[name]])
        elif ndim <= 2:
            kinds.append(NONE)  # rank <= 2 takes the heuristic; the name is not needed
        else:
            raise UserInputError(
                f"Adafactor has no factor rule for logical axis {name!r} of {path} {axes}: "
                f"bind adafactor.logical_factor_rules = {{{name!r}: 'row'|'column'|'batch'|"
                "'none'}."
            )
    batch = tuple(d for d, k in enumerate(kinds) if k == BATCH)
    rest = tuple(d for d in range(ndim) if d not in batch)
    if not factored:
        return Factoring(ndim, batch)
    if len(rest) <= 2:
        return _heuristic(shape, rest, batch, min_dim_size_to_factor)
    rows = tuple(d for d in rest if kinds[d] == ROW)
    cols = tuple(d for d in rest if kinds[d] == COLUMN)
    if rows and cols and len(rows) + len(cols) < len(rest):
        raise UserInputError(
            f"Adafactor factor rules for {path} {axes} give rows, columns and unfactored "
            "dims at once (T5X: 'Incomplete adafactor spec'): bind "
            "adafactor.logical_factor_rules so that every dim is a row or a column, or none is."
        )
    if not (rows and cols):
        return Factoring(ndim, batch)
    row_size = math.prod(shape[d] for d in rows)
    col_size = math.prod(shape[d] for d in cols)
    if min(row_size, col_size) < min_dim_size_to_factor:
        return Factoring(ndim, batch)
    return Factoring(ndim, batch, rows, cols)


class AdafactorState(NamedTuple):
    """Trees shaped like the parameters; ``(1,)`` placeholders where a slot is unused."""

    count: jax.Array
    v_row: Any
    v_col: Any
    v: Any
    m: Any  # None without momentum


def _key_name(key: Any) -> str:
    for attr in ("key", "idx", "name"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _path_string(path: tuple) -> str:
    return "/".join(_key_name(k) for k in path)


def flatten_logical_axes(tree: Mapping[Any, Any], prefix: str = "") -> dict[str, LogicalAxes]:
    """``{'decoder/layers/0/mlp/wi_0/kernel': ('embed', 'mlp'), ...}`` from a nested dict."""
    out: dict[str, LogicalAxes] = {}
    for key, value in tree.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flatten_logical_axes(value, name))
        else:
            out[name] = tuple(value)
    return out


@gin.configurable(denylist=["learning_rate", "logical_axes"])
def adafactor(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    *,
    logical_axes: Mapping[str, Any] | None = None,
    factored: bool = True,
    multiply_by_parameter_scale: bool = True,
    beta1: float | None = None,
    decay_rate: float = 0.8,
    step_offset: int = 0,
    clipping_threshold: float | None = 1.0,
    weight_decay_rate: float | None = None,
    weight_decay_rate_lr_exponent: float | None = None,
    min_dim_size_to_factor: int = 128,
    epsilon1: float = 1e-30,
    epsilon2: float = 1e-3,
    max_parameter_scale: float | None = None,
    momentum_dtype: str = "float32",
    logical_factor_rules: Mapping[str, str] | None = None,
) -> optax.GradientTransformation:
    """T5X's Adafactor (defaults: T5X's, as its T5 v1.1 gin files use it).

    ``logical_axes``: the model's logical axis names (``ModelSpec.logical_axes()``), a nested
    dict keyed like the parameters; ``make_optimizer`` passes them. Without them, every
    parameter takes T5X's two-largest-dims heuristic. ``logical_factor_rules`` add to (and
    override) :func:`standard_logical_factor_rules`, values ``'row'``, ``'column'``,
    ``'batch'`` or ``'none'``. ``weight_decay_rate`` is decoupled and not scaled by the
    learning rate unless ``weight_decay_rate_lr_exponent`` is set (T5X's semantics).
    ``step_offset``: the step the second-moment decay schedule restarts from (T5X uses it to
    fine-tune from a pre-training step; our optimizer count starts at 0 on every warm start).
    """
    _validate(
        decay_rate=decay_rate,
        step_offset=step_offset,
        clipping_threshold=clipping_threshold,
        beta1=beta1,
        min_dim_size_to_factor=min_dim_size_to_factor,
    )
    rules = dict(standard_logical_factor_rules())
    for name, kind in (logical_factor_rules or {}).items():
        if str(kind).lower() not in _FACTOR_NAMES:
            raise UserInputError(
                f"adafactor.logical_factor_rules[{name!r}]={kind!r}: expected 'row', "
                "'column', 'batch' or 'none'."
            )
        rules[name] = str(kind).lower()
    flat_axes = flatten_logical_axes(logical_axes) if logical_axes is not None else None
    m_dtype = jnp.dtype(momentum_dtype)
    warned: set[str] = set()

    def factorings(paths_and_leaves: list[tuple[tuple, Any]]) -> list[Factoring]:
        out = []
        for path, leaf in paths_and_leaves:
            name = _path_string(path)
            axes = None
            if flat_axes is None and leaf.ndim >= 3 and "" not in warned:
                warned.add("")
                log.warning(
                    "Adafactor without logical axes: rank >= 3 parameters are factored over "
                    "their two largest dims, not by T5X's rules (pass logical_axes)."
                )
            if flat_axes is not None:
                axes = flat_axes.get(name)
                if axes is None and name not in warned:
                    warned.add(name)
                    log.warning("Adafactor: no logical axes for %s; heuristic factoring", name)
            factoring = factoring_for(
                name,
                tuple(leaf.shape),
                axes,
                rules=rules,
                factored=factored,
                min_dim_size_to_factor=min_dim_size_to_factor,
            )
            out.append(factoring)
        return out

    def placeholder() -> jax.Array:
        return jnp.zeros((1,), jnp.float32)

    def init(params: Any) -> AdafactorState:
        with_path, treedef = jax.tree_util.tree_flatten_with_path(params)
        v_row, v_col, v = [], [], []
        for f, (_, p) in zip(factorings(with_path), with_path):
            if f.factored:
                v_row.append(jnp.zeros(_drop(p.shape, f.cols), jnp.float32))
                v_col.append(jnp.zeros(_drop(p.shape, f.rows), jnp.float32))
                v.append(placeholder())
            else:
                v_row.append(placeholder())
                v_col.append(placeholder())
                v.append(jnp.zeros(p.shape, jnp.float32))
        m = None
        if beta1 is not None:
            m = treedef.unflatten([jnp.zeros(p.shape, m_dtype) for _, p in with_path])
        unflat = treedef.unflatten
        return AdafactorState(jnp.zeros((), jnp.int32), unflat(v_row), unflat(v_col), unflat(v), m)

    def update(
        updates: Any, state: AdafactorState, params: Any | None = None
    ) -> tuple[Any, AdafactorState]:
        if params is None:
            raise ValueError("adafactor needs params in update() (parameter scale, decay)")
        count = state.count
        lr = learning_rate(count) if callable(learning_rate) else learning_rate
        t = (count - step_offset).astype(jnp.float32) + 1.0
        decay = 1.0 - t ** (-decay_rate)
        wd = weight_decay_rate
        if weight_decay_rate_lr_exponent:
            wd = (weight_decay_rate or 1.0) * lr**weight_decay_rate_lr_exponent

        def one(f: Factoring, g: jax.Array, p: jax.Array, vr: Any, vc: Any, v: Any, m: Any):
            g = g.astype(jnp.float32)
            p32 = p.astype(jnp.float32)
            g2 = g * g + epsilon1
            if f.factored:
                vr = decay * vr + (1.0 - decay) * jnp.mean(g2, axis=f.cols)
                vc = decay * vc + (1.0 - decay) * jnp.mean(g2, axis=f.rows)
                kept = [d for d in range(f.ndim) if d not in f.cols]  # the dims of vr
                rows_in_vr = tuple(kept.index(d) for d in f.rows)
                r = vr / jnp.mean(vr, axis=rows_in_vr, keepdims=True)
                y = (
                    g
                    * jax.lax.rsqrt(jnp.expand_dims(r, f.cols))
                    * jax.lax.rsqrt(jnp.expand_dims(vc, f.rows))
                )
            else:
                v = decay * v + (1.0 - decay) * g2
                y = g * jax.lax.rsqrt(v)
            avg = f.averaging
            if clipping_threshold is not None:
                rms_y = jnp.sqrt(jnp.mean(y * y, axis=avg, keepdims=True))
                y = y / jnp.maximum(1.0, rms_y / clipping_threshold)
            scale = lr
            if multiply_by_parameter_scale:
                rms_p = jnp.sqrt(jnp.mean(p32 * p32, axis=avg, keepdims=True))
                p_scale = jnp.maximum(rms_p, epsilon2)
                if max_parameter_scale is not None:
                    p_scale = jnp.minimum(p_scale, max_parameter_scale)
                scale = scale * p_scale
            step = scale * y
            if beta1 is not None:
                m = beta1 * m.astype(jnp.float32) + (1.0 - beta1) * step
                step = m
                m = m.astype(m_dtype)
            delta = -step
            if wd is not None:
                delta = delta - wd * p32
            return delta.astype(p.dtype), vr, vc, v, m

        with_path, treedef = jax.tree_util.tree_flatten_with_path(updates)
        flat = lambda tree: treedef.flatten_up_to(tree)
        ms = flat(state.m) if beta1 is not None else [None] * len(with_path)
        results = [
            one(f, g, p, vr, vc, v, m)
            for f, (_, g), p, vr, vc, v, m in zip(
                factorings(with_path),
                with_path,
                flat(params),
                flat(state.v_row),
                flat(state.v_col),
                flat(state.v),
                ms,
            )
        ]
        column = lambda i: treedef.unflatten([r[i] for r in results])
        new_state = AdafactorState(
            optax.safe_increment(count),
            column(1),
            column(2),
            column(3),
            column(4) if beta1 is not None else None,
        )
        return column(0), new_state

    return optax.GradientTransformation(init, update)


def _validate(**settings: Any) -> None:
    def bad(name: str, why: str) -> UserInputError:
        return UserInputError(f"adafactor.{name}={settings[name]!r}: {why}.")

    if settings["decay_rate"] <= 0:
        raise bad("decay_rate", "must be > 0 (T5X: 0.8)")
    if settings["step_offset"] < 0:
        raise bad("step_offset", "must be >= 0")
    threshold = settings["clipping_threshold"]
    if threshold is not None and threshold <= 0:
        raise bad("clipping_threshold", "must be > 0 or None (T5X: 1.0)")
    beta1 = settings["beta1"]
    if beta1 is not None and not 0.0 <= beta1 < 1.0:
        raise bad("beta1", "must be in [0, 1) or None")
    if settings["min_dim_size_to_factor"] < 1:
        raise bad("min_dim_size_to_factor", "must be >= 1 (T5X: 128)")


def state_bytes(state: Any) -> int:
    """Bytes held by an optimizer state (or its abstract ``eval_shape``)."""
    return sum(int(x.size) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(state))
