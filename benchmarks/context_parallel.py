"""Context-parallel attention: hal ring and all-to-all vs PyTorch's context parallelism, on 1..N GPUs in one run.

    torchrun --nproc-per-node 8 benchmarks/context_parallel.py --out benchmarks/results/context_parallel.json
    python benchmarks/context_parallel.py --smoke     # CPU: 2 gloo processes, tiny sizes, writes nothing unless --out

Every power-of-two mesh size up to the world size runs in the same job (sub-meshes of ranks 0..n-1; the other
ranks wait), so 1, 2, 4 and 8 GPUs are measured side by side. For each pattern (causal; causal documents of random
lengths), sequence length S and mesh size n, forward and forward+backward are timed for:
- n = 1: ``hal_single`` (hal's attention kernel on the whole sequence; on a CPU the torch block attention) and
  ``torch_sdpa`` (causal only: scaled_dot_product_attention);
- n > 1: hal ``ring`` and ``all_to_all`` (hal.distributed.context_parallel_attention) and ``torch_cp``
  (``torch.distributed.tensor.experimental.context_parallel`` around SDPA, causal only, CUDA only: PyTorch's SDPA
  context parallelism takes ``is_causal`` but no document mask, and has no CPU implementation).
A time is the median of ``--repeats`` calls after one warm-up call, the slowest rank's. FLOPs count the allowed
(query, key) pairs: forward ``4·B·H·pairs·D``, forward+backward 3.5x that. Before timing, each CP output is compared
with the ring's (same zig-zag shards; PyTorch's head-tail load balancer uses that layout too); in ``--smoke`` every
output is also compared with float64 attention on the unsharded tensors.

Summary: ``speedup_vs_torch_cp`` (causal forward+backward at the largest S and n: PyTorch's time / hal's best),
``scaling_efficiency_8`` (causal forward+backward at the largest S: t(1 GPU) / (8 · t(8 GPUs)), hal's best of ring and
all-to-all against hal_single), strong and weak scaling efficiency per n, and the cost model's choice
(hal.distributed.choose_method, fed the measured link bandwidth and the measured one-device attention rate) against
the measured winner. Document masks run hal's torch block attention on GPUs (see docs/distributed.md), so their
default sizes are smaller (``--document-seqs``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import environment  # noqa: E402
from hal import distributed as hd  # noqa: E402
from hal.capability import Figure  # noqa: E402
from hal.distributed.block import TorchBlockAttention  # noqa: E402
from hal.distributed.ring import Ring, RingProblem, ring_attention  # noqa: E402
from hal.kernels.attention import attention_reference, compile_attention, patterns  # noqa: E402

FULL = dict(seqs=[131072, 262144, 524288, 1048576], document_seqs=[131072], heads=8, head_dim=128, batch=1,
            dtype="bfloat16", documents=16, repeats=3, link_mib=256)
SMOKE = dict(seqs=[32, 64], document_seqs=[32, 64], heads=4, head_dim=8, batch=1, dtype="float64", documents=3,
             repeats=2, link_mib=1)
PASSES = ("fwd", "fwd_bwd")
BACKWARD_FACTOR = 3.5  # forward+backward FLOPs / forward FLOPs: two matmuls forward, five backward


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="CPU, gloo, tiny sizes (starts 2 processes itself)")
    parser.add_argument("--kind", default="hopper", help="hal device kind of the GPUs (hopper, blackwell, cuda)")
    parser.add_argument("--seqs", default=None, help="comma-separated sequence lengths for the causal pattern")
    parser.add_argument("--document-seqs", default=None, help="comma-separated sequence lengths for documents")
    parser.add_argument("--heads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--sizes", default=None, help="comma-separated mesh sizes (default: powers of two to world)")
    parser.add_argument("--patterns", default="causal,documents")
    parser.add_argument("--out", type=Path, default=None, help="write the result JSON here (nothing is written without)")
    args = parser.parse_args(argv)
    if args.smoke and "WORLD_SIZE" not in os.environ:
        return relaunch_under_torchrun(2, sys.argv[1:] if argv is None else argv)
    cfg = dict(SMOKE if args.smoke else FULL)
    for key in ("seqs", "document_seqs"):
        if getattr(args, key) is not None:
            cfg[key] = [int(s) for s in getattr(args, key).split(",")]
    for key in ("heads", "repeats"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    kind = "cpu" if args.smoke else args.kind
    world_mesh = hd.mesh(kind, int(os.environ["WORLD_SIZE"]))
    world, rank = dist.get_world_size(), dist.get_rank()
    device = torch.device("cpu") if kind == "cpu" else torch.device("cuda", torch.cuda.current_device())
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else powers_of_two(world)
    meshes = {n: sub_mesh(world_mesh, n) for n in sizes if n > 1}
    doc = {"environment": environment(str(device)), "smoke": args.smoke, "config": {**cfg, "world": world,
                                                                                     "sizes": sizes}, "rows": []}
    link = measure_link_bandwidth(world_mesh, device, cfg["link_mib"]) if world > 1 else None
    doc["link_bandwidth_b_per_s"] = None if link is None else vars(link)
    for pattern in args.patterns.split(","):
        for seq in cfg["seqs"] if pattern == "causal" else cfg["document_seqs"]:
            case = Case(pattern, seq, cfg, device)
            outputs: dict[str, torch.Tensor] = {}
            for n in sizes:
                for impl in implementations(n, pattern, device):
                    for passes in PASSES:
                        row = run(case, impl, n, passes, meshes.get(n), rank, outputs, args.smoke)
                        doc["rows"].append(row)
                        if rank == 0:
                            print(json.dumps(row), flush=True)
    doc["summary"] = summarize(doc["rows"], sizes, link, cfg)
    if rank == 0:
        print(json.dumps(doc["summary"], indent=2))
        if args.out is not None:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(doc, indent=2) + "\n")
            print(f"wrote {args.out}")
    dist.destroy_process_group()
    return 0


def relaunch_under_torchrun(n: int, argv: list[str]) -> int:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}", __file__, *argv]
    return subprocess.run(command, env=env, check=False).returncode


def powers_of_two(world: int) -> list[int]:
    sizes, n = [], 1
    while n <= world:
        sizes.append(n)
        n *= 2
    return sizes


def sub_mesh(world_mesh, n: int):
    """The mesh of ranks 0..n-1 (built by every rank: creating its process group is collective)."""
    if n == world_mesh.size():
        return world_mesh
    from torch.distributed.device_mesh import DeviceMesh
    return DeviceMesh(world_mesh.device_type, list(range(n)), mesh_dim_names=("cp",))


class Case:
    """The full inputs of one (pattern, S) on every rank (same seed everywhere), and their FLOP counts."""

    def __init__(self, pattern: str, seq: int, cfg: dict, device: torch.device) -> None:
        self.pattern, self.seq, self.cfg = pattern, seq, cfg
        self.dtype = getattr(torch, cfg["dtype"])
        g = torch.Generator(device=device).manual_seed(0)
        shape = (cfg["batch"], cfg["heads"], seq, cfg["head_dim"])
        self.q, self.k, self.v, self.d_out = (torch.randn(shape, generator=g, device=device, dtype=self.dtype)
                                              for _ in range(4))
        self.lengths = document_lengths(seq, cfg["documents"]) if pattern == "documents" else None
        self.doc_ids = None if self.lengths is None else torch.repeat_interleave(
            torch.arange(len(self.lengths)), torch.tensor(self.lengths)).to(device)
        pairs = sum(n * (n + 1) // 2 for n in self.lengths) if self.lengths else seq * (seq + 1) // 2
        self.fwd_flops = 4 * cfg["batch"] * cfg["heads"] * pairs * cfg["head_dim"]

    def flops(self, passes: str) -> float:
        return self.fwd_flops * (BACKWARD_FACTOR if passes == "fwd_bwd" else 1.0)


def document_lengths(seq: int, count: int) -> list[int]:
    """``count`` document lengths summing to ``seq``, cut at sorted random points (seed 0, the same every run)."""
    g = torch.Generator().manual_seed(0)
    cuts = torch.sort(torch.randperm(seq - 1, generator=g)[:count - 1] + 1).values.tolist()
    edges = [0, *cuts, seq]
    return [b - a for a, b in zip(edges, edges[1:])]


def implementations(n: int, pattern: str, device: torch.device) -> list[str]:
    if n == 1:
        return ["hal_single"] + (["torch_sdpa"] if pattern == "causal" else [])
    return ["ring", "all_to_all"] + (["torch_cp"] if pattern == "causal" and device.type == "cuda" else [])


@dataclass
class Built:
    """One implementation ready to time: the timed step, one forward output (this rank's shard), a cleanup."""

    step: Callable[[], None]
    out: torch.Tensor | None
    close: Callable[[], None] = lambda: None


def run(case: Case, impl: str, n: int, passes: str, mesh, rank: int, outputs: dict, smoke: bool) -> dict:
    """Time one implementation on ranks 0..n-1 (the others wait at the barrier); never raises, records errors."""
    row: dict = {"pattern": case.pattern, "seq": case.seq, "n": n, "impl": impl, "passes": passes}
    if rank < n:
        built = None
        try:
            built = build(case, impl, n, passes, mesh)
            if built.out is not None:
                row.update(compare(case, impl, n, built.out, outputs, mesh, smoke))
            seconds = timed(built.step, case.cfg["repeats"], mesh)
            row.update(seconds=seconds, tflop_per_s_per_device=case.flops(passes) / seconds / n / 1e12)
        except Exception as e:  # noqa: BLE001 (an OOM or unsupported case is recorded, the run goes on)
            row["error"] = f"{type(e).__name__}: {e}"[:500]
            if rank == 0:
                traceback.print_exc()
        finally:
            if built is not None:
                built.close()
    dist.barrier()
    return row


def build(case: Case, impl: str, n: int, passes: str, mesh) -> Built:
    if impl == "torch_cp":
        return build_torch_cp(case, passes, mesh)
    if n == 1:
        inputs = [t.detach().clone().requires_grad_(passes == "fwd_bwd") for t in (case.q, case.k, case.v)]
        d_out = case.d_out
        attend = single_device(case) if impl == "hal_single" else sdpa_causal
    else:
        inputs = [hd.shard(t, mesh).requires_grad_(passes == "fwd_bwd") for t in (case.q, case.k, case.v)]
        d_out = hd.shard(case.d_out, mesh)
        docs = None if case.doc_ids is None else hd.shard(case.doc_ids, mesh, dim=0)

        def attend(q, k, v):
            return hd.context_parallel_attention(q, k, v, mesh=mesh, method=impl, pattern="causal", document_ids=docs)

    return Built(training_step(attend, inputs, d_out, passes), forward_output(attend, inputs, passes))


def sdpa_causal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def training_step(attend: Callable, inputs: list[torch.Tensor], d_out: torch.Tensor, passes: str) -> Callable[[], None]:
    """A forward (no autograd graph) or a forward+backward of ``attend`` on ``inputs``."""
    def step() -> None:
        if passes == "fwd":
            with torch.no_grad():
                attend(*inputs)
            return
        for t in inputs:
            t.grad = None
        attend(*inputs).backward(d_out)
    return step


def forward_output(attend: Callable, inputs: list[torch.Tensor], passes: str) -> torch.Tensor | None:
    """The forward output, for the cross-checks (computed once per case, on its forward row)."""
    if passes != "fwd":
        return None
    with torch.no_grad():
        return attend(*inputs)


def single_device(case: Case) -> Callable:
    """One device, whole sequence: hal's kernel on CUDA, the torch block attention (a ring of one) on a CPU."""
    if case.q.device.type == "cuda":
        pattern = patterns.causal()
        if case.lengths is not None:
            pattern = patterns.document(case.lengths) & pattern
        return compile_attention(pattern, head_dim=case.cfg["head_dim"], dtype=case.dtype)
    docs = None if case.doc_ids is None else (case.doc_ids.expand(case.cfg["batch"], -1),)
    problem = RingProblem(Ring.alone(), True, case.cfg["head_dim"] ** -0.5, TorchBlockAttention(), docs)
    return lambda q, k, v: ring_attention(q, k, v, problem)


def build_torch_cp(case: Case, passes: str, mesh) -> Built:
    """PyTorch's context parallelism: ``context_parallel`` shards the buffers in place (head-tail load balancing,
    the zig-zag layout) and routes SDPA to its ring attention until the context is left, in ``close``."""
    from torch.distributed.tensor.experimental import context_parallel

    buffers = [t.detach().clone() for t in (case.q, case.k, case.v, case.d_out)]
    context = context_parallel(mesh, buffers=buffers, buffer_seq_dims=[2] * 4, no_restore_buffers=set(buffers))
    context.__enter__()
    try:
        q, k, v, d_out = buffers
        inputs = [t.requires_grad_(passes == "fwd_bwd") for t in (q, k, v)]
        out = forward_output(sdpa_causal, inputs, passes)
    except BaseException:
        context.__exit__(*sys.exc_info())
        raise
    return Built(training_step(sdpa_causal, inputs, d_out, passes), out, lambda: context.__exit__(None, None, None))


def compare(case: Case, impl: str, n: int, out: torch.Tensor, outputs: dict, mesh, smoke: bool) -> dict:
    """Relative difference of this forward output from the first implementation's at the same n (same shards),
    and in smoke from float64 attention on the unsharded tensors."""
    result = {}
    if n not in outputs:
        outputs.clear()
        outputs[n] = (impl, out)
    else:
        first, first_out = outputs[n]
        result[f"rel_diff_vs_{first}"] = rel(out, first_out)
    if smoke:
        ref, _ = attention_reference(case.q, case.k, case.v, reference_mask(case))
        full = out if n == 1 else hd.unshard(out.contiguous(), mesh)
        result["rel_error_vs_float64"] = rel(full, ref)
    return result


def reference_mask(case: Case):
    docs = case.doc_ids

    def allowed(b, h, q_idx, kv_idx):
        causal = q_idx >= kv_idx
        return causal if docs is None else causal & (docs[q_idx] == docs[kv_idx])
    return allowed


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm())


def timed(fn: Callable[[], None], repeats: int, mesh) -> float:
    """Median seconds of ``repeats`` calls after a warm-up, the slowest rank's (max over the mesh)."""
    group = None if mesh is None else mesh.get_group()
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() and \
        (mesh is None or mesh.device_type == "cuda") else torch.device("cpu")
    fn()
    samples = []
    for _ in range(repeats):
        if group is not None:
            dist.barrier(group=group)
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        samples.append(time.perf_counter() - start)
    seconds = torch.tensor([statistics.median(samples)], device=device)
    if group is not None:
        dist.all_reduce(seconds, op=dist.ReduceOp.MAX, group=group)
    return float(seconds.item())


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_link_bandwidth(mesh, device: torch.device, mib: int) -> Figure:
    """Bytes per second one rank sends to its ring neighbour while receiving from the other (median of 5)."""
    ring = Ring.of(mesh)
    buffer = torch.ones(mib * (1 << 20) // 4, dtype=torch.float32, device=device)
    ring.shift([buffer]).wait()
    samples = []
    for _ in range(5):
        dist.barrier()
        synchronize(device)
        start = time.perf_counter()
        ring.shift([buffer]).wait()
        synchronize(device)
        samples.append(time.perf_counter() - start)
    seconds = torch.tensor([statistics.median(samples)], device=device)
    dist.all_reduce(seconds, op=dist.ReduceOp.MAX)
    return Figure.measured(buffer.numel() * 4 / float(seconds.item()), "B/s",
                           f"ring shift of {mib} MiB with batch_isend_irecv over {mesh.size()} ranks, median of 5")


def summarize(rows: list[dict], sizes: list[int], link: Figure | None, cfg: dict) -> dict:
    ok = {(r["pattern"], r["seq"], r["n"], r["impl"], r["passes"]): r for r in rows if "seconds" in r}

    def best(seq: int, n: int, passes: str = "fwd_bwd") -> dict | None:
        """hal's faster CP method at (causal, seq, n), or hal_single at n = 1."""
        impls = ("hal_single",) if n == 1 else ("ring", "all_to_all")
        found = [ok[key] for impl in impls if (key := ("causal", seq, n, impl, passes)) in ok]
        return min(found, key=lambda r: r["seconds"]) if found else None

    causal_seqs = sorted({key[1] for key in ok if key[0] == "causal"})
    multi = [n for n in sizes if n > 1]
    summary: dict = {"targets": {"speedup_vs_torch_cp": 1.2, "scaling_efficiency_8": 0.85}}
    speedups = {}
    for seq in causal_seqs:
        for n in multi:
            ours, theirs = best(seq, n), ok.get(("causal", seq, n, "torch_cp", "fwd_bwd"))
            if ours and theirs:
                speedups[f"S={seq},n={n}"] = theirs["seconds"] / ours["seconds"]
    summary["speedups_vs_torch_cp"] = speedups
    top = f"S={causal_seqs[-1]},n={multi[-1]}" if causal_seqs and multi else ""
    summary["speedup_vs_torch_cp"] = speedups.get(top)
    # strong: the same S on n devices, per-device FLOP rate relative to one device's (= t1 / (n · tn))
    strong, weak = {}, {}
    if causal_seqs:
        one = best(causal_seqs[-1], 1)
        for n in multi:
            many = best(causal_seqs[-1], n)
            if one and many:
                strong[str(n)] = many["tflop_per_s_per_device"] / one["tflop_per_s_per_device"]
        # weak: n times the tokens on n devices, per-device FLOP rate relative to one device at the base length
        one = best(causal_seqs[0], 1)
        for n in multi:
            many = best(causal_seqs[0] * n, n)
            if one and many:
                weak[str(n)] = many["tflop_per_s_per_device"] / one["tflop_per_s_per_device"]
    summary["strong_scaling_efficiency"] = {"seq": causal_seqs[-1] if causal_seqs else None, "by_n": strong}
    summary["scaling_efficiency_8"] = strong.get("8")
    summary["weak_scaling_efficiency"] = {"base_seq": causal_seqs[0] if causal_seqs else None, "by_n": weak}
    summary["cost_model"] = cost_model_check(ok, link, cfg)
    summary["errors"] = [r for r in rows if "error" in r]
    return summary


def cost_model_check(ok: dict, link: Figure | None, cfg: dict) -> list[dict]:
    """hal.distributed.choose_method fed this run's measured link bandwidth and one-device attention rate,
    against which hal method measured faster (causal rows)."""
    if link is None:
        return []
    checks = []
    element_bytes = torch.finfo(getattr(torch, cfg["dtype"])).bits // 8
    for (pattern, seq, n, impl, passes), ring in ok.items():
        single = ok.get(("causal", seq, 1, "hal_single", passes))
        a2a = ok.get(("causal", seq, n, "all_to_all", passes))
        if pattern != "causal" or impl != "ring" or single is None or a2a is None:
            continue
        rate = Figure.measured(single["tflop_per_s_per_device"] * 1e12, "FLOP/s",
                               f"hal_single causal {passes} at S={seq}, this run")
        choice = hd.choose_method(batch=cfg["batch"], heads=cfg["heads"], kv_heads=cfg["heads"], seq_len=seq,
                                  head_dim=cfg["head_dim"], n=n, element_bytes=element_bytes,
                                  link_bandwidth_b_per_s=link, attention_flop_per_s=rate,
                                  backward=passes == "fwd_bwd")
        checks.append({"seq": seq, "n": n, "passes": passes, "predicted": choice.method,
                       "measured": "ring" if ring["seconds"] <= a2a["seconds"] else "all_to_all",
                       "predicted_s": {m: c.time_s.value if c.time_s else None for m, c in choice.costs.items()},
                       "measured_s": {"ring": ring["seconds"], "all_to_all": a2a["seconds"]}})
    return checks


if __name__ == "__main__":
    raise SystemExit(main())
