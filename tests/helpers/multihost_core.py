"""A training run through the core only (no TensorFlow, no gin): what one process of a
multi-host job does with its share of each batch, for ``tests/test_multihost_core.py``.

Run as ``python -m tests.helpers.multihost_core COORDINATOR NUM_PROCESSES PROCESS_ID ROOT``
it joins the job through :func:`t5x_instruct.runtime.distributed.initialize` and prints one
JSON line: per layout, the shards this process read, the losses of an uninterrupted run and of
the run resumed from the checkpoint both processes wrote at ``SAVE_AT``. Imported, the same
:func:`run` is the one-process oracle.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import jax
import numpy as np

from t5x_instruct import partitioning
from t5x_instruct.models import T5Config, build_model
from t5x_instruct.runtime import distributed, host_data
from t5x_instruct.training import checkpoints as ckpt_lib
from t5x_instruct.training.optimizers import make_optimizer
from t5x_instruct.training.step import LossConfig, train_step
from t5x_instruct.training.train_state import ModelSpec, init_train_state, train_state_shardings

STEPS, SAVE_AT = 4, 2
BATCH, NUM_SHARDS, INPUTS, TARGETS, VOCAB = 8, 2, 12, 6, 50
T5_TINY = T5Config(
    vocab_size=VOCAB, emb_dim=32, num_heads=4, head_dim=8, mlp_dim=64,
    num_encoder_layers=1, num_decoder_layers=1, dropout_rate=0.0,
)  # fmt: skip
LAYOUTS = {
    "data": (partitioning.MeshConfig(data=8), "data"),
    "fsdp": (partitioning.MeshConfig(data=1, fsdp=8), "fsdp"),
}


def shard_rows(step: int, shard: int) -> dict[str, np.ndarray]:
    """Data shard ``shard`` of step ``step``: a function of the two only, as a data shard's
    stream is (whichever process reads it)."""
    rng = np.random.default_rng([step, shard])
    rows = BATCH // NUM_SHARDS
    targets = rng.integers(2, VOCAB, size=(rows, TARGETS)).astype(np.int32)
    return {
        "encoder_input_tokens": rng.integers(1, VOCAB, size=(rows, INPUTS)).astype(np.int32),
        "decoder_input_tokens": np.concatenate(
            [np.zeros((rows, 1), np.int32), targets[:, :-1]], axis=1
        ),
        "decoder_target_tokens": targets,
        "decoder_loss_weights": (rng.random((rows, TARGETS)) > 0.25).astype(np.float32),
    }


def run(layout: str, checkpoint_dir: Path) -> dict[str, Any]:
    """Steps 1..STEPS with a checkpoint at SAVE_AT; then steps SAVE_AT+1..STEPS again from it
    (or, when ``checkpoint_dir`` already holds a checkpoint, only that resumed part)."""
    mesh_config, parallelism = LAYOUTS[layout]
    mesh = partitioning.create_mesh(mesh_config)
    rules = partitioning.standard_logical_axis_rules(parallelism)
    spec = ModelSpec.create(lambda: build_model(T5_TINY))
    optimizer = make_optimizer("adafactor", 0.01, logical_axes=spec.logical_axes())
    shardings = train_state_shardings(spec, optimizer, mesh, rules)
    step_fn = jax.jit(
        lambda s, b: train_step(spec, optimizer, LossConfig(), s, b, jax.random.PRNGKey(0)),
        out_shardings=(shardings, None),
    )
    rows = host_data.row_blocks(partitioning.batch_sharding(mesh, rules), BATCH)
    read = host_data.shards_for_rows(rows, BATCH, NUM_SHARDS)

    def train(state: Any, first: int, last: int, checkpointer: Any = None) -> list[float]:
        losses = []
        for step in range(first, last + 1):
            shards = {k: shard_rows(step, k) for k in read}  # only the rows this host holds
            batch = host_data.global_batch(shards, NUM_SHARDS, mesh, rules)
            state, metrics = step_fn(state, batch)
            losses.append(float(metrics["loss"]))
            if checkpointer is not None and step == SAVE_AT:
                checkpointer.save(state, {"step": step})
        return losses

    checkpointer = ckpt_lib.Checkpointer(str(checkpoint_dir), async_save=False)
    out: dict[str, Any] = {"shards": read}
    if checkpointer.latest_step() is None:
        params = spec.init_params(mesh, rules)
        init = jax.jit(lambda p: init_train_state(p, optimizer), out_shardings=shardings)
        out["losses"] = train(init(params), 1, STEPS, checkpointer)
        checkpointer.wait()
    abstract = jax.tree.map(
        lambda leaf, s: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=s),
        jax.eval_shape(lambda: init_train_state(spec.abstract_params(), optimizer)),
        shardings,
    )
    state, data_state = checkpointer.restore(SAVE_AT, abstract)
    checkpointer.close()
    assert data_state == {"step": SAVE_AT} and int(state.step) == SAVE_AT, data_state
    out["resumed"] = train(state, SAVE_AT + 1, STEPS)
    return out


def main(coordinator: str, num_processes: str, process_id: str, root: str) -> None:
    joined = distributed.initialize(
        {
            "coordinator_address": coordinator,
            "num_processes": int(num_processes),
            "process_id": int(process_id),
        }
    )
    assert joined and jax.device_count() == 8, jax.devices()
    results = {layout: run(layout, Path(root) / layout) for layout in LAYOUTS}
    print(json.dumps(results), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
