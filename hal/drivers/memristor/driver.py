"""MemristorDevice: an emulated analog in-memory-computing accelerator of PCM crossbar tiles.

``memristor:0`` holds ``?tiles=64`` crossbar tiles of ``?tile=256`` x 256 differential PCM pairs (the shape of
IBM's 64-core HERMES chip). ``prepare`` *programs* a weight into conductances (a ``MemristorProgram`` owning
tiles); calling the program drives the inputs through DACs, the drifted, noisy conductances and the ADCs
(``tile.Crossbar``). Every non-ideality is switchable by option: ``?prog_noise=0``, ``drift``, ``read_noise``,
``output_noise``, ``ir_drop``, ``stuck``, ``quantization``, ``drift_compensation``, or ``?ideal=1`` for all.

Ops: ``linear`` (weight programmed once; activation none/relu), ``conv2d`` (im2col onto the crossbar; groups
are stacked tiles), and ``matmul(a, b)``: ``b`` is the operand stored in the crossbar and ``a`` is streamed
through it, so ``b`` is *reprogrammed on every call* (its programming energy and time are charged per call).

Time: a weight is read ``?t=<seconds>`` after the drift reference time t0 (20 s after its programming), plus
whatever ``elapse(seconds)`` advanced the device clock since it was written (a verb of converted models too:
``hal.nn.convert(model, "memristor:0").elapse(3600)``). ``elapse`` is one locked state change of the device: every
live program ages by ``seconds`` at once (a program is created and given its tiles under the same lock), its
``cost.error`` and the declared tolerance are re-derived at the new ages, and a step that would age a program past
the age at which this configuration can declare a tolerance below ``TOLERANCE_LIMIT`` is refused (the clock stays),
as ``?t=`` that late is refused at ``hal.device(...)``. matmul writes ``b`` at every call, so it always reads at ``?t``.

Models (``convert_module``, what ``hal.nn.convert(model, "memristor:0", noise_scale=1.0)`` calls): each ``nn.Linear``
/ ``nn.Conv2d`` becomes an ``AnalogLinear`` / ``AnalogConv2d`` (``layers.py``) that trains with noise injection.
Subgraph claims (``claim`` / ``prepare_subgraph``): a chain of linear ops becomes one Program converting once at each
end, its activations analog between tiles (``chain.py``).

The device composes four parts, each a module: ``allocator`` (which program owns which tile; the oldest are
overwritten when tiles run out, and raise ``ProgramInvalidated`` if called again), ``compiler`` (OpSpec and
weights -> programmed tiles and a run function), ``cost`` (latency, energy, error of one call) and ``accuracy``
(the expected error derived from the configuration, which sets the declared tolerance; a configuration whose
expected error is too large to declare a tolerance below 1 is refused, naming the option at fault).
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import replace
from typing import Any, ClassVar

import torch
from torch import nn

from hal import ops as vocabulary
from hal.capability import Capabilities, Figure, Paradigm
from hal.capability.error_budget import ErrorBudget
from hal.device import Check, Cost, Device, DeviceInfo, OpSpec, Option, Program, Support, TensorSpec, bounded_float, bounded_int, parse_bool
from hal.drivers.memristor.accuracy import AccuracyModel
from hal.drivers.memristor.allocator import TileAllocator
from hal.drivers.memristor.capabilities import OPS, build_capabilities
from hal.drivers.memristor.chain import chain_grids, chain_problem
from hal.drivers.memristor.compiler import CrossbarCompiler, MemristorProgram, weight_grid
from hal.drivers.memristor.config import CrossbarConfig, NonIdealities, TileConfig
from hal.drivers.memristor.cost import CostModel
from hal.drivers.memristor.energy import ProgrammingReport, ReadCounters
from hal.drivers.memristor.layers import CONVERSION_OPTIONS, analog_twin
from hal.errors import CapacityExceeded, DeviceUnavailable, InvalidInput, UnsupportedOp
from hal.subgraph import Subgraph

#: Declared tolerance = margin x the worst expected error + a floor (float rounding of the digital periphery).
#: The margin covers the spread of the error over random operands and the budget's approximations (it
#: underestimates the emulator by up to about 1.6x for very coarse converters, docs/memristor.md).
TOLERANCE_MARGIN, TOLERANCE_FLOOR = 2.0, 1e-3
#: The largest tolerance the device declares; a configuration that would need more is refused.
TOLERANCE_LIMIT = Figure.assumed(
    0.5, "1", "above half the signal (6 dB signal-to-error) an analog product computes noise; the conformance kit's ceiling for analog devices"
)
#: The option to change when an effect dominates an unusable configuration.
REMEDIES = {
    "conductance_levels": "raise ?levels=",
    "programming": "raise ?write_verify= or lower ?tolerance_us=",
    "read_noise": "read earlier (lower ?t=) or pass ?read_noise=0",
    "drift_and_ir_drop": "keep ?drift_compensation=1, read earlier (lower ?t=), use a smaller ?tile= (shorter lines drop less) or pass ?ir_drop=0",
    "stuck_devices": "lower ?stuck_gmin= / ?stuck_gmax=",
    "dac_rounding": "raise ?dac_bits=",
    "output_noise": "pass ?output_noise=0",
    "adc": "raise ?adc_bits=",
    "output_swing": "scale the chain's inner activations down (they saturate the output stage's swing)",
}
#: Accuracy models kept for read ages other than ``?t`` (programs aged by ``elapse``), least recently used dropped.
AGED_MODELS = 16

#: ``?name=0/1`` switches and the non-ideality each one turns off or on.
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


class MemristorDevice(Device):
    """An emulated PCM crossbar accelerator (see the module docstring)."""

    kind = "memristor"
    refuses_nonfinite = True
    MODULE_VERBS: ClassVar[tuple[str, ...]] = ("elapse", "manual_seed")
    OPTIONS: ClassVar[dict[str, Option]] = {
        "tile": Option(bounded_int(1), 256, "rows and columns of one crossbar tile (a positive integer)"),
        "tiles": Option(bounded_int(1), 64, "number of crossbar tiles (arrays) the device has"),
        "seed": Option(int, 0, "seed of every device draw (programming noise, faults, drift, read noise)"),
        "t": Option(bounded_float(0), 0.0, "seconds after the drift reference time t0 = 20 s at which reads happen"),
        "compute": Option(str, "cpu", "torch device the emulation runs on: 'cpu' or 'cuda' / 'cuda:N'"),
        "ideal": Option(parse_bool, False, "1 turns every non-ideality off except those switched on explicitly (?ideal=1&drift=1)"),
        "input_range": Option(bounded_float(0), 0.0, "static DAC range (inputs beyond it clip and are counted); 0 scales each input vector"),
        "dac_bits": Option(bounded_int(2, 24), 8, "signed DAC resolution in bits (2..24)"),
        "adc_bits": Option(bounded_int(2, 24), 8, "signed ADC resolution in bits (2..24)"),
        "levels": Option(bounded_int(2), 128, "programmable conductance levels per device (>= 2)"),
        "stuck_gmin": Option(bounded_float(0, 1), 1e-4, "fraction of devices stuck at g_min"),
        "stuck_gmax": Option(bounded_float(0, 1), 1e-4, "fraction of devices stuck at g_max"),
        "write_verify": Option(bounded_int(0), 3, "program-and-verify rounds after the first pulse (0: single shot)"),
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
        tile = self.config.tile
        self.accuracy = AccuracyModel(self.config, self.options["t"])
        self.worst_error = self.accuracy.worst(self.options["tiles"] * tile.rows)
        self.base_tolerance = _tolerance_for(self.worst_error)
        """The tolerance of a freshly programmed weight (read at ``?t``), whatever ``elapse`` did since."""
        self._tolerance = self.base_tolerance
        if self._tolerance > TOLERANCE_LIMIT.value:
            worst = self.worst_error
            raise InvalidInput(
                f"{self.uri}: this configuration's expected relative error is {worst.error:.2f} at reduction length {worst.inputs} "
                f"(largest effect: {worst.largest()}, {math.sqrt(worst.terms[worst.largest()]):.2f}), so its tolerance would be "
                f"{self._tolerance:.2f}, above the {TOLERANCE_LIMIT.value} at which an analog product computes noise; {_remedy(worst.largest())}"
            )
        self.clock_s = 0.0
        self.clock_lock = threading.RLock()
        """Held while the clock moves and while a program is created at a clock reading."""
        self._aged: OrderedDict[float, AccuracyModel] = OrderedDict()
        self.generator = torch.Generator(device=self.torch_device)
        self.generator.manual_seed(self.options["seed"])
        self.allocator = TileAllocator(str(self.uri), self.options["tiles"], tile.rows, tile.cols)
        self.costs = CostModel(self.config, self.accuracy)
        self.compiler = CrossbarCompiler(self, self.allocator, self.costs)

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
    def tolerance(self) -> float:
        """Declared tolerance of every op: margin x the worst expected error + a floor, over the worst reduction length
        at ``?t`` and, after ``elapse``, over every live program at its read age."""
        return self._tolerance

    def expected_error(self, inputs: int, outputs: int, age_s: float | None = None) -> ErrorBudget:
        """The error budget of a product of reduction length ``inputs`` and ``outputs`` columns read ``age_s`` seconds
        after t0 (default: ``?t``, a freshly programmed weight)."""
        return self.accuracy_at(self.options["t"] if age_s is None else age_s).budget(inputs, outputs)

    def accuracy_at(self, age_s: float) -> AccuracyModel:
        """The accuracy model of reads ``age_s`` seconds after t0 (kept for the last ``AGED_MODELS`` ages asked)."""
        if age_s == self.options["t"]:
            return self.accuracy
        with self.clock_lock:
            model = self._aged.get(age_s)
            if model is None:
                model = self._aged[age_s] = AccuracyModel(self.config, age_s)
                while len(self._aged) > AGED_MODELS:
                    self._aged.popitem(last=False)
            self._aged.move_to_end(age_s)
            return model

    def program_cost(self, program: MemristorProgram) -> Cost:
        """``program``'s read cost with the expected error of its products (one, or a chain's layers) at its read age."""
        if not program.shapes:
            return program.read_cost
        age = program.age_s
        return self.costs.with_error(program.read_cost, self.accuracy_at(age).chain_budget(program.shapes), age)

    def _build_capabilities(self) -> Capabilities:
        return build_capabilities(self, self.worst_error, self.tolerance(), TOLERANCE_MARGIN, TOLERANCE_FLOOR, TOLERANCE_LIMIT)

    # ------------------------------------------------------------------ support, capacity, estimates
    def _check(self, op: OpSpec) -> Support | None:
        try:
            message = self.allocator.capacity_problem(op.name, weight_grid(op, self.config, str(self.uri)))
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
            grid = weight_grid(sized, self.config, str(self.uri))
            message = self.allocator.capacity_problem(sized.name, grid)
            if message:
                raise CapacityExceeded(message, needed=grid.tiles, available=self.allocator.count)
        return super().prepare(op, params)

    def estimate(self, op: OpSpec) -> Cost:
        """Latency and energy from the read model, error derived from the configuration (see ``cost.CostModel``)."""
        return self.costs.estimate(op, weight_grid(op, self.config, str(self.uri)))

    def _compile(self, op: OpSpec, params: dict[str, torch.Tensor]) -> Program:
        return self.compiler.compile(op, params)

    # ------------------------------------------------------------------ models (hal.nn.convert)
    def convert_module(self, module: nn.Module, **options: Any) -> nn.Module | None:
        """The crossbar twin of an ``nn.Linear`` / ``nn.Conv2d`` (``AnalogLinear`` / ``AnalogConv2d``, weights copied),
        None for any other module. Options (``CONVERSION_OPTIONS``): ``noise_scale``, ``noise_age_s``, the noise
        injected in ``train()`` mode; an unknown option is refused, naming those that exist."""
        unknown = sorted(set(options) - set(CONVERSION_OPTIONS))
        if unknown:
            known = "; ".join(f"{name}: {meaning}" for name, meaning in CONVERSION_OPTIONS.items())
            raise InvalidInput(f"{self.uri} has no conversion option(s) {unknown}; its options are {known}")
        return analog_twin(module, self, **options)

    # ------------------------------------------------------------------ subgraph claims (chain.py)
    def claim(self, sub: Subgraph) -> Support:
        """Chains of linear ops (activation none or relu) whose layers fit the device's tiles together."""
        problem = chain_problem(self, sub)
        return Support.no(problem) if problem else Support.yes()

    def estimate_subgraph(self, sub: Subgraph) -> Cost:
        """A claimed chain: its layers read as single ops are, ADC conversions at the last layer only, the error of
        every layer without the rounding it skips, summed in quadrature (``cost.CostModel.chain``)."""
        claimed = self.claim(sub)
        if not claimed:
            raise UnsupportedOp(f"{self.uri} does not claim the subgraph {sub}: {claimed.reason}")
        return self.costs.chain(sub.ops, chain_grids(self, sub))

    def _compile_subgraph(self, sub: Subgraph, params: list[dict[str, torch.Tensor]]) -> Program:
        return self.compiler.compile_chain(sub, params)

    @property
    def tiles_in_use(self) -> int:
        return self.allocator.in_use

    @property
    def counters(self) -> ReadCounters:
        """Read counters accumulated over every program of the device."""
        return self.compiler.counters

    @property
    def programming_totals(self) -> ProgrammingReport:
        """Programming costs accumulated over every program of the device."""
        return self.compiler.programming_totals

    # ------------------------------------------------------------------ lifecycle
    def manual_seed(self, seed: int) -> None:
        """Reseed the device's noise sources: programming draws and per-read output noise repeat after this."""
        self.generator.manual_seed(seed)

    def elapse(self, seconds: float) -> None:
        """Let ``seconds`` pass: every program's conductances are read that much later after t0 (drift, 1/f noise).

        One locked state change (see the module docstring): the live programs' ``cost.error`` and the declared
        tolerance are re-derived at their new read ages. Refused with InvalidInput, the clock unchanged, when a live
        program would be read where this configuration cannot declare a tolerance below ``TOLERANCE_LIMIT``.
        """
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds >= 0 or math.isinf(seconds):
            raise InvalidInput(f"{self.uri}: elapse() takes a finite number of seconds >= 0, got {seconds!r}")
        self._ensure_open()
        with self.clock_lock:
            clock = self.clock_s + seconds
            aged = []
            for program in self.allocator.programs():
                if isinstance(program, MemristorProgram) and program.shapes and not program.reprograms_each_call:
                    age = self.options["t"] + clock - program.programmed_at_s
                    aged.append((program, self.accuracy_at(age).chain_budget(program.shapes), age))
            tolerance = max([self.base_tolerance] + [_tolerance_for(budget) for _, budget, _ in aged])
            if tolerance > TOLERANCE_LIMIT.value:
                program, budget, age = max(aged, key=lambda entry: entry[1].error)
                raise InvalidInput(
                    f"{self.uri}: after elapse({seconds:g}) its {program.op.name} program of shape(s) {program.shapes} would be read {age:g} s "
                    f"after t0, where this configuration's expected relative error is {budget.error:.2f} (largest effect: {budget.largest()}), "
                    f"so its tolerance would be {tolerance:.2f}, above the {TOLERANCE_LIMIT.value} at which an analog product computes noise. "
                    f"The clock stays at {self.clock_s:g} s: reprogram that weight first (layer.reprogram(), or prepare it again), or "
                    f"{_remedy(budget.largest())}"
                )
            self.clock_s = clock
            for program, budget, age in aged:
                program.cost = self.costs.with_error(program.read_cost, budget, age)
            self._tolerance = tolerance
            self._capabilities = None  # rebuilt with the new tolerance when next asked

    def synchronize(self) -> None:
        if self.torch_device.type == "cuda":
            torch.cuda.synchronize(self.torch_device)

    def telemetry(self) -> dict[str, Any]:
        """Simulated readings: tiles in use, clock, and the accumulated read and programming counters."""
        return {
            "tiles_in_use": self.tiles_in_use,
            "tiles": self.allocator.count,
            "clock_s": self.clock_s,
            "reads": self.counters.as_dict(),
            "programming": self.programming_totals.as_dict(),
        }

    def close(self) -> None:
        if self.closed:
            return
        self.allocator.free_all(f"{self.uri} was closed")
        super().close()


def _tolerance_for(budget: ErrorBudget) -> float:
    """The tolerance declared for an expected error: margin x error + floor."""
    return TOLERANCE_MARGIN * budget.error + TOLERANCE_FLOOR


def _remedy(effect: str) -> str:
    """The option to change when ``effect`` (a budget term, ``name (layer j)`` in a chain) dominates."""
    return REMEDIES.get(effect.split(" (layer")[0], "use a configuration with fewer non-idealities")
