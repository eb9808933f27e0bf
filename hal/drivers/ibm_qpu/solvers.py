"""Variational solvers on an ibm_qpu device: QAOA for QUBO / MaxCut and VQE for a Pauli Hamiltonian.

QAOA (Farhi, Goldstone, Gutmann, arXiv:1411.4028, 2014): the QUBO min x^T Q x, x in {0,1}^n, becomes an
Ising Hamiltonian through x_i = (1 - z_i) / 2; p layers of exp(-i gamma H_C) exp(-i beta sum X) act on
|+>^n. The outer loop is classical: at p = 1 a grid of (gamma, beta) is evaluated in one batched job and
the best point refined by COBYLA; each deeper level is warm-started by the INTERP rule (Zhou et al.,
"Quantum Approximate Optimization Algorithm: Performance, Mechanism, and Implementation on Near-Term
Devices", PRX 10, 021067 (2020)) from the level below. The answer is the best bitstring sampled from the
optimised circuit.

VQE (Peruzzo et al., Nat. Commun. 5, 4213 (2014)): minimise <psi(theta)|H|psi(theta)> over a RealAmplitudes
ansatz with L-BFGS-B; each iteration's energy and parameter-shift gradient are one batched job. With shots, the
energy reported is a fresh estimate at the returned parameters, not the lowest noisy value the optimiser saw.

``seed`` (both solvers): the simulator's shots of the call use seed, seed + 1, ... (so the same seed gives the
same answer) and the device's own seed stream resumes afterwards; ``seed=None`` leaves the device's seeding
(its ``?seed=`` option, ``manual_seed``) in charge, as real processors, which cannot be seeded, require (vqe then
draws its starts unseeded too).
"""

from __future__ import annotations

import contextlib
import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from hal.drivers.ibm_qpu.layer import SHIFT, check_shift_rule
from hal.errors import InvalidInput, ShapeError

#: H2 in STO-3G at bond length 0.735 Angstrom, parity mapping with two-qubit reduction (electronic energy in
#: hartree, nuclear repulsion excluded). Source: the Qiskit VQE tutorial and the qiskit-algorithms test suite
#: (``H2_SPARSE_PAULI`` in test/eigensolvers/test_numpy_eigensolver.py), generated with PySCF via qiskit-nature.
H2_0735_TERMS = (
    ("II", -1.052373245772859),
    ("IZ", 0.39793742484318045),
    ("ZI", -0.39793742484318045),
    ("ZZ", -0.01128010425623538),
    ("XX", 0.18093119978423156),
)
#: Grid of the p = 1 QAOA start: gamma in (0, pi] (H_C normalised to unit largest coefficient), beta in (0, pi/2].
GRID_GAMMAS = 12
GRID_BETAS = 8
#: COBYLA's evaluation budget per QAOA level and the shots of the final sampling job, unless the caller gives others.
MAXITER = 200
SAMPLE_SHOTS = 1024


def h2_hamiltonian() -> Any:
    """The 2-qubit H2 Hamiltonian at 0.735 A as a SparsePauliOp (see ``H2_0735_TERMS``)."""
    from qiskit.quantum_info import SparsePauliOp

    return SparsePauliOp.from_list(list(H2_0735_TERMS))


def heisenberg_chain(n: int, coupling: float = 1.0) -> Any:
    """Open Heisenberg chain H = J sum_i (X_i X_i+1 + Y_i Y_i+1 + Z_i Z_i+1) as a SparsePauliOp."""
    from qiskit.quantum_info import SparsePauliOp

    terms = [(p + p, [i, i + 1], coupling) for i in range(n - 1) for p in "XYZ"]
    return SparsePauliOp.from_sparse_list(terms, n)


def exact_ground_energy(hamiltonian: Any) -> float:
    """Smallest eigenvalue by dense diagonalisation (for checking VQE; n <= 12)."""
    return float(np.linalg.eigvalsh(hamiltonian.to_matrix())[0])


# --------------------------------------------------------------------------- QUBO and MaxCut


def maxcut_qubo(n: int, edges: list[tuple[int, int]], weights: list[float] | None = None) -> np.ndarray:
    """Q with x^T Q x = -cut(x): Q_ii = -weighted degree, Q_ij = Q_ji = w_ij."""
    q = np.zeros((n, n))
    for k, (i, j) in enumerate(edges):
        w = 1.0 if weights is None else float(weights[k])
        q[i, i] -= w
        q[j, j] -= w
        q[i, j] += w
        q[j, i] += w
    return q


def random_regular_graph(n: int, degree: int, seed: int) -> list[tuple[int, int]]:
    """A uniformly drawn simple ``degree``-regular graph on n nodes (pairing model with rejection), seeded."""
    if (n * degree) % 2 or degree >= n:
        raise InvalidInput(f"no simple {degree}-regular graph on {n} nodes")
    rng = np.random.default_rng(seed)
    while True:
        stubs = rng.permutation(np.repeat(np.arange(n), degree))
        pairs = {tuple(sorted((int(a), int(b)))) for a, b in stubs.reshape(-1, 2)}
        if len(pairs) == n * degree // 2 and all(a != b for a, b in pairs):
            return sorted(pairs)


def qubo_values(q: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """x^T Q x for each row of ``bits`` (..., n)."""
    x = bits.astype(np.float64)
    return np.einsum("...i,ij,...j->...", x, q, x)


def brute_force_qubo(q: np.ndarray) -> tuple[np.ndarray, float]:
    """The exact minimiser and minimum of x^T Q x by enumeration (n <= 22)."""
    n = q.shape[0]
    if n > 22:
        raise InvalidInput(f"brute force over 2^{n} assignments is too large; n <= 22")
    states = ((np.arange(2**n)[:, None] >> np.arange(n)[None, :]) & 1).astype(np.uint8)
    values = qubo_values(q, states)
    best = int(np.argmin(values))
    return states[best], float(values[best])


def qubo_to_ising(q: np.ndarray) -> tuple[Any, float]:
    """(H, offset) with x^T Q x = <z|H|z> + offset for x_i = (1 - z_i) / 2, H a sum of Z_i and Z_i Z_j terms."""
    from qiskit.quantum_info import SparsePauliOp

    s = (q + q.T) / 2.0
    n = s.shape[0]
    offset = float(np.trace(s) / 2.0 + np.sum(np.triu(s, 1)) / 2.0)
    terms = []
    for i in range(n):
        h = -s[i, i] / 2.0 - (np.sum(s[i]) - s[i, i]) / 2.0
        if h != 0.0:
            terms.append(("Z", [i], h))
    for i, j in itertools.combinations(range(n), 2):
        if s[i, j] != 0.0:
            terms.append(("ZZ", [i, j], s[i, j] / 2.0))
    if not terms:
        terms.append(("I", [0], 0.0))
    return SparsePauliOp.from_sparse_list(terms, n).simplify(), offset


def qaoa_circuit(hamiltonian: Any, reps: int) -> Any:
    """QAOA ansatz for a diagonal (Z/ZZ) Hamiltonian: parameters gamma[0..p-1], beta[0..p-1]."""
    from qiskit import QuantumCircuit
    from qiskit.circuit import ParameterVector

    n = hamiltonian.num_qubits
    gammas, betas = ParameterVector("gamma", reps), ParameterVector("beta", reps)
    qc = QuantumCircuit(n)
    qc.h(range(n))
    for k in range(reps):
        for label, coeff in hamiltonian.to_list():
            qubits = [n - 1 - i for i, c in enumerate(label) if c == "Z"]
            if len(qubits) == 1:
                qc.rz(2 * float(coeff.real) * gammas[k], qubits[0])
            elif len(qubits) == 2:
                qc.rzz(2 * float(coeff.real) * gammas[k], qubits[0], qubits[1])
        for q in range(n):
            qc.rx(2 * betas[k], q)
    return qc


def _seeding(device: Any, seed: int | None) -> contextlib.AbstractContextManager:
    """The block in which ``device``'s jobs use ``seed``, ``seed + 1``, ... (None: the device's own seeding, untouched)."""
    if seed is None:
        return contextlib.nullcontext()
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise InvalidInput(f"seed must be an integer or None, got {seed!r}")
    seeded = getattr(device, "seeded", None)
    if seeded is None:
        raise InvalidInput(f"{device} cannot seed its jobs; pass seed=None")
    return seeded(seed)


def _interp(values: np.ndarray) -> np.ndarray:
    """INTERP warm start: p angles -> p + 1 angles by linear interpolation (Zhou et al. 2020, eq. B1)."""
    p = len(values)
    padded = np.concatenate([[0.0], values, [0.0]])
    return np.array([(i / p) * padded[i] + ((p - i) / p) * padded[i + 1] for i in range(p + 1)])


@dataclass(frozen=True)
class QaoaLevel:
    """The optimum found at one QAOA depth p: its angles and the optimiser's value there.

    With shots, ``expected_energy`` is the lowest of the optimiser's noisy estimates (biased low); the deepest
    level's fresh estimate is ``QaoaResult.expected_energy``.
    """

    reps: int
    gammas: np.ndarray
    betas: np.ndarray
    expected_energy: float


@dataclass
class QaoaResult:
    """Outcome of a QAOA run: best sampled assignment, its QUBO value, the QAOA expectation, the angles, the work done.

    ``expected_energy`` is <x^T Q x> of the optimised state, estimated in a job of its own after the optimisation.
    ``levels`` holds the optimum of every depth on the way (p = 1 .. reps): its angles and expected value.
    """

    x: np.ndarray
    energy: float
    expected_energy: float
    gammas: np.ndarray
    betas: np.ndarray
    reps: int
    evaluations: int
    jobs: int
    levels: list[QaoaLevel] = field(default_factory=list)


class _QaoaObjective:
    """<H_C> + offset at rows of (gammas, betas), each batch one expectation job."""

    def __init__(self, q: np.ndarray, device: Any, reps: int, shots: int | None):
        hamiltonian, self.offset = qubo_to_ising(q)
        self.scale = float(np.max(np.abs(hamiltonian.coeffs.real))) or 1.0
        self.normalised = hamiltonian / self.scale
        self.circuit = qaoa_circuit(self.normalised, reps)
        self.order = [p.name for p in self.circuit.parameters]
        self.reps = reps
        self.program = device.prepare_circuit(self.circuit, [hamiltonian], shots=shots)
        self.evaluations = 0
        self.jobs = 0

    def rows(self, angles: np.ndarray) -> np.ndarray:
        """Angle rows [gamma_0..gamma_p-1, beta_0..beta_p-1] in the circuit's parameter order."""
        angles = np.atleast_2d(angles)
        named = {f"gamma[{k}]": angles[:, k] for k in range(self.reps)} | {f"beta[{k}]": angles[:, self.reps + k] for k in range(self.reps)}
        return np.stack([named[name] for name in self.order], axis=1)

    def __call__(self, angles: np.ndarray) -> np.ndarray:
        values, _ = self.program(torch.from_numpy(self.rows(angles)))
        self.evaluations += len(np.atleast_2d(angles))
        self.jobs += 1
        return values[:, 0].numpy() + self.offset


def qubo_minimize(q: np.ndarray, device: Any, reps: int = 1, shots: int | None = None, maxiter: int = MAXITER, sample_shots: int = SAMPLE_SHOTS, seed: int | None = 0) -> QaoaResult:
    """Minimise x^T Q x by QAOA of depth ``reps`` on ``device`` (warm-started level by level from p = 1).

    ``seed`` seeds the simulator's shots of this call (see the module docstring); pass None on a real processor.
    """
    q = np.asarray(q, dtype=np.float64)
    if q.ndim != 2 or q.shape[0] != q.shape[1]:
        raise ShapeError(f"qubo_minimize takes a square matrix Q, got shape {q.shape}")
    if not np.all(np.isfinite(q)):
        raise InvalidInput("qubo_minimize: Q holds NaN/inf")
    if reps < 1:
        raise InvalidInput(f"qubo_minimize: reps (QAOA depth p) must be >= 1, got {reps}")
    with _seeding(device, seed):
        return _qaoa(q, device, reps, shots, maxiter, sample_shots)


def _qaoa(q: np.ndarray, device: Any, reps: int, shots: int | None, maxiter: int, sample_shots: int) -> QaoaResult:
    """The QAOA loop of ``qubo_minimize`` on validated input."""
    from scipy.optimize import minimize

    evaluations = jobs = 0
    levels: list[QaoaLevel] = []
    angles = np.empty(0)
    for p in range(1, reps + 1):
        objective = _QaoaObjective(q, device, p, shots)
        if p == 1:
            grid = np.array([(g, b) for g in np.linspace(math.pi / GRID_GAMMAS, math.pi, GRID_GAMMAS) for b in np.linspace(math.pi / (2 * GRID_BETAS), math.pi / 2, GRID_BETAS)])
            start = grid[int(np.argmin(objective(grid)))]
        else:
            start = np.concatenate([_interp(angles[: p - 1]), _interp(angles[p - 1 :])])
        result = minimize(lambda a, f=objective: float(f(a)[0]), start, method="COBYLA", options={"maxiter": maxiter, "rhobeg": 0.2})
        angles = np.asarray(result.x)
        levels.append(QaoaLevel(p, angles[:p].copy(), angles[p:].copy(), float(result.fun)))
        if p < reps:
            evaluations += objective.evaluations
            jobs += objective.jobs
    expected = float(objective(angles)[0])
    bits = sample_qaoa(objective.circuit, objective.rows(angles), device, sample_shots)
    values = qubo_values(q, bits)
    best = int(np.argmin(values))
    evaluations += objective.evaluations
    jobs += objective.jobs + 1
    return QaoaResult(bits[best], float(values[best]), expected, angles[:reps], angles[reps:], reps, evaluations, jobs, levels)


def sample_qaoa(circuit: Any, rows: np.ndarray, device: Any, shots: int) -> np.ndarray:
    """Measured assignments (shots, n) of the QAOA circuit at one row of angles (bit i = variable i)."""
    measured = circuit.copy()
    measured.measure_all()
    program = device.prepare_circuit(measured, shots=shots)
    return program(torch.from_numpy(rows))[0].numpy()


def qaoa_expectation(q: np.ndarray, device: Any, gammas: np.ndarray, betas: np.ndarray, shots: int | None = None) -> float:
    """<x^T Q x> of the QAOA state with the given angles on ``device`` (e.g. angles optimised on the ideal simulator, run on a noisy one)."""
    objective = _QaoaObjective(np.asarray(q, dtype=np.float64), device, len(gammas), shots)
    return float(objective(np.concatenate([gammas, betas]))[0])


def qaoa_maxcut(n: int, edges: list[tuple[int, int]], device: Any, reps: int = 1, shots: int | None = None, maxiter: int = MAXITER, seed: int | None = 0) -> tuple[QaoaResult, float]:
    """QAOA MaxCut: the result and the expected cut of the optimised QAOA state (``seed`` as in ``qubo_minimize``)."""
    result = qubo_minimize(maxcut_qubo(n, edges), device, reps=reps, shots=shots, maxiter=maxiter, seed=seed)
    return result, -result.expected_energy


# --------------------------------------------------------------------------- VQE


@dataclass
class VqeResult:
    """Outcome of VQE: the energy at the optimised angles with its standard error, the angles, iterations, jobs.

    ``energy`` is <H> at ``parameters`` estimated in one job after the optimisation, so with shots it is an unbiased
    estimate (the optimiser's own values, in ``history``, are the lowest of many noisy estimates: biased low);
    ``energy_std_error`` is its standard error (0 when exact). ``jobs`` counts one job per objective call plus that one.
    """

    energy: float
    energy_std_error: float
    parameters: np.ndarray
    iterations: int
    jobs: int
    history: list[float] = field(default_factory=list)


def vqe(hamiltonian: Any, device: Any, reps: int = 2, shots: int | None = None, maxiter: int = 200, seed: int | None = 0, restarts: int = 1) -> VqeResult:
    """Ground energy of ``hamiltonian`` (a SparsePauliOp) by VQE with a RealAmplitudes ansatz and L-BFGS-B.

    Each objective call sends one job holding the energy row and the 2 * n_params parameter-shifted rows,
    so the gradient is exact up to shot noise (and exact on ``ibm_qpu:aer?shots=0``). The first start is
    near |0...0>; ``restarts`` > 1 adds seeded uniformly random starts against local minima. The start whose
    optimum the optimiser rated lowest wins, and its energy is then estimated afresh in one more job.
    ``seed`` draws the starts and seeds the simulator's shots (module docstring); pass None on a real processor.
    """
    coeffs = np.asarray(hamiltonian.coeffs)
    if np.any(np.abs(coeffs.imag) > 1e-12):
        raise InvalidInput("vqe: the Hamiltonian has complex coefficients, so it is not Hermitian")
    if not isinstance(restarts, int) or restarts < 1:
        raise InvalidInput(f"vqe: restarts must be an integer >= 1, got {restarts!r}")
    with _seeding(device, seed):
        return _vqe(hamiltonian, device, reps, shots, maxiter, np.random.default_rng(seed), restarts)


def _vqe(hamiltonian: Any, device: Any, reps: int, shots: int | None, maxiter: int, rng: np.random.Generator, restarts: int) -> VqeResult:
    """The VQE loop of ``vqe`` on validated input."""
    from qiskit.circuit.library import real_amplitudes
    from scipy.optimize import minimize

    ansatz = real_amplitudes(hamiltonian.num_qubits, reps=reps)
    check_shift_rule(ansatz, list(ansatz.parameters))
    program = device.prepare_circuit(ansatz, [hamiltonian], shots=shots)
    n = ansatz.num_parameters
    history: list[float] = []

    def energy_and_gradient(theta: np.ndarray) -> tuple[float, np.ndarray]:
        rows = np.repeat(theta[None, :], 1 + 2 * n, axis=0)
        rows[1 + np.arange(n), np.arange(n)] += SHIFT
        rows[1 + n + np.arange(n), np.arange(n)] -= SHIFT
        values = program(torch.from_numpy(rows))[0][:, 0].numpy()
        history.append(float(values[0]))
        return float(values[0]), (values[1 : 1 + n] - values[1 + n :]) / 2.0

    starts = [rng.uniform(-0.1, 0.1, n)] + [rng.uniform(-math.pi, math.pi, n) for _ in range(restarts - 1)]
    best_energy, best_theta, iterations = math.inf, starts[0], 0
    for start in starts:
        result = minimize(energy_and_gradient, start, jac=True, method="L-BFGS-B", options={"maxiter": maxiter})
        iterations += int(result.nit)
        if result.fun < best_energy:
            best_energy, best_theta = float(result.fun), np.asarray(result.x)
    values, std_errors = program(torch.from_numpy(best_theta[None, :]))
    return VqeResult(float(values[0, 0]), float(std_errors[0, 0]), best_theta, iterations, len(history) + 1, history)
