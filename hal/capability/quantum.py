"""The ``quantum`` capability section: what a gate-based quantum processor (or its simulator) offers.

Filled by the IBM quantum driver from a backend's ``Target`` (qubits, instructions with their error and
duration per qubit tuple, qubit T1/T2) and configuration (shot and circuit limits). Per-qubit figures are
summarised as the median and the worst value over the device, each a Figure whose source names the
calibration it was read from (``measured:calibration <timestamp>``). Counts (qubits, shot and circuit limits,
coupler degrees, broken couplers) are Figures too: read off the backend (``measured:``) or counted from what
was read (``derived:``). Pure data: standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hal.capability.figures import Figure


@dataclass(frozen=True)
class Spread:
    """A per-qubit (or per-pair) figure over the whole device: its median, its worst value, and how many were read.

    "Worst" is the smallest for coherence times and the largest for errors and durations. ``count`` is how many
    values the two statistics summarise (the sample size, not a device figure).
    """

    median: Figure
    worst: Figure
    count: int


@dataclass(frozen=True)
class Connectivity:
    """The coupling map: which physical qubit pairs a two-qubit gate can act on directly.

    ``edges`` are directed pairs as the backend lists them; ``degree_max`` / ``degree_mean`` count the
    distinct neighbours of a qubit (undirected), derived from the edges. ``all_to_all`` is true for simulators
    with no coupling map, which have no degrees (None).
    """

    all_to_all: bool
    edges: list[list[int]] = field(default_factory=list)
    degree_max: Figure | None = None
    degree_mean: Figure | None = None


@dataclass(frozen=True)
class QuantumSection:
    """Qubits, native gates, connectivity, coherence, errors, durations and job limits of one backend.

    Times are in seconds (``t1_s``, ``gate_duration_2q_s``...), errors are probabilities (0..1). A figure
    the backend does not report (an ideal simulator has no T1) is ``None``, never a guess. ``unusable_2q_pairs``
    counts qubit pairs with a two-qubit gate calibrated with error 1 (a broken coupler; it makes the worst
    2-qubit error 1.0).
    """

    backend: str
    num_qubits: Figure
    basis_gates: list[str]
    two_qubit_gates: list[str]
    connectivity: Connectivity
    noise_model: bool
    calibration_time: str | None
    t1_s: Spread | None = None
    t2_s: Spread | None = None
    gate_error_1q: Spread | None = None
    gate_error_2q: Spread | None = None
    gate_duration_1q_s: Spread | None = None
    gate_duration_2q_s: Spread | None = None
    readout_error: Spread | None = None
    readout_duration_s: Spread | None = None
    unusable_2q_pairs: Figure | None = None
    max_shots: Figure | None = None
    max_circuits: Figure | None = None
    processor: str | None = None
