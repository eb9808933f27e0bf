"""Solution quality of the ibm_qpu solvers against exact answers, one run.

QAOA MaxCut (issue 5): one seeded random 3-regular graph for each n in (8, 10, 12) (seed = n), depths p = 1, 2, 3.
The angles are optimised on the ideal simulator with exact expectation values (``ibm_qpu:aer?shots=0``: p = 1
from a batched grid + COBYLA, deeper levels warm-started by INTERP); the approximation ratio is the expected cut
of the optimised QAOA state over the brute-force maximum cut. The same angles are then run on a fake backend
(a real device's calibration snapshot with its noise, ``NOISY_URI``) to measure what noise costs; re-optimising
under noise would need hundreds of noisy jobs per point, which this machine cannot afford (reported as such).
Reference: Farhi et al. (2014) guarantee a ratio >= 0.6924 at p = 1 on 3-regular graphs.

VQE: H2 (STO-3G, 0.735 A, 2 qubits, published coefficients in hal/drivers/ibm_qpu/solvers.py) on the ideal
simulator (exact expectation values, and with shots) and the 4-qubit open Heisenberg chain, each against exact
diagonalisation; the H2 optimum is also evaluated on the noisy fake backend.

    python -m benchmarks.qpu_quality            # writes benchmarks/results/qpu_quality.json
"""

from __future__ import annotations

import time
from importlib.metadata import version

import numpy as np
import torch

import hal
from benchmarks.common import environment, write_result
from hal.drivers.ibm_qpu.solvers import (
    brute_force_qubo,
    exact_ground_energy,
    h2_hamiltonian,
    heisenberg_chain,
    maxcut_qubo,
    qaoa_expectation,
    qubo_minimize,
    random_regular_graph,
    vqe,
)

SIZES = (8, 10, 12)
DEPTHS = (1, 2, 3)
IDEAL_URI = "ibm_qpu:aer?shots=0"
SHOTS_URI = "ibm_qpu:aer?shots=20000&seed=5"
NOISY_URI = "ibm_qpu:fake_guadalupe?shots=400&seed=5"
CHEMICAL_ACCURACY_MHA = 1.6


def qaoa_study(ideal, noisy) -> dict:
    rows = {}
    for n in SIZES:
        edges = random_regular_graph(n, 3, seed=n)
        q = maxcut_qubo(n, edges)
        _, optimum = brute_force_qubo(q)
        max_cut = -optimum
        start = time.perf_counter()
        result = qubo_minimize(q, ideal, reps=max(DEPTHS), maxiter=200)
        optimise_s = time.perf_counter() - start
        for level in result.levels:
            start = time.perf_counter()
            noisy_cut = -qaoa_expectation(q, noisy, level.gammas, level.betas)
            noisy_s = time.perf_counter() - start
            rows[f"n={n},p={level.reps}"] = {
                "n": n,
                "p": level.reps,
                "edges": [list(e) for e in edges],
                "max_cut": max_cut,
                "expected_cut_ideal": -level.expected_energy,
                "ratio_ideal": -level.expected_energy / max_cut,
                "expected_cut_noisy": noisy_cut,
                "ratio_noisy": noisy_cut / max_cut,
                "gammas": level.gammas.tolist(),
                "betas": level.betas.tolist(),
                "noisy_eval_s": noisy_s,
            }
            print(f"n={n} p={level.reps}: ratio ideal {rows[f'n={n},p={level.reps}']['ratio_ideal']:.4f}, noisy {noisy_cut / max_cut:.4f}", flush=True)
        rows[f"n={n},p={max(DEPTHS)}"] |= {
            "best_sampled_cut": -result.energy,
            "best_sampled_ratio": -result.energy / max_cut,
            "optimise_all_depths_s": optimise_s,
            "jobs": result.jobs,
            "evaluations": result.evaluations,
        }
    return rows


def vqe_study(ideal, shots_device, noisy) -> dict:
    h2 = h2_hamiltonian()
    exact_h2 = exact_ground_energy(h2)
    exact_run = vqe(h2, ideal, reps=1)
    shots_run = vqe(h2, shots_device, reps=1, maxiter=50)
    shots_energy_exactly_evaluated = float(exact_run_value(h2, ideal, shots_run.parameters))
    noisy_values = noisy.prepare_circuit(real_amplitudes_circuit(h2.num_qubits, 1), [h2])(torch.from_numpy(exact_run.parameters[None, :]))[0]
    chain = heisenberg_chain(4)
    exact_chain = exact_ground_energy(chain)
    chain_run = vqe(chain, ideal, reps=3, seed=1, restarts=6)
    return {
        "h2": {
            "exact_ha": exact_h2,
            "ideal_exact_expectation": {"energy_ha": exact_run.energy, "error_mha": 1e3 * (exact_run.energy - exact_h2), "jobs": exact_run.jobs},
            "ideal_20000_shots": {
                "reported_energy_ha": shots_run.energy,
                "reported_error_mha": 1e3 * (shots_run.energy - exact_h2),
                "energy_of_found_parameters_ha": shots_energy_exactly_evaluated,
                "error_of_found_parameters_mha": 1e3 * (shots_energy_exactly_evaluated - exact_h2),
                "jobs": shots_run.jobs,
                "note": "reported energy is the lowest noisy estimate seen (biased low by shot noise); the exact energy of the parameters found is the honest figure",
            },
            "noisy_fake_backend_at_ideal_optimum": {"energy_ha": float(noisy_values[0, 0]), "error_mha": 1e3 * (float(noisy_values[0, 0]) - exact_h2)},
        },
        "heisenberg_4": {"exact": exact_chain, "energy": chain_run.energy, "error": chain_run.energy - exact_chain, "jobs": chain_run.jobs, "ansatz": "RealAmplitudes reps=3, 6 starts"},
    }


def real_amplitudes_circuit(n: int, reps: int):
    from qiskit.circuit.library import real_amplitudes

    return real_amplitudes(n, reps=reps)


def exact_run_value(hamiltonian, ideal, parameters: np.ndarray) -> float:
    program = ideal.prepare_circuit(real_amplitudes_circuit(hamiltonian.num_qubits, 1), [hamiltonian])
    return float(program(torch.from_numpy(parameters[None, :]))[0][0, 0])


def main() -> None:
    ideal, shots_device, noisy = hal.device(IDEAL_URI), hal.device(SHOTS_URI), hal.device(NOISY_URI)
    start = time.perf_counter()
    vqe_rows = vqe_study(ideal, shots_device, noisy)
    print("vqe", vqe_rows, flush=True)
    qaoa_rows = qaoa_study(ideal, noisy)
    summary_qaoa = {
        "ideal": {f"n={n}": {f"p={p}": qaoa_rows[f"n={n},p={p}"]["ratio_ideal"] for p in DEPTHS} for n in SIZES},
        f"noisy_{noisy.name}": {f"n={n}": {f"p={p}": qaoa_rows[f"n={n},p={p}"]["ratio_noisy"] for p in DEPTHS} for n in SIZES},
        "farhi_p1_bound": 0.6924,
    }
    h2 = vqe_rows["h2"]
    document = {
        "environment": environment(f"{IDEAL_URI}, {SHOTS_URI}, {NOISY_URI}") | {name: version(name) for name in ("qiskit", "qiskit-aer", "qiskit-ibm-runtime")},
        "qaoa": qaoa_rows,
        "vqe": vqe_rows,
        "wall_s": time.perf_counter() - start,
        "summary": {
            "vqe_error_mha": h2["ideal_exact_expectation"]["error_mha"],
            "vqe_within_chemical_accuracy": abs(h2["ideal_exact_expectation"]["error_mha"]) < CHEMICAL_ACCURACY_MHA,
            "vqe_error_mha_20000_shots": h2["ideal_20000_shots"]["error_of_found_parameters_mha"],
            "vqe_error_mha_noisy_fake_backend": h2["noisy_fake_backend_at_ideal_optimum"]["error_mha"],
            "heisenberg_4_error": vqe_rows["heisenberg_4"]["error"],
            "qaoa": summary_qaoa,
        },
    }
    print(write_result("qpu_quality", document))


if __name__ == "__main__":
    main()
