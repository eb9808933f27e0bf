"""QuantumLayer training step, batched (one job per step) vs one job per circuit, side by side, one run.

Workload (issue 5): a QuantumLayer with 8 qubits and 16 trainable weights (angle encoding RY(x_i), one layer
of RY(w), a CZ ring, RX(w)), batch 64, Z on every qubit as outputs; one forward + backward. The backward
is the parameter-shift rule over the 16 weights: 64 * 2 * 16 = 2048 shifted circuits, plus 64 forward ones,
2112 circuits per step.

Modes, all on the same device and the same circuits:
- ``batched``: hal's QuantumLayer, one job for the forward and one for the backward (2 jobs per step).
- ``per_circuit``: the same layer with ``job_mode="per_circuit"``: one job per circuit (2112 jobs), the ISA
  circuit still taken from the transpile cache. Isolates what batching saves in job overhead.
- ``naive``: what code without a transpile cache does: bind the values, transpile the bound circuit, submit
  one job, for every circuit. Timed on a sample of the step's circuits (the 64 forward circuits and the 32
  shifted circuits of the first row), as its rate is all that is compared.

Devices: ``ibm_qpu:aer?shots=1024`` (the qiskit-ibm-runtime executor Estimator in local mode, shot noise) and
``ibm_qpu:aer?shots=0`` (Aer's exact estimator). The transpile-cache hit rate is the fraction of executed
circuits that reused a cached ISA circuit: 1 - transpilations / circuits.

    python -m benchmarks.qpu_batching          # writes benchmarks/results/qpu_batching.json
"""

from __future__ import annotations

import time
from importlib.metadata import version

import numpy as np
import torch

import hal
from benchmarks.common import environment, write_result
from hal.drivers.ibm_qpu import QuantumLayer

N_QUBITS = 8
N_LAYERS = 1  # 2 * 8 * 1 = 16 weights
BATCH = 64
DEVICES = ("ibm_qpu:aer?shots=1024&seed=11", "ibm_qpu:aer?shots=0")


def fresh(uri: str):
    device = hal.device(uri)
    device.close()
    return hal.device(uri)


def step(layer: QuantumLayer, x: torch.Tensor) -> dict:
    """One forward + backward; wall time, jobs, circuits and transpilations it took."""
    device = layer.device
    before = device.telemetry()
    layer.zero_grad()
    start = time.perf_counter()
    layer(x).sum().backward()
    elapsed = time.perf_counter() - start
    after = device.telemetry()
    circuits = after["circuits"] - before["circuits"]
    transpiled = after["transpile_cache_misses"] - before["transpile_cache_misses"]
    return {
        "seconds": elapsed,
        "jobs": after["jobs"] - before["jobs"],
        "circuits": circuits,
        "transpilations": transpiled,
        "circuits_per_s": circuits / elapsed,
        "transpile_cache_hit_rate": 1 - transpiled / circuits,
        "grad": layer.weight.grad.clone(),
    }


def naive(layer: QuantumLayer, x: torch.Tensor) -> dict:
    """Bind, transpile and submit one job per circuit: the forward rows, then the shifted rows of the first sample."""
    device = layer.device
    circuit = layer.program.op.attr("circuit").circuit
    observables = layer.program.op.attr("observables")
    rows = layer.bind(x, layer.weight.detach())
    shifted = np.repeat(rows[:1], 2 * len(layer.weight_columns), axis=0)
    for j, column in enumerate(layer.weight_columns):
        shifted[2 * j, column] += np.pi / 2
        shifted[2 * j + 1, column] -= np.pi / 2
    all_rows = np.concatenate([rows, shifted])
    before = device.telemetry()
    start = time.perf_counter()
    for row in all_rows:
        bound = circuit.assign_parameters(row)
        device.prepare_circuit(bound, observables)(torch.zeros(1, 0, dtype=torch.float64))
    elapsed = time.perf_counter() - start
    after = device.telemetry()
    circuits = after["circuits"] - before["circuits"]
    transpiled = after["transpile_cache_misses"] - before["transpile_cache_misses"]
    return {"seconds": elapsed, "jobs": after["jobs"] - before["jobs"], "circuits": circuits, "transpilations": transpiled, "circuits_per_s": circuits / elapsed, "transpile_cache_hit_rate": 1 - transpiled / circuits}


def main() -> None:
    torch.manual_seed(0)
    x = torch.rand(BATCH, N_QUBITS, dtype=torch.float64) * np.pi
    runs = {}
    for uri in DEVICES:
        batched_layer = QuantumLayer(N_QUBITS, N_LAYERS, device=fresh(uri), seed=3)
        per_circuit_layer = QuantumLayer(N_QUBITS, N_LAYERS, device=fresh(uri), seed=3, job_mode="per_circuit")
        batched_layer(x[:2])  # warm-up: simulator start, first job
        batched = step(batched_layer, x)
        per_circuit = step(per_circuit_layer, x)
        naive_run = naive(per_circuit_layer, x)
        grad_gap = float((batched.pop("grad") - per_circuit.pop("grad")).abs().max())
        runs[uri] = {
            "batched": batched,
            "per_circuit": per_circuit,
            "naive_bind_transpile_per_circuit": naive_run,
            "speedup_vs_per_circuit": per_circuit["seconds"] / batched["seconds"],
            "speedup_vs_naive_circuits_per_s": batched["circuits_per_s"] / naive_run["circuits_per_s"],
            "max_gradient_gap_batched_vs_per_circuit": grad_gap,
        }
        print(uri, {k: (round(v["circuits_per_s"], 1) if isinstance(v, dict) else v) for k, v in runs[uri].items()})
    headline = runs[DEVICES[0]]
    document = {
        "environment": environment(", ".join(DEVICES)) | {name: version(name) for name in ("qiskit", "qiskit-aer", "qiskit-ibm-runtime")},
        "workload": {"n_qubits": N_QUBITS, "n_weights": 2 * N_QUBITS * N_LAYERS, "batch": BATCH, "circuits_per_step": BATCH * (1 + 2 * 2 * N_QUBITS * N_LAYERS)},
        "runs": runs,
        "summary": {
            "device": DEVICES[0],
            "speedup": headline["speedup_vs_per_circuit"],
            "speedup_exact_simulator": runs[DEVICES[1]]["speedup_vs_per_circuit"],
            "circuits_per_s": {"batched": headline["batched"]["circuits_per_s"], "per_circuit": headline["per_circuit"]["circuits_per_s"], "naive": headline["naive_bind_transpile_per_circuit"]["circuits_per_s"]},
            "transpile_cache_hit_rate": {"batched": headline["batched"]["transpile_cache_hit_rate"], "per_circuit": headline["per_circuit"]["transpile_cache_hit_rate"], "naive": headline["naive_bind_transpile_per_circuit"]["transpile_cache_hit_rate"]},
            "jobs_per_step": {"batched": headline["batched"]["jobs"], "per_circuit": headline["per_circuit"]["jobs"]},
        },
    }
    print(write_result("qpu_batching", document))


if __name__ == "__main__":
    main()
