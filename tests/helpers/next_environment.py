"""The second CI environment (`make test-next`): the suite on the next Python / JAX generation.

That environment installs every dependency except torch and transformers
(tools/next_requirements.py), so:

* a test whose code imports one of ``NOT_INSTALLED`` (the Hugging Face oracles) is skipped
  there, with a reason that names the test, the package and the environment
  (`install_skip_finder`). Anywhere else a missing package stays an import error: nothing is
  skipped in `make test`.
* `--core-selection` keeps the tests of ``SELECTION`` only: each JAX surface that changes
  between generations (Pallas lowering and interpret, shard_map, NamedSharding, remat policies,
  orbax, libtpu AOT, nnx transforms, optax partitions, PRNG) once, in ~2 minutes on 2 cores,
  for a quick check after a JAX upgrade; CI runs the whole suite (~14 minutes).
"""

from __future__ import annotations

import importlib.abc
import importlib.metadata
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

FLAG = "T5X_INSTRUCT_NEXT_ENVIRONMENT"  # "1": the missing packages below skip, not fail
# PyPI's torch for this Python is a multi-GB CUDA build; transformers' models need torch.
NOT_INSTALLED = frozenset(("torch", "transformers"))
REPO = Path(__file__).resolve().parents[2]
ENVIRONMENT = Path(sys.prefix).resolve()  # the virtual environment, which may sit in REPO

# Node ids or their prefixes up to "::" (a file) or "[" (every parametrization of a test). An
# entry that matches no collected test is an error, so a rename cannot empty the selection.
SELECTION = (
    # kernels: Pallas -> Triton / Mosaic lowering, interpret numerics of both families
    "tests/test_kernel_lowering.py",
    "tests/test_flash_attention.py::test_flash_matches_reference[everything]",
    "tests/test_flash_attention.py::test_decode_kernel_matches_reference[3-True-True-gpu]",
    "tests/test_flash_attention.py::test_decode_kernel_matches_reference[3-True-True-tpu]",
    "tests/test_flash_attention.py::test_pallas_impl_routes_decode_and_has_gradients",
    "tests/test_flash_tpu.py::test_tpu_family_matches_reference[everything]",
    "tests/test_flash_tpu.py::test_tile_plan_skips_and_redirects_copies",
    "tests/test_models_pallas.py::test_pallas_training_matches_xla[decoder-tpu]",
    # sharded Pallas (shard_map), partitioning (jit + NamedSharding), sharded equivalence
    "tests/test_pallas_sharded.py::test_flash_kernel_sequence_sharded_mqa",
    "tests/test_pallas_sharded.py::test_decode_kernel_sharded",
    "tests/test_pallas_sharded.py::test_layout_plan_from_rules",
    "tests/test_pallas_sharded.py::test_train_step_sharded_pallas_matches_xla[decoder-tensor]",
    "tests/test_partitioning.py",
    "tests/test_sharded_equivalence.py::test_loss_and_gradients_match_single_device[dp2-tp4-t5]",
    "tests/test_sharded_equivalence.py::test_loss_and_gradients_match_single_device[dp2-tp4-decoder]",
    # layers and models: nnx build, presets (abstract evaluation), scan / remat, packing
    "tests/test_presets.py",
    "tests/test_t5x_parity.py",
    "tests/test_initializers.py::test_t5_initialisers_are_t5x_s",
    "tests/test_scan_remat.py::test_scan_matches_loop[decoder]",
    "tests/test_scan_remat.py::test_remat_policy_keeps_gradients[decoder-dots-scan]",
    "tests/test_scan_remat.py::test_remat_policy_keeps_gradients[decoder-full-loop]",
    "tests/test_packing.py::test_decoder_packed_matches_each_alone[prefix_lm-scan]",
    # training step, optimizers, checkpoints (orbax), T5X checkpoint assembly
    "tests/test_train_step.py::test_cross_entropy_matches_numpy_with_smoothing_and_z_loss",
    "tests/test_train_step.py::test_checkpoint_round_trip_is_exact_and_sharded",
    "tests/test_adafactor.py::test_matches_numpy_t5x_update_over_several_steps[t5x_defaults]",
    "tests/test_adafactor.py::test_train_state_shardings_with_factored_slots_and_frozen_params[loop]",
    "tests/test_param_checkpoints.py",
    "tests/test_t5x_import.py",
    # decoding: KV cache, sampling (PRNG), beam search
    "tests/test_decoding.py::test_decoder_cached_steps_match_full_recompute[scan]",
    "tests/test_decoding.py::test_t5_cached_steps_match_teacher_forcing[scan]",
    "tests/test_decoding_sampling.py::test_sample_frequencies_match_the_truncated_softmax[top_k3]",
    "tests/test_beam_search.py::test_beam_search_equals_exhaustive_search[decoder-loop-alpha2]",
    # plug-ins
    "tests/test_lora.py::test_adapters_round_trip_and_move_between_loop_and_scan",
    "tests/test_lora.py::test_sharded_loss_and_gradients_match_single_device[decoder-dp8]",
    "tests/test_prompt_tuning.py::test_only_the_prompt_trains_and_holds_optimizer_state[decoder]",
    "tests/test_prompt_tuning_init.py",
    "tests/test_distillation_losses.py",
    "tests/test_distillation_plugin.py::test_offline_topk_loss_reads_the_store",
    "tests/test_ifs_data.py",
    "tests/test_ifs_plugin.py::test_plateau_rule[",
    "tests/test_ifs_plugin.py::test_settings_are_checked",
    # AOT for a TPU slice (libtpu of this jax), multi-host set-up and a 2-process run (gloo),
    # paths, every core import
    "tests/test_aot_compile.py",
    "tests/test_distributed_setup.py",
    "tests/test_multihost_core.py",
    "tests/test_cloud_paths.py",
    "tests/test_core_without_tensorflow.py",
)


def _repo_frames() -> Iterator[tuple[Path, int]]:
    """This repository's frames on the stack of the pending import, innermost first."""
    frame = sys._getframe(1)
    while frame is not None:
        name = frame.f_code.co_filename
        if name.startswith("<") or "importlib" in name or name == __file__:  # import machinery
            frame = frame.f_back
            continue
        path = Path(name).resolve()
        if not path.is_relative_to(REPO) or path.is_relative_to(ENVIRONMENT):
            return  # the import is a library's own (e.g. a probe for an optional package)
        yield path.relative_to(REPO), frame.f_lineno
        frame = frame.f_back


class _SkipWhatTheNextEnvironmentLacks(importlib.abc.MetaPathFinder):
    """Last on sys.meta_path: consulted only for a module that no installed finder has."""

    def find_spec(self, fullname, path=None, target=None):
        top = fullname.partition(".")[0]
        if top not in NOT_INSTALLED:
            return None
        frames = list(_repo_frames())
        if not frames:
            return None  # a library probing for an optional package gets its ImportError
        tests = [f for f in frames if f[0].parts[0] == "tests"] or frames
        where = "{}:{}".format(*tests[-1])
        python = ".".join(map(str, sys.version_info[:2]))
        jax = importlib.metadata.version("jax")
        raise pytest.skip.Exception(
            f"{where} needs {top}, which the second test environment (Python {python}, "
            f"jax {jax}, `make test-next`) does not install; `make test` runs it",
            allow_module_level=True,
        )


def install_skip_finder() -> None:
    sys.meta_path.append(_SkipWhatTheNextEnvironmentLacks())


def _selected(nodeid: str, entry: str) -> bool:
    if entry.endswith("["):
        return nodeid.startswith(entry)
    return nodeid == entry or nodeid.startswith((entry + "::", entry + "["))


def apply_selection(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Keep the tests of SELECTION. An entry whose file is gone, or whose file was collected
    without a test that matches it, stops the run."""
    collected_files = {i.nodeid.split("::")[0] for i in items}

    def is_stale(entry: str) -> bool:
        file = entry.split("::")[0]
        if not (REPO / file).is_file():
            return True
        return file in collected_files and not any(_selected(i.nodeid, entry) for i in items)

    if stale := [e for e in SELECTION if is_stale(e)]:
        raise pytest.UsageError(
            "--core-selection: these entries of SELECTION (tests/helpers/next_environment.py) "
            f"match no test; a test was renamed or removed, update them: {stale}"
        )
    keep = [i for i in items if any(_selected(i.nodeid, e) for e in SELECTION)]
    kept = {id(i) for i in keep}
    config.hook.pytest_deselected(items=[i for i in items if id(i) not in kept])
    items[:] = keep
