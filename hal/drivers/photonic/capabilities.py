"""What a photonic device declares: ops with their derived tolerance, the photonic section, rates and energies.

Every number is a Figure with its source. A value the device string sets (``?N=``, ``?adc_bits=``...) is
``assumed:set by ?name=`` when given there, and carries its default's source otherwise.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from hal.capability import Capabilities, Figure, OpSupport, Paradigm
from hal.capability.error_budget import ErrorBudget
from hal.capability.photonic import MeshLayout, PhotonicSection, Readout
from hal.drivers.photonic.accuracy import FORMULA
from hal.drivers.photonic.decompose import layout_depth
from hal.drivers.photonic.energy import heater_power_w, laser_power_w, loss_budget_db, mesh_loss_db
from hal.drivers.photonic.imperfections import SPEED_OF_LIGHT_M_S

if TYPE_CHECKING:
    from hal.drivers.photonic.driver import PhotonicDevice

DTYPES = ("float32", "float64")
SHEN = "Shen et al., Nat. Photonics 11, 441 (2017): SVD onto two MZI meshes and an attenuator column"
NOTES = {
    "linear": "weight programmed once as mesh phases; bias added and relu applied electronically after the ADC",
    "matmul": "b is written to the meshes on every call (heater settling charged per call); b must be 2-D",
    "intensity_linear": "x -> |W x|^2 per output (square-law detection); one tile (weights up to N x N)",
}


def heater_count(n: int) -> int:
    """Heaters of the processor: per mesh n(n-1)/2 MZIs x (theta, phi) + n output phases, twice; n attenuators x (theta, phi)."""
    return 2 * n * n + 2 * n


def build_capabilities(device: PhotonicDevice, worst: ErrorBudget, tolerance: dict[str, float], tolerance_formula: str, limit: Figure) -> Capabilities:
    """The capabilities of ``device``, whose worst reference budget is ``worst`` and declared tolerance ``tolerance``."""
    limits = {"mesh_ports": device.ports, "max_tiles": device.options["max_tiles"]}
    ops = {name: OpSupport(DTYPES, tolerance, limits, NOTES[name] + f"; tolerance = {tolerance_formula}") for name in device.declared_ops()}
    return Capabilities(
        uri=str(device.uri),
        kind=device.kind,
        paradigm=Paradigm.PHOTONIC,
        simulated=True,
        identity={"name": "emulated MZI-mesh photonic processor", "architecture": SHEN, "layout": device.layout, "compute": str(device.torch_device), "torch": torch.__version__},
        ops=ops,
        deterministic=not device.config.noise_on,
        memory_bytes=None,
        peak={"mac_per_s": _peak_macs(device)},
        energy=_energy_figures(device),
        sections={"photonic": _section(device, worst, tolerance, tolerance_formula, limit)},
        notes=[
            "NaN/inf inputs and weights are refused (they cannot be encoded on modulators or heaters).",
            "Each weight's largest singular value is mapped to full attenuator transmission; the scale is multiplied back after detection and reported in Program.scale / Program.stats.",
            "Weights larger than N x N are cut into N x N tiles, programmed one after another per call; partial results are summed after detection.",
            "Inputs are encoded per vector (x / max|x|) and rescaled digitally; the readout's one-scalar gain/phase calibration per wavelength removes the mesh's common loss and phase only.",
            f"expected relative error {worst.error:.3g} (largest effect: {worst.largest()}); the mesh size is limited to N <= {device.max_ports} by its insertion loss",
        ],
    )


def _peak_macs(device: PhotonicDevice) -> Figure:
    c = device.config
    value = device.ports**2 * c.detector.sample_rate_hz * c.wdm.channels
    return Figure.derived(value, "MAC/s", "ports^2 * sample_rate * wavelength channels", f"{device.ports}^2 x {c.detector.sample_rate_hz:.3g} S/s x {c.wdm.channels}")


def _energy_figures(device: PhotonicDevice) -> dict[str, Figure]:
    e, c, n = device.energy, device.config, device.ports
    heaters = heater_count(n)
    transmission = 10 ** (-mesh_loss_db(n, device.layout, c) / 10)
    return {
        "heater_p_pi_w": Figure.paper(c.phase.p_pi_w, "W", "Harris et al., Opt. Express 22, 10487 (2014)", "holding power per pi of phase"),
        "heater_holding_power_w": Figure.derived(
            heater_power_w(heaters * math.pi, c), "W", "P_pi * heaters * mean phase pi / pi, heaters = 2 N^2 + 2 N", f"{heaters} heaters, phases uniform in [0, 2 pi)"
        ),
        "laser_power_w": Figure.derived(
            laser_power_w(n, n, device.receiver.signal_power_w, transmission, c, e),
            "W",
            "channels * (N * signal_power / transmission + N * LO power) / wall-plug efficiency, transmission = 10^(-mesh_loss_db/10)",
            "electrical, one full N x N tile",
        ),
        "modulator_j_per_sample": Figure.paper(e.modulator_energy_j, "J", "Baehr-Jones et al., Opt. Express 20, 12014 (2012), 200 fJ/bit"),
        "receiver_j_per_sample": Figure.paper(e.receiver_energy_j, "J", "Kim et al., IEEE JSSC 55 (2020), coherent receiver 450 fJ/bit"),
        "adc_j_per_conversion": Figure.derived(e.adc_fom_j_per_step * 2 ** (c.detector.adc_bits or 8), "J", "Walden FOM 50 fJ/step (Murmann ADC survey) * 2^adc_bits"),
        "laser_wall_plug_efficiency": Figure.assumed(e.laser_wall_plug_efficiency, "1", "10 %, the order of magnitude of hybrid-silicon DFB lasers (Srinivasan et al., IEEE Micro 33(1), 22 (2013))"),
    }


def _section(device: PhotonicDevice, worst: ErrorBudget, tolerance: dict[str, float], tolerance_formula: str, limit: Figure) -> PhotonicSection:
    c, n, e = device.config, device.ports, device.energy
    option = _OptionSources(device)
    depth = layout_depth(n, device.layout)
    mzis = n * (n - 1) // 2
    d = c.detector
    propagation = (2 * depth + 1) * e.column_length_m * e.group_index / SPEED_OF_LIGHT_M_S
    budget = loss_budget_db(device.receiver.signal_power_w, e)
    depth_formula = "N" if device.layout == "clements" else "2N - 3"
    return PhotonicSection(
        architecture=SHEN,
        mesh=MeshLayout(
            ports=option.figure("N", n, "ports", Figure.assumed(32, "ports", "a power of two within the loss-limited size at the default 0.3 dB per MZI and 50 dB SNR")),
            layout=device.layout,
            mzis=Figure.derived(mzis, "MZIs", "N (N - 1) / 2"),
            depth_columns=Figure.derived(depth, "columns", depth_formula),
            phase_shifters=Figure.derived(2 * mzis + n, "heaters", "2 MZIs + N output phases"),
            max_ports=Figure.derived(
                device.max_ports,
                "ports",
                "largest N with (2 depth(N) + 1) * mzi_loss_db <= 10 log10(max_input_power / signal_power_per_port)",
                f"loss budget {budget:.1f} dB at {e.max_input_power_w * 1e3:g} mW per input port",
            ),
        ),
        meshes=Figure.paper(2, "meshes", SHEN),
        wavelength_channels=option.figure("channels", c.wdm.channels, "channels", Figure.assumed(8, "channels", "the CWDM8/DR8 transceiver class on the ITU-T G.694.1 grid; Feldmann et al., Nature 589, 52 (2021), used 4")),
        readout=Readout(
            detection=d.detection,
            adc_bits=None if d.adc_bits is None else option.figure("adc_bits", d.adc_bits, "bits", Figure.assumed(8, "bits", "an 8-bit ADC per output, the resolution the 50 dB SNR supports")),
            phase_dac_bits=None if not c.quantisation_on else option.figure("phase_bits", c.phase.dac_bits, "bits", Figure.assumed(12, "bits", "a 16-bit DAC (Analog Devices AD5370 datasheet) loses about 4 bits to the heater's square-law response")),
            snr_db=option.figure("snr_db", d.snr_db, "dB", Figure.assumed(50.0, "dB", "amplitude SNR a full-scale output needs for the 8-bit ADC to matter")),
            signal_power_per_port=Figure.derived(device.receiver.signal_power_w, "W", "(2 q R P_LO B + i_n^2 B) / (4 R^2 P_LO sigma^2), sigma = 10^(-snr_db/20)" if d.detection == "coherent" else "root of sigma^2 (R P)^2 = 2 q R B P + i_n^2 B"),
            responsivity=Figure.paper(d.responsivity_a_per_w, "A/W", "Colace et al., Appl. Phys. Lett. 91, 021107 (2007), Ge on SOI at 1550 nm"),
            tia_noise_density=Figure.paper(d.tia_noise_a_per_rthz, "A/sqrt(Hz)", "Saeckinger, Broadband Circuits for Optical Fiber Communication (2005): 1.4 uA rms over ~7.5 GHz"),
            sample_rate=Figure.paper(d.sample_rate_hz, "S/s", "10 Gb/s modulator/receiver class (Baehr-Jones 2012; Kim et al. 2020)"),
        ),
        max_tiles=option.figure("max_tiles", device.options["max_tiles"], "tiles", Figure.assumed(64, "tiles", "each tile adds a heater settling time per call; 64 keeps a call under a millisecond")),
        nonidealities={
            "phase_quantisation": c.quantisation_on,
            "thermal_crosstalk": c.crosstalk_on,
            "coupler_error": c.fabrication_on,
            "insertion_loss": c.loss_on,
            "detector_noise": c.noise_on,
            "dispersion": c.dispersion_on,
            "adc_quantisation": d.adc_bits is not None,
        },
        physics={
            "p_pi": Figure.paper(c.phase.p_pi_w, "W", "Harris et al., Opt. Express 22, 10487 (2014)"),
            "heater_crosstalk": Figure.assumed(c.phase.crosstalk, "1", "2 % per neighbour, the percent-level coupling of heaters at ~100 um pitch without trenches (Milanizadeh et al., J. Lightwave Technol. 37, 1325 (2019))"),
            "heater_crosstalk_residual": Figure.assumed(c.phase.crosstalk_residual, "1", "5 % of the coupling left after pre-compensation with calibrated coefficients (the cancellation of Milanizadeh et al. 2019)"),
            "coupler_splitting_error": Figure.paper(c.coupler.splitting_error_rad, "rad", "Bandyopadhyay et al., Optica 8, 1247 (2021)", "std of the coupler angle around pi/4"),
            "mzi_loss": Figure.paper(c.loss.mzi_loss_db, "dB", "Harris et al. 2014: 0.23 dB heater plus couplers"),
            "crossing_loss": Figure.paper(c.loss.crossing_loss_db, "dB", "Bogaerts et al., Laser Photon. Rev. 6, 47 (2012): 2 dB/cm over a 150 um column"),
            "lo_power": Figure.assumed(d.lo_power_w, "W", "1 mW per detector pair makes LO shot noise dominate the TIA noise, the usual homodyne operating point"),
            "max_input_power": Figure.assumed(e.max_input_power_w, "W", "100 mW per input waveguide, where two-photon and free-carrier absorption in silicon add loss (Leuthold, Koos and Freude, Nat. Photonics 4, 535 (2010))"),
            "heater_settle_time": Figure.derived(c.phase.settle_time_s, "s", "5 / (2 pi * 130 kHz thermal bandwidth, Harris et al. 2014)"),
            "propagation_latency": Figure.derived(propagation, "s", "(2 * depth + 1) columns * 150 um * group index 4.2 / c"),
            "mesh_loss": Figure.derived(mesh_loss_db(n, device.layout, c), "dB", "(2 * depth + 1) * mzi_loss_db"),
            "mesh_power_transmission": Figure.derived(10 ** (-mesh_loss_db(n, device.layout, c) / 10), "1", "10^(-(2 * depth + 1) * mzi_loss_db / 10)"),
        },
        accuracy={
            "expected_error": Figure.derived(worst.error, "1", FORMULA, "the worse of a Gaussian N x N and 8 x 16 weight on this chip"),
            **{name: Figure.derived(variance**0.5, "1", f"root of the {name} term of expected_error") for name, variance in worst.terms.items()},
            **{f"tolerance_{dtype}": Figure.derived(value, "1", tolerance_formula) for dtype, value in tolerance.items()},
            "tolerance_limit": limit,
        },
    )


class _OptionSources:
    """Figures for values a device option sets: assumed (set by the option) when given, else the default's figure."""

    def __init__(self, device: PhotonicDevice):
        self._given = device.uri.option_map

    def figure(self, option: str, value: float, unit: str, default: Figure) -> Figure:
        if option in self._given or value != default.value:
            return Figure.assumed(value, unit, f"set by ?{option}={self._given.get(option, value)}")
        return default
