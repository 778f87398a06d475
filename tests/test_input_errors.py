"""Bad input and unreachable data as one clear error, and a quiet start-up.

Non-UTF-8 data files (every JSONL reader names file and line), wrongly typed model settings
(the gin binding named), task listings and runs without a network ('lazy' rates, or one line
naming the path and the binding to point at local files), the README's routes to your own
JSONL task (run as written there), and start-up noise filtered.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
from pathlib import Path

import gin
import numpy as np
import pytest
import seqio

import tasks.xp3 as xp3
from t5x_instruct import data, train
from t5x_instruct.cli import quiet
from t5x_instruct.config_validation import ConfigTypeError
from t5x_instruct.data import custom, jsonl_inputs, multilingual
from t5x_instruct.errors import DataUnavailableError, UserInputError, user_error_message
from t5x_instruct.gin_utils import parse_gin
from t5x_instruct.models import DecoderConfig, T5Config
from t5x_instruct.partitioning import MeshConfig
from t5x_instruct.plugins.ifs import data as ifs_data
from t5x_instruct.training.step import LossConfig

REPO = Path(__file__).resolve().parents[1]
QUICK = [
    "--gin_file=gin/runs/quickstart.gin",
    "--gin.TRAIN_STEPS=2",
    "--gin.BATCH_SIZE=8",
    "--gin.train.eval_period=0",
    "--gin.train.final_eval=False",
    "--gin.train.progress_bar=False",
]
GOOD = json.dumps({"inputs": "q", "targets": "a"}).encode()
# Latin-1 'é' (0xe9) is not UTF-8; '{"inputs": "caf' is 15 bytes, so it sits at column 16.
BAD = '{"inputs": "café", "targets": "a"}'.encode("latin-1")


def _cli_error(capsys, argv: list[str]) -> str:
    assert train.main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ")
    return last


# ----------------------------------------------------------------- non-UTF-8 data files


@pytest.fixture
def bad_jsonl(tmp_path) -> Path:
    """Line 3 of 4 is not UTF-8 (line 2 is blank, which readers skip but still count)."""
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(GOOD + b"\n\n" + BAD + b"\n" + GOOD + b"\n")
    return path


def test_xp3_reader_names_file_and_line(bad_jsonl):
    with pytest.raises(UserInputError) as info:
        list(multilingual.read_jsonl(str(bad_jsonl)))
    assert str(info.value).startswith(f"{bad_jsonl}:3: not UTF-8")
    assert "byte 0xe9 at column 16" in str(info.value)


def test_xp3_reader_inside_tf_data_gives_one_line(tmp_path, bad_jsonl):
    multilingual.add_jsonl_task(
        "input_errors_latin1", {"train": [str(bad_jsonl)]}, seqio.ByteVocabulary()
    )
    try:
        task = seqio.get_mixture_or_task("input_errors_latin1")
        with pytest.raises(Exception) as info:
            list(task.get_dataset(sequence_length=None, split="train").as_numpy_iterator())
    finally:
        seqio.TaskRegistry.remove("input_errors_latin1")
    assert not isinstance(info.value, UserInputError)  # TensorFlow wraps it...
    message = user_error_message(info.value)  # ...and the CLI still prints one line
    assert message is not None and message.startswith(f"{bad_jsonl}:3: not UTF-8")


def test_custom_task_reader_names_file_and_line_or_skips(bad_jsonl):
    with pytest.raises(UserInputError, match=re.escape(f"{bad_jsonl}:3: not UTF-8")):
        custom.register_jsonl_task(
            "input_errors_custom", [str(bad_jsonl)], "inputs_targets",
            vocabulary=seqio.ByteVocabulary(),
        )  # fmt: skip
    custom.register_jsonl_task(
        "input_errors_custom", [str(bad_jsonl)], "inputs_targets",
        vocabulary=seqio.ByteVocabulary(), skip_bad_rows=True,
    )  # fmt: skip
    try:
        stats = custom.load_stats("input_errors_custom")
        assert (stats.rows, stats.examples, stats.skipped) == (3, 2, 1)
        assert stats.skipped_reasons[0].startswith(f"{bad_jsonl}:3: not UTF-8")
    finally:
        seqio.TaskRegistry.remove("input_errors_custom")


def test_custom_csv_reader_names_file_and_line(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes(b"inputs,targets\nq,a\n" + "café,a\n".encode("latin-1"))
    with pytest.raises(UserInputError, match=re.escape(f"{path}:3: not UTF-8")):
        custom.read_examples([str(path)], "inputs_targets")


def test_infer_inputs_reader_names_file_and_line(bad_jsonl):
    with pytest.raises(UserInputError, match=re.escape(f"{bad_jsonl}, line 3: not UTF-8")):
        jsonl_inputs.read_jsonl_examples(str(bad_jsonl), seqio.ByteVocabulary())


def test_ifs_readers(tmp_path):
    instructions = tmp_path / "instructions.jsonl"
    good = json.dumps({"kind": "full", "instruction": "i", "inputs": "x"}).encode()
    instructions.write_bytes(good + b"\n" + "é".encode("latin-1") + b"\n")
    with pytest.raises(UserInputError, match=re.escape(f"{instructions}:2: not UTF-8")):
        ifs_data.read_instructions(str(instructions))

    # Dialogue files skip non-UTF-8 records and count them (the behaviour kept).
    dialogues = tmp_path / "dialogues.jsonl"
    chat = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    dialogues.write_bytes(json.dumps(chat).encode() + b"\n" + BAD + b"\n")
    kept, stats = ifs_data.read_dialogues([str(dialogues)])
    assert len(kept) == 1 and stats.skipped == {"not UTF-8": 1}


# ----------------------------------------------------------------- wrongly typed settings


def test_wrong_type_names_the_binding():
    with pytest.raises(ConfigTypeError) as info:
        T5Config(emb_dim="abc")
    message = str(info.value)
    assert message.startswith("T5Config.emb_dim must be an integer, got 'abc' (str)")
    for bad, expected in [
        (lambda: T5Config(emb_dim=True), "T5Config.emb_dim must be an integer, got True"),
        (lambda: T5Config(scan_layers=1), "T5Config.scan_layers must be True or False"),
        (lambda: T5Config(dtype=32), "T5Config.dtype must be a string, got 32"),
        (lambda: DecoderConfig(num_layers=2.5), "DecoderConfig.num_layers must be an integer"),
        (lambda: DecoderConfig(kernel_init_stddev="0.02"), "a number or None, got '0.02'"),
        (lambda: LossConfig(z_loss="1e-4"), "LossConfig.z_loss must be a number"),
        (lambda: MeshConfig(fsdp="8"), "MeshConfig.fsdp must be an integer, got '8'"),
    ]:
        with pytest.raises(ConfigTypeError, match=re.escape(expected)):
            bad()
    # What a config legitimately holds: ints for floats, numpy ints, None where allowed.
    assert T5Config(dropout_rate=0, emb_dim=np.int64(64)).emb_dim == 64
    assert DecoderConfig(kernel_init_stddev=None).kernel_init_stddev is None


@pytest.mark.parametrize(
    "preset",
    sorted(p for p in (REPO / "gin/models").rglob("*.gin") if "architecture" not in p.name),
)
def test_shipped_presets_have_well_typed_fields(preset):
    parse_gin([preset], clear=True)
    config = T5Config() if "t5_1_1" in preset.parts else DecoderConfig()  # gin-bound fields
    assert config.emb_dim > 0


def test_wrong_type_on_the_command_line_is_one_line(capsys, tmp_path):
    # As typed in a shell: --gin.T5Config.emb_dim="'abc'"
    message = _cli_error(
        capsys, [*QUICK, f"--gin.MODEL_DIR={tmp_path}", "--gin.T5Config.emb_dim='abc'"]
    )
    assert message.startswith("error: T5Config.emb_dim must be an integer, got 'abc' (str)")


# ----------------------------------------------------------------- data without a network


class _Offline:
    """A Hugging Face file system whose every call fails as it does without a network."""

    def glob(self, path: str) -> list[str]:
        raise ConnectionError("[Errno -2] Name or service not known")

    open = glob


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setattr(multilingual, "_hf_fs", _Offline)


def _list_tasks():
    spec = importlib.util.spec_from_file_location("list_tasks", REPO / "tools/list_tasks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_listing_xp3_reads_no_data(offline, capsys):
    assert _list_tasks().main(["--module", "tasks.xp3", "--kind", "mixtures"]) == 0
    out, err = capsys.readouterr()
    header = out.splitlines()[0]
    assert "lazy: counted from the data when first read; --compute-rates" in header
    assert re.search(r"^xp3 +46 +lazy$", out, re.M) and re.search(r"^xp3mt +46 +lazy$", out, re.M)
    assert "Traceback" not in err


def test_listing_with_known_sizes_shows_the_rate(offline, capsys):
    xp3.register(languages=("en", "zu"), sizes={"xp3": {"en": 30, "zu": 10}})
    try:
        assert _list_tasks().main(["--module", "tasks.xp3", "--kind", "mixtures"]) == 0
    finally:
        xp3.register()
    out = capsys.readouterr().out
    assert re.search(r"^xp3 +2 +1\.0$", out, re.M)  # temperature rates are normalised
    assert re.search(r"^xp3mt +2 +lazy$", out, re.M)


def test_computing_xp3_rates_offline_is_one_line(offline, capsys):
    argv = ["--module", "tasks.xp3", "--kind", "mixtures", "--compute-rates"]
    assert _list_tasks().main(argv) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: Cannot list the 'train' files hf://datasets/bigscience/xP3")
    assert "ConnectionError: [Errno -2] Name or service not known" in line
    assert "tasks.xp3.register.roots = {'xp3': '/data/xP3'}" in line


def test_xp3_roots_bound_after_the_import_count(tmp_path):
    (tmp_path / "xP3" / "en").mkdir(parents=True)
    (tmp_path / "xP3" / "en" / "a.jsonl").write_bytes(GOOD + b"\n")
    gin_file = tmp_path / "xp3.gin"
    gin_file.write_text(
        "import tasks.xp3\n"
        f"tasks.xp3.register.roots = {{'xp3': '{tmp_path / 'xP3'}', 'xp3mt': '{tmp_path}/no'}}\n"
        "tasks.xp3.register.languages = ['en']\n"
    )
    parse_gin([gin_file], clear=True)
    try:
        source = data.get_mixture_or_task("xp3_en").source
        assert source.files("train") == [str(tmp_path / "xP3" / "en" / "a.jsonl")]
        missing = data.get_mixture_or_task("xp3mt_en")
        with pytest.raises(DataUnavailableError) as info:
            missing.get_dataset({"inputs": 8, "targets": 8}, split="train")
        assert f"No files match ['{tmp_path}/no/en/*.jsonl']" in str(info.value)
        assert "tasks.xp3.register.roots" in str(info.value)
        assert isinstance(info.value, FileNotFoundError)
    finally:
        gin.clear_config()
        xp3.register()


def test_training_data_for_xp3_offline_is_one_error(offline):
    """What train does once the model is built: a task named by a bound module, its batches."""
    parse_gin([], ["import_task_modules.modules = ['tasks.demo', 'tasks.xp3']"], clear=True)
    with pytest.raises(DataUnavailableError) as info:
        data.get_dataset(
            "xp3_en", task_feature_lengths={"inputs": 32, "targets": 8}, batch_size=4, seed=0
        )
    message = str(info.value)
    assert message.startswith("Cannot list the 'train' files hf://datasets/bigscience/xP3/en/")
    assert "tasks.xp3.register.roots" in message and "\n" not in message


def test_flan_without_prepared_tfds_data_is_one_error(monkeypatch, tmp_path):
    import tasks.flan.registration as flan

    def offline_load(*args, **kwargs):
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(seqio.TfdsDataSource, "get_dataset", offline_load)
    source = flan.FlanTfdsSource("glue/rte:2.0.0", tfds_data_dir=str(tmp_path))
    with pytest.raises(DataUnavailableError) as info:
        source.get_dataset("train")
    message = str(info.value)
    assert f"TFDS data set glue/rte:2.0.0 is not prepared in {tmp_path}" in message
    assert "`tfds build glue/rte`" in message and "TFDS_DATA_DIR" in message
    # Prepared data that fails to read keeps its own error.
    (tmp_path / "glue" / "rte" / "2.0.0").mkdir(parents=True)
    (tmp_path / "glue" / "rte" / "2.0.0" / "dataset_info.json").write_text("{}")
    with pytest.raises(ConnectionError):
        source.get_dataset("train")


def test_p3_unreachable_data_is_one_error():
    import tasks.p3 as p3
    from tasks.p3 import registration

    calls = []

    def loader(name, subset, split):
        calls.append((name, subset, split))
        if subset == "rte":
            raise ConnectionError("Couldn't reach 'super_glue' on the Hub")
        return [{"text": "x"}]

    previous = p3.set_example_loader(loader)
    try:
        with pytest.raises(DataUnavailableError) as info:
            registration.check_loadable("super_glue", "rte", "train")
        registration.check_loadable("super_glue", "cb", "train")
        registration.check_loadable("super_glue", "cb", "train")  # checked once
    finally:
        p3.set_example_loader(previous)
    message = str(info.value)
    assert message.startswith("P3 data set super_glue/rte (split 'train') could not be loaded")
    assert "HF_DATASETS_OFFLINE=1" in message and "set_example_loader" in message
    assert calls.count(("super_glue", "cb", "train")) == 1


# ----------------------------------------------------------------- README routes


def _readme_task_routes() -> list[str]:
    """The gin blocks of the README's "Tasks and mixtures" section, as written there."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("## Tasks and mixtures", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```gin\n(.*?)```", section, re.S)


def test_readme_shows_both_routes():
    blocks = _readme_task_routes()
    assert len(blocks) == 2
    assert any("import_task_modules.modules = ['tasks.demo', 'tasks.custom']" in b for b in blocks)
    assert any("\nimport tasks.custom\n" in b for b in blocks)


@pytest.mark.parametrize("route", range(2))
def test_readme_route_registers_your_jsonl_task(route, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # the README's relative vocabulary path, as in its commands
    chats = [
        [("user", "Name a colour."), ("assistant", "Blue.")],
        [("system", "Be brief."), ("user", "2+2?"), ("assistant", "4"), ("user", "3+3?"),
         ("assistant", "6")],
    ]  # fmt: skip
    sft = tmp_path / "sft.jsonl"
    sft.write_text(
        "".join(
            json.dumps({"messages": [{"role": r, "content": c} for r, c in chat]}) + "\n"
            for chat in chats
        ),
        encoding="utf-8",
    )
    block = _readme_task_routes()[route]
    assert "'/data/sft.jsonl'" in block
    gin_file = tmp_path / "my_task.gin"
    gin_file.write_text(block.replace("/data/sft.jsonl", str(sft)))
    parse_gin([REPO / "gin/runs/quickstart.gin", gin_file], clear=True)
    try:
        data.check_vocabulary_fits("my_sft", T5Config().vocab_size)  # train's first lookup
        task = data.get_mixture_or_task("my_sft")
        assert task.source.num_input_examples("train") == 3  # one example per assistant turn
        ds = task.get_dataset({"inputs": 64, "targets": 16}, split="train", shuffle=False)
        targets = [ex["targets_pretokenized"].decode() for ex in ds.as_numpy_iterator()]
        assert targets == ["Blue.", "4", "6"]
    finally:
        seqio.TaskRegistry.remove("my_sft")


# ----------------------------------------------------------------- quiet start-up

TF_NOISE = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1796033351.255362   32362 cudart_stub.cc:31] Could not find cuda drivers on "
    "your machine, GPU will not be used.",
    "I0000 00:00:1796034312.625648    4833 cpu_feature_guard.cc:227] This TensorFlow binary is "
    "optimized to use available CPU instructions in performance-critical operations.",
    "To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow "
    "with the appropriate compiler flags.",
    "E0000 00:00:1711.123   77 cuda_dnn.cc:8310] Unable to register cuDNN factory: Attempting "
    "to register factory for plugin cuDNN when one has already been registered",
]
NOT_NOISE = [
    "E0000 00:00:1711.123   77 pjrt_client.cc:12] Out of memory while allocating 3 GiB",
    "Traceback (most recent call last):",
    "error: T5Config.emb_dim must be an integer",
]


def test_start_up_noise_is_filtered_and_the_rest_kept(capfd):
    assert all(quiet.is_noise(line) for line in TF_NOISE)
    assert not any(quiet.is_noise(line) for line in NOT_NOISE)
    with quiet.filtered_stderr():  # C++ writes go to descriptor 2 directly, as here
        os.write(2, "\n".join([TF_NOISE[0], NOT_NOISE[0], *TF_NOISE[1:]]).encode() + b"\n")
    assert capfd.readouterr().err == f"{NOT_NOISE[0]}\n"


def test_gin_file_lookups_are_not_logged(caplog):
    from gin import resource_reader

    caplog.set_level(logging.INFO)
    resource_reader.system_path_file_exists("models/t5_1_1/mini.gin")  # gin logs per file
    assert any("system_path_file_exists" in r.getMessage() for r in caplog.records)
    caplog.clear()
    parse_gin(["models/t5_1_1/mini.gin"], clear=True)  # a relative name, and an include
    assert not [r.getMessage() for r in caplog.records if "system_path" in r.getMessage()]


def test_seqio_packing_warning_is_dropped_and_other_warnings_kept(caplog):
    quiet.quiet_startup()
    absl = logging.getLogger("absl")
    absl.warning(
        "Features not in `features_length` will be removed during packing: {'inputs_pretokenized'}"
    )
    absl.warning("Dataset has no examples")
    assert [r.getMessage() for r in caplog.records] == ["Dataset has no examples"]
