"""The command lines' persistent XLA compilation cache (t5x_instruct/cli/compilation_cache.py).

Each case runs in a fresh process: JAX sets up its cache once per process (and the test
session's own cache comes from the environment, tests/conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from t5x_instruct.cli.compilation_cache import compilation_cache
from t5x_instruct.errors import UserInputError

REPO = Path(__file__).resolve().parents[1]

# Binds gin from argv, sets the cache up, compiles one program, prints where the cache is.
_SCRIPT = """
import sys
import gin, jax, jax.numpy as jnp
from t5x_instruct.cli.compilation_cache import compilation_cache
gin.parse_config(sys.argv[1:])
where = compilation_cache()
jax.jit(lambda x: jnp.tanh(x @ x.T).sum())(jnp.ones((32, 32))).block_until_ready()
print(repr(where), repr(jax.config.jax_compilation_cache_dir))
"""


def _run(home: Path, *bindings: str, cache_env: str | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_PERSISTENT_CACHE")}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    env.update(HOME=str(home), JAX_PLATFORMS="cpu")
    if cache_env is not None:
        env["JAX_COMPILATION_CACHE_DIR"] = cache_env
    result = subprocess.run(
        [sys.executable, "-c", _SCRIPT, *bindings], cwd=REPO, env=env, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip().splitlines()[-1]


def _entries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("*-cache")) if directory.exists() else []


def test_default_directory_is_under_home_and_receives_the_compiled_program(tmp_path) -> None:
    expected = tmp_path / ".cache" / "t5x_instruct" / "xla"
    printed = _run(tmp_path, "compilation_cache.min_compile_seconds = 0")
    assert printed == f"{str(expected)!r} {str(expected)!r}"
    assert [e for e in _entries(expected) if e.startswith("jit__lambda-")], _entries(expected)


def test_directory_none_turns_it_off(tmp_path) -> None:
    printed = _run(
        tmp_path, "compilation_cache.directory = None", "compilation_cache.min_compile_seconds = 0"
    )
    assert printed == "None None"
    assert not (tmp_path / ".cache").exists()


def test_the_environment_variable_wins_over_the_gin_directory(tmp_path) -> None:
    from_env, from_gin = tmp_path / "env_cache", tmp_path / "gin_cache"
    printed = _run(
        tmp_path, f"compilation_cache.directory = '{from_gin}'",
        "compilation_cache.min_compile_seconds = 0", cache_env=str(from_env),
    )  # fmt: skip
    assert printed == f"{str(from_env)!r} {str(from_env)!r}"
    assert not from_gin.exists()


@pytest.mark.parametrize(
    ("kwargs", "binding"),
    [({"min_compile_seconds": -1.0}, "min_compile_seconds"), ({"max_size_gib": 0}, "max_size_gib")],
)
def test_bad_settings_name_the_binding(kwargs, binding) -> None:
    with pytest.raises(UserInputError, match=rf"^compilation_cache\.{binding}="):
        compilation_cache(**kwargs)
