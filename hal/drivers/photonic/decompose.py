"""Unitary <-> MZI-mesh phases: the Clements (rectangular) and Reck (triangular) decompositions and their inverse.

The unit cell is a Mach-Zehnder interferometer (MZI) built the way it is fabricated: an external phase
shifter ``phi`` on the top input arm, a 50:50 coupler, an internal phase shifter ``theta`` on the top arm,
a second 50:50 coupler. With the coupler ``B = [[1, i], [i, 1]] / sqrt(2)`` its transfer matrix is

    T(theta, phi) = B diag(e^{i theta}, 1) B diag(e^{i phi}, 1)
                  = i e^{i theta/2} [[e^{i phi} sin(theta/2),  cos(theta/2)],
                                     [e^{i phi} cos(theta/2), -sin(theta/2)]]

so ``theta`` sets the splitting (theta = pi: bar, 0: cross) and ``phi`` the relative phase.

A mesh is a list of MZIs in the order light meets them (each on modes ``(m, m+1)``) followed by a screen
of output phase shifters: ``U = diag(e^{i output_phases}) T_K ... T_2 T_1``.

* Reck et al., "Experimental realization of any discrete unitary operator", PRL 73, 58 (1994): null the
  elements below the diagonal row by row with MZIs applied from the right; N(N-1)/2 MZIs in a triangle of
  depth 2N-3.
* Clements et al., "Optimal design for universal multiport interferometers", Optica 3, 1460 (2016): null
  alternating anti-diagonals from the right and from the left, then move the left-hand MZIs through the
  diagonal (T^-1 D = D' T'); N(N-1)/2 MZIs in a rectangle of depth N with balanced path lengths.

Every step takes its angles from ``atan2`` of moduli and ``angle`` of products, so no division by a
small element occurs; reconstruction error stays near machine precision (tests: < 1e-10 up to N = 64).
"""

from __future__ import annotations

import cmath
import math
from dataclasses import dataclass

import numpy as np

LAYOUTS = ("clements", "reck")


@dataclass(frozen=True)
class MeshPhases:
    """Programmed phases of an N-mode MZI mesh, in the order light meets the MZIs.

    ``modes[k]`` is the top mode of MZI k (it couples modes ``modes[k]`` and ``modes[k] + 1``),
    ``theta``/``phi`` its internal/external phases in radians, ``columns[k]`` its column (the
    earliest layer it can sit in, given the MZIs before it on its two modes), ``output_phases``
    the phase screen after the last column.
    """

    n: int
    layout: str
    modes: np.ndarray
    theta: np.ndarray
    phi: np.ndarray
    columns: np.ndarray
    output_phases: np.ndarray

    @property
    def depth(self) -> int:
        """Number of columns (optical depth in MZIs)."""
        return int(self.columns.max()) + 1 if self.columns.size else 0

    @property
    def mzi_count(self) -> int:
        return int(self.modes.size)


def layout_depth(n: int, layout: str) -> int:
    """Columns of MZIs in an ``n``-mode mesh: n for a Clements rectangle, 2n - 3 for a Reck triangle."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown mesh layout {layout!r}; use one of {', '.join(LAYOUTS)}")
    return n if layout == "clements" else 2 * n - 3


def mzi_matrix(theta: np.ndarray | float, phi: np.ndarray | float) -> np.ndarray:
    """The ideal 2x2 MZI transfer matrix T(theta, phi); broadcasts to shape (..., 2, 2)."""
    theta = np.asarray(theta, dtype=np.float64)
    phi = np.asarray(phi, dtype=np.float64)
    s, c = np.sin(theta / 2), np.cos(theta / 2)
    g = 1j * np.exp(1j * theta / 2)
    e = np.exp(1j * phi)
    return np.stack([np.stack([g * e * s, g * c], -1), np.stack([g * e * c, -g * s], -1)], -2)


def _mzi_scalars(theta: float, phi: float) -> tuple[complex, complex, complex, complex]:
    """Entries (t00, t01, t10, t11) of T(theta, phi) as Python scalars (the decomposition's inner loop)."""
    g = 1j * cmath.exp(0.5j * theta)
    e = cmath.exp(1j * phi)
    s, c = math.sin(theta / 2), math.cos(theta / 2)
    return g * e * s, g * c, g * e * c, -g * s


def _null_from_right(u: np.ndarray, row: int, m: int) -> tuple[float, float]:
    """Phases of the MZI on columns (m, m+1) whose inverse, applied from the right, zeroes u[row, m]."""
    a, b = complex(u[row, m]), complex(u[row, m + 1])
    theta = 2 * math.atan2(abs(b), abs(a))
    phi = cmath.phase(-a * b.conjugate())
    t00, t01, t10, t11 = _mzi_scalars(theta, phi)
    left, right = u[:, m].copy(), u[:, m + 1]
    u[:, m] = left * t00.conjugate() + right * t01.conjugate()
    u[:, m + 1] = left * t10.conjugate() + right * t11.conjugate()
    return theta, phi


def _null_from_left(u: np.ndarray, col: int, m: int) -> tuple[float, float]:
    """Phases of the MZI on rows (m, m+1) that, applied from the left, zeroes u[m+1, col]."""
    a, b = complex(u[m, col]), complex(u[m + 1, col])
    theta = 2 * math.atan2(abs(a), abs(b))
    phi = cmath.phase(b * a.conjugate())
    t00, t01, t10, t11 = _mzi_scalars(theta, phi)
    top, bottom = u[m].copy(), u[m + 1]
    u[m] = t00 * top + t01 * bottom
    u[m + 1] = t10 * top + t11 * bottom
    return theta, phi


def _check_unitary(u: np.ndarray) -> np.ndarray:
    u = np.asarray(u, dtype=np.complex128)
    if u.ndim != 2 or u.shape[0] != u.shape[1]:
        raise ValueError(f"a mesh implements a square unitary; got shape {u.shape}")
    deviation = np.abs(u.conj().T @ u - np.eye(u.shape[0])).max() if u.size else 0.0
    if not deviation < 1e-8:
        raise ValueError(f"matrix is not unitary (max |U^H U - I| = {deviation:.3g}); decompose a unitary (use the SVD for general matrices)")
    return u.copy()


def _schedule(n: int, modes: list[int]) -> np.ndarray:
    """Column of each MZI: one after the latest column already used on either of its modes."""
    last = np.full(n, -1)
    columns = np.empty(len(modes), dtype=np.int64)
    for k, m in enumerate(modes):
        column = max(last[m], last[m + 1]) + 1
        columns[k] = column
        last[m] = last[m + 1] = column
    return columns


def _mesh(n: int, layout: str, mzis: list[tuple[int, float, float]], output_phases: np.ndarray) -> MeshPhases:
    modes = [m for m, _, _ in mzis]
    return MeshPhases(
        n=n,
        layout=layout,
        modes=np.asarray(modes, dtype=np.int64),
        theta=np.mod(np.asarray([t for _, t, _ in mzis], dtype=np.float64), 2 * np.pi),
        phi=np.mod(np.asarray([p for _, _, p in mzis], dtype=np.float64), 2 * np.pi),
        columns=_schedule(n, modes),
        output_phases=np.mod(output_phases, 2 * np.pi),
    )


def reck_decompose(u: np.ndarray) -> MeshPhases:
    """Phases of a triangular (Reck) mesh implementing the unitary ``u`` (float64)."""
    work = _check_unitary(u)
    n = work.shape[0]
    mzis: list[tuple[int, float, float]] = []
    for row in range(n - 1, 0, -1):
        for m in range(row):
            theta, phi = _null_from_right(work, row, m)
            mzis.append((m, theta, phi))
    # work = u R_1^H ... R_K^H is now diagonal, so u = D R_K ... R_1: light meets R_1 first.
    return _mesh(n, "reck", mzis, np.angle(np.diag(work)))


def clements_decompose(u: np.ndarray) -> MeshPhases:
    """Phases of a rectangular (Clements) mesh implementing the unitary ``u`` (float64)."""
    work = _check_unitary(u)
    n = work.shape[0]
    right: list[tuple[int, float, float]] = []
    left: list[tuple[int, float, float]] = []
    for i in range(n - 1):
        if i % 2 == 0:
            for j in range(i + 1):
                m = i - j
                theta, phi = _null_from_right(work, n - 1 - j, m)
                right.append((m, theta, phi))
        else:
            for j in range(1, i + 2):
                m = n + j - i - 3
                theta, phi = _null_from_left(work, j - 1, m)
                left.append((m, theta, phi))
    # L_p ... L_1 u R_1^H ... R_q^H = D, so u = L_1^H ... L_p^H D R_q ... R_1. Move each L^H through the
    # diagonal, innermost first: T(theta, phi)^H diag(d1, d2) = diag(a, b) T(theta, phi') with
    # phi' = arg d1 - arg d2, a = -e^{-i(theta+phi)} d2, b = -e^{-i theta} d2 on modes (m, m+1).
    d = np.diag(work).copy()
    moved: list[tuple[int, float, float]] = []
    for m, theta, phi in reversed(left):
        d1, d2 = complex(d[m]), complex(d[m + 1])
        moved.append((m, theta, cmath.phase(d1) - cmath.phase(d2)))
        d[m] = -cmath.exp(-1j * (theta + phi)) * d2
        d[m + 1] = -cmath.exp(-1j * theta) * d2
    # u = D' M'_1 ... M'_p R_q ... R_1 (M'_p moved first): light meets R_1..R_q, then M'_p..M'_1.
    mzis = right + moved
    return _mesh(n, "clements", mzis, np.angle(d))


DECOMPOSERS = {"clements": clements_decompose, "reck": reck_decompose}


def decompose(u: np.ndarray, layout: str = "clements") -> MeshPhases:
    """Decompose the unitary ``u`` into the phases of a ``layout`` ("clements" or "reck") mesh."""
    if layout not in DECOMPOSERS:
        raise ValueError(f"unknown mesh layout {layout!r}; use one of {', '.join(LAYOUTS)}")
    return DECOMPOSERS[layout](u)


def reconstruct(mesh: MeshPhases) -> np.ndarray:
    """The unitary a mesh of ideal MZIs implements (the inverse of ``decompose``), float64."""
    u = np.eye(mesh.n, dtype=np.complex128)
    blocks = mzi_matrix(mesh.theta, mesh.phi)
    for m, block in zip(mesh.modes, blocks):
        u[m : m + 2, :] = block @ u[m : m + 2, :]
    return np.exp(1j * mesh.output_phases)[:, None] * u


def random_unitary(n: int, rng: np.random.Generator) -> np.ndarray:
    """A Haar-random n x n unitary (QR of a complex Gaussian matrix with the phases of R's diagonal removed)."""
    z = (rng.standard_normal((n, n)) + 1j * rng.standard_normal((n, n))) / np.sqrt(2)
    q, r = np.linalg.qr(z)
    return q * (np.diag(r) / np.abs(np.diag(r)))
