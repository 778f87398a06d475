"""Fused mixtures: same rendering as the single-variant tasks, rates, determinism, sharding."""

from __future__ import annotations

import collections
import math

import numpy as np
import pytest
import seqio
import tensorflow_datasets as tfds

import tasks.flan
from t5x_instruct import data
from t5x_instruct.data.custom import InMemorySource, add_rendered_task
from t5x_instruct.data.templates import RenderConfig, Template
from t5x_instruct.data.templates.fused import FusedMixture, register_fused_mixture
from tasks.flan import registration

VOCAB = seqio.ByteVocabulary()
LENGTHS = {"inputs": 4096, "targets": 1024}
TEMPLATES = (Template("a", "Q: {q}", "{a}"), Template("b", "{q}?", "{a}"),
             Template("c", "Answer {q}.", "{a}"))  # fmt: skip


def _rows(n: int, tag: str) -> list[dict[str, str]]:
    return [{"q": f"{tag} question {i}", "a": f"answer {i}"} for i in range(n)]


def _synthetic(prefix: str, n: int, rates: tuple[float, ...]) -> dict[str, float]:
    """Variants (template subsets) of one in-memory source, as Flan registers them."""
    source = InMemorySource({"train": _rows(n, prefix)})
    out = {}
    for i, rate in enumerate(rates):
        templates = TEMPLATES if i == 0 else (TEMPLATES[i % 3],)
        name = f"{prefix}_v{i}"
        config = RenderConfig(name, templates, hash_name=prefix, fields=("q", "a"))
        add_rendered_task(name, source, config, vocabulary=VOCAB, shuffle_buffer_size=64)
        out[name] = rate
    return out


def _examples(name: str, n: int | None = None, **kw) -> list[dict]:
    mixture = seqio.get_mixture_or_task(name)
    ds = mixture.get_dataset(LENGTHS, copy_pretokenized=True, passthrough_features=["variant"],
                             **{"seed": 0, **kw})  # fmt: skip
    if n is not None:
        ds = ds.take(n)
    return list(ds.as_numpy_iterator())


def _key(ex: dict) -> tuple[bytes, bytes, bytes]:
    return ex["variant"], ex["inputs_pretokenized"], ex["targets_pretokenized"]


def test_one_epoch_covers_every_example_once_with_variant_frequencies_near_rates():
    rates = _synthetic("fz_one", 3000, (1.0, 2.0, 3.0))
    register_fused_mixture("fz_one_fused", rates)
    exs = _examples("fz_one_fused", num_epochs=1)
    assert len(exs) == 3000  # nothing dropped, nothing repeated
    assert len({e["targets_pretokenized"] for e in exs}) == 3000
    counts = collections.Counter(e["variant"].decode() for e in exs)
    total = sum(rates.values())
    for name, rate in rates.items():
        p = rate / total
        assert abs(counts[name] - 3000 * p) < 4 * math.sqrt(3000 * p * (1 - p)), counts
    assert all(e["inputs"][-1] == 1 and e["targets"][-1] == 1 for e in exs)  # EOS appended


def test_merged_in_memory_sources_and_collection_rates():
    rates = {}
    for i, r in enumerate((1.0, 3.0)):
        rates |= _synthetic(f"fz_multi{i}", 200, (r,))
    register_fused_mixture("fz_multi_fused", rates)
    mixture = seqio.get_mixture_or_task("fz_multi_fused")
    groups, plain = mixture._plan(mixture.tasks)
    assert len(groups) == 1 and not plain  # same structure: one render map for both sources
    counts = collections.Counter(e["variant"].decode() for e in _examples("fz_multi_fused", 2000))
    assert abs(counts["fz_multi1_v0"] / 2000 - 0.75) < 0.04, counts


def test_deterministic_and_seed_dependent():
    register_fused_mixture("fz_det_fused", _synthetic("fz_det", 500, (1.0, 1.0, 2.0)))
    first = [_key(e) for e in _examples("fz_det_fused", 300)]
    assert first == [_key(e) for e in _examples("fz_det_fused", 300)]
    assert first != [_key(e) for e in _examples("fz_det_fused", 300, seed=1)]


def test_shards_are_disjoint_and_complete():
    register_fused_mixture("fz_shard_fused", _synthetic("fz_shard", 400, (1.0, 2.0)))
    full = sorted(_key(e) for e in _examples("fz_shard_fused", num_epochs=1))
    parts = [
        [_key(e) for e in _examples("fz_shard_fused", num_epochs=1,
                                    shard_info=seqio.ShardInfo(i, 2))]
        for i in range(2)
    ]  # fmt: skip
    assert not set(parts[0]) & set(parts[1])
    assert sorted(parts[0] + parts[1]) == full


@pytest.fixture()
def mock_tfds():
    registration.clear_pool_cache()
    with tfds.testing.mock_data(num_examples=8, policy=tfds.testing.MockPolicy.USE_CODE):
        yield
    registration.clear_pool_cache()


def _single(name: str) -> set[tuple[bytes, bytes]]:
    ds = seqio.get_mixture_or_task(name).get_dataset(None, split="train", shuffle=False)
    return {(e["inputs_pretokenized"], e["targets_pretokenized"]) for e in ds.as_numpy_iterator()}


def test_flan_examples_render_as_their_single_variant_task(mock_tfds):
    names = [n for n in tasks.flan.TASK_NAMES
             if n.startswith(("flan_rte_", "flan_gsm8k_", "flan_ag_news_subset_"))]  # fmt: skip
    register_fused_mixture("fz_flan_fused", {n: 1.0 for n in names})
    mixture = seqio.get_mixture_or_task("fz_flan_fused")
    assert isinstance(mixture, FusedMixture)
    groups, plain = mixture._plan(mixture.tasks)
    assert len(groups) == 3 and not plain
    exs = _examples("fz_flan_fused", 400)
    by_variant = collections.defaultdict(set)
    for e in exs:
        by_variant[e["variant"].decode()].add(_key(e)[1:])
    assert len(by_variant) >= 12  # one variant per example: <= 24 with 3 x 8 mock examples
    assert any("x_shot" in n for n in by_variant) and any("cot" in n for n in by_variant)
    for name, rendered in by_variant.items():
        assert rendered <= _single(name), name


def test_registered_fused_flan_mixture_packs_through_get_dataset(mock_tfds):
    for name in ("flan2021", "flan2022_flan_cot", "flan2021_template_variants"):
        fused = seqio.get_mixture_or_task(f"{name}_fused")
        plain = seqio.get_mixture_or_task(name)
        assert isinstance(fused, FusedMixture)
        assert [t.name for t in fused.tasks] == [t.name for t in plain.tasks]
        total_f = sum(fused.get_rate(t) for t in fused.tasks)
        total_p = sum(plain.get_rate(t) for t in plain.tasks)
        assert all(fused.get_rate(t) / total_f == pytest.approx(plain.get_rate(t) / total_p)
                   for t in plain.tasks)  # fmt: skip
    names = [n for n in tasks.flan.TASK_NAMES if n.startswith(("flan_cb_", "flan_xsum_"))]
    register_fused_mixture("fz_pack_fused", {n: 1.0 for n in names})
    ds = data.get_dataset("fz_pack_fused", task_feature_lengths={"inputs": 256,
                          "targets": 64}, batch_size=4, pack=True, seed=1)  # fmt: skip
    batch = next(ds.as_numpy_iterator())
    assert batch["encoder_input_tokens"].shape == (4, 256)
    assert np.count_nonzero(batch["encoder_segment_ids"]) > 0
