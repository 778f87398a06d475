"""Print the requirements of the TF-free core test run (`make test-next`), one per line.

The second CI environment (the newer Python / JAX generation) tests only the core, so it
installs pyproject's dependencies and `[test]` extra without the packages that only the data
layer (TensorFlow via seqio / TFDS) and the Hugging Face / PyTorch oracle tests need — a CUDA
torch build alone would be several GB there. Read from pyproject.toml, so a new dependency is
picked up without editing the Makefile.
"""

from __future__ import annotations

import argparse
import re
import tomllib
from pathlib import Path

# Left out of the core run; tests/conftest.py skips the tests that import them, naming them.
NOT_IN_CORE = ("seqio", "tensorflow-datasets", "torch", "transformers", "datasets")


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def core_requirements(pyproject: Path, jax_spec: str) -> list[str]:
    """pyproject's dependencies + [test], minus NOT_IN_CORE, with jax pinned to ``jax_spec``."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"]["test"]]
    kept = [r for r in wanted if _name(r) not in (*NOT_IN_CORE, "jax")]
    return [jax_spec, *dict.fromkeys(kept)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jax", required=True, help='e.g. "jax[tpu]==0.11.2"')
    default = Path(__file__).parents[1] / "pyproject.toml"
    parser.add_argument("--pyproject", type=Path, default=default)
    args = parser.parse_args()
    print("\n".join(core_requirements(args.pyproject, args.jax)))


if __name__ == "__main__":
    main()
