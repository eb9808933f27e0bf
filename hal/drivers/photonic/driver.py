"""PhotonicDevice: an emulated programmable photonic matrix processor of Mach-Zehnder meshes.

``photonic:0`` is an N-port (``?N=32``) processor in the architecture of Shen et al. (Nat. Photonics 11,
441 (2017)): a weight W = U diag(s) V* is set as phases on a mesh for V*, a column of MZI attenuators for
diag(s) and a mesh for U (``processor.PhotonicMatrix``); meshes are Clements rectangles (``?mesh=reck`` for
Reck triangles). ``prepare`` *programs* the phases; a call streams input vectors through modulators, the
light through the programmed (imperfect) meshes, and reads the outputs with coherent detection, noise and
ADCs. ``?channels=8`` wavelengths carry 8 vectors at once (WDM: the batch rides on wavelengths).

Ops (coherent detection): ``linear`` (activation none, or relu applied electronically after the ADC, as
opto-electronic processors do; the bias is added digitally) and ``matmul(a, b)``, where ``b`` is the matrix
written to the meshes on every call (its heater settling time is charged per call). With
``?detection=intensity`` the detectors read |W x|^2, which is not a linear op: the device then offers the
paradigm op ``intensity_linear`` (x -> |W x|^2 per output) instead.

Switches: ``?phase_bits=12`` (0: continuous), ``crosstalk``, ``fabrication``, ``loss``, ``balanced_loss``, ``noise``,
``dispersion``, ``?adc_bits=8`` (0: none), ``?snr_db=50``, ``?ideal=1`` (all off). ``?seed=`` fixes the
chip's coupler errors and the noise stream; ``manual_seed`` restarts the noise stream. ``?compute=cuda``
runs the simulation on the GPU.

The mesh size is bounded by physics: an input waveguide carries at most ``EnergyConfig.max_input_power_w``, and
the light that reaches a detector after the processor's insertion loss must still carry the power the required
SNR needs; a larger ``?N=`` raises ``CapacityExceeded`` naming the limit. The declared tolerance is derived from
the configuration (``accuracy.py``: mesh transfer matrices, SNR, ADC bits), never measured on the device's own
output; a configuration whose tolerance would exceed ``TOLERANCE_LIMIT`` is refused, naming the option at fault.
A product with an empty dimension touches no mesh and returns what the CPU returns.

Models (``convert_module``, what ``hal.nn.convert(model, "photonic:0")`` calls): each ``nn.Linear`` becomes a
``PhotonicLinear`` (``layers.py``); there are no conversion options. Subgraph claims (``claim`` / ``prepare_subgraph``):
a chain of linear ops becomes one Program whose light stays optical between processors where no ReLU and no loss
limit intervene (``chain.py``). The verb a converted model forwards is ``manual_seed``: nothing in the model drifts
over time, so there is no recalibration to run.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from hal.capability import Capabilities, Figure, Paradigm
from hal.capability.error_budget import ErrorBudget
from hal.device import Check, Cost, Device, DeviceInfo, OpSpec, Option, Program, Support, bounded_int, choice, parse_bool
from hal.drivers.photonic.accuracy import AccuracyModel
from hal.drivers.photonic.capabilities import DTYPES, build_capabilities, heater_count
from hal.drivers.photonic.chain import ComposedTile, chain_problem, folded_bias, plan_segments, reference_weights, relus_of
from hal.drivers.photonic.decompose import layout_depth
from hal.drivers.photonic.energy import EnergyConfig, call_cost, loss_budget_db, loss_limited_ports, mesh_loss_db
from hal.drivers.photonic.imperfections import PhotonicConfig
from hal.drivers.photonic.layers import photonic_twin
from hal.drivers.photonic.processor import Fabrication, PhotonicMatrix, Tile
from hal.drivers.photonic.readout import Receiver
from hal.errors import CapacityExceeded, DeviceUnavailable, InvalidInput, UnsupportedOp
from hal.programs import ResidentProgram
from hal.subgraph import Subgraph

COMPLEX = {torch.float32: torch.complex64, torch.float64: torch.complex128}
#: Declared tolerance = margin x the expected error of the reference weights + a rounding floor per dtype. The
#: margin covers the spread over random operands and the budget's approximations (docs/photonic.md).
TOLERANCE_MARGIN = 2.0
TOLERANCE_FLOOR = {"float32": 2e-5, "float64": 1e-11}
#: The largest tolerance the device declares; a configuration that would need more is refused.
TOLERANCE_LIMIT = Figure.assumed(
    0.5, "1", "above half the signal (6 dB signal-to-error) a photonic product computes noise; the conformance kit's ceiling for photonic devices"
)
#: Largest mesh the ?N= option accepts (the loss-limited size is usually far below it).
MAX_PORTS = 512
#: The option to change when an effect dominates an unusable configuration.
REMEDIES = {
    "mesh": "raise ?phase_bits=, pass ?balanced_loss=1, or use a smaller ?N=",
    "detector_noise": "raise ?snr_db=",
    "adc": "raise ?adc_bits=",
}


def _ports(text: str) -> int:
    value = int(text)
    if not 2 <= value <= MAX_PORTS:
        raise ValueError(f"must be between 2 and {MAX_PORTS} ports")
    return value


def _bits(text: str) -> int | None:
    value = int(text)
    if not 0 <= value <= 32:
        raise ValueError("must be 0 (no quantisation) to 32 bits")
    return value or None


def _snr(text: str) -> float:
    value = float(text)
    if not 0 < value < 200:
        raise ValueError("must be a number of dB in (0, 200)")
    return value


class PhotonicProgram(ResidentProgram):
    """Phases written to the processor for one op; ``matrix`` is the programmed weight (None for matmul, whose b
    comes per call, and for an empty weight). It keeps the weight it was programmed from (``resident``).

    ``scale`` lists, per tile, the factor s_max by which the optics' W / s_max is multiplied back after
    detection; ``stats`` also counts clipped ADC readings and holds the matrix error of the programmed meshes.
    """

    def __init__(self, op: OpSpec, device: PhotonicDevice, cost: Cost, run: Callable[..., Any], matrix: PhotonicMatrix | None, params: dict[str, torch.Tensor]):
        super().__init__(op, device, cost, run, params)
        self.matrix = matrix
        self.segments: list[list[int]] = []
        """For a claimed chain: the layers of each optical segment (detected once each), in order."""
        self.segment_matrices: list[PhotonicMatrix] = []

    @property
    def stats(self) -> dict:
        if self.segment_matrices:
            return {"segments": [m.stats.as_dict() for m in self.segment_matrices], "layers": self.segments}
        return self.matrix.stats.as_dict() if self.matrix is not None else {}

    @property
    def scale(self) -> list[float]:
        return self.matrix.stats.scale if self.matrix is not None else []


class PhotonicDevice(Device):
    """An emulated N-port photonic matrix processor (simulated; always available)."""

    kind = "photonic"
    refuses_nonfinite = True
    MODULE_VERBS: ClassVar[tuple[str, ...]] = ("manual_seed",)
    OPTIONS: ClassVar[dict[str, Option]] = {
        "N": Option(_ports, 32, f"the mesh size in ports (2..{MAX_PORTS}, and at most the loss-limited size the capabilities give)"),
        "mesh": Option(choice({"clements": "clements", "reck": "reck"}), "clements", "the mesh layout: clements (rectangular) or reck (triangular)"),
        "detection": Option(choice({"coherent": "coherent", "intensity": "intensity"}), "coherent", "coherent (signed amplitudes) or intensity (|E|^2) detection"),
        "phase_bits": Option(_bits, 12, "phase-shifter DAC bits (0: continuous phases)"),
        "adc_bits": Option(_bits, 8, "ADC bits per output (0: no ADC quantisation)"),
        "snr_db": Option(_snr, 50.0, "required amplitude SNR at a detector for a full-scale output, in dB (sets the laser power)"),
        "channels": Option(bounded_int(1), 8, "WDM wavelength channels processed in parallel"),
        "max_tiles": Option(bounded_int(1), 64, "the most N x N tiles one weight may be cut into"),
        "crosstalk": Option(parse_bool, True, "thermal crosstalk between neighbouring heaters (1/0)"),
        "fabrication": Option(parse_bool, True, "coupler splitting errors of the chip (1/0)"),
        "loss": Option(parse_bool, True, "insertion loss per MZI and per idle crossing (1/0)"),
        "balanced_loss": Option(parse_bool, False, "give idle crossings a dummy loss equal to an MZI's, so every path loses the same (1/0)"),
        "noise": Option(parse_bool, True, "detector shot and thermal noise (1/0)"),
        "dispersion": Option(parse_bool, True, "wavelength dependence of heater phases across WDM channels (1/0)"),
        "ideal": Option(parse_bool, False, "switch every non-ideality off (exact mesh arithmetic, one wavelength)"),
        "seed": Option(int, 0, "seed of the chip's fabrication errors and of the detector noise stream"),
        "compute": Option(choice({"cpu": "cpu", "cuda": "cuda"}), "cpu", "where the simulation runs: cpu or cuda"),
    }
    def __init__(self, uri):
        super().__init__(uri)
        if not isinstance(self.index, int):
            raise DeviceUnavailable(str(self.uri), "photonic devices are numbered (photonic:0, photonic:1, ...)", "use 'photonic:0'")
        if self.options["compute"] == "cuda":
            if not torch.cuda.is_available():
                raise DeviceUnavailable(str(self.uri), "?compute=cuda was asked for but torch sees no CUDA device", "drop ?compute=cuda or install a CUDA build of torch")
            self.torch_device = torch.device("cuda", torch.cuda.current_device())
        self.ports: int = self.options["N"]
        self.layout: str = self.options["mesh"]
        self.config = self._config()
        self.energy = EnergyConfig()
        self.receiver = Receiver(self.config.detector, self.config.noise_on)
        self.max_ports = loss_limited_ports(self.layout, self.receiver.signal_power_w, self.config, self.energy, MAX_PORTS)
        if self.ports > self.max_ports:
            raise CapacityExceeded(self._mesh_size_problem(), needed=self.ports, available=self.max_ports)
        self.fabrication = Fabrication.draw(self.ports, self.config.coupler.splitting_error_rad, self.options["seed"])
        self._noise = torch.Generator(device=self.torch_device).manual_seed(self.options["seed"])
        self._last_cost = None
        self.accuracy = AccuracyModel(self.receiver)
        self.worst_error = self._reference_budget()
        self.declared_tolerance = {name: TOLERANCE_MARGIN * self.worst_error.error + TOLERANCE_FLOOR[name] for name in DTYPES}
        if max(self.declared_tolerance.values()) > TOLERANCE_LIMIT.value:
            worst = self.worst_error
            raise InvalidInput(
                f"{self.uri}: this configuration's expected relative error is {worst.error:.2f} (largest effect: {worst.largest()}, "
                f"{math.sqrt(worst.terms[worst.largest()]):.2f}), so its tolerance would be {max(self.declared_tolerance.values()):.2f}, above the "
                f"{TOLERANCE_LIMIT.value} at which a photonic product computes noise; {REMEDIES[worst.largest()]}"
            )

    def _mesh_size_problem(self) -> str:
        loss = mesh_loss_db(self.ports, self.layout, self.config)
        budget = loss_budget_db(self.receiver.signal_power_w, self.energy)
        return (
            f"{self.uri}: a {self.ports}-port {self.layout} processor loses {loss:.1f} dB on its optical path, but an input port carries at most "
            f"{self.energy.max_input_power_w * 1e3:g} mW and a detector needs {self.receiver.signal_power_w * 1e6:.3g} uW for "
            f"{self.config.detector.snr_db:g} dB SNR, a {budget:.1f} dB budget: the largest mesh is N={self.max_ports}. "
            f"Pass ?N={self.max_ports} or less (larger weights are tiled), a lower ?snr_db=, or ?mesh=clements (shallower than reck)"
        )

    def _reference_budget(self) -> ErrorBudget:
        """The worse expected error of a Gaussian N x N and a Gaussian 8 x 16 weight programmed on this chip."""
        rng = np.random.default_rng(1234)
        budgets = []
        for rows, cols in ((self.ports, self.ports), (min(8, self.ports), min(16, self.ports))):
            weight = rng.standard_normal((rows, cols))
            matrix = PhotonicMatrix(weight, self.ports, self.layout, self.config, self.fabrication, torch.complex128, self.torch_device)
            budgets.append(self.accuracy.budget(matrix))
        return max(budgets, key=lambda b: b.error)

    def _config(self) -> PhotonicConfig:
        o = self.options
        if o["ideal"]:
            return PhotonicConfig.ideal(o["detection"])
        base = PhotonicConfig()
        if o["balanced_loss"]:
            base = replace(base, loss=replace(base.loss, crossing_loss_db=base.loss.mzi_loss_db))
        return replace(
            base,
            phase=replace(base.phase, dac_bits=o["phase_bits"]),
            detector=replace(base.detector, detection=o["detection"], adc_bits=o["adc_bits"], snr_db=o["snr_db"]),
            wdm=replace(base.wdm, channels=o["channels"]),
            quantisation_on=o["phase_bits"] is not None,
            crosstalk_on=o["crosstalk"],
            fabrication_on=o["fabrication"],
            loss_on=o["loss"],
            noise_on=o["noise"],
            dispersion_on=o["dispersion"],
        )

    # ---- discovery
    @classmethod
    def probe(cls) -> list[DeviceInfo]:
        return [
            DeviceInfo(
                uri="photonic:0",
                kind="photonic",
                available=True,
                simulated=True,
                paradigm=Paradigm.PHOTONIC.value,
                summary={"name": "emulated MZI-mesh photonic processor", "ports": cls.OPTIONS["N"].default, "layout": "clements", "wavelength_channels": cls.OPTIONS["channels"].default},
            )
        ]

    @classmethod
    def diagnose(cls) -> list[Check]:
        cuda = torch.cuda.is_available()
        return [
            Check("photonic emulator", True, f"pure torch {torch.__version__}; complex64/complex128 simulation on the CPU"),
            Check("photonic on CUDA", cuda, "torch sees a CUDA device: ?compute=cuda runs the mesh simulation there" if cuda else "no CUDA device; ?compute=cuda is unavailable", "" if cuda else "install a CUDA build of torch on a GPU machine"),
        ]

    # ---- capabilities
    def declared_ops(self) -> tuple[str, ...]:
        return ("intensity_linear",) if self.config.detector.detection == "intensity" else ("linear", "matmul")

    def _build_capabilities(self) -> Capabilities:
        formula = f"{TOLERANCE_MARGIN:g} x expected_error + a rounding floor (float32 {TOLERANCE_FLOOR['float32']:g}, float64 {TOLERANCE_FLOOR['float64']:g})"
        return build_capabilities(self, self.worst_error, dict(self.declared_tolerance), formula, TOLERANCE_LIMIT)

    # ---- support and estimates
    def _weight_shape(self, op: OpSpec) -> tuple[int, int]:
        """(rows, cols) of the matrix the meshes hold for ``op``."""
        if op.name == "matmul":
            b = op.inputs[1].shape
            return b[-1], b[-2]
        return op.param("weight").shape

    def _check(self, op: OpSpec) -> Support | None:
        if op.name == "matmul" and len(op.inputs[1].shape) != 2:
            return Support.no(f"{self.uri} holds one matrix per programming; matmul's b has shape {op.inputs[1].shape}. Pass a 2-D b (loop over the batch of b) or use linear")
        if op.name == "intensity_linear":
            problem = self._intensity_shape_problem(op)
            if problem:
                return Support.no(problem)
        rows, cols = self._weight_shape(op)
        if rows is None or cols is None:
            return Support.no(f"{self.uri} programs a matrix of known size; the weight's shape {(rows, cols)} is open")
        tiles = math.ceil(rows / self.ports) * math.ceil(cols / self.ports)
        limit = self.options["max_tiles"] if op.name != "intensity_linear" else 1
        if tiles > limit:
            n = self.ports
            fix = "pass a larger ?N= mesh" if op.name == "intensity_linear" else f"pass ?max_tiles={tiles} (each tile adds a {self.config.phase.settle_time_s * 1e6:.1f} us heater settling per call) or split the layer"
            return Support.no(f"{self.uri} programs one {n}x{n} tile at a time, at most {limit} per weight; this {rows}x{cols} matrix needs {tiles}. Fix: {fix}")
        return None

    @staticmethod
    def _intensity_shape_problem(op: OpSpec) -> str | None:
        if len(op.inputs) != 1:
            return f"intensity_linear takes one input x (..., in), got {len(op.inputs)}"
        weight = op.param("weight")
        if weight is None or len(weight.shape) != 2:
            return f"intensity_linear needs a 2-D 'weight' (out, in), got {None if weight is None else weight.shape}"
        x = op.inputs[0].shape
        if not x or x[-1] != weight.shape[1]:
            return f"intensity_linear: input has {x[-1] if x else 'no'} features but weight {weight.shape} expects {weight.shape[1]}"
        unknown = {k for k, _ in op.params} - {"weight"}
        if unknown:
            return f"intensity_linear has only a 'weight' parameter, not {sorted(unknown)}"
        return None

    def estimate(self, op: OpSpec) -> Cost:
        """Latency/energy from the cost model with average heater phases (pi each); error = this configuration's
        derived expected error (of the reference weights: the op's own weight is not known before programming)."""
        rows, cols = self._weight_shape(op)
        rows, cols = (1 if rows is None else rows), (1 if cols is None else cols)
        if rows == 0 or cols == 0:
            return Cost(0.0, 0.0, 0.0, "empty product: nothing is programmed or read, the result is exact")
        batch = _batch(op)
        n = self.ports
        row_tiles, col_tiles = math.ceil(rows / n), math.ceil(cols / n)
        tiles = row_tiles * col_tiles
        depth = layout_depth(n, self.layout)
        cost = call_cost(
            batch=batch,
            inputs=tiles * min(cols, n),
            outputs=tiles * min(rows, n),
            tiles=tiles,
            programmings=(tiles if op.name == "matmul" or tiles > 1 else 0),
            depth_columns=2 * depth + 1,
            heater_phase_sum_rad=heater_count(n) * math.pi,
            signal_power_w=self.receiver.signal_power_w,
            transmission=10 ** (-mesh_loss_db(n, self.layout, self.config) / 10),
            config=self.config,
            energy=self.energy,
        )
        return Cost(cost.latency_s, cost.energy_j, self.worst_error.error, cost.formula() + "; error = derived expected error of this configuration (accuracy.FORMULA)")

    # ---- programs
    def _compile(self, op: OpSpec, params: dict[str, torch.Tensor]) -> Program:
        dtype = op.inputs[0].dtype
        if op.name == "matmul":
            return self._compile_matmul(op, dtype)
        weight = params["weight"].detach().to("cpu", torch.float64).numpy()
        bias = params.get("bias")
        bias = bias.detach().to(self.torch_device) if bias is not None else None
        relu = op.attr("activation") == "relu"
        if weight.size == 0:
            return self._compile_empty(op, weight.shape[0], bias, relu, params)
        matrix = PhotonicMatrix(weight, self.ports, self.layout, self.config, self.fabrication, COMPLEX[dtype], self.torch_device)

        def run(x: torch.Tensor) -> torch.Tensor:
            flat = x.reshape(math.prod(x.shape[:-1]), x.shape[-1])
            y = matrix.apply(flat, self._noise)
            y = y.reshape(*x.shape[:-1], y.shape[-1])
            if bias is not None:
                y = y + bias
            return torch.relu(y) if relu else y

        cost = matrix.cost(_batch(op), matrix.tile_count if matrix.tile_count > 1 else 0, self.energy)
        self._last_cost = cost
        budget = self.accuracy.budget(matrix)
        return PhotonicProgram(op, self, Cost(cost.latency_s, cost.energy_j, budget.error, cost.formula() + "; error derived from this weight's programmed meshes (accuracy.FORMULA)"), run, matrix, params)

    def _compile_empty(self, op: OpSpec, rows: int, bias: torch.Tensor | None, relu: bool, params: dict[str, torch.Tensor]) -> Program:
        """A weight with no rows or no columns: nothing to program; the product is zeros (plus the bias), as on the CPU."""

        def run(x: torch.Tensor) -> torch.Tensor:
            y = torch.zeros(*x.shape[:-1], rows, dtype=x.dtype, device=x.device)
            if bias is not None:
                y = y + bias
            return torch.relu(y) if relu else y

        return PhotonicProgram(op, self, self.estimate(op), run, None, params)

    def _compile_matmul(self, op: OpSpec, dtype: torch.dtype) -> Program:
        program: PhotonicProgram

        def run(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            if b.numel() == 0 or a.numel() == 0:
                return torch.zeros(*a.shape[:-1], b.shape[-1], dtype=a.dtype, device=a.device)
            weight = b.detach().to("cpu", torch.float64).numpy().T
            matrix = PhotonicMatrix(weight, self.ports, self.layout, self.config, self.fabrication, COMPLEX[dtype], self.torch_device)
            program.matrix = matrix
            flat = a.reshape(math.prod(a.shape[:-1]), a.shape[-1])
            y = matrix.apply(flat, self._noise)
            return y.reshape(*a.shape[:-1], y.shape[-1])

        program = PhotonicProgram(op, self, self.estimate(op), run, None, {})
        return program

    # ---- models (hal.nn.convert)
    def convert_module(self, module: nn.Module, **options: Any) -> nn.Module | None:
        """The ``PhotonicLinear`` twin of an ``nn.Linear`` (weights copied), None for any other module. There are no
        conversion options: one given is refused."""
        if options:
            raise InvalidInput(f"{self.uri} has no conversion options (got {sorted(options)}); call hal.nn.convert(model, {str(self.uri)!r}) without them")
        return photonic_twin(module, self)

    # ---- subgraph claims (chain.py)
    def claim(self, sub: Subgraph) -> Support:
        """Chains of linear ops (activation none or relu) in which the light stays optical across at least one layer boundary."""
        problem = chain_problem(self, sub)
        return Support.no(problem) if problem else Support.yes()

    def estimate_subgraph(self, sub: Subgraph) -> Cost:
        """A claimed chain, planned on Gaussian weights of its shapes (``chain.reference_weights``): a segment of one
        layer costs that op's estimate; a longer one is one pass of light through its processors in series, detected
        once, its lasers making up the processors' losses and the attenuation kappa. Errors of the segments add in
        quadrature (a relative error passes a later Gaussian layer, and a ReLU, at the same relative size)."""
        claimed = self.claim(sub)
        if not claimed:
            raise UnsupportedOp(f"{self.uri} does not claim the subgraph {sub}: {claimed.reason}")
        weights = reference_weights(sub)
        segments, reasons = plan_segments(self, weights, relus_of(sub))
        n, per_processor = self.ports, mesh_loss_db(self.ports, self.layout, self.config)
        latency = energy = variance = 0.0
        parts = []
        for segment in segments:
            if len(segment) == 1:
                cost = self.estimate(sub.ops[segment[0]])
                latency, energy, variance = latency + cost.latency_s, energy + cost.energy_j, variance + cost.error**2
                parts.append(f"op {segment[0]} as its own estimate")
                continue
            composed = self._composed([weights[k] for k in segment], torch.complex128)
            matrix = PhotonicMatrix.of_tile(composed, composed.weight, n, self.config, torch.complex128, self.torch_device)
            layers = len(segment)
            cost = call_cost(
                batch=_batch(sub.ops[segment[0]]),
                inputs=composed.cols,
                outputs=composed.rows,
                tiles=1,
                programmings=0,
                depth_columns=layers * (2 * layout_depth(n, self.layout) + 1),
                heater_phase_sum_rad=layers * heater_count(n) * math.pi,
                signal_power_w=self.receiver.signal_power_w,
                transmission=10 ** (-layers * per_processor / 10) * composed.kappa**2,
                config=self.config,
                energy=self.energy,
            )
            latency, energy = latency + cost.latency_s, energy + cost.energy_j
            variance += self.accuracy.budget(matrix).error ** 2
            parts.append(
                f"ops {segment[0]}-{segment[-1]} one pass of light through {layers} processors ({layers} x {per_processor:.1f} dB + "
                f"attenuation {-20 * math.log10(composed.kappa):.1f} dB made up by the lasers), detected once: {cost.formula()}"
            )
        where = f"; detection between segments at: {'; '.join(reasons)}" if reasons else ""
        formula = f"{len(segments)} optical segment(s) {segments}, planned on Gaussian weights{where}; " + " | ".join(parts) + "; error = root of the segments' squared derived errors (accuracy.FORMULA)"
        return Cost(latency, energy, math.sqrt(variance), formula)

    def _composed(self, weights: list[np.ndarray], dtype: torch.dtype) -> ComposedTile:
        """Processors in series programmed with ``weights`` (each one tile), every one with this chip's coupler errors."""
        stages = [Tile(w, self.ports, self.layout, self.config, self.fabrication, dtype, self.torch_device) for w in weights]
        return ComposedTile(stages, weights, self.config, dtype)

    def _compile_subgraph(self, sub: Subgraph, params: list[dict[str, torch.Tensor]]) -> Program:
        dtype = sub.ops[0].inputs[0].dtype
        weights = [p["weight"].detach().to("cpu", torch.float64).numpy() for p in params]
        biases = [p["bias"].detach().to("cpu", torch.float64).numpy() if p.get("bias") is not None else None for p in params]
        relus = relus_of(sub)
        segments, _ = plan_segments(self, weights, relus)
        stages = []
        for segment in segments:
            layer_weights = [weights[k] for k in segment]
            if len(segment) == 1:
                matrix = PhotonicMatrix(layer_weights[0], self.ports, self.layout, self.config, self.fabrication, COMPLEX[dtype], self.torch_device)
            else:
                composed = self._composed(layer_weights, COMPLEX[dtype])
                matrix = PhotonicMatrix.of_tile(composed, composed.weight, self.ports, self.config, COMPLEX[dtype], self.torch_device)
            bias = folded_bias(layer_weights, [biases[k] for k in segment])
            stages.append((matrix, None if bias is None else torch.as_tensor(bias, dtype=dtype, device=self.torch_device), relus[segment[-1]]))
        outputs = weights[-1].shape[0]

        def run(x: torch.Tensor) -> torch.Tensor:
            y = x.reshape(math.prod(x.shape[:-1]), x.shape[-1])
            for matrix, bias, relu in stages:
                y = matrix.apply(y, self._noise)
                if bias is not None:
                    y = y + bias
                if relu:
                    y = torch.relu(y)
            return y.reshape(*x.shape[:-1], outputs)

        batch = _batch(sub.ops[0])
        costs = [matrix.cost(batch, matrix.tile_count if matrix.tile_count > 1 else 0, self.energy) for matrix, _, _ in stages]
        error = math.sqrt(sum(self.accuracy.budget(matrix).error ** 2 for matrix, _, _ in stages))
        formula = f"{len(stages)} optical segment(s) {segments}, each detected once: " + " | ".join(c.formula() for c in costs) + "; error = root of the segments' squared derived errors of the programmed meshes (accuracy.FORMULA)"
        cost = Cost(sum(c.latency_s for c in costs), sum(c.energy_j for c in costs), error, formula)
        flat_params = {f"{name}{j}": tensor for j, p in enumerate(params) for name, tensor in p.items()}
        program = PhotonicProgram(sub.as_opspec(), self, cost, run, None, flat_params)
        program.segments = segments
        program.segment_matrices = [matrix for matrix, _, _ in stages]
        self._last_cost = costs[-1]
        return program

    # ---- lifecycle
    def manual_seed(self, seed: int) -> None:
        """Restart the detector-noise stream (the chip's fabrication errors stay those of ``?seed=``)."""
        if not isinstance(seed, int):
            raise InvalidInput(f"manual_seed takes an int, got {type(seed).__name__}")
        self._noise.manual_seed(seed)

    def telemetry(self) -> dict[str, Any]:
        cost = self._last_cost
        return {
            "heater_power_w": cost.heater_power_w if cost else 0.0,
            "laser_power_w": cost.laser_power_w if cost else 0.0,
            "signal_power_per_port_w": self.receiver.signal_power_w,
        }


def _batch(op: OpSpec) -> int:
    """Vectors per call: the product of the leading dimensions of the streamed input (open ones count 1)."""
    shape = op.inputs[0].shape[:-1] if op.inputs else ()
    return math.prod(1 if s is None else s for s in shape) if shape else 1

