"""Convert checkpoints between T5X, Hugging Face and t5x_instruct.

    # T5X (msgpack+tensorstore or orbax; a MODEL_DIR, checkpoint_<step> folder or its file)
    .venv/bin/python tools/convert_checkpoint.py t5x-to-ours --input /ckpts/t5x/flan_t5_small \
        --output /tmp/flan_small --gin_file gin/models/t5_1_1/small.gin
    # Hugging Face folder (config.json + model.safetensors / shards / pytorch_model.bin)
    .venv/bin/python tools/convert_checkpoint.py hf-to-ours --input /models/flan-t5-small \
        --output /tmp/flan_small
    # ours -> Hugging Face (safetensors + config.json for T5ForConditionalGeneration /
    # LlamaForCausalLM)
    .venv/bin/python tools/convert_checkpoint.py ours-to-hf --input /tmp/run \
        --output /tmp/run_hf --gin_file /tmp/run/model.gin

The model comes from ``--gin_file`` (plus ``--gin.KEY=VALUE`` overrides) or, for
``hf-to-ours`` without one, from the HF ``config.json``. Imports write a params-only
checkpoint ``OUTPUT/checkpoints/<step>`` (usable as INITIAL_CHECKPOINT_PATH and by eval /
infer) and ``OUTPUT/model.gin``, the model's bindings, to pass back as ``--gin_file``.
Bad input (missing files, a checkpoint of another architecture) prints one line and exits 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DIRECTIONS = ("t5x-to-ours", "hf-to-ours", "ours-to-hf")


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="tools/convert_checkpoint.py", description=__doc__.splitlines()[0]
    )
    parser.add_argument("direction", choices=DIRECTIONS)
    parser.add_argument("--input", required=True, help="checkpoint folder (or file) to read")
    parser.add_argument("--output", required=True, help="folder to write (must not hold one)")
    parser.add_argument("--gin_file", action="append", default=[], help="model gin file")
    parser.add_argument("--gin_search_paths", action="append", default=[])
    parser.add_argument("--step", type=int, default=None, help="input step (default: latest)")
    parser.add_argument(
        "--dtype", choices=("float32", "bfloat16"), default="float32", help="ours-to-hf tensors"
    )
    parser.add_argument(
        "--max_shard_gb", type=float, default=2.0, help="ours-to-hf safetensors file size"
    )
    args, rest = parser.parse_known_args(list(argv))
    for arg in rest:
        if not arg.startswith("--gin."):
            parser.error(f"unrecognised argument {arg!r} (bindings are written --gin.KEY=VALUE)")
    return args, [arg[len("--gin.") :] for arg in rest]


def model_gin(cfg: Any) -> str:
    """Gin bindings that rebuild ``cfg`` (written next to imported checkpoints)."""
    name = type(cfg).__name__
    lines = [
        "# Model of this checkpoint, written by tools/convert_checkpoint.py.",
        "import t5x_instruct.models",
        "",
        f"build_model.config = @{name}()",
    ]
    lines += [f"{name}.{f.name} = {getattr(cfg, f.name)!r}" for f in dataclasses.fields(cfg)]
    return "\n".join(lines) + "\n"


def _spec_from_gin(files: list[str], bindings: list[str], search_paths: list[str]) -> Any:
    # Run files and a run's MODEL_DIR/config.gin also bind the trainer's configurables.
    import t5x_instruct.training.loop  # noqa: F401
    from t5x_instruct.cli.gin_flags import normalise_binding
    from t5x_instruct.gin_utils import parse_gin
    from t5x_instruct.models import build_model
    from t5x_instruct.training.train_state import ModelSpec

    parse_gin(files, [normalise_binding(b) for b in bindings], search_paths, clear=True)
    return ModelSpec.create(build_model)


def _check_output_free(direction: str, output: str) -> None:
    """Fail before reading anything large if the output already holds a checkpoint."""
    from t5x_instruct.errors import UserInputError
    from t5x_instruct.training.param_checkpoints import checkpoint_steps

    taken = (
        [n for n in ("config.json", "model.safetensors") if os.path.exists(f"{output}/{n}")]
        if direction == "ours-to-hf"
        else [f"checkpoint step {s}" for s in checkpoint_steps(output)]
    )
    if taken:
        raise UserInputError(
            f"--output {output} already holds {', '.join(taken)}; choose an empty folder."
        )


def _mesh_and_rules() -> tuple[Any, Any]:
    """All local devices on the fsdp axis: parameters split, never whole on one device."""
    from t5x_instruct import partitioning

    mesh = partitioning.create_mesh(partitioning.MeshConfig(data=1, fsdp=-1))
    return mesh, partitioning.standard_logical_axis_rules()


def convert(args: argparse.Namespace, bindings: list[str]) -> str:
    """Run one conversion; returns a one-line summary."""
    import jax.numpy as jnp

    from t5x_instruct.convert.hf_export import save_hf_checkpoint
    from t5x_instruct.convert.hf_files import (
        load_hf_params,
        model_config_from_hf,
        read_hf_config,
    )
    from t5x_instruct.convert.t5x import load_t5x_params
    from t5x_instruct.errors import UserInputError
    from t5x_instruct.models import build_model
    from t5x_instruct.training.param_checkpoints import (
        resolve_checkpoint,
        restore_model_params,
        save_params,
    )
    from t5x_instruct.training.train_state import ModelSpec

    if not os.path.exists(args.input):
        raise UserInputError(f"--input {args.input} does not exist.")
    if args.direction != "hf-to-ours" and not args.gin_file:
        raise UserInputError(
            f"{args.direction} needs --gin_file with the model (e.g. "
            "gin/models/t5_1_1/small.gin): the checkpoint alone does not fix every shape."
        )
    _check_output_free(args.direction, args.output)
    if args.gin_file:
        spec = _spec_from_gin(args.gin_file, bindings, args.gin_search_paths)
    else:
        if bindings:
            raise UserInputError("--gin. overrides need a --gin_file.")
        cfg = model_config_from_hf(read_hf_config(args.input))
        spec = ModelSpec.create(lambda: build_model(cfg))
    mesh, rules = _mesh_and_rules()

    if args.direction == "ours-to-hf":
        _, step = resolve_checkpoint(args.input, args.step)
        params = restore_model_params(args.input, spec, mesh, rules, step=step)
        dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
        files = save_hf_checkpoint(
            params,
            spec.config,
            args.output,
            dtype=dtype,
            max_shard_bytes=int(args.max_shard_gb * 1024**3),
        )
        return f"wrote {len(files)} files to {args.output} from step {step} of {args.input}"

    if args.direction == "t5x-to-ours":
        params, ckpt = load_t5x_params(args.input, spec, mesh, rules, step=args.step)
        step = ckpt.step or 0
    else:
        params, step = load_hf_params(args.input, spec, mesh, rules), 0
    step_dir = save_params(args.output, params, step=step)
    with open(os.path.join(args.output, "model.gin"), "w") as f:
        f.write(model_gin(spec.config))
    return f"wrote {step_dir} ({spec.num_params() / 1e6:.2f}M parameters) and model.gin"


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("t5x_instruct").setLevel(logging.INFO)
    logging.getLogger("absl").setLevel(logging.ERROR)
    args, bindings = parse_args(sys.argv[1:] if argv is None else argv)
    from t5x_instruct.errors import UserInputError

    try:
        print(convert(args, bindings))
    except UserInputError as exc:
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
