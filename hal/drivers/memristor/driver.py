"""MemristorDevice: an emulated analog in-memory-computing accelerator of PCM crossbar tiles.

``memristor:0`` holds ``?tiles=64`` crossbar tiles of ``?tile=256`` x 256 differential PCM pairs (the shape of
IBM's 64-core HERMES chip). ``prepare`` *programs* a weight into conductances (a ``MemristorProgram`` owning
tiles); calling the program drives the inputs through DACs, the drifted, noisy conductances and the ADCs
(``tile.Crossbar``). Every non-ideality is switchable by option: ``?prog_noise=0``, ``drift``, ``read_noise``,
``output_noise``, ``ir_drop``, ``stuck``, ``quantization``, ``drift_compensation``, or ``?ideal=1`` for all.

Ops: ``linear`` (weight programmed once; activation none/relu), ``conv2d`` (im2col onto the crossbar; groups
are stacked tiles), and ``matmul(a, b)``: ``b`` is the operand stored in the crossbar and ``a`` is streamed
through it, so ``b`` is *reprogrammed on every call* (its programming energy and time are charged per call).

Time: reads are simulated ``?t=<seconds>`` after the drift reference time t0 (20 s after programming), plus
whatever ``elapse(seconds)`` advanced the device clock since the program was written.

Tiles are a finite resource: a weight needing more tiles than the device has raises ``CapacityExceeded``; when
the free tiles run out, the oldest programs are overwritten and raise ``ProgramInvalidated`` if called again.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from hal import ops as vocabulary
from hal.capability import Capabilities, Figure, OpSupport, Paradigm
from hal.capability.analog import AnalogSection, Converters, CrossbarTiles
from hal.device import Check, Cost, Device, DeviceInfo, OpSpec, Option, Program, Support, TensorSpec, bounded_float, bounded_int, parse_bool
from hal.drivers.memristor.config import CrossbarConfig, NonIdealities, TileConfig
from hal.drivers.memristor.energy import ProgrammingReport, ReadCounters, expected_read_counters, read_time_s
from hal.drivers.memristor.tile import Crossbar, TileGrid
from hal.errors import CapacityExceeded, DeviceUnavailable, InvalidInput

DTYPES = ("float32", "float64", "bfloat16", "float16")
OPS = ("linear", "matmul", "conv2d")
HERMES = "Le Gallo et al., Nat. Electron. 6, 680 (2023): 64 cores of 256x256 PCM unit cells"
#: Reduction lengths at which the error of a configuration is measured to set its declared tolerance.
CALIBRATION_INPUTS = (4, 32, 256)
#: Declared tolerance = margin * worst measured error + floor (float rounding of the digital periphery).
TOLERANCE_MARGIN, TOLERANCE_FLOOR = 2.0, 1e-3

_SWITCHES = {
    "prog_noise": "programming_noise",
    "drift": "drift",
    "read_noise": "read_noise",
    "output_noise": "output_noise",
    "ir_drop": "ir_drop",
    "stuck": "stuck_faults",
    "quantization": "quantization",
    "drift_compensation": "drift_compensation",
}


class MemristorProgram(Program):
    """Programmed conductances on some of the device's tiles, with their programming report and read counters."""

    def __init__(self, op: OpSpec, device: MemristorDevice, cost: Cost, run: Callable[..., Any], tiles: list[int]):
        super().__init__(op, device, cost, run)
        self.tiles = tiles
        self.programmed_at_s = device.clock_s
        self.programming = ProgrammingReport()
        self.stats = ReadCounters()

    @property
    def age_s(self) -> float:
        """Seconds after the drift reference time t0 at which this program's conductances are read now."""
        device: MemristorDevice = self.device  # type: ignore[assignment]
        return device.options["t"] + device.clock_s - self.programmed_at_s

    def release(self) -> None:
        """Give the tiles back to the device; the program can no longer run."""
        device: MemristorDevice = self.device  # type: ignore[assignment]
        device.free_tiles(self, f"it was released (its tiles {self.tiles} went back to {device.uri})")


class MemristorDevice(Device):
    """An emulated PCM crossbar accelerator (see the module docstring)."""

    kind = "memristor"
    refuses_nonfinite = True
    OPTIONS: ClassVar[dict[str, Option]] = {
        "tile": Option(bounded_int(1), 256, "rows and columns of one crossbar tile (a positive integer)"),
        "tiles": Option(bounded_int(1), 64, "number of crossbar tiles (arrays) the device has"),
        "seed": Option(int, 0, "seed of every device draw (programming noise, faults, drift, read noise)"),
        "t": Option(bounded_float(0), 0.0, "seconds after the drift reference time t0 = 20 s at which reads happen"),
        "compute": Option(str, "cpu", "torch device the emulation runs on: 'cpu' or 'cuda' / 'cuda:N'"),
        "ideal": Option(parse_bool, False, "1 turns every non-ideality off except those switched on explicitly (?ideal=1&drift=1)"),
        "input_range": Option(bounded_float(0), 0.0, "static DAC range (inputs beyond it clip and are counted); 0 scales each input vector"),
        "dac_bits": Option(bounded_int(1), 8, "signed DAC resolution in bits"),
        "adc_bits": Option(bounded_int(1), 8, "signed ADC resolution in bits"),
        "levels": Option(bounded_int(1), 128, "programmable conductance levels per device"),
        "stuck_gmin": Option(bounded_float(0, 1), 1e-4, "fraction of devices stuck at g_min"),
        "stuck_gmax": Option(bounded_float(0, 1), 1e-4, "fraction of devices stuck at g_max"),
        "write_verify": Option(int, 3, "program-and-verify rounds after the first pulse (0: single shot)"),
        "tolerance_us": Option(bounded_float(0), 0.5, "write-verify tolerance in microsiemens"),
        **{name: Option(parse_bool, True, f"1/0: simulate {field.replace('_', ' ')}") for name, field in _SWITCHES.items()},
    }

    def __init__(self, uri):
        super().__init__(uri)
        try:
            self.config = self._config_from_options()
        except ValueError as exc:
            raise InvalidInput(f"{self.uri}: {exc}") from None
        compute = self.options["compute"]
        try:
            self.torch_device = torch.device(compute)
        except RuntimeError:
            raise InvalidInput(f"{self.uri}: compute={compute!r} is not a torch device; use 'cpu' or 'cuda'") from None
        if self.torch_device.type == "cuda" and not torch.cuda.is_available():
            raise DeviceUnavailable(str(self.uri), "compute=cuda was asked for but torch sees no CUDA device", "drop ?compute=cuda or run on a machine with an NVIDIA GPU and a CUDA build of torch")
        if self.torch_device.type not in ("cpu", "cuda"):
            raise InvalidInput(f"{self.uri}: compute={compute!r} is not supported; use 'cpu' or 'cuda'")
        self.clock_s = 0.0
        self.counters = ReadCounters()
        self.programming_totals = ProgrammingReport()
        self._tiles_lock = threading.RLock()  # guards tile ownership and the counters (programs may run on threads)
        self._slots: list[MemristorProgram | None] = [None] * self.options["tiles"]
        self._programs: list[MemristorProgram] = []  # oldest first
        self._generator = torch.Generator(device=self.torch_device)
        self._generator.manual_seed(self.options["seed"])
        self._calibration: dict[int, float] | None = None

    def _config_from_options(self) -> CrossbarConfig:
        o = self.options
        given = self.uri.option_map
        # ?ideal=1 turns everything off except the switches given explicitly alongside it
        switches = {field: o[name] if (name in given or not o["ideal"]) else False for name, field in _SWITCHES.items()}
        effects = NonIdealities(**switches)
        tile = replace(
            TileConfig(),
            rows=o["tile"],
            cols=o["tile"],
            conductance_levels=o["levels"],
            dac_bits=o["dac_bits"],
            adc_bits=o["adc_bits"],
            input_range=o["input_range"],
            stuck_at_gmin_rate=o["stuck_gmin"],
            stuck_at_gmax_rate=o["stuck_gmax"],
            write_verify_iterations=o["write_verify"],
            write_verify_tolerance_us=o["tolerance_us"],
        )
        return CrossbarConfig(tile=tile, effects=effects)

    # ------------------------------------------------------------------ discovery
    @classmethod
    def probe(cls) -> list[DeviceInfo]:
        tile = TileConfig()
        return [
            DeviceInfo(
                uri="memristor:0",
                kind=cls.kind,
                available=True,
                simulated=True,
                paradigm=Paradigm.ANALOG.value,
                summary={"technology": "PCM (emulated)", "tiles": cls.OPTIONS["tiles"].default, "tile": f"{tile.rows}x{tile.cols}", "model": "Nandakumar et al. ICECS 2019 statistics"},
            )
        ]

    @classmethod
    def diagnose(cls) -> list[Check]:
        cuda = torch.cuda.is_available()
        return [
            Check("memristor emulator", True, f"torch {torch.__version__}: the crossbar emulation runs on the CPU"),
            Check(
                "memristor on CUDA (?compute=cuda)",
                cuda,
                "torch sees a CUDA device" if cuda else "torch sees no CUDA device; ?compute=cuda is unavailable here",
                "" if cuda else "install a CUDA build of torch on a machine with an NVIDIA GPU",
            ),
        ]

    # ------------------------------------------------------------------ capabilities
    def calibration(self) -> dict[int, float]:
        """Measured relative Frobenius error of this configuration per reduction length K: random Gaussian inputs
        (64 vectors) through a random Gaussian K x ``tile`` weight (one tile column block), on a private generator
        and scratch tiles, read at this device's ``?t``."""
        if self._calibration is None:
            generator = torch.Generator().manual_seed(12345)
            errors = {}
            for k in CALIBRATION_INPUTS:
                w = torch.randn(1, k, self.config.tile.cols, generator=generator, dtype=torch.float64)
                x = torch.randn(1, 64, k, generator=generator, dtype=torch.float64)
                crossbar = Crossbar(w.to(self.torch_device, torch.float32), self.config, seed=1000 + k)
                y, _ = crossbar.read(x.to(self.torch_device, torch.float32), self.options["t"], torch.Generator(device=self.torch_device).manual_seed(k))
                ref = x @ w
                errors[k] = float((y.cpu().double() - ref).norm() / ref.norm())
            self._calibration = errors
        return self._calibration

    def tolerance(self) -> float:
        """Declared tolerance of every op: the worst measured calibration error with margin (at most 1)."""
        return min(1.0, TOLERANCE_MARGIN * max(self.calibration().values()) + TOLERANCE_FLOOR)

    def _build_capabilities(self) -> Capabilities:
        cfg = self.config
        tile, energy, pcm = cfg.tile, cfg.energy, cfg.pcm
        tolerance = self.tolerance()
        count = self.options["tiles"]
        limits = {"max_tiles": count, "tile_rows": tile.rows, "tile_cols": tile.cols, "max_weights": count * tile.rows * tile.cols}
        notes = (
            f"analog MVM through {tile.dac_bits}-bit DACs and {tile.adc_bits}-bit ADCs on PCM conductances; "
            f"tolerance = {TOLERANCE_MARGIN} x the worst error measured on this configuration at reduction lengths {list(CALIBRATION_INPUTS)}"
        )
        ops = {name: OpSupport(DTYPES, {d: tolerance for d in DTYPES}, limits, notes) for name in OPS}
        ops["matmul"] = replace(ops["matmul"], notes=notes + "; b is programmed into the crossbar on every call (its programming energy is charged per call)")
        rate = Figure.derived(count * tile.rows * tile.cols / read_time_s(cfg), "MAC/s", "tiles * rows * cols / (dac_steps * clock_period + adc_conversion_time)")
        section = AnalogSection(
            technology="PCM",
            device_model="statistical PCM model of Nandakumar et al., ICECS 2019 (as in IBM aihwkit PCMLikeNoiseModel)",
            tiles=CrossbarTiles(tile.rows, tile.cols, count, 2, Figure.derived(count * tile.rows * tile.cols, "weights", "tiles * rows * cols")),
            conductance_min=Figure.paper(tile.g_min_us, "uS", "Rasch et al., APL Mach. Learn. 1, 041102 (2023), IBM aihwkit: single-pair conductance converter, g_min 0"),
            conductance_max=Figure.paper(tile.g_max_us, "uS", "Nandakumar et al., ICECS 2019 (g_max of the fit)"),
            conductance_levels=tile.conductance_levels,
            converters=Converters(
                dac_bits=tile.dac_bits,
                adc_bits=tile.adc_bits,
                input_scaling="static" if tile.input_range > 0 else "per-vector",
                input_range=Figure.derived(tile.input_range, "input units", "?input_range option") if tile.input_range > 0 else None,
                adc_full_scale=Figure.paper(tile.adc_full_scale, "v_read*g_max", "Rasch et al., APL Mach. Learn. 1, 041102 (2023), IBM aihwkit: IOParameters.out_bound default"),
                dac_energy_per_bit=Figure.paper(energy.dac_energy_per_bit_j, "J/bit", "Shafiee et al., ISAAC, ISCA 2016, Table I: 4 mW for 8x128 1-bit DACs at 1.2 GHz"),
                adc_energy_per_conversion=Figure.paper(energy.adc_energy_j, "J", "Kull et al., IEEE JSSC 48(12) 2013: 3.1 mW 8-bit SAR ADC at 1.2 GS/s"),
                read_time=Figure.derived(read_time_s(cfg), "s", "dac_steps * 1 ns clock (HERMES, JSSC 2022) + 1/1.2 GS/s ADC conversion"),
            ),
            nonidealities={f: getattr(cfg.effects, f) for f in _SWITCHES.values()},
            physics={
                "programming_noise_std_at_g_max": Figure.paper(sum(pcm.programming_coefficients_us), "uS", "Nandakumar et al., ICECS 2019: c0 + c1 + c2"),
                "drift_reference_time": Figure.paper(pcm.drift_reference_time_s, "s", "Nandakumar et al., ICECS 2019 (t0)"),
                "drift_exponent_mean_at_g_max": Figure.paper(max(pcm.drift_mu_range[0], pcm.drift_mu_intercept), "1", "Nandakumar et al., ICECS 2019: clamp(0.0244, 0.049, 0.1)"),
                "read_noise_q_at_g_max": Figure.paper(pcm.read_noise_coefficient, "1", "Nandakumar et al., ICECS 2019"),
                "output_noise": Figure.paper(tile.output_noise, "v_read*g_max", "Rasch et al., APL Mach. Learn. 1, 041102 (2023), IBM aihwkit: IOParameters.out_noise default"),
                "wire_resistance": Figure.paper(tile.wire_resistance_ohm, "ohm", "Rasch et al., APL Mach. Learn. 1, 041102 (2023), IBM aihwkit: IOParameters.ir_drop_g_ratio default (0.35 ohm per cell)"),
                "read_voltage": Figure.paper(energy.read_voltage_v, "V", "Rasch et al., APL Mach. Learn. 1, 041102 (2023), IBM aihwkit: IOParametersIRDropT.ir_drop_v_read (HERMES core)"),
                "stuck_at_gmin_rate": Figure.derived(tile.stuck_at_gmin_rate, "1", "?stuck_gmin option (default an assumed illustrative rate)"),
                "stuck_at_gmax_rate": Figure.derived(tile.stuck_at_gmax_rate, "1", "?stuck_gmax option (default an assumed illustrative rate)"),
            },
            write_verify={
                "iterations": Figure.derived(tile.write_verify_iterations, "rounds", "?write_verify option (iterative programming: Joshi et al., Nat. Commun. 2020)"),
                "tolerance": Figure.derived(tile.write_verify_tolerance_us, "uS", "?tolerance_us option (design choice)"),
                "pulse_energy": Figure.derived(energy.program_pulse_energy_j, "J", "100 uA x 1 V x 100 ns (orders of magnitude of PCM pulses reviewed by Wong et al., Proc. IEEE 98, 2201, 2010)"),
            },
            read_age=Figure.derived(self.options["t"], "s", "?t option: seconds after t0 = 20 s"),
        )
        return Capabilities(
            uri=str(self.uri),
            kind=self.kind,
            paradigm=Paradigm.ANALOG,
            simulated=True,
            identity={"technology": "PCM crossbar (emulated)", "layout": HERMES, "compute": str(self.torch_device), "torch": torch.__version__},
            ops=ops,
            deterministic=False,
            peak={"mac_per_s": rate},
            energy={
                "j_per_mac_full_tile": self._energy_per_mac(),
                "adc_j_per_conversion": section.converters.adc_energy_per_conversion,
                "dac_j_per_bit": section.converters.dac_energy_per_bit,
                "program_j_per_pulse": section.write_verify["pulse_energy"],
            },
            sections={"analog": section},
            notes=[
                f"worst measured relative error per reduction length: {', '.join(f'K={k}: {e:.3g}' for k, e in self.calibration().items())}",
                "NaN/inf inputs are refused; inputs beyond a static DAC range are clipped and counted in Program.stats.dac_clipped",
            ],
        )

    def _energy_per_mac(self) -> Figure:
        """Read energy per multiply-accumulate of one full tile: inputs at half range, typical device pairs."""
        tile = self.config.tile
        counters = expected_read_counters(self.config, 1, 1, tile.rows, tile.cols, self._typical_pair_us())
        return Figure.derived(
            counters.energy_j / (tile.rows * tile.cols),
            "J/MAC",
            "(v_read^2 * 0.3 g_max * 1/2 * t_pulse * rows * cols + DAC + ADC energy) / (rows * cols)",
            "array and converters only; IBM's HERMES core measured 10.5 TOPS/W with its digital periphery (JSSC 2022)",
        )

    # ------------------------------------------------------------------ sizes and capacity
    def _weight_grid(self, op: OpSpec) -> TileGrid:
        """The (stack, inputs, outputs) matrix an op stores in the crossbar."""
        tile = self.config.tile
        if op.name == "linear":
            out_features, in_features = op.param("weight").shape
            return TileGrid(1, in_features, out_features, tile.rows, tile.cols)
        if op.name == "conv2d":
            out_channels, per_group, kh, kw = op.param("weight").shape
            groups = op.attr("groups")
            return TileGrid(groups, per_group * kh * kw, out_channels // groups, tile.rows, tile.cols)
        a, b = op.inputs[0].shape, op.inputs[1].shape
        if any(s is None for s in b) or any(s is None for s in a[:-2]):
            raise InvalidInput(f"{self.uri} programs matmul's b into its tiles and needs its full shape; got a={a}, b={b}")
        stack = math.prod(torch.broadcast_shapes(tuple(a[:-2]), tuple(b[:-2])))
        return TileGrid(stack, b[-2], b[-1], tile.rows, tile.cols)

    def _capacity_message(self, op: OpSpec, grid: TileGrid) -> str | None:
        have = len(self._slots)
        if grid.tiles <= have:
            return None
        tile = self.config.tile
        return (
            f"{self.uri} holds {have} tiles of {tile.rows}x{tile.cols}; this {op.name} stores {grid.stack} x "
            f"{grid.inputs}x{grid.outputs} weights and needs {grid.tiles} tiles ({grid.stack} x {grid.row_blocks} x {grid.col_blocks}). "
            f"Pass ?tiles={grid.tiles} or split the layer."
        )

    def _check(self, op: OpSpec) -> Support | None:
        try:
            message = self._capacity_message(op, self._weight_grid(op))
        except InvalidInput as exc:
            return Support.no(str(exc))
        return Support.no(message) if message else None

    def prepare(self, op: OpSpec, params=None) -> Program:
        """Program ``op``'s weight into conductances; CapacityExceeded if it needs more tiles than the device has."""
        if op.name in OPS:
            specs = dict(op.params)
            for name, tensor in (params or {}).items():
                if isinstance(tensor, torch.Tensor):
                    specs[name] = TensorSpec.of(tensor)
            sized = OpSpec(op.name, op.inputs, specs, dict(op.attrs))
            vocabulary.check(sized)
            grid = self._weight_grid(sized)
            message = self._capacity_message(sized, grid)
            if message:
                raise CapacityExceeded(message, needed=grid.tiles, available=len(self._slots))
        return super().prepare(op, params)

    def _allocate(self, program: MemristorProgram, count: int) -> list[int]:
        """Free tiles for ``program``, overwriting the oldest programs when needed (they are invalidated)."""
        with self._tiles_lock:
            free = [i for i, owner in enumerate(self._slots) if owner is None]
            while len(free) < count:
                victim = self._programs[0]
                self.free_tiles(victim, f"its tiles {victim.tiles} were reprogrammed for a {program.op.name} (the device holds {len(self._slots)} tiles; pass ?tiles=N for more)")
                free = [i for i, owner in enumerate(self._slots) if owner is None]
            chosen = free[:count]
            for i in chosen:
                self._slots[i] = program
            self._programs.append(program)
            return chosen

    def free_tiles(self, program: MemristorProgram, reason: str) -> None:
        """Take ``program``'s tiles back and invalidate it with ``reason``."""
        with self._tiles_lock:
            for i in program.tiles:
                if self._slots[i] is program:
                    self._slots[i] = None
            if program in self._programs:
                self._programs.remove(program)
            program.invalidate(reason)

    @property
    def tiles_in_use(self) -> int:
        return sum(owner is not None for owner in self._slots)

    # ------------------------------------------------------------------ estimates
    def estimate(self, op: OpSpec) -> Cost:
        """Latency and energy from the read model (inputs at half the DAC range on average, device pairs at
        0.3 g_max + 2 g_min: Gaussian weights have mean |w| / max |w| of about 0.3 over a 256-row tile);
        error = the measured calibration error at the nearest reduction length."""
        grid = self._weight_grid(op)
        counters = expected_read_counters(self.config, grid.stack, self._batch(op), grid.inputs, grid.outputs, self._typical_pair_us())
        return self._cost(op, grid, counters, self._expected_programming(grid) if op.name == "matmul" else None)

    def _typical_pair_us(self) -> float:
        """G+ + G- of a typical device pair: 0.3 g_max + 2 g_min (see ``estimate``)."""
        tile = self.config.tile
        return 0.3 * (tile.g_max_us - tile.g_min_us) + 2 * tile.g_min_us

    def _expected_programming(self, grid: TileGrid) -> ProgrammingReport:
        """Programming cost of a weight before writing it: every device pulsed once, then half of them again in
        each write-verify round (an assumption, about what the default tolerance gives), every device read per round."""
        tile, energy = self.config.tile, self.config.energy
        devices = 2 * grid.stack * grid.inputs * grid.outputs
        pulses = int(devices * (1 + 0.5 * tile.write_verify_iterations))
        rounds = 1 + tile.write_verify_iterations
        return ProgrammingReport(devices=devices, pulses=pulses, verify_reads=devices * tile.write_verify_iterations, energy_j=pulses * energy.program_pulse_energy_j, time_s=rounds * energy.program_pulse_time_s * tile.rows)

    def _batch(self, op: OpSpec) -> int:
        """Input vectors one call streams through the tiles."""
        shape = op.inputs[0].shape
        sizes = [1 if s is None else s for s in shape]
        if op.name == "linear":
            return math.prod(sizes[:-1])
        if op.name == "matmul":
            return sizes[-2]
        w = op.param("weight").shape
        out = self._conv_out(sizes[2:], w[2:], op)
        return sizes[0] * max(out[0], 1) * max(out[1], 1)  # open spatial sizes count as one output pixel

    @staticmethod
    def _conv_out(size, kernel, op: OpSpec) -> tuple[int, int]:
        (sh, sw), (ph, pw), (dh, dw) = op.attr("stride"), op.attr("padding"), op.attr("dilation")
        return ((size[0] + 2 * ph - dh * (kernel[0] - 1) - 1) // sh + 1, (size[1] + 2 * pw - dw * (kernel[1] - 1) - 1) // sw + 1)

    def _cost(self, op: OpSpec, grid: TileGrid, counters: ReadCounters, programming: ProgrammingReport | None = None) -> Cost:
        calibration = self.calibration()
        nearest = min(calibration, key=lambda k: abs(math.log(k) - math.log(max(grid.inputs, 1))))
        energy, latency = counters.energy_j, counters.latency_s
        formula = "read: v_read^2 * G * |x| * t_pulse per device + DAC bits * 3.3 fJ + ADC conversions * 2.6 pJ; latency = vectors * (PWM pulse + ADC conversion)"
        if programming is not None:
            energy += programming.energy_j
            latency += programming.time_s
            formula += "; plus reprogramming b (pulses * pulse energy, write-verify time) on every call"
        return Cost(latency, energy, calibration[nearest], formula + f"; error measured at K={nearest}")

    # ------------------------------------------------------------------ compile
    def _program_weights(self, weights: torch.Tensor) -> Crossbar:
        seed = int(torch.randint(0, 2**62, (1,), generator=self._generator, device=self.torch_device))
        crossbar = Crossbar(weights.to(self.torch_device, torch.float32), self.config, seed)
        with self._tiles_lock:
            self.programming_totals = _add_reports(self.programming_totals, crossbar.report)
        return crossbar

    def _read(self, program: MemristorProgram, crossbar: Crossbar, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        out, counters = crossbar.read(x, program.age_s, self._generator, bias)
        with self._tiles_lock:
            program.stats.add(counters)
            self.counters.add(counters)
        return out

    def _compile(self, op: OpSpec, params: dict[str, torch.Tensor]) -> Program:
        grid = self._weight_grid(op)
        builder = {"linear": self._linear, "conv2d": self._conv2d, "matmul": self._matmul}[op.name]
        return builder(op, params, grid)

    def _new_program(self, op: OpSpec, grid: TileGrid, run: Callable[..., Any]) -> MemristorProgram:
        program = MemristorProgram(op, self, self.estimate(op), run, [])
        program.tiles = self._allocate(program, grid.tiles)
        return program

    def _finish(self, program: MemristorProgram, op: OpSpec, grid: TileGrid, crossbar: Crossbar) -> None:
        program.programming = crossbar.report
        state = crossbar.state(program.age_s)
        pair_us = float((state.g_sum_rows.sum() / max(grid.stack * grid.inputs * grid.outputs, 1)) * 1e6)
        counters = expected_read_counters(self.config, grid.stack, self._batch(op), grid.inputs, grid.outputs, pair_us)
        program.cost = self._cost(op, grid, counters)

    def _linear(self, op: OpSpec, params: dict[str, torch.Tensor], grid: TileGrid) -> Program:
        weight, bias = params["weight"], params.get("bias")
        relu = op.attr("activation") == "relu"
        bias_c = bias.to(self.torch_device, torch.float32) if bias is not None else None
        holder: dict[str, Crossbar] = {}

        def run(x: torch.Tensor) -> torch.Tensor:
            flat = x.to(self.torch_device).reshape(1, -1, grid.inputs)
            y = self._read(program, holder["crossbar"], flat, bias_c)[0]
            if relu:
                y = y.relu_()
            return y.reshape(*x.shape[:-1], grid.outputs).to(x.device, x.dtype)

        program = self._new_program(op, grid, run)
        holder["crossbar"] = self._program_weights(weight.detach().t().unsqueeze(0))
        self._finish(program, op, grid, holder["crossbar"])
        return program

    def _conv2d(self, op: OpSpec, params: dict[str, torch.Tensor], grid: TileGrid) -> Program:
        weight, bias = params["weight"], params.get("bias")
        groups = op.attr("groups")
        out_channels, _, kh, kw = weight.shape
        stride, padding, dilation = op.attr("stride"), op.attr("padding"), op.attr("dilation")
        stacked = weight.detach().reshape(groups, out_channels // groups, grid.inputs).transpose(1, 2)
        bias_c = bias.to(self.torch_device, torch.float32).view(1, -1, 1, 1) if bias is not None else None
        holder: dict[str, Crossbar] = {}

        def run(x: torch.Tensor) -> torch.Tensor:
            n, _, h, w = x.shape
            ho, wo = self._conv_out((h, w), (kh, kw), op)
            patches = F.unfold(x.to(self.torch_device, torch.float32), (kh, kw), dilation=dilation, padding=padding, stride=stride)
            words = patches.view(n, groups, grid.inputs, ho * wo).permute(1, 0, 3, 2).reshape(groups, n * ho * wo, grid.inputs)
            y = self._read(program, holder["crossbar"], words)  # (groups, n*L, O/g)
            y = y.view(groups, n, ho * wo, grid.outputs).permute(1, 0, 3, 2).reshape(n, out_channels, ho, wo)
            if bias_c is not None:
                y = y + bias_c
            return y.to(x.device, x.dtype)

        program = self._new_program(op, grid, run)
        holder["crossbar"] = self._program_weights(stacked)
        self._finish(program, op, grid, holder["crossbar"])
        return program

    def _matmul(self, op: OpSpec, params: dict[str, torch.Tensor], grid: TileGrid) -> Program:
        a_shape, b_shape = op.inputs[0].shape, op.inputs[1].shape
        batch = torch.broadcast_shapes(tuple(a_shape[:-2]), tuple(b_shape[:-2]))

        def run(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            m = a.shape[-2]
            stored = b.to(self.torch_device).expand(*batch, grid.inputs, grid.outputs).reshape(grid.stack, grid.inputs, grid.outputs)
            streamed = a.to(self.torch_device).expand(*batch, m, grid.inputs).reshape(grid.stack, m, grid.inputs)
            crossbar = self._program_weights(stored)
            program.programming = _add_reports(program.programming, crossbar.report)
            y = self._read(program, crossbar, streamed)
            return y.reshape(*batch, m, grid.outputs).to(a.device, a.dtype)

        program = self._new_program(op, grid, run)  # its cost (the estimate) includes reprogramming b
        return program

    # ------------------------------------------------------------------ lifecycle
    def manual_seed(self, seed: int) -> None:
        """Reseed the device's noise sources: programming draws and per-read output noise repeat after this."""
        self._generator.manual_seed(seed)

    def elapse(self, seconds: float) -> None:
        """Advance the device clock: every program's conductances drift ``seconds`` further."""
        if not seconds >= 0 or math.isinf(seconds):
            raise InvalidInput(f"{self.uri}: elapse() takes a finite number of seconds >= 0, got {seconds!r}")
        self.clock_s += seconds

    def synchronize(self) -> None:
        if self.torch_device.type == "cuda":
            torch.cuda.synchronize(self.torch_device)

    def telemetry(self) -> dict[str, Any]:
        """Simulated readings: tiles in use, clock, and the accumulated read and programming counters."""
        return {
            "tiles_in_use": self.tiles_in_use,
            "tiles": len(self._slots),
            "clock_s": self.clock_s,
            "reads": self.counters.as_dict(),
            "programming": self.programming_totals.as_dict(),
        }

    def close(self) -> None:
        if self.closed:
            return
        for program in list(self._programs):
            self.free_tiles(program, f"{self.uri} was closed")
        super().close()


def _add_reports(total: ProgrammingReport, new: ProgrammingReport) -> ProgrammingReport:
    """Sum two programming reports (counts and costs add; residual error is the latest programming's)."""
    return ProgrammingReport(
        devices=total.devices + new.devices,
        pulses=total.pulses + new.pulses,
        verify_reads=total.verify_reads + new.verify_reads,
        stuck_at_gmin=total.stuck_at_gmin + new.stuck_at_gmin,
        stuck_at_gmax=total.stuck_at_gmax + new.stuck_at_gmax,
        residual_rms_us=new.residual_rms_us,
        residual_relative=new.residual_relative,
        energy_j=total.energy_j + new.energy_j,
        time_s=total.time_s + new.time_s,
    )
