"""Physical parameters of the emulated crossbar: PCM device statistics, tile periphery, energy constants.

Every non-ideality is a dataclass field with its unit in the name, a default and the source of that default.
"aihwkit" below means IBM's Analog Hardware Acceleration Kit (Rasch et al., "Using the IBM analog in-memory
hardware acceleration kit for neural network training and inference", APL Mach. Learn. 1, 041102, 2023) and the
default of the named parameter in its 1.1.0 release.
The PCM statistics follow the model IBM fitted on measured devices and published with aihwkit
(``PCMLikeNoiseModel``): Nandakumar et al., "Phase-change memory models for deep learning training and
inference", ICECS 2019, and Joshi et al., "Accurate deep neural network inference using computational
phase-change memory", Nat. Commun. 11, 2473 (2020). Fields that are design choices of this emulator, not
measurements, say so.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class PcmStatistics:
    """Statistical PCM device model (conductances in microsiemens, times in seconds).

    Programming noise: std ``sigma_us(g) = (c0 + c1 (g/g_max) + c2 (g/g_max)^2) * g_max / g_max_reference_us``.
    Drift: ``G(t) = G(t0) (t / t0)^-nu`` with ``nu ~ |N(mu(g), sigma(g))|`` per device, where
    ``mu = clamp(a_mu ln(g/g_max) + b_mu, mu_min, mu_max)`` and likewise for sigma.
    Read (1/f) noise accumulated up to time t: relative std ``Q(g) sqrt(ln((t + t_read) / (2 t_read)))`` with
    ``Q(g) = min(q_coefficient / max((g/g_max)^q_exponent, q_floor), q_max)``.
    All coefficients: Nandakumar et al., ICECS 2019, as published in aihwkit ``PCMLikeNoiseModel``.
    """

    programming_coefficients_us: tuple[float, float, float] = (0.26348, 1.9650, -1.1731)
    """Polynomial c0, c1, c2 of the programming-noise std in uS (fit at g_max = 25 uS). Nandakumar et al. ICECS 2019."""
    programming_reference_g_max_us: float = 25.0
    """The g_max (uS) the programming polynomial was fitted at; the std scales with g_max / this. Nandakumar 2019."""
    drift_reference_time_s: float = 20.0
    """t0 (s): time after programming of the first read, the reference of the drift power law. Nandakumar 2019."""
    read_time_s: float = 250e-9
    """t_read (s): duration of one read, the lower cut-off of the 1/f noise integral. Nandakumar 2019."""
    drift_mu_slope: float = -0.0155
    """Slope of the mean drift exponent against ln(g/g_max). Nandakumar 2019."""
    drift_mu_intercept: float = 0.0244
    """Intercept of the mean drift exponent. Nandakumar 2019."""
    drift_mu_range: tuple[float, float] = (0.049, 0.1)
    """Clamp of the mean drift exponent (min, max). Nandakumar 2019."""
    drift_sigma_slope: float = -0.0125
    """Slope of the device-to-device std of the drift exponent against ln(g/g_max). Nandakumar 2019."""
    drift_sigma_intercept: float = -0.0059
    """Intercept of the std of the drift exponent. Nandakumar 2019."""
    drift_sigma_range: tuple[float, float] = (0.008, 0.045)
    """Clamp of the std of the drift exponent (min, max). Nandakumar 2019."""
    read_noise_coefficient: float = 0.0088
    """1/f noise amplitude Q at g = g_max (relative). Nandakumar 2019."""
    read_noise_exponent: float = 0.65
    """Q grows as (g/g_max)^-exponent towards low conductance. Nandakumar 2019."""
    read_noise_floor: float = 1e-3
    """Lower clamp of (g/g_max)^exponent in Q (avoids division by ~0). Nandakumar 2019 / aihwkit."""
    read_noise_max: float = 0.2
    """Upper clamp of Q (relative). Nandakumar 2019."""


@dataclass(frozen=True)
class NonIdealities:
    """Which non-idealities are simulated (each can be turned off with a ``?name=0`` device option)."""

    programming_noise: bool = True
    drift: bool = True
    read_noise: bool = True
    output_noise: bool = True
    ir_drop: bool = True
    stuck_faults: bool = True
    quantization: bool = True
    """Finite conductance levels and DAC/ADC rounding."""
    drift_compensation: bool = True
    """Global drift compensation (a periphery correction, on by default as on IBM's chips)."""

    @classmethod
    def ideal(cls) -> NonIdealities:
        """Everything off: the crossbar computes the exact product (up to float32 rounding)."""
        return cls(False, False, False, False, False, False, False, False)


@dataclass(frozen=True)
class TileConfig:
    """One crossbar tile and its periphery.

    Currents are expressed in units of ``v_read * g_max`` (the current of one device at g_max under the full
    DAC voltage), inputs in units of the DAC full scale, as aihwkit's IO parameters do.
    """

    rows: int = 256
    """Word lines (inputs) per tile. 256x256: IBM HERMES core, Khaddam-Aljameh et al., IEEE JSSC 57(4), 2022."""
    cols: int = 256
    """Bit lines (outputs) per tile, each a differential pair G+ / G-. HERMES core (JSSC 2022)."""
    g_max_us: float = 25.0
    """Largest programmable conductance (uS). aihwkit PCMLikeNoiseModel g_max, Nandakumar 2019 fit."""
    g_min_us: float = 0.0
    """Smallest conductance (uS), the RESET state; 0 as in aihwkit's single-pair converter."""
    conductance_levels: int = 128
    """Distinct programmable conductance targets per device between g_min and g_max. Design choice
    (7 bits of magnitude, matching the 8-bit signed DAC)."""
    dac_bits: int = 8
    """Signed input resolution (bits incl. sign). 8-bit inputs: Le Gallo et al., Nat. Electron. 6, 680 (2023)."""
    adc_bits: int = 8
    """Signed output resolution (bits incl. sign). 8-bit outputs: Le Gallo et al., Nat. Electron. 2023."""
    adc_full_scale: float = 12.0
    """ADC saturation, in units of v_read * g_max. aihwkit IOParameters.out_bound default (12)."""
    output_noise: float = 0.06
    """Std of additive output noise per read, units of v_read * g_max. aihwkit IOParameters.out_noise (0.06)."""
    input_range: float = 0.0
    """Static DAC range in input units (inputs beyond +-range are clipped and counted); 0 scales each input
    vector by its largest magnitude (aihwkit's default ABS_MAX noise management), which never clips."""
    wire_resistance_ohm: float = 0.35
    """Line resistance between neighbouring cells (ohm). aihwkit IOParameters.ir_drop_g_ratio default (0.35 ohm)."""
    stuck_at_gmin_rate: float = 1e-4
    """Fraction of devices stuck at g_min. Assumed illustrative rate; Chen et al., IEEE Trans. Comput. 64(1),
    2015, measured 1.75% stuck-at-0 on an RRAM array (pass ?stuck_gmin=0.0175 to reproduce)."""
    stuck_at_gmax_rate: float = 1e-4
    """Fraction of devices stuck at g_max. Assumed illustrative rate; Chen et al. 2015 measured 9.04% stuck-at-1
    on RRAM (?stuck_gmax=0.0904 loses about 9 % of the weights: an expected error near 0.3, which the device refuses
    because its tolerance would exceed 0.5)."""
    write_verify_iterations: int = 3
    """Program-and-verify rounds after the first pulse (0: single shot). Iterative programming: Joshi et al. 2020."""
    write_verify_tolerance_us: float = 0.5
    """A device read further than this (uS) from its target is pulsed again. Design choice (2% of g_max)."""

    def __post_init__(self) -> None:
        problems = []
        if self.rows < 1 or self.cols < 1:
            problems.append(f"tile size {self.rows}x{self.cols} must be positive")
        if not 0.0 <= self.g_min_us < self.g_max_us:
            problems.append(f"need 0 <= g_min ({self.g_min_us}) < g_max ({self.g_max_us}) uS")
        if self.conductance_levels < 2:
            problems.append(f"conductance_levels {self.conductance_levels} must be >= 2")
        if not (2 <= self.dac_bits <= 24 and 2 <= self.adc_bits <= 24):
            problems.append(f"dac_bits {self.dac_bits} and adc_bits {self.adc_bits} must be in 2..24")
        if self.adc_full_scale <= 0 or self.output_noise < 0 or self.input_range < 0 or self.wire_resistance_ohm < 0:
            problems.append("adc_full_scale must be > 0; output_noise, input_range, wire_resistance_ohm >= 0")
        if not (0 <= self.stuck_at_gmin_rate <= 1 and 0 <= self.stuck_at_gmax_rate <= 1 and self.stuck_at_gmin_rate + self.stuck_at_gmax_rate <= 1):
            problems.append("stuck-at rates must be in [0, 1] and sum to at most 1")
        if self.write_verify_iterations < 0 or self.write_verify_tolerance_us < 0:
            problems.append("write-verify iterations and tolerance must be >= 0")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def dac_steps(self) -> int:
        """Input levels per polarity (a signed b-bit DAC has 2^(b-1) - 1)."""
        return 2 ** (self.dac_bits - 1) - 1

    @property
    def adc_steps(self) -> int:
        """Output levels per polarity (a signed b-bit ADC has 2^(b-1) - 1)."""
        return 2 ** (self.adc_bits - 1) - 1


@dataclass(frozen=True)
class EnergyConstants:
    """Energy and timing constants of one tile's read and write (SI units)."""

    read_voltage_v: float = 0.4
    """Full-scale read voltage on a word line (V). aihwkit IOParametersIRDropT.ir_drop_v_read (0.4005 V),
    modelled on IBM's HERMES PCM core."""
    clock_period_s: float = 1e-9
    """Periphery clock (s): 1 GHz. HERMES core, Khaddam-Aljameh et al., IEEE JSSC 2022."""
    adc_energy_j: float = 3.1e-3 / 1.2e9
    """Energy per ADC conversion (J): 3.1 mW at 1.2 GS/s, 8-bit SAR ADC, Kull et al., IEEE JSSC 48(12), 2013."""
    adc_conversion_time_s: float = 1 / 1.2e9
    """ADC conversion time (s): 1.2 GS/s, Kull et al. 2013."""
    dac_energy_per_bit_j: float = 4e-3 / (8 * 128 * 1.2e9)
    """Energy per input bit driven onto a word line (J): ISAAC's 1-bit DACs, 4 mW for 8 x 128 DACs at 1.2 GHz,
    Shafiee et al., ISCA 2016, Table I (about 3.3 fJ)."""
    program_pulse_energy_j: float = 100e-6 * 1.0 * 100e-9
    """Energy of one PCM programming pulse (J) = I 100 uA x V 1 V x 100 ns = 10 pJ; orders of magnitude of PCM
    RESET/partial-SET pulses reviewed by Wong et al., "Phase change memory", Proc. IEEE 98(12), 2201 (2010)."""
    program_pulse_time_s: float = 100e-9 + 1e-6
    """Time of one program-and-verify step (s): 100 ns pulse plus a 1 us verify read. Assumed (order of magnitude)."""


@dataclass(frozen=True)
class CrossbarConfig:
    """Everything the emulator needs: tile, device statistics, non-idealities, energy constants."""

    tile: TileConfig = field(default_factory=TileConfig)
    pcm: PcmStatistics = field(default_factory=PcmStatistics)
    effects: NonIdealities = field(default_factory=NonIdealities)
    energy: EnergyConstants = field(default_factory=EnergyConstants)

    def with_effects(self, **switches: bool) -> CrossbarConfig:
        """A copy with some non-idealities switched."""
        return replace(self, effects=replace(self.effects, **switches))
