"""Tests of hal/drivers/ibm_qpu/solvers.py: QUBO/Ising mapping, QAOA MaxCut and VQE (reduced; the full study is benchmarks/qpu_quality.py)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import hal
from hal.drivers.ibm_qpu.solvers import (
    brute_force_qubo,
    exact_ground_energy,
    h2_hamiltonian,
    heisenberg_chain,
    maxcut_qubo,
    qaoa_expectation,
    qaoa_maxcut,
    qubo_to_ising,
    random_regular_graph,
    vqe,
)

pytest.importorskip("qiskit")
pytestmark = pytest.mark.filterwarnings("error::DeprecationWarning")
#: Farhi, Goldstone, Gutmann (2014): QAOA p=1 on 3-regular MaxCut has expected approximation ratio >= 0.6924.
FARHI_P1_BOUND = 0.6924
CHEMICAL_ACCURACY_HA = 1.6e-3


def test_qubo_to_ising_reproduces_every_assignment_energy():
    rng = np.random.default_rng(0)
    q = rng.normal(size=(5, 5))
    hamiltonian, offset = qubo_to_ising(q)
    diagonal = np.real(np.diag(hamiltonian.to_matrix()))
    for bits in itertools.product((0, 1), repeat=5):
        x = np.array(bits, dtype=float)
        index = sum(b << i for i, b in enumerate(bits))  # qubit i = variable i, |1> means x_i = 1
        assert diagonal[index] + offset == pytest.approx(x @ q @ x)


def test_random_regular_graphs_are_simple_seeded_and_regular():
    edges = random_regular_graph(10, 3, seed=4)
    assert edges == random_regular_graph(10, 3, seed=4) and len(edges) == 15
    degree = np.bincount(np.array(edges).ravel(), minlength=10)
    assert np.all(degree == 3) and len(set(edges)) == 15 and all(a < b for a, b in edges)


def test_maxcut_qubo_counts_cut_edges():
    q = maxcut_qubo(4, [(0, 1), (1, 2), (2, 3), (3, 0)])
    x = np.array([1, 0, 1, 0.0])
    assert -(x @ q @ x) == 4 and brute_force_qubo(q)[1] == -4


def test_qaoa_maxcut_beats_the_p1_bound_and_deeper_circuits_do_better():
    device = hal.device("ibm_qpu:aer?shots=0")
    n = 8
    edges = random_regular_graph(n, 3, seed=1)
    _, optimum = brute_force_qubo(maxcut_qubo(n, edges))
    _, cut1 = qaoa_maxcut(n, edges, device, reps=1, maxiter=60)
    p2, cut2 = qaoa_maxcut(n, edges, device, reps=2, maxiter=60)
    ratio1, ratio2 = cut1 / -optimum, cut2 / -optimum
    assert ratio1 >= FARHI_P1_BOUND and ratio2 >= ratio1 - 1e-6
    assert p2.energy == optimum  # the best of 1024 samples is a maximum cut
    noisy = hal.device("ibm_qpu:fake_manila?seed=0&shots=2000")
    small = random_regular_graph(4, 3, seed=0)
    result, _ = qaoa_maxcut(4, small, device, reps=1, maxiter=40)
    ideal_value = qaoa_expectation(maxcut_qubo(4, small), device, result.gammas, result.betas)
    noisy_value = qaoa_expectation(maxcut_qubo(4, small), noisy, result.gammas, result.betas)
    assert ideal_value < noisy_value < 0  # noise pulls the expected cut toward the random-guess value


def test_vqe_reaches_chemical_accuracy_for_h2():
    device = hal.device("ibm_qpu:aer?shots=0")
    h2 = h2_hamiltonian()
    exact = exact_ground_energy(h2)
    assert exact == pytest.approx(-1.857275, abs=1e-6)  # the published coefficients give the published energy
    result = vqe(h2, device, reps=1)
    assert abs(result.energy - exact) < CHEMICAL_ACCURACY_HA and result.jobs == len(result.history)


def test_heisenberg_chain_is_the_textbook_operator():
    chain = heisenberg_chain(2)
    # two spins: singlet energy -3 J, triplet +J
    assert np.allclose(np.linalg.eigvalsh(chain.to_matrix()), [-3, 1, 1, 1])
