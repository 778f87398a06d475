"""Print the requirements of the second test environment (`make test-next`), one per line.

The second CI environment (the newer Python / JAX generation of the GPU machines) runs the
whole suite, so it installs pyproject's dependencies and its `[test]` and `[p3]` extras,
except torch and transformers: the Hugging Face oracle tests stay in `make test`, because
PyPI's torch for that Python is a CUDA build of several GB (the CPU wheel on this disk is for
Python 3.11 only). Read from pyproject.toml, so a new dependency is picked up without editing
the Makefile.
"""

from __future__ import annotations

import argparse
import re
import tomllib
from pathlib import Path

# Left out; tests/helpers/next_environment.py skips the tests that import them, naming them.
LEFT_OUT = ("torch", "transformers")
EXTRAS = ("test", "p3")


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def next_requirements(pyproject: Path, jax_spec: str) -> list[str]:
    """pyproject's dependencies + EXTRAS, minus LEFT_OUT, with jax pinned to ``jax_spec``."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    extras = project["optional-dependencies"]
    wanted = [*project["dependencies"], *(r for extra in EXTRAS for r in extras[extra])]
    kept = [r for r in wanted if _name(r) not in (*LEFT_OUT, "jax")]
    return [jax_spec, *dict.fromkeys(kept)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jax", required=True, help='e.g. "jax[tpu]==0.11.2"')
    default = Path(__file__).parents[1] / "pyproject.toml"
    parser.add_argument("--pyproject", type=Path, default=default)
    args = parser.parse_args()
    print("\n".join(next_requirements(args.pyproject, args.jax)))


if __name__ == "__main__":
    main()
