"""The photonic section of a capability: MZI meshes, architecture, readout, wavelengths, non-idealities.

Stored under ``Capabilities.sections["photonic"]``. Pure data (standard library only). Component figures
come from papers (phase-shifter power, losses, detector responsivity), derived ones say their formula (mesh
counts, the loss-limited mesh size, the expected error), and engineering choices of the emulator are assumed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hal.capability.figures import Figure


@dataclass(frozen=True)
class MeshLayout:
    """One N-port interferometer mesh of 2x2 MZIs."""

    ports: Figure
    layout: str
    """``clements`` (rectangular, Optica 3, 1460 (2016)) or ``reck`` (triangular, PRL 73, 58 (1994))."""
    mzis: Figure
    depth_columns: Figure
    phase_shifters: Figure
    max_ports: Figure
    """The loss-limited mesh size: the largest N whose output, after the mesh's insertion loss, still carries the
    signal power the required SNR needs when each input port is driven at its power limit."""


@dataclass(frozen=True)
class Readout:
    """How outputs are read: detection scheme, converters, the optical power the SNR requirement sets."""

    detection: str
    """``coherent`` (homodyne: signed amplitudes) or ``intensity`` (|E|^2)."""
    adc_bits: Figure | None
    phase_dac_bits: Figure | None
    snr_db: Figure
    signal_power_per_port: Figure
    responsivity: Figure
    tia_noise_density: Figure
    sample_rate: Figure


@dataclass(frozen=True)
class PhotonicSection:
    """What a photonic matrix processor is: architecture, meshes, wavelengths, readout, physics, switches."""

    architecture: str
    """How a weight matrix maps onto the optics (e.g. SVD onto two meshes and an attenuator column)."""
    mesh: MeshLayout
    meshes: Figure
    wavelength_channels: Figure
    readout: Readout
    max_tiles: Figure
    """Largest number of N x N tiles one weight may be cut into (each programmed in turn)."""
    nonidealities: dict[str, bool]
    """Which effects are simulated (phase_quantisation, thermal_crosstalk, coupler_error, insertion_loss, detector_noise, dispersion)."""
    physics: dict[str, Figure] = field(default_factory=dict)
    """Component figures with their sources (P_pi, crosstalk, coupler error, losses, energies, settling, latency)."""
    accuracy: dict[str, Figure] = field(default_factory=dict)
    """The expected relative error of a product and the share of each effect in it, derived from the configuration
    (``expected_error``, then one root-variance figure per effect)."""
