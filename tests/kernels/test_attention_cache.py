"""Cold start of hal.kernels.attention: the cost model, the lazy refinement, and what is kept on disk.

Runs on a CPU: the cost model and the on-disk tuning need no GPU, the kernels run in Triton's interpreter (this
module sets TRITON_INTERPRET=1 when it is imported before triton). What needs a GPU (timing candidates, Triton's
compiled binaries) is exercised through a fake timer here and by ``pytest -m gpu`` / benchmarks/attention.py
--cold-start there.
"""

import json
import math
import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch

CUDA = torch.cuda.is_available()  # without one, conftest.py has switched Triton's interpreter on

from hal.kernels.attention import (
    AttentionCacheWarning,
    AttentionKernel,
    disk_cache,
    patterns,
    warmup,
)
from hal.kernels.attention.blockmap import BlockMapCache, tile_states
from hal.kernels.attention.configs import HOPPER, TileConfig
from hal.kernels.attention.tuner import REFINE_CANDIDATES, KernelChoice, bucket_tuning

needs_kernel = pytest.mark.skipif(
    not (CUDA or os.environ.get("TRITON_INTERPRET") == "1"),
    reason="no CUDA GPU, and triton was imported before this module could set TRITON_INTERPRET=1")
DEVICE = "cuda" if CUDA else "cpu"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh, empty hal cache dir for one test."""
    monkeypatch.setenv("HAL_CACHE_DIR", str(tmp_path / "hal-cache"))
    return tmp_path / "hal-cache"


def inputs(b=1, h=2, h_kv=1, s=64, d=16, seed=0):
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    q = torch.randn(b, h, s, d, generator=g, device=DEVICE).half()
    k = torch.randn(b, h_kv, s, d, generator=g, device=DEVICE).half()
    return q, k, torch.randn(b, h_kv, s, d, generator=g, device=DEVICE).half()


def fresh_kernel(pattern=None, d=16):
    """A kernel object of its own (compile_attention would return the process-wide one, with its memory cache)."""
    return AttentionKernel(pattern or patterns.causal(), None, d, torch.float16, None, autotune=True)


# ------------------------------------------------------------------------------------------- the cost model

def shaped(*shape):
    """A tensor of this shape without its memory (the cost model reads shapes only)."""
    return torch.zeros((), dtype=torch.bfloat16).expand(*shape)


PINGPONG = TileConfig(128, 128, 4, 2, warp_specialize=True, gluon=True)
BWD = TileConfig(64, 64, 4, 2)


@pytest.mark.parametrize("name,pattern,expected", [
    # the (forward, dK/dV, dQ) configs the H100 autotuning measured fastest at S = 4096, B 4, H 16, D 128
    # (benchmarks/results/attention.json, run 12)
    ("causal", patterns.causal(), (PINGPONG, BWD, BWD)),
    ("sliding_window_512", patterns.sliding_window(512) & patterns.causal(),
     (TileConfig(64, 64, 4, 2, gluon=True), BWD, BWD)),
    ("dilated_2", patterns.dilated(2) & patterns.causal(), (TileConfig(64, 64, 4, 3), BWD, TileConfig(64, 32, 4, 3))),
    ("document_4", patterns.document([1024] * 4) & patterns.causal(), (TileConfig(64, 64, 4, 2, gluon=True), BWD, BWD)),
    ("prefix_lm_1024", patterns.prefix_lm(1024), (PINGPONG, BWD, BWD)),
])
def test_cost_model_first_choice_is_the_measured_winner_and_deterministic(name, pattern, expected):
    q, k = shaped(4, 16, 4096, 128), shaped(4, 16, 4096, 128)
    kernel = AttentionKernel(pattern, None, 128, torch.bfloat16, "hopper", autotune=True)
    ranked = kernel.rank_candidates(q, k, "forward")
    assert ranked[0][0] == expected[0], name
    assert {c for c, _ in ranked} == set(HOPPER.forward[128])
    again = AttentionKernel(pattern, None, 128, torch.bfloat16, "hopper", autotune=True).rank_candidates(q, k, "forward")
    assert again == ranked
    assert kernel.rank_candidates(q, k, "dkdv")[0][0] == expected[1]
    assert kernel.rank_candidates(q, k, "dq")[0][0] == expected[2]


def test_cost_model_figures_say_where_they_come_from():
    from hal.kernels.attention.cost_model import family_cost

    for kernel in ("forward", "dkdv", "dq"):
        for config in (TileConfig(128, 128, 4, 2, warp_specialize=True, gluon=True), TileConfig(64, 32, 4, 3),
                       TileConfig(256, 128, 8, 2), TileConfig(32, 32, 4, 1)):
            cost = family_cost(kernel, config)
            for figure in (cost.rate_per_sm, cost.partial_factor, cost.overhead_s):
                assert figure.kind in ("derived", "assumed") and figure.value > 0
    assert family_cost("forward", TileConfig(64, 32, 4, 3)).rate_per_sm.kind == "assumed"


def test_block_maps_reduced_from_the_fine_map_equal_a_direct_evaluation():
    pattern = patterns.sliding_window(70) & patterns.causal() | patterns.global_tokens(5)
    cache = BlockMapCache()
    for bm, bn in ((32, 32), (64, 64), (128, 64), (64, 32), (128, 128), (16, 48)):
        reduced = cache.states(pattern, 1, 1, 200, 333, bm, bn, torch.device("cpu"))
        direct = tile_states(pattern, 1, 1, 200, 333, bm, bn, torch.device("cpu"))
        assert torch.equal(reduced, direct), (bm, bn)


# ------------------------------------------------------------------------------------------- on disk

def test_tuning_is_written_then_read_back_by_another_kernel_object(cache):
    q, k, _ = inputs()
    first = fresh_kernel().tuning_for(q, k)
    assert not first.loaded and disk_cache.tuning_path(first.key).is_file()
    assert str(disk_cache.tuning_path(first.key)).startswith(str(cache))
    with warnings.catch_warnings():
        warnings.simplefilter("error", AttentionCacheWarning)
        second = fresh_kernel().tuning_for(q, k)
    assert second.loaded and second.key == first.key
    assert all(second.config(n) == first.config(n) for n in ("forward", "dkdv", "dq"))
    # a shape in the same bucket (lengths rounded up to a power of two) shares the file
    q2, k2, _ = inputs(s=60)
    assert fresh_kernel().tuning_for(q2, k2).loaded


def test_a_file_written_by_other_versions_is_ignored_with_a_warning(cache, monkeypatch):
    q, k, _ = inputs()
    key = fresh_kernel().tuning_for(q, k).key
    path = disk_cache.tuning_path(key)
    newer = dict(disk_cache.versions(), triton="99.0.0")
    monkeypatch.setattr(disk_cache, "versions", lambda: newer)
    with pytest.warns(AttentionCacheWarning, match="written by") as record:
        tuning = fresh_kernel().tuning_for(q, k)
    assert str(path) in str(record[0].message)
    assert not tuning.loaded
    assert json.loads(path.read_text())["versions"] == newer  # tuned again and overwritten


@pytest.mark.parametrize("content", ["{not json", json.dumps({"format": 1}), "corrupt-entry"])
def test_a_corrupt_file_is_ignored_with_a_warning_naming_it(cache, content):
    q, k, _ = inputs()
    key = fresh_kernel().tuning_for(q, k).key
    path = disk_cache.tuning_path(key)
    if content == "corrupt-entry":  # valid JSON of the right key and versions, but a config with a bad field
        document = json.loads(path.read_text())
        document["entry"]["forward"]["chosen"] = {"block_m": 32, "tiles": 7}
        content = json.dumps(document)
    path.write_text(content)
    with pytest.warns(AttentionCacheWarning, match="ignored") as record:
        tuning = fresh_kernel().tuning_for(q, k)
    assert str(path) in str(record[0].message)
    assert not tuning.loaded
    fresh_kernel().tuning_for(q, k)  # rewritten: readable again without a warning
    assert json.loads(path.read_text())["key"] == key


@needs_kernel
def test_a_fresh_process_reads_the_cache(cache):
    script = textwrap.dedent("""
        import os, sys, torch
        os.environ["TRITON_INTERPRET"] = "1"
        from hal.kernels.attention import compile_attention, patterns
        attn = compile_attention(patterns.sliding_window(20) & patterns.causal(), head_dim=16, dtype=torch.float16)
        q = torch.randn(1, 2, 64, 16).half()
        k = torch.randn(1, 1, 64, 16).half()
        out = attn(q, k, k)
        tuning = attn.tuning_for(q, k)
        print(tuning.loaded, tuning.config("forward"), bool(torch.isfinite(out).all()))
    """)
    env = dict(os.environ, HAL_CACHE_DIR=str(cache), TRITON_INTERPRET="1")
    runs = [subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=240)
            for _ in range(2)]
    for run in runs:
        assert run.returncode == 0, run.stderr[-2000:]
    first, second = (run.stdout.split(" ", 1) for run in runs)
    assert first[0] == "False" and second[0] == "True"  # the second process found the first one's choice
    assert first[1] == second[1] and second[1].rstrip().endswith("True")
    assert list((cache / "attention" / "modules").glob("attention_*.py"))  # generated code kept, named by content


def test_temporary_module_folder_is_removed_at_exit(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")  # a cache dir under a regular file cannot be created: modules go to a temporary folder
    script = textwrap.dedent("""
        import warnings
        from hal.kernels.attention import disk_cache
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            path = disk_cache.module_file("attention_test.py", "x = 1\\n")
        assert path.read_text() == "x = 1\\n" and caught, (path, caught)
        print(path.parent)
    """)
    env = dict(os.environ, HAL_CACHE_DIR=str(blocker / "cache"))
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    folder = run.stdout.strip()
    assert folder and not os.path.exists(folder)


def test_triton_binaries_go_under_hal_cache_dir_only_inside_the_block(cache, monkeypatch):
    knobs = pytest.importorskip("triton").knobs
    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)
    before = knobs.cache.dir
    with disk_cache.triton_binaries():
        assert knobs.cache.dir == str(cache / "attention" / "triton")
    assert knobs.cache.dir == before
    monkeypatch.setenv("TRITON_CACHE_DIR", str(cache / "users-choice"))
    with disk_cache.triton_binaries():
        assert knobs.cache.dir == str(cache / "users-choice")


# ------------------------------------------------------------------------------------------- lazy refinement

CANDIDATES = [TileConfig(128, 128, 4, 2), TileConfig(64, 64, 4, 2), TileConfig(128, 64, 4, 2), TileConfig(64, 64, 4, 3)]


def fake_rank(kernel):
    return [(c, 1e-3 * (i + 1)) for i, c in enumerate(CANDIDATES)]  # the model prefers the list order


def test_refinement_times_a_bounded_number_of_candidates_one_per_call_and_persists(cache):
    key = {"test": "refinement"}
    measured_ms = {CANDIDATES[0]: 3.0, CANDIDATES[1]: 1.0, CANDIDATES[2]: 2.0, CANDIDATES[3]: 0.5}
    timed = []

    def timer(run):
        return measured_ms[run()]

    def run(config):
        timed.append(config)
        return config

    tuning = bucket_tuning(key, fake_rank, timing=True, persist=True)
    assert tuning.config("forward") == CANDIDATES[0] and not tuning.loaded
    assert not tuning.refine("forward", run, timer)          # first call: the cost model's choice, nothing timed
    assert tuning.refine("forward", run, timer)              # second: the choice and the next candidate
    assert timed == CANDIDATES[:2] and tuning.config("forward") == CANDIDATES[1]
    assert tuning.refine("forward", run, timer)              # third: one more
    assert timed == CANDIDATES[:3] and tuning.config("forward") == CANDIDATES[1]
    assert not tuning.refine("forward", run, timer)          # done after REFINE_CANDIDATES: the 4th is never timed
    assert len(timed) == REFINE_CANDIDATES and not tuning.choices["forward"].pending
    assert tuning.choices["forward"].source == "measured"
    reloaded = bucket_tuning(key, fake_rank, timing=True, persist=True)   # what a new process gets
    assert reloaded.loaded and reloaded.config("forward") == CANDIDATES[1]
    assert not reloaded.choices["forward"].pending
    assert reloaded.choices["dkdv"].pending                 # the other kernels were not refined yet


def test_refinement_skips_a_candidate_that_fails_and_records_why(cache):
    def timer(run):
        config = run()
        if config == CANDIDATES[1]:
            raise RuntimeError("out of shared memory")
        return 1.0

    tuning = bucket_tuning({"test": "failure"}, fake_rank, timing=True, persist=False)
    for _ in range(4):
        tuning.refine("dq", lambda c: c, timer)
    choice = tuning.choices["dq"]
    assert choice.timed_ms[CANDIDATES[1]] == math.inf and "shared memory" in choice.errors[CANDIDATES[1]]
    assert choice.chosen == CANDIDATES[0]  # equal times: the model's order decides


def test_a_config_that_fails_at_launch_yields_to_the_next_and_the_last_failure_says_all():
    choice = KernelChoice(CANDIDATES[:2], [1e-3, 2e-3], CANDIDATES[0], timing=False)
    choice.fail(CANDIDATES[0], RuntimeError("too many registers"))
    assert choice.chosen == CANDIDATES[1]
    with pytest.raises(RuntimeError, match="too many registers"):
        choice.fail(CANDIDATES[1], RuntimeError("no tensor cores"))


def test_without_a_gpu_the_cost_model_choice_is_final(cache):
    tuning = bucket_tuning({"test": "cpu"}, fake_rank, timing=False, persist=True)
    assert not tuning.pending and tuning.choices["forward"].source == "cost model"


@needs_kernel
def test_warmup_leaves_a_finished_tuning_on_disk(cache):
    attn = warmup(patterns.sliding_window(12, causal=True), [(1, 2, 64, 16), ((1, 2, 48, 16), (1, 1, 48, 16))],
                  dtype=torch.float16,
                  device=DEVICE)
    q, k, _ = inputs()
    tuning = attn.tuning_for(q, k)
    assert not tuning.pending and disk_cache.tuning_path(tuning.key).is_file()
    with pytest.raises(ValueError, match="same head dim"):
        warmup(patterns.causal(), [(1, 2, 64, 16), (1, 2, 64, 32)], device=DEVICE)


# ------------------------------------------------------------------------------------------- GPU

@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_gpu_first_call_untimed_then_refined_persisted_and_compiled_under_hal_cache(cache, monkeypatch):
    from hal.kernels.attention import attention_reference

    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(1, 4, 2048, 128, generator=g, device="cuda").bfloat16().requires_grad_() for _ in range(3))
    d_out = torch.randn(1, 4, 2048, 128, generator=g, device="cuda").bfloat16()
    pattern = patterns.sliding_window(300) & patterns.causal()
    ref, _ = attention_reference(q, k, v, pattern)
    ref_grads = torch.autograd.grad(ref, (q, k, v), d_out.double())
    kernel = AttentionKernel(pattern, None, 128, torch.bfloat16, None, autotune=True)
    for call in range(REFINE_CANDIDATES + 1):
        out = kernel(q, k, v)
        grads = torch.autograd.grad(out, (q, k, v), d_out)
        tuning = kernel.tuning_for(q, k)
        if call == 0:  # the cost model's choice, nothing timed
            assert all(not c.timed_ms for c in tuning.choices.values())
            assert tuning.choices["forward"].source == "cost model"
        assert float((out.double() - ref).norm() / ref.norm()) < 1e-2, call  # every config computes the same
        for ours, theirs in zip(grads, ref_grads):
            assert float((ours.double() - theirs).norm() / theirs.norm()) < 1e-2, call
    assert not tuning.pending and tuning.choices["forward"].source == "measured"
    assert len(tuning.choices["forward"].timed_ms) <= REFINE_CANDIDATES
    assert any((cache / "attention" / "triton").rglob("*.json"))  # Triton's compiled kernels under hal's cache dir
    reloaded = AttentionKernel(pattern, None, 128, torch.bfloat16, None, autotune=True).tuning_for(q, k)
    assert reloaded.loaded and not reloaded.pending
    assert reloaded.config("forward") == tuning.config("forward")


def test_running_out_of_memory_while_refining_marks_no_candidate(cache):
    def timer(run):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    tuning = bucket_tuning({"test": "oom"}, fake_rank, timing=True, persist=False)
    for _ in range(3):
        tuning.refine("forward", lambda c: c, timer)
    assert not tuning.choices["forward"].errors and tuning.choices["forward"].pending == CANDIDATES[:REFINE_CANDIDATES]
