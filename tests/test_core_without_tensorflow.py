"""The core (models, layers, kernels, partitioning, decoding, ...) must not need TensorFlow.

Serving, conversion and kernels work run in environments without TensorFlow / SeqIO, so a
fresh interpreter that refuses to import them must still import every core module and run a
model. Core modules are found by walking the package, so new ones are covered automatically:
everything except the ``t5x_instruct.data`` subpackage and modules whose docstring declares
them part of the data layer with the marker ``DATA_LAYER_MARKER``.
"""

from __future__ import annotations

import ast
import json
import os
import pkgutil
import subprocess
import sys
import textwrap
from pathlib import Path

from helpers.xla_flags import xla_flags

import t5x_instruct

BLOCKED = ("tensorflow", "seqio", "tensorflow_datasets", "tensorflow_text")
DATA_PACKAGE = "t5x_instruct.data"
# A module that (transitively) imports seqio/TensorFlow says so in its docstring, e.g.
# """Training entry point. Data-layer module: imports seqio."""
DATA_LAYER_MARKER = "data-layer module"


def _declares_data_layer(path: Path) -> bool:
    docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    return DATA_LAYER_MARKER in docstring.lower()


def core_modules() -> list[str]:
    """Every module of the package outside the data layer, found without importing any."""
    found = []

    def walk(paths: list[str], prefix: str) -> None:
        for info in pkgutil.iter_modules(paths, prefix):
            if info.name == DATA_PACKAGE or info.name.startswith(DATA_PACKAGE + "."):
                continue
            location = Path(info.module_finder.path) / info.name.rsplit(".", 1)[-1]
            source = location / "__init__.py" if info.ispkg else location.with_suffix(".py")
            if not source.exists() or _declares_data_layer(source):
                continue
            found.append(info.name)
            if info.ispkg:
                walk([str(location)], info.name + ".")

    walk(list(t5x_instruct.__path__), "t5x_instruct.")
    return ["t5x_instruct", *sorted(found)]


# Runs in a fresh interpreter; the blocker is installed before anything else is imported.
_CHILD = textwrap.dedent(
    """
    import importlib, importlib.abc, json, sys

    BLOCKED = set(json.loads(sys.argv[1]))

    class BlockImports(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname, path=None, target=None):
            if fullname.split(".")[0] in BLOCKED:
                raise ImportError(f"{fullname} is blocked: core modules must not import it")
            return None

    sys.meta_path.insert(0, BlockImports())

    for name in json.loads(sys.argv[2]):
        importlib.import_module(name)

    import jax
    import jax.numpy as jnp
    from flax import nnx

    from t5x_instruct.gin_utils import parse_gin
    from t5x_instruct.models import build_model

    def forward(graphdef, state, batch):
        return nnx.merge(graphdef, state).logits_from_batch(batch)

    for preset in ("models/t5_1_1/mini.gin", "models/decoder/tiny.gin"):
        parse_gin([preset], clear=True)
        graphdef, state = nnx.split(build_model())
        tokens = jnp.array([[5, 6, 7, 1, 0, 0]], jnp.int32)
        if "t5_1_1" in preset:
            batch = {"encoder_input_tokens": tokens, "decoder_input_tokens": tokens[:, :4]}
        else:
            batch = {"decoder_input_tokens": tokens}
        logits = jax.jit(forward, static_argnums=0)(graphdef, state, batch)
        assert logits.shape[:2] == batch["decoder_input_tokens"].shape, logits.shape
        assert bool(jnp.all(jnp.isfinite(logits)))

    leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    assert not leaked, leaked
    print("CORE-OK", len(json.loads(sys.argv[2])))
    """
)


def test_core_modules_are_discovered() -> None:
    modules = core_modules()
    for expected in (
        "t5x_instruct.kernels",
        "t5x_instruct.layers.attention",
        "t5x_instruct.models.encoder_decoder",
        "t5x_instruct.partitioning",
        "t5x_instruct.decoding",
        "t5x_instruct.gin_utils",
    ):
        assert expected in modules
    assert not any(m == DATA_PACKAGE or m.startswith(DATA_PACKAGE + ".") for m in modules)


def test_core_imports_and_runs_without_tensorflow() -> None:
    modules = core_modules()
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env["XLA_FLAGS"] = xla_flags()  # one device is plenty here
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(BLOCKED), json.dumps(modules)],
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(t5x_instruct.__file__).parents[1],
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert f"CORE-OK {len(modules)}" in result.stdout
