"""Energy and latency of one call on the photonic processor, from cited component figures.

Power drawn while a matrix is held and light flows:
  * heaters: each holds its phase with power P_pi * phase / pi (phase in [0, 2 pi));
  * lasers: per wavelength, the signal power each input port needs so that a full-amplitude output
    reaches the required SNR at its detector (``Receiver.signal_power_w``), divided by the calibrated
    mesh power transmission, plus the LO power of every detector, all divided by the wall-plug efficiency.
    That input power is bounded: one silicon waveguide carries at most ``max_input_power_w`` before two-photon
    and free-carrier absorption add loss, so the mesh's insertion loss limits its size (``loss_limited_ports``):
    beyond it no laser can make the output reach the detector's required power, and the device refuses it.
Energy per sample: a modulator per input, a coherent receiver and an ADC conversion per output.
Latency: samples stream at the sample rate, ``channels`` at a time (one per wavelength); light crosses
the chip's optical path (columns x column length x group index / c); a tiled or call-time matrix
(matmul's b) adds a heater settling time per programming.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from hal.drivers.photonic.decompose import layout_depth
from hal.drivers.photonic.imperfections import SPEED_OF_LIGHT_M_S, PhotonicConfig


@dataclass(frozen=True)
class EnergyConfig:
    """Per-component energy and geometry figures.

    - ``modulator_energy_j``: 200 fJ per sample, traveling-wave silicon modulator at 20 Gb/s
      (Baehr-Jones et al., "Ultralow drive voltage silicon traveling-wave modulator", Opt. Express 20,
      12014 (2012): 200 fJ/bit RF energy).
    - ``receiver_energy_j``: 450 fJ per sample, balanced coherent receiver (detectors + TIA) in 45 nm
      SOI CMOS (Kim et al., "A laser-forwarded coherent transceiver in 45-nm SOI CMOS using monolithic
      microring resonators", IEEE J. Solid-State Circuits 55 (2020): receiver 450 fJ/bit at 10 Gb/s).
    - ``adc_fom_j_per_step``: Walden figure of merit, 50 fJ per conversion step, typical of GS/s
      converters in B. Murmann's "ADC Performance Survey 1997-2024" (Stanford); energy per conversion
      = FOM * 2^bits.
    - ``laser_wall_plug_efficiency``: 0.1, the order of magnitude of hybrid-silicon DFB lasers
      (Srinivasan et al., "Hybrid silicon devices for energy-efficient optical transmitters", IEEE Micro
      33(1), 22 (2013)).
    - ``column_length_m``: 150 um per MZI column (two couplers and a 61.6 um heater, Harris et al. 2014).
    - ``group_index``: 4.2, silicon strip waveguide at 1550 nm (Bogaerts et al., Laser Photon. Rev. 6, 47 (2012)).
    - ``max_input_power_w``: 100 mW of optical power per input waveguide, an assumed bound: at that power silicon's
      two-photon absorption (beta about 0.8 cm/GW) and the free-carrier absorption it causes add loss comparable to
      the waveguide's linear loss in sub-um^2 strip waveguides (Leuthold, Koos and Freude, "Nonlinear silicon
      photonics", Nat. Photonics 4, 535 (2010)).
    """

    modulator_energy_j: float = 200e-15
    receiver_energy_j: float = 450e-15
    adc_fom_j_per_step: float = 50e-15
    laser_wall_plug_efficiency: float = 0.1
    column_length_m: float = 150e-6
    group_index: float = 4.2
    max_input_power_w: float = 0.1


@dataclass(frozen=True)
class CallCost:
    """One call's cost and where it goes (all SI units)."""

    latency_s: float
    energy_j: float
    heater_power_w: float
    laser_power_w: float
    per_sample_energy_j: float
    propagation_s: float
    streaming_s: float
    settling_s: float

    def formula(self) -> str:
        return (
            f"latency = settling {self.settling_s:.3g} s + streaming {self.streaming_s:.3g} s (ceil(batch/channels) x tiles / sample rate) "
            f"+ propagation {self.propagation_s:.3g} s (path length x group index / c); energy = (heaters {self.heater_power_w:.3g} W "
            f"+ lasers {self.laser_power_w:.3g} W) x latency + samples x {self.per_sample_energy_j:.3g} J (modulators, receivers, ADCs)"
        )


def heater_power_w(phases_rad: float, config: PhotonicConfig) -> float:
    """Holding power of heaters whose programmed phases sum to ``phases_rad``: P_pi * sum(phase) / pi."""
    return config.phase.p_pi_w * phases_rad / math.pi


def laser_power_w(inputs: int, outputs: int, signal_power_w: float, transmission: float, config: PhotonicConfig, energy: EnergyConfig) -> float:
    """Electrical laser power: per wavelength, inputs x signal / transmission + outputs x LO power, over the wall-plug efficiency."""
    if not transmission > 0:
        raise ValueError(f"mesh power transmission {transmission!r} must be > 0: no laser power brings a signal through a mesh that passes no light")
    optical = inputs * signal_power_w / transmission
    if config.detector.detection == "coherent":
        optical += outputs * config.detector.lo_power_w
    return config.wdm.channels * optical / energy.laser_wall_plug_efficiency


def call_cost(
    *,
    batch: int,
    inputs: int,
    outputs: int,
    tiles: int,
    programmings: int,
    depth_columns: int,
    heater_phase_sum_rad: float,
    signal_power_w: float,
    transmission: float,
    config: PhotonicConfig,
    energy: EnergyConfig,
) -> CallCost:
    """Cost of one call streaming ``batch`` vectors through ``tiles`` matrix tiles, ``programmings`` of them written during the call."""
    detector = config.detector
    streaming = math.ceil(max(batch, 1) / config.wdm.channels) * tiles / detector.sample_rate_hz
    propagation = depth_columns * energy.column_length_m * energy.group_index / SPEED_OF_LIGHT_M_S
    settling = programmings * config.phase.settle_time_s
    latency = settling + streaming + propagation
    heaters = heater_power_w(heater_phase_sum_rad, config)
    lasers = laser_power_w(inputs, outputs, signal_power_w, transmission, config, energy)
    adc = energy.adc_fom_j_per_step * 2 ** (detector.adc_bits or 8)
    per_sample = inputs * energy.modulator_energy_j + outputs * (energy.receiver_energy_j + adc)
    total = (heaters + lasers) * latency + max(batch, 1) * per_sample
    return CallCost(latency, total, heaters, lasers, per_sample, propagation, streaming, settling)


def mesh_loss_db(n: int, layout: str, config: PhotonicConfig) -> float:
    """Insertion loss of the processor's optical path (V* mesh, attenuator column, U mesh): every column an MZI."""
    if not config.loss_on:
        return 0.0
    return (2 * layout_depth(n, layout) + 1) * config.loss.mzi_loss_db


def loss_budget_db(signal_power_w: float, energy: EnergyConfig) -> float:
    """The loss an input port can afford: 10 log10(max input power / the signal power a detector needs)."""
    return 10 * math.log10(energy.max_input_power_w / signal_power_w)


def loss_limited_ports(layout: str, signal_power_w: float, config: PhotonicConfig, energy: EnergyConfig, largest: int) -> int:
    """The largest N (at most ``largest``) whose mesh loss stays within the loss budget; 0 if not even N = 2 does.

    The output of an N-port processor driven at ``max_input_power_w`` per port carries
    ``max_input_power_w * 10^(-mesh_loss_db(N) / 10)``; the detector needs ``signal_power_w`` for the required SNR.
    """
    budget = loss_budget_db(signal_power_w, energy)
    fitting = [n for n in range(2, largest + 1) if mesh_loss_db(n, layout, config) <= budget]
    return max(fitting, default=0)
