"""Test-wide setup: a fake 8-device CPU platform, before JAX initialises its backends."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()


import gin
import pytest


@pytest.fixture(autouse=True)
def _fresh_gin_config():
    """Gin bindings are process-global: every test starts and ends with an empty config."""
    gin.clear_config()
    yield
    gin.clear_config()
