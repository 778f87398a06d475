"""Writes checkpoints in T5X's on-disk layouts without T5X installed, for import tests.

Names, shapes and layout follow T5X's own source (t5x/examples/t5/network.py, layers.py and
t5x/checkpoints.py): DenseGeneral stores attention kernels flattened to 2-D
(``[embed, heads*head_dim]``, ``[heads*head_dim, embed]``); the relative-bias table is
``[heads, buckets]`` (``relpos_bias/rel_embedding``, one per stack); the msgpack file holds
``{'version': 3, 'optimizer': {'target': ..., 'state': ...}}`` with tensorstore specs whose
zarr folders are named by the '.'-joined path. The weights come from a Hugging Face model,
mapped here by hand, so that the HF model itself is the oracle for the imported weights.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

Flat = dict[str, np.ndarray]


def t5x_target_from_hf(
    sd: Mapping[str, np.ndarray], *, encoder_layers: int, decoder_layers: int, tied: bool
) -> Flat:
    """T5X ``target`` parameters (flat, '/'-joined) holding a HF T5 model's weights."""
    out: Flat = {"token_embedder/embedding": sd["shared.weight"]}

    def attention(t5x: str, hf: str) -> None:
        for ours, theirs in (("query", "q"), ("key", "k"), ("value", "v"), ("out", "o")):
            out[f"{t5x}/{ours}/kernel"] = sd[f"{hf}.{theirs}.weight"].T  # torch [out, in]

    def mlp(t5x: str, hf: str) -> None:
        for name in ("wi_0", "wi_1", "wo"):
            out[f"{t5x}/{name}/kernel"] = sd[f"{hf}.{name}.weight"].T

    for i in range(encoder_layers):
        t, h = f"encoder/layers_{i}", f"encoder.block.{i}.layer"
        attention(f"{t}/attention", f"{h}.0.SelfAttention")
        out[f"{t}/pre_attention_layer_norm/scale"] = sd[f"{h}.0.layer_norm.weight"]
        mlp(f"{t}/mlp", f"{h}.1.DenseReluDense")
        out[f"{t}/pre_mlp_layer_norm/scale"] = sd[f"{h}.1.layer_norm.weight"]
    for i in range(decoder_layers):
        t, h = f"decoder/layers_{i}", f"decoder.block.{i}.layer"
        attention(f"{t}/self_attention", f"{h}.0.SelfAttention")
        out[f"{t}/pre_self_attention_layer_norm/scale"] = sd[f"{h}.0.layer_norm.weight"]
        attention(f"{t}/encoder_decoder_attention", f"{h}.1.EncDecAttention")
        out[f"{t}/pre_cross_attention_layer_norm/scale"] = sd[f"{h}.1.layer_norm.weight"]
        mlp(f"{t}/mlp", f"{h}.2.DenseReluDense")
        out[f"{t}/pre_mlp_layer_norm/scale"] = sd[f"{h}.2.layer_norm.weight"]
    for stack in ("encoder", "decoder"):
        bias = f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
        out[f"{stack}/relpos_bias/rel_embedding"] = sd[bias].T  # HF [buckets, heads]
        out[f"{stack}/{stack}_norm/scale"] = sd[f"{stack}.final_layer_norm.weight"]
    if not tied:
        out["decoder/logits_dense/kernel"] = sd["lm_head.weight"].T
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def adafactor_states(target: Flat) -> Flat:
    """Factored second moments as T5X's Adafactor keeps them (only their presence matters)."""
    out: Flat = {}
    for name, value in target.items():
        base = f"param_states/{name}"
        if value.ndim >= 2:
            out[f"{base}/v_row"] = np.ones(value.shape[:-1], np.float32)
            out[f"{base}/v_col"] = np.ones(value.shape[-1:], np.float32)
        else:
            out[f"{base}/v"] = np.ones(value.shape, np.float32)
    return out


def _nest(flat: Mapping[str, object]) -> dict:
    out: dict = {}
    for name, value in flat.items():
        node = out
        *parents, last = name.split("/")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return out


def write_msgpack_checkpoint(
    ckpt_dir: str,
    target: Flat,
    state: Flat,
    *,
    step: int,
    inline: tuple[str, ...] = (),
    orbax_aggregate: bool = False,
) -> None:
    """T5X's Checkpointer layout: msgpack tree + one gzip zarr folder per partitioned array.

    Names in ``inline`` (and the step) are written into the msgpack file itself, as T5X does
    for arrays that have no partitioning axes. ``orbax_aggregate`` writes what T5X's orbax
    manager left with older orbax instead: ``<ckpt_dir>/state/checkpoint`` holding the bare
    ``{'target', 'state'}`` tree with ``PLACEHOLDER://<name>`` leaves.
    """
    import tensorstore as ts
    from flax import serialization

    if orbax_aggregate:
        ckpt_dir = os.path.join(ckpt_dir, "state")
    os.makedirs(ckpt_dir, exist_ok=False)

    def leaf(full_name: str, value: np.ndarray) -> object:
        if full_name.split("/", 1)[1] in inline:
            return value
        relative = full_name.replace("/", ".")
        spec = {
            "driver": "zarr",
            "dtype": value.dtype.name,
            "kvstore": {"driver": "file", "path": relative},
            "metadata": {
                "compressor": {"id": "gzip"},
                "shape": list(value.shape),
                "chunks": [max(1, d // 2) for d in value.shape],  # several chunks per array
            },
        }
        absolute = {**spec, "kvstore": {"driver": "file", "path": f"{ckpt_dir}/{relative}"}}
        store = ts.open(absolute, create=True, open=True).result()
        store.write(value).result()
        return f"PLACEHOLDER://{relative}" if orbax_aggregate else spec

    tree = {
        "target": _nest({n: leaf(f"target/{n}", v) for n, v in target.items()}),
        "state": {
            "step": np.asarray(step, np.int32),
            **_nest({n: leaf(f"state/{n}", v) for n, v in state.items()}),
        },
    }
    contents = tree if orbax_aggregate else {"version": 3, "optimizer": tree}
    with open(os.path.join(ckpt_dir, "checkpoint"), "wb") as f:
        f.write(serialization.msgpack_serialize(contents))


def write_orbax_checkpoint(
    ckpt_dir: str, target: Flat, state: Flat, *, step: int, use_ocdbt: bool
) -> None:
    """T5X's OrbaxCheckpointManagerInterface layout: ``<ckpt_dir>/state`` via orbax PyTree."""
    import orbax.checkpoint as ocp

    tree = {
        "target": _nest(target),
        "state": {"step": np.asarray(step, np.int32), **_nest(state)},
    }
    checkpointer = ocp.Checkpointer(ocp.PyTreeCheckpointHandler(use_ocdbt=use_ocdbt))
    checkpointer.save(os.path.join(os.path.abspath(ckpt_dir), "state"), tree)
    checkpointer.close()
