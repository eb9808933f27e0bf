"""hal's bit-accurate Loihi 2 engine vs lava-nc's ``Loihi2SimCfg(select_tag="fixed_pt")``, side by side.

The same network, 1000 inputs -> dense synapses (random 8-bit weights) -> LIF populations of 1k and 10k neurons,
runs for ``--steps`` (>= 100) steps in lava (through its Python 3.10 worker, one sample, as lava runs) and in the
engine (batch 1 and batched); the output spike trains must be identical. Reported: sample-steps per second.

    python -m benchmarks.loihi2_engine                  # CPU: writes benchmarks/results/loihi2_engine.json
    python -m benchmarks.loihi2_engine --device cuda    # GPU: adds a "gpu" section and summary.speedup_10k_gpu to
                                                        # that file; lava's figures are re-measured when lava is
                                                        # present, else read from the committed CPU result
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from benchmarks.common import RESULTS, environment, write_result
from hal.drivers.loihi2.engine import DenseSynapse, LifLayer, LifNetwork, LifParams
from hal.drivers.loihi2.lava_client import LavaWorker, find_lava_python, network_request

N_IN = 1000
INPUT_RATE = 0.1


def network(neurons: int, seed: int = 0) -> list[LifLayer]:
    """1000 inputs -> dense (mixed-sign 8-bit weights, exponent 0) -> a LIF population with leaks and a bias."""
    g = torch.Generator().manual_seed(seed)
    weights = torch.randint(-128, 128, (neurons, N_IN), generator=g, dtype=torch.int16) * 2  # int16: 1M x 1000 stays 2 GB
    lif = LifParams(neurons, du=410, dv=205, vth=1200, bias_mant=torch.randint(0, 64, (neurons,), generator=g), bias_exp=3)
    return [LifLayer(DenseSynapse(weights, 0), lif)]


def inputs(steps: int, batch: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(steps, batch, N_IN, generator=g) < INPUT_RATE).to(torch.uint8)


def time_engine(net: LifNetwork, spikes: torch.Tensor, repeats: int) -> tuple[float, torch.Tensor]:
    """Best seconds of ``repeats`` runs (after one warm-up; the CPU is shared, so the minimum is the least
    disturbed run), and the output spikes (T, B, N) of the last run."""
    out = net.run(spikes).spikes[-1]
    times = []
    for _ in range(repeats):
        if spikes.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = net.run(spikes).spikes[-1]
        if spikes.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return min(times), out


def lava_run(worker: LavaWorker, layers: list[LifLayer], spikes: torch.Tensor) -> dict:
    """lava timed without monitors (best of two runs), then run again with a spike monitor for the comparison."""
    header, arrays = network_request(layers, spikes.numpy(), record_state=False, record_spikes=False)
    runs = [worker.request(header, arrays, timeout_s=600)[0] for _ in range(2)]
    timed = min(runs, key=lambda r: r["run_s"] / r["steps_timed"])  # best of two, as for the engine
    header, arrays = network_request(layers, spikes.numpy(), record_state=False, record_spikes=True)
    _, recorded = worker.request(header, arrays, timeout_s=600)
    return {
        "steps_per_s": timed["steps_timed"] / timed["run_s"],
        "build_s": timed["build_s"],
        "run_s": timed["run_s"],
        "spikes": torch.from_numpy(recorded["spikes0"]).to(torch.bool),
    }


def bench_size(neurons: int, steps: int, batch: int, device: str, worker: LavaWorker | None, repeats: int) -> dict:
    layers = network(neurons)
    spikes = inputs(steps, batch)
    row: dict = {"neurons": neurons, "inputs": N_IN, "steps": steps, "input_rate": INPUT_RATE, "batch": batch, "device": device}
    # CPU: eager in-place ops (measured as fast as the compiled step here, without its compile time);
    # GPU: the compiled step, one kernel per time step instead of about ten
    single_net = LifNetwork(layers, device, fused=device != "cpu")
    batched_net = LifNetwork(layers, device, fused=device != "cpu")
    single_s, single_out = time_engine(single_net, spikes[:, :1].to(device), repeats)
    batched_s, batched_out = time_engine(batched_net, spikes.to(device), repeats)
    row["engine_batch1_sample_steps_per_s"] = steps / single_s
    row["engine_batched_sample_steps_per_s"] = steps * batch / batched_s
    row["engine_seconds"] = {"batch1": single_s, "batched": batched_s}
    row["output_spikes_sample0"] = int(single_out.sum())
    row["batched_sample0_equals_batch1"] = bool(torch.equal(batched_out[:, 0].cpu(), single_out[:, 0].cpu()))
    if worker is not None:
        lava = lava_run(worker, layers, spikes[:, 0])
        row["lava_steps_per_s"] = lava["steps_per_s"]
        row["lava_build_s"] = lava["build_s"]
        row["bit_exact_vs_lava"] = bool(torch.equal(lava["spikes"], single_out[:, 0].cpu()))
    if device != "cpu":
        reference = LifNetwork(layers, "cpu").run(spikes[:, :1]).spikes[-1]
        row["bit_exact_vs_cpu_engine"] = bool(torch.equal(reference[:, 0], single_out[:, 0].cpu()))
    return row


def bench_million(steps: int, batch: int, device: str, check_neurons: int = 10_000, neurons: int = 1_000_000) -> dict:
    """A 1M-neuron population on the GPU; the first ``check_neurons`` are compared with the CPU engine (neurons
    of one population are independent given the input, so a slice of the network gives the same spikes)."""
    layers = network(neurons)
    spikes = inputs(steps, batch)
    net = LifNetwork(layers, device, fused=True)
    seconds, out = time_engine(net, spikes.to(device), 1)
    big = layers[0]
    piece = [LifLayer(DenseSynapse(big.synapse.weights[:check_neurons], 0),
                      LifParams(check_neurons, big.lif.du, big.lif.dv, big.lif.vth, big.lif.bias_mant[:check_neurons], big.lif.bias_exp))]
    reference = LifNetwork(piece, "cpu").run(spikes).spikes[-1]
    return {
        "neurons": neurons, "steps": steps, "batch": batch, "sample_steps_per_s": steps * batch / seconds, "seconds": seconds,
        "output_spikes": int(out.sum()), "slice_bit_exact_vs_cpu_engine": bool(torch.equal(reference, out[:, :, :check_neurons].cpu())),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch", type=int, default=None, help="batch of the batched engine run (default: 64 on cpu, 4096 on cuda)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default 1 on cpu: on a shared CPU, OpenMP barriers stall)")
    args = parser.parse_args()
    if args.threads or args.device == "cpu":
        torch.set_num_threads(args.threads or 1)
    if args.steps < 100:
        parser.error("the comparison uses at least 100 steps")
    gpu = args.device != "cpu"
    batch = args.batch or (4096 if gpu else 64)
    lava = find_lava_python()
    worker = LavaWorker(lava.path, timeout_s=900) if lava.ok else None
    try:
        rows = [bench_size(n, args.steps, batch, args.device, worker, args.repeats) for n in (1000, 10_000)]
    finally:
        if worker is not None:
            worker.close()
    path = RESULTS / "loihi2_engine.json"
    committed = json.loads(path.read_text()) if path.exists() else None
    if worker is None and committed is not None:
        for row, cpu_row in zip(rows, committed["results"]["cpu"]):
            row["lava_steps_per_s"] = cpu_row["lava_steps_per_s"]
            row["lava_source"] = "committed CPU result (lava absent on this machine)"
    for row in rows:
        if "lava_steps_per_s" in row:
            row["speedup_batch1"] = row["engine_batch1_sample_steps_per_s"] / row["lava_steps_per_s"]
            row["speedup_batched"] = row["engine_batched_sample_steps_per_s"] / row["lava_steps_per_s"]
        print(json.dumps(row), flush=True)
    ten_k = rows[1]
    if not gpu:
        document = {
            "environment": dict(environment("cpu"), lava=lava.path and "lava-nc 0.10.0 (Python 3.10 worker)", lava_found_by=lava.found_by.replace(str(RESULTS.parents[1]), 'the repository root'),
                                load_average_1_5_15=list(os.getloadavg())),
            "method": "same network and input in lava Loihi2SimCfg(select_tag='fixed_pt') and the engine; lava timed without monitors "
                      "after a 1-step start-up run (best of 2), then re-run with a spike monitor for the comparison; engine: best of repeats "
                      "after a warm-up, torch threads as in environment.torch_threads; the CPU was shared with other jobs (load in environment)",
            "results": {"cpu": rows, "gpu": (committed or {}).get("results", {}).get("gpu")},
            "summary": {
                "bit_exact": all(r.get("bit_exact_vs_lava", False) and r["batched_sample0_equals_batch1"] for r in rows),
                "speedup_1k_batch1": rows[0].get("speedup_batch1"),
                "speedup_10k_batch1": ten_k.get("speedup_batch1"),
                "speedup_10k": ten_k.get("speedup_batched"),
                "batch": batch,
                "speedup_10k_gpu": (committed or {}).get("summary", {}).get("speedup_10k_gpu"),
                "targets": {"batch1_1k": ">= 5x", "batch1_10k": ">= 1x", "batched_10k_cpu": ">= 50x", "gpu_10k": ">= 1000x"},
            },
        }
    else:
        million = bench_million(args.steps, max(1, min(batch, 16)), args.device)
        print(json.dumps(million), flush=True)
        document = committed or {"environment": environment("cpu"), "results": {"cpu": None}, "summary": {}}
        document["results"]["gpu"] = {"environment": environment(args.device), "rows": rows, "million_neurons": million}
        document["summary"]["speedup_10k_gpu"] = ten_k.get("speedup_batched")
        document["summary"]["gpu_bit_exact"] = all(r.get("bit_exact_vs_cpu_engine", False) and r["batched_sample0_equals_batch1"] for r in rows) and million["slice_bit_exact_vs_cpu_engine"]
        document["summary"]["gpu_million_neuron_sample_steps_per_s"] = million["sample_steps_per_s"]
    write_result("loihi2_engine", document)
    print(json.dumps(document["summary"], indent=1))


if __name__ == "__main__":
    main()
