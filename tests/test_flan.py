"""Flan 2021 tasks: coverage, cheap registration, rate arithmetic, golden weights, mock data."""

from __future__ import annotations

import collections
import dataclasses
from unittest import mock

import numpy as np
import pytest
import seqio
import tensorflow_datasets as tfds

import tasks.flan
from t5x_instruct import data
from t5x_instruct.data.custom import register_mixture
from t5x_instruct.data.templates import TemplateError
from tasks.flan import registration
from tasks.flan.sizes import PUBLISHED_TRAIN_SIZES

SPECS = {s.name: s for s in tasks.flan.all_specs()}
REQUIRED_CLUSTERS = {"nli", "commonsense", "sentiment", "paraphrase", "closed_book_qa",
                     "reading_comprehension", "coreference", "summarization", "translation",
                     "struct_to_text"}  # fmt: skip


def test_at_least_30_data_sets_with_7_templates_in_every_cluster():
    tfds_names = {s.tfds_name for s in SPECS.values()}
    assert len(tfds_names) >= 30
    assert all(len(s.templates) >= 7 for s in SPECS.values())
    assert {s.cluster for s in SPECS.values()} >= REQUIRED_CLUSTERS
    assert all(s.tfds_name in PUBLISHED_TRAIN_SIZES for s in SPECS.values())
    for s in SPECS.values():  # classification templates show the options
        if s.classification:
            standard = [t for t in s.templates if len(t) == 2]
            assert all("{options}" in t[0] for t in standard), s.name


def test_registration_is_cheap_and_reads_no_data():
    fail = mock.Mock(side_effect=AssertionError("registration must not read TFDS data"))
    with mock.patch.object(tfds, "load", fail), mock.patch.object(tfds, "builder", fail):
        names = tasks.flan.register()
    assert len(names) >= 1200 and len(set(names)) == len(names)
    assert {"flan_rte_zero_shot", "flan_rte_no_opt", "flan_rte_x_shot",
            "flan_rte_template_6_no_opt", "flan_gsm8k_cot", "flan_squad_v1_zero_shot",
            "flan_wmt16_translate_ende_x_shot"} <= set(names)  # fmt: skip
    assert "flan_squad_v1_no_opt" not in names  # no options, no no_opt variant
    assert len(data.leaf_tasks("flan2021_template_variants")) >= 1000


def test_rates_are_capped_train_sizes_split_over_variants():
    assert tasks.flan.capped_rate(250) == 250.0
    assert tasks.flan.capped_rate(10**7) == float(tasks.flan.FLAN2021_RATE_CAP) == 3000.0
    mixture = seqio.get_mixture_or_task("flan2021")

    def total(spec_name: str) -> float:
        return sum(mixture.get_rate(t) for t in mixture.tasks
                   if t.name.startswith(f"flan_{spec_name}_"))  # fmt: skip

    assert total("cb") == pytest.approx(250)  # 3 variants of 250/3
    assert total("rte") == pytest.approx(2490)
    assert total("mnli") == pytest.approx(3000)
    assert total("squad_v1") == pytest.approx(3000)  # 2 variants (no options)
    assert mixture.get_rate(seqio.get_mixture_or_task("flan_cb_no_opt")) == pytest.approx(250 / 3)


def test_flan2022_collection_weights_are_golden():
    assert tasks.flan.FLAN2022_COLLECTION_WEIGHTS == {
        "flan2021": 0.4, "t0": 0.32, "niv2": 0.2, "cot": 0.05, "dialog": 0.03}  # fmt: skip
    assert sum(tasks.flan.FLAN2022_COLLECTION_WEIGHTS.values()) == pytest.approx(1.0)
    collection = seqio.get_mixture_or_task("flan2022_flan_cot")
    flan = seqio.get_mixture_or_task("flan2021")
    cot = seqio.get_mixture_or_task("flan2021_cot")
    shares = collections.Counter()
    for t in collection.tasks:
        shares["cot" if t in cot.tasks else "flan2021"] += collection.get_rate(t)
    assert shares["flan2021"] == pytest.approx(0.4)
    assert shares["cot"] == pytest.approx(0.05)
    assert len(collection.tasks) == len(set(flan.tasks) | set(cot.tasks))
    with pytest.raises(ValueError, match="unknown component"):
        tasks.flan.register_collection("bad", {"flan2022": "flan2021"})


def test_heldout_cluster_mixtures():
    train, evaluation = tasks.flan.heldout_cluster_mixtures("nli")
    assert (train, evaluation) == ("flan2021_without_nli", "flan2021_nli_eval")
    nli = {f"flan_{s.name}_" for s in SPECS.values() if s.cluster == "nli"}
    train_names = [t.name for t in data.leaf_tasks(train)]
    eval_names = [t.name for t in data.leaf_tasks(evaluation)]
    assert train_names and not any(n.startswith(p) for n in train_names for p in nli)
    assert sorted(eval_names) == sorted(f"{p}zero_shot" for p in nli)
    assert data.task_group("flan_rte_zero_shot") == "heldout_task"
    assert len(data.leaf_tasks("flan2021")) == len(train_names) + sum(
        1 for t in data.leaf_tasks("flan2021") if t.name.startswith(tuple(nli))
    )
    with pytest.raises(ValueError, match="Unknown cluster"):
        tasks.flan.heldout_cluster_mixtures("poetry")


def test_unknown_data_set_or_config_and_bad_template_fail_at_registration():
    rte = SPECS["rte"]
    with pytest.raises(ValueError, match=r"Unknown TFDS data set 'glu/rte'.*glue"):
        tasks.flan.register_spec(dataclasses.replace(rte, tfds_name="glu/rte"))
    with pytest.raises(ValueError, match=r"no config 'rtee'.*'rte'"):
        tasks.flan.register_spec(dataclasses.replace(rte, tfds_name="glue/rtee"))
    broken = dataclasses.replace(
        rte, name="rte_broken", templates=(*rte.templates, ("{premise} {hypotesis}", "{answer}"))
    )
    with pytest.raises(TemplateError, match=r"flan_rte_broken_zero_shot', template '8'.*hypotesis"):
        tasks.flan.register_spec(broken)
    with pytest.raises(TemplateError, match=r"Task 'flan_rte_bad', template '1'.*malformed"):
        registration.build_templates("flan_rte_bad", [("{a}", "{b}"), ("{a", "{b}")])


@pytest.fixture()
def mock_tfds():
    registration.clear_pool_cache()
    with tfds.testing.mock_data(num_examples=8, policy=tfds.testing.MockPolicy.USE_CODE):
        yield
    registration.clear_pool_cache()


def _rendered(name: str, **kw) -> list[tuple[bytes, bytes, bytes]]:
    ds = seqio.get_mixture_or_task(name).get_dataset(None, split="train", shuffle=False, **kw)
    return [(e["template_id"], e["inputs_pretokenized"], e["targets_pretokenized"])
            for e in ds.as_numpy_iterator()]  # fmt: skip


def test_mock_data_end_to_end_deterministic_and_nothing_dropped(mock_tfds):
    for name in ("flan_anli_r1_zero_shot", "flan_squad_v1_x_shot", "flan_gsm8k_cot",
                 "flan_wmt16_translate_deen_zero_shot", "flan_web_nlg_template_7_zero_shot",
                 "flan_ag_news_subset_no_opt"):  # fmt: skip
        first = _rendered(name)
        assert len(first) == 8, name  # count in == count out
        assert first == _rendered(name), name  # a second build renders identical data
        shards = _rendered(name, shard_info=seqio.ShardInfo(0, 2)) + _rendered(
            name, shard_info=seqio.ShardInfo(1, 2)
        )
        assert sorted(shards) == sorted(first), name  # two hosts together = one host
    cot = _rendered("flan_gsm8k_cot")
    assert all(b"answer" in t.lower() or b"result" in t.lower() or b"hence" in t.lower()
               or b"therefore" in t.lower() for _, _, t in cot)  # fmt: skip
    translations = _rendered("flan_wmt16_translate_deen_zero_shot")
    assert any(b"English" in i for _, i, _ in translations)


def test_mock_mixture_packs_into_batches(mock_tfds):
    register_mixture("flan_test_small", {"flan_rte_zero_shot": 1.0, "flan_xsum_zero_shot": 1.0,
                                         "flan_cola_x_shot": 2.0})  # fmt: skip
    ds = data.get_dataset("flan_test_small", task_feature_lengths={"inputs": 256,
                          "targets": 64}, batch_size=4, pack=True, seed=1)  # fmt: skip
    batch = next(ds.as_numpy_iterator())
    assert batch["encoder_input_tokens"].shape == (4, 256)
    assert np.count_nonzero(batch["encoder_segment_ids"]) > 0
