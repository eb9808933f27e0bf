"""Tests of hal.distributed: ring and all-to-all attention over 2 and 4 gloo processes vs single-process attention.

The multi-process checks fork one group of processes per world size (module-scoped fixture): every rank builds the
same full float64 tensors, shards them, runs context-parallel attention forward and backward, and rank 0 compares
the unsharded output and gradients with hal's float64 reference attention on the full tensors. Results come back
as JSON; each case is then its own test. Single-process tests cover the pieces: the zig-zag block plan, the block
attention (torch, and hal's kernel under TRITON_INTERPRET=1), the log-sum-exp merge, the cost model, mesh errors.
"""

import datetime
import json
import math
import multiprocessing
import os
import socket
import sys
import traceback

import pytest
import torch

CUDA = torch.cuda.is_available()
if not CUDA and "triton" not in sys.modules:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch.distributed as dist
import torch.multiprocessing as mp

from hal import distributed as hd
from hal.capability import Figure
from hal.distributed.block import BlockMask, KernelBlockAttention, TorchBlockAttention
from hal.distributed.device_mesh import TORCHRUN_VARIABLES
from hal.distributed.ring import block_call, merge
from hal.errors import DeviceUnavailable, InvalidInput
from hal.kernels.attention import attention_reference

START = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
B, D = 2, 4
CHUNK = 3  # tokens per zig-zag chunk: S = 2·n·CHUNK


def documents(seq: int) -> torch.Tensor:
    """(B, S) ids: batch 0 has documents that straddle shards (lengths 5, S-9, 4), batch 1 one every 3 tokens."""
    first = torch.tensor([0] * 5 + [1] * (seq - 9) + [2] * 4)
    return torch.stack([first, torch.arange(seq) // 3])


def reference_mask(pattern: str, docs: torch.Tensor | None):
    def allowed(b, h, q_idx, kv_idx):
        ok = (q_idx >= kv_idx) if pattern == "causal" else torch.ones((), dtype=torch.bool)
        return ok & (docs[b, q_idx] == docs[b, kv_idx]) if docs is not None else ok
    return allowed


def cases(n: int) -> dict[str, dict]:
    """name -> settings of one forward+backward check at world size n."""
    out = {}
    for method in hd.METHODS:
        for pattern in hd.PATTERNS:
            for docs in (False, True):
                out[f"{method}-{pattern}{'-documents' if docs else ''}"] = dict(
                    method=method, pattern=pattern, docs=docs, heads=4, kv_heads=4, dtype="float64")
    out["ring-causal-gqa"] = dict(method="ring", pattern="causal", docs=True, heads=4, kv_heads=1, dtype="float64")
    out["all_to_all-causal-gqa"] = dict(method="all_to_all", pattern="causal", docs=False, heads=2 * n, kv_heads=n,
                                        dtype="float64")
    out["ring-causal-float32"] = dict(method="ring", pattern="causal", docs=True, heads=4, kv_heads=2, dtype="float32")
    out["all_to_all-full-bfloat16"] = dict(method="all_to_all", pattern="full", docs=False, heads=4, kv_heads=4,
                                           dtype="bfloat16")
    return out


def run_case(mesh, n: int, spec: dict, device: str = "cpu", seq: int | None = None, dim: int = D) -> dict:
    seq = 2 * n * CHUNK if seq is None else seq
    dtype = getattr(torch, spec["dtype"])
    g = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(B, spec["heads"], seq, dim, generator=g, device=device, dtype=torch.float64)
    k, v = (torch.randn(B, spec["kv_heads"], seq, dim, generator=g, device=device, dtype=torch.float64)
            for _ in range(2))
    d_out = torch.randn(B, spec["heads"], seq, dim, generator=g, device=device, dtype=torch.float64)
    docs = documents(seq).to(device) if spec["docs"] else None
    full = [t.to(dtype).double().requires_grad_() for t in (q, k, v)]  # the reference sees the same rounded inputs
    ref, _ = attention_reference(*full, reference_mask(spec["pattern"], docs))
    ref_grads = torch.autograd.grad((ref * d_out).sum(), full)
    local = [hd.shard(t.to(dtype), mesh).requires_grad_() for t in (q, k, v)]
    out = hd.context_parallel_attention(*local, mesh=mesh, method=spec["method"], pattern=spec["pattern"],
                                        document_ids=None if docs is None else hd.shard(docs, mesh, dim=1))
    grads = torch.autograd.grad((out.double() * hd.shard(d_out, mesh)).sum(), local)
    got = [hd.unshard(t.detach(), mesh).double() for t in (out, *grads)]
    want = [ref.detach(), *ref_grads]
    rel = [float((a - b).norm() / b.norm()) for a, b in zip(got, want)]
    return {"dtype": str(out.dtype), "shape": list(out.shape), "rel_errors": rel}


def expect_error(fn) -> dict:
    try:
        fn()
    except Exception as e:  # noqa: BLE001 (the test checks the type it records)
        return {"type": type(e).__name__, "message": str(e)}
    return {"type": None, "message": "no error raised"}


def error_cases(mesh, n: int) -> dict[str, dict]:
    seq = 2 * n * CHUNK
    x = torch.zeros(B, 4, seq // n, D, dtype=torch.float64)
    odd = torch.zeros(B, 4, seq // n + 1, D, dtype=torch.float64)
    three_heads = torch.zeros(B, 3, seq // n, D, dtype=torch.float64)
    return {
        "world_size_mismatch": expect_error(lambda: hd.mesh("cpu", n + 1)),
        "nccl_kind_on_gloo": expect_error(lambda: hd.mesh("hopper", n)),
        "sequence_not_divisible": expect_error(lambda: hd.shard(torch.zeros(1, 1, seq + 2, D), mesh)),
        "odd_local_shard": expect_error(lambda: hd.context_parallel_attention(odd, odd, odd, mesh=mesh)),
        "heads_not_divisible": expect_error(lambda: hd.context_parallel_attention(
            three_heads, three_heads, three_heads, mesh=mesh, method="all_to_all")),
        "unknown_method": expect_error(lambda: hd.context_parallel_attention(x, x, x, mesh=mesh, method="tree")),
        "integer_inputs": expect_error(lambda: hd.context_parallel_attention(
            x.long(), x.long(), x.long(), mesh=mesh)),
        "float_document_ids": expect_error(lambda: hd.context_parallel_attention(
            x, x, x, mesh=mesh, document_ids=torch.zeros(seq // n))),
    }


def worker(rank: int, n: int, store: str, out_path: str) -> None:
    torch.set_num_threads(1)  # the CPU cores are shared; one thread per rank, no oversubscription
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=n,
                            timeout=datetime.timedelta(seconds=60))  # a hang fails the test instead of stalling it
    try:
        mesh = hd.mesh("cpu", n)
        results = {"cases": {}, "errors": error_cases(mesh, n)}
        for name, spec in cases(n).items():
            try:
                results["cases"][name] = run_case(mesh, n, spec)
            except Exception:  # noqa: BLE001 (reported per case; the ranks stay in step since all raise alike)
                results["cases"][name] = {"exception": traceback.format_exc()}
        if rank == 0:
            with open(out_path, "w") as f:
                json.dump(results, f)
    finally:
        dist.destroy_process_group()


def torchrun_env_worker(rank: int, n: int, port: int, out_path: str) -> None:
    """mesh() initialising the group itself from the variables torchrun sets."""
    torch.set_num_threads(1)
    set_torchrun_env(rank, n, port)
    mesh = hd.mesh("cpu", n)
    total = torch.ones(1)
    dist.all_reduce(total, group=mesh.get_group())
    if rank == 0:
        with open(out_path, "w") as f:
            json.dump({"size": mesh.size(), "sum": total.item(), "backend": str(dist.get_backend())}, f)
    dist.destroy_process_group()


def launch(fn, n: int, *args) -> None:
    mp.start_processes(fn, args=(n, *args), nprocs=n, start_method=START)


def free_port() -> int:
    """A TCP port of this host that nothing listens on now, for a process group's rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def set_torchrun_env(rank: int, n: int, port: int) -> None:
    """The variables torchrun sets for one rank of ``n`` on this host."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(n), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))


@pytest.fixture(scope="module", params=[2, 4])
def world(request, tmp_path_factory):
    n = request.param
    folder = tmp_path_factory.mktemp(f"cp{n}")
    launch(worker, n, str(folder / "store"), str(folder / "results.json"))
    return n, json.loads((folder / "results.json").read_text())


CASE_NAMES = sorted(cases(2))
TOLERANCE = {"float64": 1e-12, "float32": 1e-5, "bfloat16": 3e-2}


@pytest.mark.parametrize("name", CASE_NAMES)
def test_matches_single_process_attention(world, name):
    n, results = world
    result = results["cases"][name]
    assert "exception" not in result, result.get("exception")
    spec = cases(n)[name]
    assert result["dtype"] == f"torch.{spec['dtype']}"
    assert result["shape"] == [B, spec["heads"], 2 * CHUNK, D]
    for what, err in zip(("out", "dq", "dk", "dv"), result["rel_errors"]):
        assert err < TOLERANCE[spec["dtype"]], f"{name} at n={n}: {what} relative error {err:.2e}"


ERRORS = {
    "world_size_mismatch": ("DeviceUnavailable", "--nproc-per-node"),
    "nccl_kind_on_gloo": ("DeviceUnavailable", "nccl"),
    "sequence_not_divisible": ("ShapeError", "not divisible by 2·n"),
    "odd_local_shard": ("ShapeError", "two equal chunks"),
    "heads_not_divisible": ("ShapeError", "method='ring'"),
    "unknown_method": ("InvalidInput", "ring, all_to_all"),
    "integer_inputs": ("DTypeError", "torch.int64"),
    "float_document_ids": ("DTypeError", "integer tensor"),
}


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_bad_inputs_raise_named_errors(world, name):
    n, results = world
    kind, text = ERRORS[name]
    got = results["errors"][name]
    assert got["type"] == kind, got
    assert text in got["message"], got["message"]


def test_mesh_initialises_from_torchrun_environment(tmp_path):
    port = free_port()
    launch(torchrun_env_worker, 2, port, str(tmp_path / "env.json"))
    got = json.loads((tmp_path / "env.json").read_text())
    assert got == {"size": 2, "sum": 2.0, "backend": "gloo"}


# ------------------------------------------------------------------------------------------ single process

def test_mesh_without_process_group_says_to_use_torchrun(monkeypatch):
    for name in TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert not dist.is_initialized()
    with pytest.raises(DeviceUnavailable, match="torchrun --nproc-per-node 4"):
        hd.mesh("cpu", 4)


@pytest.mark.parametrize("kind, n", [("loihi2", 2), ("cpu", 0), ("cpu", 1.5)])
def test_mesh_refuses_bad_arguments(kind, n):
    with pytest.raises(InvalidInput):
        hd.mesh(kind, n)


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_block_calls_cover_exactly_the_causal_mask(n):
    """Per (rank, owner) the computed rectangle with its local mask equals the global causal mask restricted to
    the rank's query positions and the owner's key positions: nothing missed, nothing extra."""
    local = 2 * CHUNK
    for rank in range(n):
        q_pos = hd.positions(n * local, rank, n)
        for owner in range(n):
            kv_pos = hd.positions(n * local, owner, n)
            want = q_pos[:, None] >= kv_pos[None, :]
            call = block_call(rank, owner, n, local, causal=True)
            got = torch.zeros(local, local, dtype=torch.bool)
            rows = torch.arange(call.q.stop - call.q.start)[:, None]  # local indices within the computed rectangle
            cols = torch.arange(call.kv.stop - call.kv.start)[None, :]
            got[call.q, call.kv] = (rows >= cols) if call.causal else True
            assert torch.equal(got, want), (rank, owner)
            if owner != rank:  # zig-zag balance: every off-diagonal step computes half the block, unmasked
                assert got.sum() == local * local // 2 and not call.causal


def test_zigzag_positions_partition_the_sequence():
    n, seq = 3, 18
    parts = [hd.positions(seq, r, n) for r in range(n)]
    assert torch.equal(torch.sort(torch.cat(parts)).values, torch.arange(seq))
    assert parts[0].tolist() == [0, 1, 2, 15, 16, 17]
    assert hd.chunk_ids(1, 3) == (1, 4)


def block_inputs(dtype=torch.float64, heads=4, kv_heads=2, seq_q=10, seq_kv=7, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, heads, seq_q, dim, generator=g).to(dtype)
    k = torch.randn(B, kv_heads, seq_kv, dim, generator=g).to(dtype)
    v = torch.randn(B, kv_heads, seq_kv, dim, generator=g).to(dtype)
    d_out = torch.randn(B, heads, seq_q, dim, generator=g).to(dtype)
    q_docs = torch.tensor([[0] * 5 + [1] * 5, [0] * 10])
    kv_docs = torch.tensor([[1] * 7, [0] * 4 + [1] * 3])  # batch 0: the first 5 queries see no key (empty rows)
    return q, k, v, d_out, q_docs, kv_docs


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("docs", [False, True])
def test_torch_block_matches_reference(causal, docs, monkeypatch):
    q, k, v, d_out, q_docs, kv_docs = block_inputs()
    mask = BlockMask(causal, q_docs if docs else None, kv_docs if docs else None)

    def allowed(b, h, qi, ki):
        ok = (qi >= ki) if causal else torch.ones((), dtype=torch.bool)
        return ok & (q_docs[b, qi] == kv_docs[b, ki]) if docs else ok

    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    ref, ref_lse = attention_reference(*leaves, allowed)
    ref_grads = torch.autograd.grad((ref * d_out).sum(), leaves)
    monkeypatch.setattr("hal.distributed.block.SCORE_ELEMENTS_PER_SLAB", 3 * B * 4 * 7)  # 3 query rows per slab
    block = TorchBlockAttention()
    out, lse = block.forward(q, k, v, mask, q.shape[-1] ** -0.5)
    assert torch.allclose(out, ref, atol=1e-13, rtol=0)
    assert torch.equal(torch.isneginf(lse), torch.isneginf(ref_lse))
    finite = torch.isfinite(ref_lse)
    assert torch.allclose(lse[finite], ref_lse[finite], atol=1e-13, rtol=0)
    delta = (d_out * out).sum(-1)
    grads = block.backward(q, k, v, d_out, lse, delta, mask, q.shape[-1] ** -0.5)
    for got, want in zip(grads, ref_grads):
        assert not torch.isnan(got).any()
        assert torch.allclose(got, want, atol=1e-12, rtol=0)


def test_merge_of_two_key_halves_equals_attention_over_all_keys():
    q, k, v, _, q_docs, kv_docs = block_inputs(seq_kv=8)
    kv_docs = torch.tensor([[1] * 8, [0] * 4 + [1] * 4])
    block, scale = TorchBlockAttention(), 0.3
    whole, whole_lse = block.forward(q, k, v, BlockMask(False, q_docs, kv_docs), scale)
    a = block.forward(q, k[:, :, :4], v[:, :, :4], BlockMask(False, q_docs, kv_docs[:, :4]), scale)
    b = block.forward(q, k[:, :, 4:], v[:, :, 4:], BlockMask(False, q_docs, kv_docs[:, 4:]), scale)
    out, lse = merge(*a, *b)
    assert torch.isneginf(lse[0, :, :5]).all() and (out[0, :, :5] == 0).all()  # rows empty in both halves
    assert torch.allclose(out, whole, atol=1e-14, rtol=0)
    assert torch.equal(torch.isneginf(lse), torch.isneginf(whole_lse))


def check_kernel_block(causal: bool, seq: int, dim: int) -> None:
    """hal's attention kernel as a ring block: its lse, and its backward from an external (global) lse and delta."""
    pytest.importorskip("triton")
    device = "cuda" if CUDA else "cpu"
    q, k, v, d_out, _, _ = (t.to(device) for t in block_inputs(torch.bfloat16, seq_q=seq, seq_kv=seq, dim=dim))
    mask, scale = BlockMask(causal), dim ** -0.5
    kernel, torch_block = KernelBlockAttention(dim, torch.bfloat16), TorchBlockAttention()
    out, lse = kernel.forward(q, k, v, mask, scale)
    ref, ref_lse = torch_block.forward(q, k, v, mask, scale)
    assert float((out - ref).norm() / ref.norm()) < 1e-2
    assert (lse - ref_lse).abs().max() < 2e-2
    # a global lse one nat above the block's (as if other blocks held e - 1 times its mass) scales P by 1/e
    global_lse = ref_lse + 1.0
    delta = (d_out.float() * ref).sum(-1) / math.e
    got = kernel.backward(q, k, v, d_out, global_lse, delta, mask, scale)
    want = torch_block.backward(q, k, v, d_out, global_lse, delta, mask, scale)
    for name, a, b in zip(("dq", "dk", "dv"), got, want):
        assert float((a - b).norm() / b.norm()) < 2e-2, name


@pytest.mark.skipif(not (CUDA or os.environ.get("TRITON_INTERPRET") == "1"),
                    reason="no CUDA GPU, and triton was imported before this module could set TRITON_INTERPRET=1 "
                           "(run: TRITON_INTERPRET=1 pytest tests/distributed/test_context_parallel.py)")
@pytest.mark.parametrize("causal", [False, True])
def test_kernel_block_matches_torch_block(causal):
    check_kernel_block(causal, seq=32, dim=16)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("causal", [False, True])
def test_kernel_block_matches_torch_block_at_gpu_sizes(causal):
    check_kernel_block(causal, seq=1024, dim=128)


# ------------------------------------------------------------------------------------------- cost model

BANDWIDTH = Figure.datasheet(450e9, "B/s", "NVIDIA H200 datasheet: NVLink 900 GB/s (450 GB/s per direction)")
RATE = Figure.assumed(400e12, "FLOP/s", "a round bf16 attention rate for the example")


def test_cost_model_bytes_follow_the_formulas():
    choice = hd.choose_method(batch=1, heads=32, kv_heads=8, seq_len=1 << 17, head_dim=128, n=8, element_bytes=2,
                              link_bandwidth_b_per_s=BANDWIDTH, attention_flop_per_s=RATE)
    local = (1 << 17) // 8
    ring, a2a = choice.costs["ring"], choice.costs["all_to_all"]
    assert ring.bytes_per_rank.value == 7 * 2 * 8 * local * 128 * 2
    assert a2a.bytes_per_rank.value == pytest.approx(7 / 8 * local * 128 * 2 * (64 + 16))
    assert ring.compute_s.value == pytest.approx(4 * 32 * (1 << 17) ** 2 * 128 * 0.5 / 8 / 400e12)
    assert ring.bytes_per_rank.source.startswith("derived:") and "H200" in ring.time_s.note
    back = hd.choose_method(batch=1, heads=32, kv_heads=8, seq_len=1 << 17, head_dim=128, n=8, element_bytes=2,
                            link_bandwidth_b_per_s=BANDWIDTH, attention_flop_per_s=RATE, backward=True)
    assert back.costs["ring"].bytes_per_rank.value == 2 * 7 * 2 * 8 * local * 128 * 2 + 8 * 2 * 8 * local * 128 * 4
    assert back.costs["all_to_all"].bytes_per_rank.value == pytest.approx(2 * a2a.bytes_per_rank.value)


def test_cost_model_prefers_ring_for_long_sequences_and_all_to_all_for_short():
    common = dict(batch=1, heads=32, kv_heads=32, head_dim=128, n=8, element_bytes=2,
                  link_bandwidth_b_per_s=BANDWIDTH, attention_flop_per_s=RATE)
    assert hd.choose_method(seq_len=1 << 20, **common).method == "ring"  # transfers hide behind long steps
    assert hd.choose_method(seq_len=1 << 13, **common).method == "all_to_all"  # short steps expose ring transfers


def test_cost_model_picks_ring_when_heads_do_not_divide():
    choice = hd.choose_method(batch=1, heads=12, kv_heads=12, seq_len=4096, head_dim=64, n=8, element_bytes=2,
                              link_bandwidth_b_per_s=BANDWIDTH, attention_flop_per_s=RATE)
    assert choice.method == "ring" and choice.costs["all_to_all"].time_s is None
    assert "not both divisible by 8" in choice.reason


def test_cost_model_refuses_figures_without_provenance():
    with pytest.raises(InvalidInput, match="Figure"):
        hd.choose_method(batch=1, heads=8, kv_heads=8, seq_len=4096, head_dim=64, n=2, element_bytes=2,
                         link_bandwidth_b_per_s=450e9, attention_flop_per_s=RATE)


# ------------------------------------------------------------------------------------------- GPUs (NCCL)

GPU_SEQ, GPU_DIM = 2048, 64


def gpu_cases() -> dict[str, dict]:
    out = {}
    for method in hd.METHODS:
        for pattern, docs in (("causal", False), ("full", False), ("causal", True)):
            out[f"{method}-{pattern}{'-documents' if docs else ''}"] = dict(
                method=method, pattern=pattern, docs=docs, heads=4, kv_heads=4, dtype="bfloat16")
    out["ring-causal-gqa"] = dict(method="ring", pattern="causal", docs=False, heads=8, kv_heads=2, dtype="bfloat16")
    return out


def nccl_worker(rank: int, n: int, port: int, out_path: str) -> None:
    """One GPU per rank, NCCL, the group initialised by mesh() from torchrun-style variables."""
    set_torchrun_env(rank, n, port)
    mesh = hd.mesh("cuda", n)
    results = {}
    for name, spec in gpu_cases().items():
        try:
            results[name] = run_case(mesh, n, spec, device=f"cuda:{rank}", seq=GPU_SEQ, dim=GPU_DIM)
        except Exception:  # noqa: BLE001 (reported per case)
            results[name] = {"exception": traceback.format_exc()}
    if rank == 0:
        with open(out_path, "w") as f:
            json.dump(results, f)
    dist.destroy_process_group()


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 or more CUDA GPUs")
@pytest.mark.parametrize("n", [2, 4, 8])
def test_nccl_context_parallel_matches_single_process_attention(n, tmp_path):
    if torch.cuda.device_count() < n:
        pytest.skip(f"needs {n} CUDA GPUs, this host has {torch.cuda.device_count()}")
    port = free_port()
    mp.start_processes(nccl_worker, args=(n, port, str(tmp_path / "gpu.json")), nprocs=n, start_method="spawn")
    results = json.loads((tmp_path / "gpu.json").read_text())
    for name, result in results.items():
        assert "exception" not in result, f"{name}: {result.get('exception')}"
        for what, err in zip(("out", "dq", "dk", "dv"), result["rel_errors"]):
            assert err < 2e-2, f"{name} at n={n}: {what} relative error {err:.2e}"
