"""Programmed meshes (hal/drivers/photonic/mesh.py): column path vs per-MZI reference, each imperfection, wavelengths."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from hal.drivers.photonic.decompose import LAYOUTS, decompose, random_unitary, reconstruct
from hal.drivers.photonic.imperfections import PhotonicConfig
from hal.drivers.photonic.mesh import Mesh, draw_splitter_errors, neighbour_sum, quantise_phase

IDEAL = PhotonicConfig.ideal()


def _mesh(n: int, config: PhotonicConfig, layout: str = "clements", seed: int = 0) -> tuple[Mesh, np.ndarray]:
    rng = np.random.default_rng(seed)
    u = random_unitary(n, rng)
    errors = draw_splitter_errors(2 * n, n, config.coupler.splitting_error_rad, rng)
    return Mesh(decompose(u, layout), config, errors), u


def _relative(m: np.ndarray, u: np.ndarray) -> float:
    """Error after removing one common complex gain (what the readout calibration removes)."""
    g = np.vdot(u, m) / np.vdot(u, u)
    return float(np.linalg.norm(m / g - u) / np.linalg.norm(u))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_ideal_mesh_transfer_matrix_is_the_unitary(layout):
    mesh, u = _mesh(12, IDEAL, layout)
    m = mesh.transfer_matrix([1.0])[0].numpy()
    assert np.abs(m - u).max() < 1e-12
    assert np.abs(m - reconstruct(mesh.phases)).max() < 1e-12


@pytest.mark.parametrize("layout", LAYOUTS)
def test_column_path_equals_per_mzi_reference_with_every_imperfection(layout):
    mesh, _ = _mesh(9, PhotonicConfig(), layout, seed=5)
    x = torch.randn(6, 9, dtype=torch.complex128, generator=torch.Generator().manual_seed(0))
    scales = [1.0, 0.999, 1.0007]
    stack = mesh.columns(scales)
    fast = Mesh.propagate(x.expand(len(scales), -1, -1), stack)
    for k, scale in enumerate(scales):
        assert torch.allclose(fast[k], mesh.propagate_reference(x, scale), atol=1e-13)


def test_complex64_path_matches_complex128():
    mesh, _ = _mesh(16, PhotonicConfig())
    m64 = mesh.transfer_matrix([1.0], torch.complex64)[0]
    m128 = mesh.transfer_matrix([1.0], torch.complex128)[0]
    assert m64.dtype == torch.complex64
    assert (m64.to(torch.complex128) - m128).abs().max() < 1e-5


def test_coupler_errors_keep_the_mesh_unitary_but_move_it():
    config = replace(IDEAL, fabrication_on=True)
    mesh, u = _mesh(10, config)
    m = mesh.transfer_matrix([1.0])[0].numpy()
    assert np.abs(m.conj().T @ m - np.eye(10)).max() < 1e-12  # lossless couplers stay unitary
    assert _relative(m, u) > 1e-3


def test_phase_quantisation_error_shrinks_with_dac_bits():
    errors = []
    for bits in (4, 8, 12):
        config = replace(IDEAL, quantisation_on=True, phase=replace(IDEAL.phase, dac_bits=bits))
        mesh, u = _mesh(12, config)
        errors.append(_relative(mesh.transfer_matrix([1.0])[0].numpy(), u))
    assert errors[0] > errors[1] > errors[2] > 0
    assert errors[0] / errors[2] > 100  # each 4 bits cut the phase step by 16


def test_quantise_phase_rounds_to_the_dac_grid():
    step = 2 * np.pi / 8
    phases = np.array([0.0, 0.4 * step, 0.6 * step, 2 * np.pi - 0.1 * step])
    assert np.allclose(quantise_phase(phases, 3), [0.0, 0.0, step, 0.0])
    assert np.allclose(quantise_phase(phases, None), phases)


def test_crosstalk_adds_neighbours_phases():
    grid = np.array([[1.0, 0.0, 2.0, 0.0, 4.0]])
    assert np.allclose(neighbour_sum(grid, 2), [[2.0, 0.0, 5.0, 0.0, 2.0]])
    config = replace(IDEAL, crosstalk_on=True)
    mesh, u = _mesh(8, config)
    assert _relative(mesh.transfer_matrix([1.0])[0].numpy(), u) > 1e-4
    uncompensated = replace(config, phase=replace(config.phase, crosstalk_residual=1.0))
    mesh_raw, _ = _mesh(8, uncompensated)
    assert _relative(mesh_raw.transfer_matrix([1.0])[0].numpy(), u) > 5 * _relative(mesh.transfer_matrix([1.0])[0].numpy(), u)


def test_loss_is_balanced_in_clements_and_not_in_reck():
    """Clements' selling point (Optica 2016): every path crosses ~N MZIs, so loss is nearly uniform."""
    config = replace(IDEAL, loss_on=True)
    clements, u = _mesh(16, config, "clements")
    reck, _ = _mesh(16, config, "reck")
    m_clements = clements.transfer_matrix([1.0])[0].numpy()
    assert np.linalg.norm(m_clements) < np.linalg.norm(u)  # loss
    assert _relative(m_clements, u) < 0.5 * _relative(reck.transfer_matrix([1.0])[0].numpy(), u)


def test_wavelength_scaling_changes_the_matrix_a_little():
    mesh, _ = _mesh(8, IDEAL)
    m = mesh.transfer_matrix([1.0, 1.0005])
    difference = float((m[1] - m[0]).abs().max())
    assert 1e-5 < difference < 0.05


def test_splitter_errors_must_cover_the_mesh():
    u = random_unitary(6, np.random.default_rng(0))
    with pytest.raises(ValueError, match="sites"):
        Mesh(decompose(u), PhotonicConfig(), np.zeros((2, 6, 2)))


def _coupler(delta: float) -> np.ndarray:
    c, s = np.cos(np.pi / 4 + delta), np.sin(np.pi / 4 + delta)
    return np.array([[c, 1j * s], [1j * s, c]])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_transfer_matrix_equals_an_independent_dense_product(layout):
    """Rebuild the programmed mesh as a product of dense N x N matrices, one per MZI, from the physics alone."""
    config = PhotonicConfig()
    mesh, _ = _mesh(7, config, layout, seed=11)
    loss = config.loss
    through, idle = 10 ** (-loss.mzi_loss_db / 20), 10 ** (-loss.crossing_loss_db / 20)
    total = np.eye(7, dtype=complex)
    for column in range(mesh.depth):
        layer = np.diag(np.full(7, idle, dtype=complex))
        for m in np.flatnonzero(mesh.active[column]):
            d1, d2 = mesh.splitter_errors[column, m]
            theta, phi = mesh.theta[column, m], mesh.phi[column, m]
            block = _coupler(d2) @ np.diag([np.exp(1j * theta), 1]) @ _coupler(d1) @ np.diag([np.exp(1j * phi), 1])
            layer[m : m + 2, m : m + 2] = through * block
        total = layer @ total
    total = np.exp(1j * mesh.output_phases)[:, None] * total
    assert np.abs(mesh.transfer_matrix([1.0])[0].numpy() - total).max() < 1e-12
