"""What a memristor device declares: ops with their derived tolerance, the analog section, rates and energies.

Every number is a Figure with its source. A value the device string sets (``?tile=``, ``?dac_bits=``...) is
``assumed:set by ?name=`` when given there, and carries its default's source otherwise.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import torch

from hal.capability import Capabilities, Figure, OpSupport, Paradigm
from hal.capability.analog import AnalogSection, Converters, CrossbarTiles
from hal.drivers.memristor.accuracy import FORMULA, ErrorBudget
from hal.drivers.memristor.energy import read_time_s

if TYPE_CHECKING:
    from hal.drivers.memristor.driver import MemristorDevice

DTYPES = ("float32", "float64", "bfloat16", "float16")
OPS = ("linear", "matmul", "conv2d")
HERMES = "Le Gallo et al., Nat. Electron. 6, 680 (2023): 64 cores of 256x256 PCM unit cells"
HERMES_CORE = "Khaddam-Aljameh et al., IEEE JSSC 57(4), 2022: IBM HERMES core of 256x256 PCM unit cells"
AIHWKIT = "Rasch et al., APL Mach. Learn. 1, 041102 (2023), IBM aihwkit"


def tolerance_formula(margin: float, floor: float, clock_s: float = 0.0) -> str:
    text = f"{margin:g} x expected_error (worst reduction length) + {floor:g} (float rounding of the digital periphery)"
    if clock_s:
        text += f"; after elapse (device clock {clock_s:g} s), the largest of that and of every live program's at its read age"
    return text


def build_capabilities(device: MemristorDevice, worst: ErrorBudget, tolerance: float, margin: float, floor: float, limit: Figure) -> Capabilities:
    """The capabilities of ``device``, whose worst-case error budget is ``worst`` and declared tolerance ``tolerance``."""
    cfg = device.config
    tile, energy = cfg.tile, cfg.energy
    count = device.allocator.count
    option = _OptionSources(device)
    limits = {"max_tiles": count, "tile_rows": tile.rows, "tile_cols": tile.cols, "max_weights": count * tile.rows * tile.cols}
    notes = (
        f"analog MVM through {tile.dac_bits}-bit DACs and {tile.adc_bits}-bit ADCs on PCM conductances; tolerance = "
        f"{tolerance_formula(margin, floor)}, the expected error derived from this configuration for Gaussian operands "
        f"(sections.analog.accuracy)"
    )
    ops = {name: OpSupport(DTYPES, {d: tolerance for d in DTYPES}, limits, notes) for name in OPS}
    ops["matmul"] = replace(ops["matmul"], notes=notes + "; b is programmed into the crossbar on every call (its programming energy is charged per call)")
    rate = Figure.derived(count * tile.rows * tile.cols / read_time_s(cfg), "MAC/s", "tiles * rows * cols / (dac_steps * clock_period + adc_conversion_time)")
    section = AnalogSection(
        technology="PCM",
        device_model="statistical PCM model of Nandakumar et al., ICECS 2019 (as in IBM aihwkit PCMLikeNoiseModel)",
        tiles=CrossbarTiles(
            rows=option.figure("tile", tile.rows, "word lines", Figure.paper(256, "word lines", HERMES_CORE)),
            cols=option.figure("tile", tile.cols, "bit lines", Figure.paper(256, "bit lines", HERMES_CORE)),
            count=option.figure("tiles", count, "tiles", Figure.paper(64, "tiles", HERMES)),
            devices_per_weight=Figure.paper(2, "devices", f"{HERMES_CORE}: a differential pair G+ / G- per weight"),
            weights_total=Figure.derived(count * tile.rows * tile.cols, "weights", "tiles * rows * cols"),
        ),
        conductance_min=Figure.paper(tile.g_min_us, "uS", f"{AIHWKIT}: single-pair conductance converter, g_min 0"),
        conductance_max=Figure.paper(tile.g_max_us, "uS", "Nandakumar et al., ICECS 2019 (g_max of the fit)"),
        conductance_levels=option.figure("levels", tile.conductance_levels, "levels", Figure.assumed(128, "levels", "7 bits of magnitude per device, matching the 8-bit signed DAC")),
        converters=Converters(
            dac_bits=option.figure("dac_bits", tile.dac_bits, "bits", Figure.paper(8, "bits", "Le Gallo et al., Nat. Electron. 6, 680 (2023): 8-bit inputs")),
            adc_bits=option.figure("adc_bits", tile.adc_bits, "bits", Figure.paper(8, "bits", "Le Gallo et al., Nat. Electron. 6, 680 (2023): 8-bit outputs")),
            input_scaling="static" if tile.input_range > 0 else "per-vector",
            input_range=Figure.assumed(tile.input_range, "input units", "set by ?input_range=") if tile.input_range > 0 else None,
            adc_full_scale=Figure.paper(tile.adc_full_scale, "v_read*g_max", f"{AIHWKIT}: IOParameters.out_bound default"),
            dac_energy_per_bit=Figure.paper(energy.dac_energy_per_bit_j, "J/bit", "Shafiee et al., ISAAC, ISCA 2016, Table I: 4 mW for 8x128 1-bit DACs at 1.2 GHz"),
            adc_energy_per_conversion=Figure.paper(energy.adc_energy_j, "J", "Kull et al., IEEE JSSC 48(12) 2013: 3.1 mW 8-bit SAR ADC at 1.2 GS/s"),
            read_time=Figure.derived(read_time_s(cfg), "s", "dac_steps * 1 ns clock (HERMES, JSSC 2022) + 1/1.2 GS/s ADC conversion"),
        ),
        nonidealities={name: getattr(cfg.effects, name) for name in ("programming_noise", "drift", "read_noise", "output_noise", "ir_drop", "stuck_faults", "quantization", "drift_compensation")},
        physics=_physics(device, option),
        write_verify={
            "iterations": option.figure("write_verify", tile.write_verify_iterations, "rounds", Figure.assumed(3, "rounds", "a few program-and-verify rounds, as in the iterative programming of Joshi et al., Nat. Commun. 11, 2473 (2020)")),
            "tolerance": option.figure("tolerance_us", tile.write_verify_tolerance_us, "uS", Figure.assumed(0.5, "uS", "2 % of g_max, the order of the programming noise")),
            "pulse_energy": Figure.assumed(energy.program_pulse_energy_j, "J", "100 uA x 1 V x 100 ns, the orders of magnitude of PCM pulses reviewed by Wong et al., Proc. IEEE 98, 2201 (2010)"),
            "step_time": Figure.assumed(energy.program_pulse_time_s, "s", "a 100 ns pulse plus a 1 us verify read (order of magnitude)"),
        },
        read_age=option.figure("t", device.options["t"], "s", Figure.assumed(0.0, "s", "reads at the drift reference time t0 = 20 s after programming")),
        accuracy={**_accuracy(worst), "tolerance": Figure.derived(tolerance, "1", tolerance_formula(margin, floor, device.clock_s)), "tolerance_limit": limit},
    )
    return Capabilities(
        uri=str(device.uri),
        kind=device.kind,
        paradigm=Paradigm.ANALOG,
        simulated=True,
        identity={"technology": "PCM crossbar (emulated)", "layout": HERMES, "compute": str(device.torch_device), "torch": torch.__version__},
        ops=ops,
        deterministic=False,
        peak={"mac_per_s": rate},
        energy={
            "j_per_mac_full_tile": device.costs.energy_per_mac(),
            "adc_j_per_conversion": section.converters.adc_energy_per_conversion,
            "dac_j_per_bit": section.converters.dac_energy_per_bit,
            "program_j_per_pulse": section.write_verify["pulse_energy"],
        },
        sections={"analog": section},
        notes=[
            f"expected relative error {worst.error:.3g} at the worst reduction length K={worst.inputs} (largest effect: {worst.largest()}); "
            f"declared tolerance {tolerance:.3g}",
            "NaN/inf inputs are refused; inputs beyond a static DAC range are clipped and counted in Program.stats.dac_clipped",
        ],
    )


def _physics(device: MemristorDevice, option: _OptionSources) -> dict[str, Figure]:
    cfg = device.config
    tile, energy, pcm = cfg.tile, cfg.energy, cfg.pcm
    illustrative = "an illustrative rate; Chen et al., IEEE Trans. Comput. 64(1), 2015, measured 1.75 % stuck-at-0 and 9.04 % stuck-at-1 on RRAM"
    return {
        "programming_noise_std_at_g_max": Figure.paper(sum(pcm.programming_coefficients_us), "uS", "Nandakumar et al., ICECS 2019: c0 + c1 + c2"),
        "drift_reference_time": Figure.paper(pcm.drift_reference_time_s, "s", "Nandakumar et al., ICECS 2019 (t0)"),
        "drift_exponent_mean_at_g_max": Figure.paper(max(pcm.drift_mu_range[0], pcm.drift_mu_intercept), "1", "Nandakumar et al., ICECS 2019: clamp(0.0244, 0.049, 0.1)"),
        "read_noise_q_at_g_max": Figure.paper(pcm.read_noise_coefficient, "1", "Nandakumar et al., ICECS 2019"),
        "output_noise": Figure.paper(tile.output_noise, "v_read*g_max", f"{AIHWKIT}: IOParameters.out_noise default"),
        "wire_resistance": Figure.paper(tile.wire_resistance_ohm, "ohm", f"{AIHWKIT}: IOParameters.ir_drop_g_ratio default (0.35 ohm per cell)"),
        "read_voltage": Figure.paper(energy.read_voltage_v, "V", f"{AIHWKIT}: IOParametersIRDropT.ir_drop_v_read (HERMES core)"),
        "stuck_at_gmin_rate": option.figure("stuck_gmin", tile.stuck_at_gmin_rate, "1", Figure.assumed(1e-4, "1", illustrative)),
        "stuck_at_gmax_rate": option.figure("stuck_gmax", tile.stuck_at_gmax_rate, "1", Figure.assumed(1e-4, "1", illustrative)),
    }


def _accuracy(worst: ErrorBudget) -> dict[str, Figure]:
    """The worst-case expected error and the root variance of each effect in it."""
    figures = {"expected_error": Figure.derived(worst.error, "1", FORMULA, f"at the worst reduction length K={worst.inputs}")}
    for name, variance in worst.terms.items():
        figures[name] = Figure.derived(variance**0.5, "1", f"root of the {name} term of expected_error", f"K={worst.inputs}")
    return figures


class _OptionSources:
    """Figures for values a device option sets: assumed (set by the option) when given, else the default's figure."""

    def __init__(self, device: MemristorDevice):
        self._given = device.uri.option_map

    def figure(self, option: str, value: float, unit: str, default: Figure) -> Figure:
        if option in self._given or value != default.value:
            return Figure.assumed(value, unit, f"set by ?{option}={self._given.get(option, value)}")
        return default
