"""Test-wide setup: a fake 8-device CPU platform, before JAX initialises its backends."""

import os

import gin
import pytest
from helpers import next_environment, xla_flags  # neither imports JAX

os.environ.setdefault("JAX_PLATFORMS", "cpu")
xla_flags.add_to_environment(devices=8)  # and fast XLA:CPU compiles (tests/helpers/xla_flags.py)


# One persistent XLA compilation cache per test session, inherited by the CLI subprocesses:
# many tests compile the same train step (the quickstart config, the tiny presets) in fresh
# processes or through fresh `jax.jit` objects, and a cache hit skips XLA's backend compile.
# A fresh directory per session, so nothing carries over between CI runs.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import tempfile

    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="t5x_instruct_xla_cache_")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

# `make test-next`: the next Python / JAX generation (tests/helpers/next_environment.py).
if os.environ.get(next_environment.FLAG) == "1":
    next_environment.install_skip_finder()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--core-selection",
        action="store_true",
        help="run only the tests of tests/helpers/next_environment.py SELECTION (a quick check "
        "of the JAX surfaces that change between generations)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--core-selection"):
        next_environment.apply_selection(config, items)
    _group_shared_fixtures(items)


def _group_shared_fixtures(items: list[pytest.Item]) -> None:
    """`make test` (pytest-xdist, ``--dist loadgroup``) hands out tests one by one, which
    balances the workers; a test using a module-scoped fixture (a training run its file's
    tests share) is grouped with its file, so that the fixture runs once, on one worker."""
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        if info is None:
            continue
        scopes = {d.scope for defs in info.name2fixturedefs.values() for d in defs}
        if "module" in scopes:
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))


@pytest.fixture(autouse=True)
def _fresh_gin_config():
    """Gin bindings are process-global: every test starts and ends with an empty config."""
    gin.clear_config()
    yield
    gin.clear_config()
