"""The non-idealities of a photonic matrix processor, as plain dataclasses with units and sources.

Each field is one physical parameter, its unit in the name, its default a typical published figure
(the docstring names the source). Every effect can be switched off on its own; ``PhotonicConfig.ideal()``
switches them all off, which leaves the exact SVD/mesh arithmetic (error at float rounding level).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

#: Planck constant (J s) and elementary charge (C), exact SI values.
PLANCK_J_S = 6.62607015e-34
ELEMENTARY_CHARGE_C = 1.602176634e-19
SPEED_OF_LIGHT_M_S = 299_792_458.0


@dataclass(frozen=True)
class PhaseShifterConfig:
    """Thermo-optic phase shifters (heaters) and the DACs that drive them.

    - ``dac_bits``: resolution of the phase setting over [0, 2 pi); None = continuous. 12 bits: a
      phase-linearised drive from a 16-bit multichannel voltage DAC (Analog Devices AD5370 datasheet,
      40 channels x 16 bit) loses about 4 bits to the heater's square-law (phase ~ V^2) response at the
      low end of the range.
    - ``p_pi_w``: electrical power for a pi shift: 24.77 mW, Harris et al., "Efficient, compact and low
      loss thermo-optic phase shifter in silicon", Opt. Express 22, 10487 (2014).
    - ``crosstalk``: fraction of a heater's phase that appears on each nearest neighbour in the same
      column. 0.02: heaters at ~100 um pitch without isolation trenches show percent-level coupling
      (Milanizadeh et al., "Canceling thermal cross-talk effects in photonic integrated circuits",
      J. Lightwave Technol. 37, 1325 (2019)).
    - ``crosstalk_residual``: fraction of that coupling left after the controller pre-compensates with
      its calibrated crosstalk matrix, the cancellation Milanizadeh et al. demonstrate. 0.05 assumes the
      coupling coefficients are calibrated to within 5 %; 1.0 models an uncompensated controller.
    - ``bandwidth_hz``: thermal -3 dB bandwidth, 130 kHz (Harris et al. 2014); the settling time used
      for reprogramming is 5 time constants, ``5 / (2 pi bandwidth)``.
    """

    dac_bits: int | None = 12
    p_pi_w: float = 24.77e-3
    crosstalk: float = 0.02
    crosstalk_residual: float = 0.05
    bandwidth_hz: float = 130e3

    @property
    def settle_time_s(self) -> float:
        """Time to settle a new phase to within e^-5 of its target: 5 / (2 pi f_3dB)."""
        return 5.0 / (2 * math.pi * self.bandwidth_hz)


@dataclass(frozen=True)
class CouplerConfig:
    """Fabrication error of the 50:50 directional couplers inside every MZI.

    ``splitting_error_rad``: standard deviation of the coupler angle around pi/4 (power split
    sin^2(pi/4 + delta) ~ 0.5 + delta). 0.01 rad, i.e. a 50 +- 1 % split: the component-error scale
    analysed by Bandyopadhyay, Hamerly and Englund, "Hardware error correction for programmable
    photonics", Optica 8, 1247 (2021), and Hamerly et al., "Asymptotically fault-tolerant programmable
    photonics", Nat. Commun. 13, 6831 (2022). Errors are drawn once per device (they are the chip's)
    from the device seed and are not known to the controller.
    """

    splitting_error_rad: float = 0.01


@dataclass(frozen=True)
class LossConfig:
    """Optical insertion loss in the mesh.

    - ``mzi_loss_db``: per MZI traversal, 0.3 dB: a 0.23 dB thermo-optic shifter (Harris et al. 2014)
      plus two couplers and the waveguide of one column.
    - ``crossing_loss_db``: per column a mode crosses without an MZI (the idle waveguide past the edge
      of a Clements column, the empty slots of a Reck triangle): 2 dB/cm silicon strip-waveguide loss
      over a 150 um column, 0.03 dB (Bogaerts et al., "Silicon microring resonators", Laser Photon.
      Rev. 6, 47 (2012), quote 1-3 dB/cm for strip waveguides).

    Unequal losses on different paths distort the matrix (the Reck triangle's paths cross 1 to 2N-3
    MZIs; Clements' cross N or N-1 plus idle edge segments); the common part is removed by the readout
    gain calibration. Setting ``crossing_loss_db = mzi_loss_db`` models a loss-balanced layout (dummy
    elements on the idle segments): every path then loses the same and only the common loss remains.
    """

    mzi_loss_db: float = 0.3
    crossing_loss_db: float = 0.03


@dataclass(frozen=True)
class DetectorConfig:
    """Readout: detectors, receiver noise, ADC.

    - ``detection``: "coherent" (balanced homodyne against a local oscillator: signed real amplitudes)
      or "intensity" (square-law |E|^2).
    - ``responsivity_a_per_w``: 1.0 A/W, Ge-on-Si waveguide photodiode at 1550 nm (Colace et al.,
      Appl. Phys. Lett. 91, 021107 (2007)).
    - ``tia_noise_a_per_rthz``: input-referred TIA noise current density, 16 pA/sqrt(Hz): 1.4 uA rms
      over the ~7.5 GHz noise bandwidth of a typical 10 Gb/s receiver (Saeckinger, "Broadband Circuits
      for Optical Fiber Communication", Wiley 2005, ch. 5).
    - ``sample_rate_hz``: 10 GS/s, modulator and receiver bandwidth class of the figures above;
      the receiver's noise bandwidth is half of it.
    - ``lo_power_w``: local-oscillator power per detector pair, 1 mW (chosen; it makes LO shot noise
      dominate the TIA noise, the usual homodyne operating point).
    - ``snr_db``: required amplitude SNR at a detector for a full-amplitude output (amplitude 1); the
      signal power per port, and so the laser power, are derived from it. 50 dB.
    - ``adc_bits``: 8-bit ADC per output (full scale set per output port to the largest amplitude the
      programmed matrix can produce, so no signal clips; noise beyond it is clipped and counted).
    - ``shot_noise`` / ``thermal_noise``: switch the two noise terms.
    """

    detection: str = "coherent"
    responsivity_a_per_w: float = 1.0
    tia_noise_a_per_rthz: float = 16e-12
    sample_rate_hz: float = 10e9
    lo_power_w: float = 1e-3
    snr_db: float = 50.0
    adc_bits: int | None = 8
    shot_noise: bool = True
    thermal_noise: bool = True

    @property
    def bandwidth_hz(self) -> float:
        """Receiver noise bandwidth: Nyquist, half the sample rate."""
        return self.sample_rate_hz / 2


@dataclass(frozen=True)
class WdmConfig:
    """Wavelength-division multiplexing: ``channels`` wavelengths share the mesh, one input vector each.

    Channels sit on the ITU-T G.694.1 100 GHz grid (0.8 nm at 1550 nm) centred on ``center_nm``.
    A heater's phase is an optical path difference, so a phase programmed for ``center_nm`` becomes
    phase * center / lambda on another channel (material dispersion neglected); the couplers are
    treated as wavelength-flat. 8 channels: the wavelength count of the photonic tensor core of
    Feldmann et al., Nature 589, 52 (2021), was 4; commercial DWDM transceivers carry 8 (CWDM8/DR8 class).
    """

    channels: int = 8
    spacing_nm: float = 0.8
    center_nm: float = 1550.0

    def wavelengths_nm(self) -> list[float]:
        """Channel wavelengths, symmetric around the centre."""
        return [self.center_nm + (k - (self.channels - 1) / 2) * self.spacing_nm for k in range(self.channels)]


@dataclass(frozen=True)
class PhotonicConfig:
    """All non-idealities of one device; switch each effect with the ``*_on`` flags."""

    phase: PhaseShifterConfig = field(default_factory=PhaseShifterConfig)
    coupler: CouplerConfig = field(default_factory=CouplerConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    wdm: WdmConfig = field(default_factory=WdmConfig)
    quantisation_on: bool = True
    crosstalk_on: bool = True
    fabrication_on: bool = True
    loss_on: bool = True
    noise_on: bool = True
    dispersion_on: bool = True

    @classmethod
    def ideal(cls, detection: str = "coherent") -> PhotonicConfig:
        """Every effect off: exact phases, perfect couplers, no loss, no noise, no ADC, one wavelength."""
        return cls(
            detector=replace(DetectorConfig(), detection=detection, adc_bits=None),
            wdm=WdmConfig(channels=1),
            quantisation_on=False,
            crosstalk_on=False,
            fabrication_on=False,
            loss_on=False,
            noise_on=False,
            dispersion_on=False,
        )


def db_to_amplitude(loss_db: float) -> float:
    """Field transmission of a loss in dB: 10^(-dB/20)."""
    return 10.0 ** (-loss_db / 20.0)
