"""Clements and Reck decompositions (hal/drivers/photonic/decompose.py): reconstruction, structure, inverse."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hal.drivers.photonic.decompose import LAYOUTS, decompose, mzi_matrix, random_unitary, reconstruct


def _max_error(u: np.ndarray, layout: str) -> float:
    return float(np.abs(reconstruct(decompose(u, layout)) - u).max())


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 12), seed=st.integers(0, 2**32 - 1), layout=st.sampled_from(LAYOUTS))
def test_random_unitaries_reconstruct_to_machine_precision(n, seed, layout):
    u = random_unitary(n, np.random.default_rng(seed))
    assert _max_error(u, layout) < 1e-10


@settings(max_examples=20, deadline=None)
@given(n=st.integers(2, 10), seed=st.integers(0, 2**32 - 1), layout=st.sampled_from(LAYOUTS))
def test_structured_unitaries_with_exact_zeros_reconstruct(n, seed, layout):
    """Permutations with phases have many exactly-zero elements (the atan2 branch points)."""
    rng = np.random.default_rng(seed)
    u = np.eye(n)[rng.permutation(n)] * np.exp(1j * rng.uniform(0, 2 * np.pi, n))
    assert _max_error(u, layout) < 1e-10


@pytest.mark.parametrize("layout", LAYOUTS)
def test_n64_haar_unitaries_reconstruct_below_1e_10(layout):
    rng = np.random.default_rng(64)
    for _ in range(2):
        assert _max_error(random_unitary(64, rng), layout) < 1e-10


@pytest.mark.parametrize("n", [3, 5, 8, 16])
def test_mesh_shapes_are_those_of_the_papers(n):
    u = random_unitary(n, np.random.default_rng(n))
    clements, reck = decompose(u, "clements"), decompose(u, "reck")
    assert clements.mzi_count == reck.mzi_count == n * (n - 1) // 2
    assert clements.depth == n  # rectangular: N columns (Clements 2016)
    assert reck.depth == 2 * n - 3  # triangular: 2N-3 columns (Reck 1994)
    for mesh in (clements, reck):
        # no two MZIs of a column share a mode
        for c in range(mesh.depth):
            modes = mesh.modes[mesh.columns == c]
            touched = np.concatenate([modes, modes + 1])
            assert len(set(touched.tolist())) == touched.size


def test_phases_are_in_one_period():
    mesh = decompose(random_unitary(9, np.random.default_rng(1)))
    for phases in (mesh.theta, mesh.phi, mesh.output_phases):
        assert (phases >= 0).all() and (phases < 2 * np.pi).all()


def test_inverse_of_given_phases_is_unitary_and_redecomposes():
    rng = np.random.default_rng(3)
    mesh = decompose(random_unitary(7, rng), "clements")
    u = reconstruct(mesh)
    assert np.abs(u.conj().T @ u - np.eye(7)).max() < 1e-12
    assert np.abs(reconstruct(decompose(u, "reck")) - u).max() < 1e-10


def test_mzi_matrix_is_the_physical_composition():
    """T(theta, phi) = B diag(e^{i theta}, 1) B diag(e^{i phi}, 1) with a 50:50 coupler B."""
    b = np.array([[1, 1j], [1j, 1]]) / np.sqrt(2)
    theta, phi = 1.3, -0.4
    composed = b @ np.diag([np.exp(1j * theta), 1]) @ b @ np.diag([np.exp(1j * phi), 1])
    assert np.allclose(mzi_matrix(theta, phi), composed, atol=1e-15)
    assert np.allclose(np.abs(mzi_matrix(np.pi, 0.0)), np.eye(2))  # bar state
    assert np.allclose(np.abs(mzi_matrix(0.0, 0.0)), [[0, 1], [1, 0]])  # cross state


def test_non_unitary_and_non_square_are_refused():
    with pytest.raises(ValueError, match="not unitary"):
        decompose(np.ones((3, 3)))
    with pytest.raises(ValueError, match="square"):
        decompose(np.eye(3)[:2])
    with pytest.raises(ValueError, match="layout"):
        decompose(np.eye(2), "hexagonal")
