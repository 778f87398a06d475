"""Multi-process settings and per-process data rows, checked without starting a job.

Bad settings (inconsistent process count / id, half-given settings, a mesh larger than the
devices) fail with one clear error each; which data shards a process reads follows from the
rows its devices hold, hand-computed here for 8 devices split 4 + 4 between two "processes".
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from t5x_instruct import partitioning
from t5x_instruct import train as train_cli
from t5x_instruct.errors import UserInputError
from t5x_instruct.partitioning import MeshConfig
from t5x_instruct.runtime import distributed, host_data
from t5x_instruct.runtime.distributed import DistributedConfig, DistributedSetupError

# ------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (DistributedConfig(num_processes=2, process_id=2), "process_id=2 is not below"),
        (DistributedConfig(num_processes=4, process_id=7), "ids run from 0 to 3"),
        (DistributedConfig(num_processes=0), "num_processes=0 must be at least 1"),
        (DistributedConfig(process_id=-1), "process_id=-1 must be >= 0"),
        (DistributedConfig(num_processes="2"), "num_processes='2' must be an integer"),
        (DistributedConfig(coordinator_address="10.0.0.1"), "must be host:port"),
        (DistributedConfig(mode="always"), "mode='always'"),
    ],
)
def test_inconsistent_settings_are_refused(config, message) -> None:
    with pytest.raises(DistributedSetupError, match=message):
        distributed.validate(config)


def test_settings_come_from_flags_then_gin_then_environment() -> None:
    import gin

    gin.parse_config("DistributedConfig.num_processes = 4")
    env = {"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "8", "JAX_PROCESS_ID": "3"}
    config = distributed.config_from({"process_id": 1}, env)
    assert (config.coordinator_address, config.num_processes, config.process_id) == ("h:1", 4, 1)
    with pytest.raises(DistributedSetupError, match="JAX_PROCESS_ID='x' must be an integer"):
        distributed.config_from({}, {"JAX_PROCESS_ID": "x"})


def test_incomplete_settings_without_a_cluster_name_what_is_missing() -> None:
    with pytest.raises(DistributedSetupError, match="also pass --num_processes, --process_id"):
        distributed.initialize({"coordinator_address": "localhost:1234"}, environ={})


def test_joining_after_the_backend_started_is_refused() -> None:
    jax.devices()  # this test process already computes on its 8 CPU devices
    settings = {"coordinator_address": "localhost:1234", "num_processes": 2, "process_id": 1}
    with pytest.raises(DistributedSetupError, match="before JAX starts a backend"):
        distributed.initialize(settings, environ={})


def test_single_process_without_settings_does_nothing() -> None:
    assert distributed.initialize({}, environ={}) is False
    assert jax.process_count() == 1
    with pytest.raises(DistributedSetupError, match="mode='on' but no cluster"):
        distributed.initialize({"mode": "on"}, environ={})


def test_cli_reports_bad_process_settings_as_one_line(capsys) -> None:
    code = train_cli.main(
        ["--gin_file=gin/runs/quickstart.gin", "--num_processes=2", "--process_id=5"]
    )
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: process_id=5 is not below num_processes=2"), err


def test_mesh_larger_than_the_devices_is_a_user_error() -> None:
    with pytest.raises(UserInputError, match=r"needs 16 devices but 8 are available"):
        partitioning.create_mesh(MeshConfig(data=16))


# ------------------------------------------------------------------- rows and shards

BATCH = 8


def _rows(config: MeshConfig, parallelism: str, devices) -> list[tuple[int, int]]:
    mesh = partitioning.create_mesh(config)
    rules = partitioning.standard_logical_axis_rules(parallelism)
    return host_data.row_blocks(partitioning.batch_sharding(mesh, rules, 1), BATCH, devices)


def test_processes_read_the_shards_of_the_rows_their_devices_hold() -> None:
    devices = jax.devices()
    first, second = devices[:4], devices[4:]  # two "processes" of 4 devices each
    # Data parallel over 8 devices: row i on device i, so each half holds 4 rows.
    assert _rows(MeshConfig(data=8), "data", first) == [(0, 4)]
    assert _rows(MeshConfig(data=8), "data", second) == [(4, 8)]
    assert host_data.shards_for_rows([(0, 4)], BATCH, 2) == [0]
    assert host_data.shards_for_rows([(4, 8)], BATCH, 2) == [1]
    assert host_data.shards_for_rows([(4, 8)], BATCH, 4) == [2, 3]
    # Tensor parallel over all 8: every device holds every row, both halves read everything.
    for half in (first, second):
        assert _rows(MeshConfig(data=1, tensor=8), "tensor", half) == [(0, 8)]
    assert host_data.shards_for_rows([(0, 8)], BATCH, 2) == [0, 1]
    # data=2 x tensor=4: rows split by the data axis, which separates the halves.
    assert _rows(MeshConfig(data=2, tensor=4), "tensor", first) == [(0, 4)]
    # One process reading a shard that straddles its rows' boundary.
    assert host_data.shards_for_rows([(2, 6)], BATCH, 2) == [0, 1]


def test_global_batch_puts_each_shard_in_its_rows() -> None:
    mesh = partitioning.create_mesh(MeshConfig(data=8))
    rules = partitioning.data_parallel_rules()
    full = np.arange(BATCH * 3, dtype=np.int32).reshape(BATCH, 3)
    shards = {0: {"x": full[:4]}, 1: {"x": full[4:]}}
    batch = host_data.global_batch(shards, 2, mesh, rules)
    np.testing.assert_array_equal(np.asarray(batch["x"]), full)
    assert {s.data.shape for s in batch["x"].addressable_shards} == {(1, 3)}
    replicated = host_data.replicated_host_batch({"x": full}, mesh, rules)
    np.testing.assert_array_equal(np.asarray(replicated["x"]), full)


def test_data_shards_must_divide_the_batch() -> None:
    with pytest.raises(UserInputError, match=r"train\.data_shards=3 must be a positive divisor"):
        host_data.check_num_shards(8, 3)
