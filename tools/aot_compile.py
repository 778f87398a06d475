"""Compile the real train step for a TPU topology on a CPU host; report memory per chip.

``libtpu`` (``pip install -e '.[tpu]'``) provides compile-only devices for any TPU slice
(``jax.experimental.topologies``), so the very step ``train`` runs (model, optimizer,
plug-ins, logical-axis sharding and, with ``attention_impl='pallas'``, the Mosaic kernels
inside ``shard_map``) is lowered with abstract inputs (no array is ever allocated) and
compiled by the TPU compiler. Its memory analysis says whether one step fits in HBM.

Example (the commands recorded in docs/benchmarks.md):
  .venv/bin/python tools/aot_compile.py --topology=v5e-256 \
      --gin_file=gin/models/decoder/7b.gin --batch_size=256 --inputs_length=1024 \
      --targets_length=1024 --mesh=1,-1,1 --parallelism=fsdp \
      --gin.DecoderConfig.attention_impl="'pallas'" --gin.REMAT_POLICY="'full'"

Gin files and ``--gin.KEY=VALUE`` bindings are read as by ``python -m t5x_instruct.train``;
``--batch_size`` / lengths default to the run's ``BATCH_SIZE`` / ``TASK_FEATURE_LENGTHS``,
``--mesh`` / ``--parallelism`` to its ``MeshConfig`` / ``standard_logical_axis_rules``.
Topologies: libtpu's ``GENERATION:SHAPE`` (``v5e:16x16``, ``v5p:4x4x4``) or a Cloud
accelerator type (``v5e-256``, ``v5litepod-256``, ``v5p-128``: v5p and v4 count
TensorCores, two per chip).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import importlib.metadata
import json
import math
import os
import re
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import jax  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402

from t5x_instruct import partitioning  # noqa: E402
from t5x_instruct.cli.gin_flags import configure, parse_args  # noqa: E402
from t5x_instruct.errors import UserInputError  # noqa: E402
from t5x_instruct.inference.model_setup import train_binding  # noqa: E402
from t5x_instruct.models import build_model, model_family  # noqa: E402
from t5x_instruct.plugins.plugin_set import PluginSet  # noqa: E402
from t5x_instruct.training import compiled_stats  # noqa: E402
from t5x_instruct.training.optimizers import learning_rate_schedule, make_optimizer  # noqa: E402
from t5x_instruct.training.state_init import make_layout  # noqa: E402
from t5x_instruct.training.step import LossConfig, train_step  # noqa: E402
from t5x_instruct.training.train_state import ModelSpec, init_train_state  # noqa: E402

# HBM per chip in GiB, from Google Cloud's TPU system-architecture pages
# (https://cloud.google.com/tpu/docs/system-architecture-tpu-vm and the per-version pages
# /tpu/docs/v4, /v5e, /v5p, /v6e, /tpu7x), as of 2026-11. The usable amount is slightly
# lower: the runtime keeps a few hundred MiB.
HBM_GIB_PER_CHIP = {"v2": 16, "v3": 32, "v4": 32, "v5e": 16, "v5p": 95, "v6e": 32, "tpu7x": 192}
# Names libtpu accepts for each generation (``v5`` is v5p), and Cloud's accelerator prefixes.
_GENERATION_ALIASES = {"v5": "v5p", "v5litepod": "v5e", "v6": "v6e"}
_LIBTPU_NAMES = {"v5p": "v5p", "v5e": "v5e", "v6e": "v6e", "v4": "v4", "v3": "v3", "v2": "v2"}
_LIBTPU_NAMES["tpu7x"] = "tpu7x"
# Generations whose accelerator type counts TensorCores (two per chip) rather than chips.
_CORES_IN_NAME = {"v2", "v3", "v4", "v5p"}
# Slice shapes by chip count (Cloud's documented single-slice shapes).
_SHAPES_2D = {4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}
_SHAPES_3D = {
    4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8",
    256: "4x8x8", 512: "8x8x8", 1024: "8x8x16", 2048: "8x16x16", 4096: "16x16x16",
}  # fmt: skip
_3D = {"v4", "v5p", "tpu7x"}
TOPOLOGY_HELP = (
    "GENERATION:SHAPE as libtpu names it (v5e:2x2, v5e:16x16, v5p:4x4x4, v4:2x2x2, v6e:8x8, "
    "tpu7x:2x2x1) or a Cloud accelerator type (v5e-256, v5litepod-16, v5p-128, v4-32, "
    f"v6e-64); generations: {', '.join(sorted(HBM_GIB_PER_CHIP))}"
)

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Topology:
    name: str  # as given
    libtpu_name: str  # what get_topology_desc is called with
    generation: str
    chips: int


def parse_topology(name: str) -> Topology:
    """``v5e:16x16`` / ``v5e-256`` -> a :class:`Topology`; one clear error otherwise."""
    text = name.strip().lower()
    accel = re.fullmatch(r"([a-z0-9]+)-(\d+)", text)
    shaped = re.fullmatch(r"([a-z0-9]+):(\d+(?:x\d+){1,2})", text)
    if not (accel or shaped):
        raise UserInputError(
            f"--topology={name!r} is not a TPU topology; expected {TOPOLOGY_HELP}."
        )
    match = accel or shaped
    assert match is not None
    generation = _GENERATION_ALIASES.get(match.group(1), match.group(1))
    if generation not in HBM_GIB_PER_CHIP:
        raise UserInputError(
            f"--topology={name!r}: unknown TPU generation {match.group(1)!r}; expected "
            f"{TOPOLOGY_HELP}."
        )
    if shaped:
        shape = shaped.group(2)
    else:
        count = int(accel.group(2))  # type: ignore[union-attr]
        chips = count // 2 if generation in _CORES_IN_NAME else count
        shapes = _SHAPES_3D if generation in _3D else _SHAPES_2D
        if chips not in shapes:
            sizes = sorted(c * (2 if generation in _CORES_IN_NAME else 1) for c in shapes)
            raise UserInputError(
                f"--topology={name!r}: no {generation} slice of that size (known sizes: "
                f"{sizes}); expected {TOPOLOGY_HELP}."
            )
        shape = shapes[chips]
    chips = math.prod(int(d) for d in shape.split("x"))
    return Topology(name, f"{_LIBTPU_NAMES[generation]}:{shape}", generation, chips)


def topology_devices(topology: Topology) -> list[Any]:
    """Compile-only devices of the slice (needs libtpu; nothing is allocated)."""
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")  # no GCE metadata server to ask
    # Compile-only use opens no chip, so other libtpu processes (a second compile, a test
    # run) need not wait for libtpu's one-process lock.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
        from jax.experimental import topologies

        desc = topologies.get_topology_desc(platform="tpu", topology_name=topology.libtpu_name)
    except (RuntimeError, ValueError) as exc:  # JaxRuntimeError is a RuntimeError
        if "libtpu" in str(exc).lower() and "not found" in str(exc).lower():
            raise UserInputError(
                "Ahead-of-time TPU compilation needs libtpu: pip install -e '.[tpu]'"
            ) from exc
        raise UserInputError(
            f"--topology={topology.name!r}: libtpu rejects {topology.libtpu_name!r} "
            f"({str(exc).splitlines()[0]}); expected {TOPOLOGY_HELP}."
        ) from exc
    return list(desc.devices)


def _parse_mesh(text: str) -> partitioning.MeshConfig:
    try:
        data, fsdp, tensor = (int(x) for x in text.split(","))
    except ValueError as exc:
        raise UserInputError(f"--mesh={text!r}: expected DATA,FSDP,TENSOR, e.g. 1,-1,4") from exc
    return partitioning.MeshConfig(data=data, fsdp=fsdp, tensor=tensor)


def abstract_batch(
    model_type: str, pack: bool, batch: int, inputs_len: int, targets_len: int
) -> dict[str, tuple[int, int]]:
    """Shapes of the model features the run's SeqIO converter produces (all int32)."""
    if model_type == "encoder_decoder":
        lengths = {"encoder": inputs_len, "decoder": targets_len}
        names = ["encoder_input_tokens"] + (["encoder_segment_ids", "encoder_positions"] * pack)
    else:
        # Prefix-LM concatenates inputs and targets; plain LM reads the targets only.
        lengths = {
            "decoder": inputs_len + targets_len if model_type == "prefix_lm" else targets_len
        }
        names = ["decoder_causal_attention"] if model_type == "prefix_lm" else []
    names += ["decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights"]
    names += ["decoder_segment_ids", "decoder_positions"] * pack
    return {n: (batch, lengths[n.split("_")[0]]) for n in names}


def memory_report(compiled: Any, hbm_gib_per_device: float) -> dict[str, Any]:
    """Per-device bytes from XLA's memory analysis (total = args + temps + outputs -
    aliased + code, :class:`compiled_stats.CompiledMemory`) and whether they fit HBM."""
    memory = compiled_stats.memory_analysis(compiled)
    if memory is None:
        raise RuntimeError("XLA gave no memory analysis for this compiled program.")
    parts = {
        "arguments": memory.argument,
        "temporaries": memory.temp,
        "outputs": memory.output,
        "aliased": memory.alias,
        "code": memory.generated_code,
    }
    out: dict[str, Any] = {f"{k}_gib": round(v / GIB, 3) for k, v in parts.items()}
    out["total_gib"] = round(memory.total / GIB, 3)
    out["bytes"] = {**parts, "total": memory.total}
    out["hbm_gib"] = hbm_gib_per_device
    out["fits"] = memory.total <= hbm_gib_per_device * GIB
    return out


def main(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--topology", required=True, help=TOPOLOGY_HELP)
    parser.add_argument("--batch_size", type=int, default=None, help="global batch")
    parser.add_argument("--inputs_length", type=int, default=None)
    parser.add_argument("--targets_length", type=int, default=None)
    parser.add_argument("--mesh", default=None, help="DATA,FSDP,TENSOR (one may be -1)")
    parser.add_argument("--parallelism", default=None, choices=("data", "fsdp", "tensor"))
    parser.add_argument("--num_microbatches", type=int, default=None)
    parser.add_argument("--output", default=None, help="append the JSON result to this file")
    args, gin_argv = parser.parse_known_args(argv)

    topology = parse_topology(args.topology)
    gin_files, gin_bindings, _ = parse_args(gin_argv, prog="tools/aot_compile.py")
    configure(gin_argv, prog="tools/aot_compile.py")
    devices = topology_devices(topology)

    plugins = PluginSet(train_binding("plugins", ()))
    spec = ModelSpec.create(plugins.build(build_model, train_binding("seed", 0)))
    config = spec.config
    if model_family(config).encoder_decoder:
        model_type = "encoder_decoder"
    else:
        objective = train_binding("decoder_objective", "prefix_lm")
        model_type = {"prefix_lm": "prefix_lm", "lm": "decoder"}[objective]
    mesh_config = (
        _parse_mesh(args.mesh)
        if args.mesh
        else train_binding("mesh_config", None) or partitioning.MeshConfig()
    )
    try:
        mesh = partitioning.create_mesh(mesh_config, devices=devices)
    except ValueError as exc:
        raise UserInputError(f"{topology.name} ({len(devices)} devices): {exc}") from exc
    if args.parallelism:
        base_rules = partitioning.standard_logical_axis_rules(args.parallelism)
    else:
        base_rules = train_binding("logical_axis_rules", None)
        base_rules = base_rules or partitioning.standard_logical_axis_rules()
    rules = plugins.axis_rules(list(base_rules))

    # Unset macros (%gin.REQUIRED) come back as placeholders: only real values count.
    batch_size = args.batch_size or _int_or_none(train_binding("batch_size", None))
    lengths = train_binding("task_feature_lengths", {})
    lengths = lengths if isinstance(lengths, Mapping) else {}
    inputs_len = args.inputs_length or lengths.get("inputs")
    targets_len = args.targets_length or lengths.get("targets")
    if not (batch_size and targets_len and (inputs_len or model_type == "decoder")):
        raise UserInputError(
            "Give --batch_size, --inputs_length and --targets_length (or bind BATCH_SIZE and "
            "TASK_FEATURE_LENGTHS in the gin files)."
        )
    num_microbatches = args.num_microbatches or train_binding("num_microbatches", 1)
    optimizer = train_binding("optimizer", None) or make_optimizer(
        learning_rate=learning_rate_schedule(), logical_axes=spec.logical_axes()
    )
    loss_config = train_binding("loss_config", None) or LossConfig()
    with tempfile.TemporaryDirectory() as model_dir:
        layout = make_layout(spec, optimizer, mesh, rules, plugins, model_dir)

    # Abstract inputs: shapes, dtypes and shardings, no data.
    aux = {name: a.abstract for name, a in layout.aux.items()}
    abstract_state = jax.eval_shape(
        lambda p, a: init_train_state(p, optimizer, layout.is_trainable, a),
        spec.abstract_params(),
        aux,
    )
    state_shardings = layout.shardings
    state = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        abstract_state,
        state_shardings,
    )
    shapes = abstract_batch(
        model_type, train_binding("pack", True), batch_size, inputs_len or 0, targets_len
    )
    batch_shardings = {k: partitioning.batch_sharding(mesh, rules, 2) for k in shapes}
    batch = {
        k: jax.ShapeDtypeStruct(shape, "int32", sharding=batch_shardings[k])
        for k, shape in shapes.items()
    }
    replicated = NamedSharding(mesh, PartitionSpec())
    rng = jax.ShapeDtypeStruct((2,), "uint32", sharding=replicated)

    def step(state, batch, rng):  # the loop's step: same function, same shardings
        with partitioning.axis_rules(mesh, rules):
            return train_step(
                spec, optimizer, loss_config, state, batch, rng,
                num_microbatches=num_microbatches, plugins=plugins,
                is_trainable=layout.is_trainable,
            )  # fmt: skip

    jitted = jax.jit(
        step,
        in_shardings=(state_shardings, batch_shardings, replicated),
        out_shardings=(state_shardings, replicated),
        donate_argnums=(0,),
    )
    t0 = time.perf_counter()
    lowered = jitted.lower(state, batch, rng)
    lower_s = time.perf_counter() - t0
    mosaic_kernels = lowered.as_text().count("tpu_custom_call")
    t0 = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t0

    hbm_per_device = HBM_GIB_PER_CHIP[topology.generation] * topology.chips / len(devices)
    result = {
        "date": datetime.date.today().isoformat(),
        "jax": jax.__version__,
        "libtpu": _version("libtpu"),
        "topology": topology.name,
        "libtpu_topology": topology.libtpu_name,
        "device_kind": devices[0].device_kind,
        "chips": topology.chips,
        "devices": len(devices),
        "mesh": dict(mesh.shape),
        "gin_files": gin_files,
        "gin_bindings": gin_bindings,
        "params_b": round(spec.num_params() / 1e9, 3),
        "attention_impl": getattr(config, "attention_impl", "?"),
        "mosaic_kernels": mosaic_kernels,
        "batch": batch_size,
        "inputs_length": inputs_len,
        "targets_length": targets_len,
        "num_microbatches": num_microbatches,
        "lower_s": round(lower_s, 1),
        "compile_s": round(compile_s, 1),
        **memory_report(compiled, hbm_per_device),
    }
    print(json.dumps(result, indent=2))
    print(
        f"{topology.name}: {result['total_gib']:.2f} GiB per device of "
        f"{hbm_per_device:g} GiB -> {'fits' if result['fits'] else 'does NOT fit'}"
    )
    if args.output:
        with open(args.output, "a", encoding="utf-8") as f:
            f.write(json.dumps(result) + "\n")
    return result


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@functools.cache
def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except UserInputError as exc:
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        sys.exit(2)
