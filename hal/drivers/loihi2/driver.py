"""Loihi2Device: spiking layers computed as Intel Loihi 2 computes them, on the bit-accurate engine or through lava.

``loihi2:0`` runs on the torch engine (``engine.py``, CPU or ``?compute=cuda``), bit-exact with lava-nc's
``Loihi2SimCfg(select_tag="fixed_pt")``; ``?backend=lava`` runs the same integer network through the lava
worker (``lava_client.py``); ``?backend=hardware`` selects lava's ``Loihi2HwCfg`` and is unavailable, with the
reason, unless the worker's environment has lava-loihi.

Ops:

- ``lif_layer`` (paradigm op): integer spikes (T, B, n_in) -> output spikes (T, B, n_out) uint8, with params
  ``weight`` (n_out, n_in) and optional ``bias`` (n_out,) in Loihi units (integers: weight mantissas, bias
  mantissas) and attributes ``du``, ``dv``, ``vth``, ``weight_exp``, ``bias_exp``, ``num_message_bits``.
- ``linear`` with ``activation="relu"`` (vocabulary): rate coded at the device's edge. The input is split into
  ``relu(x)`` and ``relu(-x)`` spike trains (weights ``[W, -W]``) at scale ``max|x|``; the LIF threshold is
  balanced on the call's own batch (Rueckauer et al. 2017's data-based normalisation: the largest
  pre-activation maps to ``TARGET_MAX_RATE`` spikes per step); the output is the spike count plus the residual
  membrane charge, over ``?steps=`` steps. ``activation="none"`` is refused: spike rates cannot be negative.
  Because the threshold is set per call, a sample's result depends slightly on the batch it is in.

After each call a Program's ``cost`` holds the energy of the events the engine counted (synaptic operations and
neuron updates) plus the rate encode and decode at the device's edge, and ``report`` what quantisation changed.

Models (``convert_module``, what ``hal.nn.convert(model, "loihi2:0", calibration=x)`` calls): a whole trained
ReLU network (``nn.Sequential`` of Linear, Conv2d, ReLU, AvgPool2d, Flatten) becomes a ``SpikingModule``
(``module.py``) running on this device's back end. Nothing converts layer by layer: the only float op the device
runs is the rate-coded ``linear`` with ReLU, and a spiking layer's thresholds come from calibration data.

Subgraph claims (``claim`` / ``prepare_subgraph``): a chain of ``linear(activation="relu")`` ops becomes one
spiking network whose intermediates stay spikes: the chain's input is rate coded once, the whole LifNetwork runs
(``T + L`` steps for L layers, every synapse delaying by one), and only the last layer is decoded, instead of a
decode and a re-encode between every two layers. Thresholds are balanced on the call's batch as the single
``linear`` does (the largest pre-activation of each layer maps to ``r`` spikes per step). A chain of
``lif_layer`` ops (spikes in, spikes out) becomes one LifNetwork. Anything else is refused with the reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from hal.capability import Capabilities, Figure, OpSupport, Paradigm
from hal.capability.neuromorphic import ChipLimits, NeuroCoreLimits, NeuromorphicSection, NumberFormats
from hal.device import Check, Cost, Device, DeviceInfo, OpSpec, Option, Program, Support, bounded_int, parse_bool
from hal.drivers.loihi2.conversion import SpikingModel, Stage, from_stages, spiking_model
from hal.drivers.loihi2.engine import DenseSynapse, EngineResult, LifLayer, LifNetwork, LifParams
from hal.drivers.loihi2.lava_client import SETUP_HINT, LavaWorker, find_lava_python, network_request
from hal.drivers.loihi2.mapper import INTEL_BRIEF, LayerShape, Loihi2Spec, Mapping, map_layers
from hal.drivers.loihi2.module import SpikingModule
from hal.drivers.loihi2.quantize import VTH_RANGE, WEIGHT_EXP_RANGE, quantize_bias, quantize_weights
from hal.errors import CapacityExceeded, DeviceFailure, DeviceUnavailable, InvalidInput, ShapeError, UnsupportedOp
from hal.kernels.spike_coding import golden_phases, rate_encode
from hal.subgraph import Subgraph

DAVIES_2018 = "Davies et al., 'Loihi: A Neuromorphic Manycore Processor with On-Chip Learning', IEEE Micro 38(1), 2018, Table 2"
LOIHI_1_NOTE = "a first-generation Loihi (14 nm) figure: Intel has published no per-event figure for Loihi 2 (Intel 4)"
#: Why the synaptic memory per core is an assumption: Loihi 2 partitions each core's memory flexibly between synapses,
#: neuron state and routing, so there is no fixed synaptic size to quote.
SYNAPTIC_MEMORY_CHOICE = (
    "the share of a neuro core's memory hal gives to synaptic weights; Loihi 2 partitions core memory flexibly between "
    f"synapses, neuron state and routing ({INTEL_BRIEF}), so no fixed synaptic size is published"
)
LAVA_SOURCE = "lava-nc 0.10 lava/proc/lif/models.py and lava/proc/dense/models.py (bit-accurate models)"


@dataclass(frozen=True)
class EventCosts:
    """Energy and time per event on a neuro core.

    Source: Davies et al. 2018 (IEEE Micro), Table 2, measured on Loihi (14 nm): 23.6 pJ per synaptic spike
    operation (minimum), 3.5 ns per synaptic operation (maximum), 52 pJ per active neuron update. Intel has not
    published per-event figures for Loihi 2 (Intel 4); these first-generation figures are used as the estimate.
    """

    synaptic_op_j: float = 23.6e-12
    synaptic_op_s: float = 3.5e-9
    neuron_update_j: float = 52e-12


HOROWITZ_2014 = "Horowitz, 'Computing's energy problem', ISSCC 2014: 640 pJ per 32-bit DRAM access (45 nm), 160 pJ/B"
DDR5_CHANNEL = "JEDEC JESD79-5 DDR5-4800, one 64-bit channel: 4800 MT/s * 8 B"


@dataclass(frozen=True)
class EdgeCosts:
    """Energy and time per byte of the rate encode and decode at the device's edge, which run on the host.

    The encode reads the float input (4 B a value) and writes its spike trains (1 B a step); the decode reads the
    output spike trains (1 B a step) and writes the float result (4 B a value). Their cost is that host memory
    traffic: 160 pJ/B (Horowitz, ISSCC 2014) at 38.4 GB/s (one DDR5-4800 channel, JEDEC JESD79-5), the host
    figures hal's planner uses for its own conversions.
    """

    byte_j: float = 160e-12
    byte_s: float = 1.0 / 38.4e9

    def cost(self, float_values: int, spike_slots: int) -> tuple[float, float, int]:
        """(latency_s, energy_j, bytes) of an edge that moves ``float_values`` floats and ``spike_slots`` spike-train bytes."""
        traffic = 4 * float_values + spike_slots
        return traffic * self.byte_s, traffic * self.byte_j, traffic


#: The largest pre-activation of a rate-coded layer maps to this many spikes per step. Reset-to-zero loses the
#: overshoot above threshold (about half a step's input per spike, i.e. ~rate/2 relative), while counting over T
#: steps resolves 1/(T*rate): the rate balancing both, sqrt(2/T), is used, capped here.
TARGET_MAX_RATE = 0.25
#: Before a call has counted its events, estimates assume inputs spike at this fraction of steps.
ASSUMED_INPUT_RATE = 0.25
LIF_LAYER_ATTRS = {"du": 4095, "dv": 0, "vth": 100, "weight_exp": 0, "bias_exp": 0, "num_message_bits": 0}
SPIKE_DTYPES = ("uint8", "bool", "int32", "int64", "float32")
#: Options ``convert_module`` takes, with their meaning (``calibration`` has no default: it is required).
CONVERSION_OPTIONS = {
    "calibration": "a batch (B, *input_shape) of typical non-negative inputs; each layer's threshold is set from its activations on it",
    "steps": "time steps a forward runs (default: the device's ?steps=)",
    "percentile": "the activation percentile that sets each layer's scale (default 99.9)",
    "max_rate": "spikes per step a neuron fires at its layer's scale, in (0, 1] (default 0.25)",
}
#: A claimed linear chain balances each layer on its largest activation, as the single rate-coded linear does.
CHAIN_PERCENTILE = 100.0


def _backend(text: str) -> str:
    if text not in ("engine", "lava", "hardware"):
        raise ValueError("choose 'engine', 'lava' or 'hardware'")
    return text


def target_rate(steps: int) -> float:
    """Spikes per step the largest pre-activation is balanced to: sqrt(2/T), at most TARGET_MAX_RATE."""
    return min(TARGET_MAX_RATE, math.sqrt(2.0 / steps))


def rate_code_error(steps: int, rate: float) -> float:
    """Relative error of one rate-coded layer at ``rate`` spikes per step over ``steps``: 1/(T r) + r/2.

    Counting over T steps resolves 1/(T r) of the layer's scale; reset-to-zero loses about half a step's input
    per spike, r/2 relative.
    """
    return 1.0 / (steps * rate) + rate / 2.0


class LoihiProgram(Program):
    """A Program that, after each call, holds the counted cost and a report of what quantisation changed."""

    def __init__(self, op: OpSpec, device: Loihi2Device, cost: Cost, run):
        super().__init__(op, device, cost, run)
        self.report: dict[str, Any] = {}


class Loihi2Device(Device):
    """An Intel Loihi 2 system (one or more chips), simulated bit-accurately or run through lava-nc."""

    kind = "loihi2"
    refuses_nonfinite = True
    OPTIONS: ClassVar[dict[str, Option]] = {
        "steps": Option(bounded_int(1), 256, "time steps a rate-coded vocabulary op runs (positive integer)"),
        "backend": Option(
            _backend, "engine",
            "'engine' (hal's bit-accurate torch engine), 'lava' (lava-nc's Loihi2SimCfg through its Python 3.10 worker) "
            "or 'hardware' (lava's Loihi2HwCfg on a Loihi 2 board; needs lava-loihi)",
        ),
        "chips": Option(bounded_int(1), 1, "chips in the system (multi-chip boards: e.g. 8 for Kapoho Point)"),
        "python": Option(str, None, "a Python 3.10 interpreter with lava-nc, for ?backend=lava"),
        "strict": Option(parse_bool, False, "refuse weights that quantisation would clip or truncate instead of reporting it"),
        "compute": Option(str, "cpu", "torch device the engine computes on: 'cpu' or 'cuda[:n]'"),
    }

    def __init__(self, uri):
        super().__init__(uri)
        if self.index != 0:
            raise DeviceUnavailable(str(self.uri), "hal models one Loihi 2 system, loihi2:0 (use ?chips=N for several chips)", "use 'loihi2:0'")
        self.spec = Loihi2Spec()
        self.events = EventCosts()
        self.edge = EdgeCosts()
        compute = torch.device(self.options["compute"])
        if compute.type == "cuda" and not torch.cuda.is_available():
            raise DeviceUnavailable(str(self.uri), "?compute=cuda was asked but torch sees no CUDA device", "drop ?compute or run on a machine with an NVIDIA GPU")
        if compute.type not in ("cpu", "cuda"):
            raise DeviceUnavailable(str(self.uri), f"the engine computes on cpu or cuda, not {compute.type}", "use ?compute=cpu or ?compute=cuda")
        self.torch_device = compute
        self._worker: LavaWorker | None = None
        self._lava_python: str | None = None
        backend = self.options["backend"]
        if backend in ("lava", "hardware"):
            found = find_lava_python(self.options["python"])
            if not found.ok:
                raise DeviceUnavailable(str(self.uri), f"?backend={backend} needs lava-nc, which imports only on Python 3.10; {found.reason}", SETUP_HINT)
            self._lava_python = found.path
        if backend == "hardware":
            self._worker = LavaWorker(found.path)
            reply, _ = self._worker.request({"op": "ping"}, timeout_s=120)
            if not reply["hardware"]:
                self._worker.close()
                raise DeviceUnavailable(
                    str(self.uri), f"?backend=hardware runs lava's Loihi2HwCfg, which needs lava-loihi; {found.path} has lava-nc {reply['lava']} without it",
                    "install lava-loihi (distributed to Intel INRC members) on a host with a Loihi 2 board, or use ?backend=lava for lava's simulation",
                )

    # ---- discovery
    @classmethod
    def probe(cls) -> list[DeviceInfo]:
        """``loihi2:0``, with whether ``?backend=lava`` can run: from a kept verification of the lava interpreter while
        the interpreter and its packages are unchanged (``lava_client.verify``), so probing does not start Python 3.10."""
        lava = find_lava_python()
        return [
            DeviceInfo(
                uri="loihi2:0",
                kind="loihi2",
                available=True,
                simulated=True,
                paradigm=Paradigm.SPIKING.value,
                summary={
                    "backend": "bit-accurate engine (torch)",
                    "lava": f"available ({lava.path}, found by {lava.found_by})" if lava.ok else f"unavailable: {lava.reason}",
                    "neurons_per_chip": Loihi2Spec().neurons_per_chip,
                },
            )
        ]

    @classmethod
    def diagnose(cls) -> list[Check]:
        """lava-nc verified afresh (not from a kept verdict), then lava-loihi asked of a started worker."""
        lava = find_lava_python(fresh=True)
        checks = [Check("lava-nc (Python 3.10 worker)", lava.ok, f"{lava.path} ({lava.found_by})" if lava.ok else lava.reason, "" if lava.ok else SETUP_HINT)]
        if lava.ok:
            worker = LavaWorker(lava.path, timeout_s=120)
            try:
                reply, _ = worker.request({"op": "ping"})
                checks.append(Check("lava-loihi (Loihi 2 hardware back end)", reply["hardware"], "installed" if reply["hardware"] else "not installed: ?backend=lava runs lava's CPU simulation", "" if reply["hardware"] else "lava-loihi is distributed to Intel INRC members"))
            except (DeviceFailure, OSError) as exc:  # a broken worker is a finding, not a crash
                checks.append(Check("lava worker start", False, str(exc)[:500], SETUP_HINT))
            finally:
                worker.close()
        return checks

    # ---- capabilities
    def _build_capabilities(self) -> Capabilities:
        spec, chips = self.spec, self.options["chips"]
        lava_src = f"datasheet:{LAVA_SOURCE}"
        core = NeuroCoreLimits(
            neurons=Figure.derived(spec.neurons_per_core, "neurons", f"neurons_per_chip / neuro_cores_per_chip = {spec.neurons_per_chip} / {spec.neuro_cores_per_chip}"),
            synaptic_memory_bytes=Figure.assumed(spec.synaptic_memory_per_core_bytes, "B", SYNAPTIC_MEMORY_CHOICE),
            synapses_at_weight_bits=Figure.derived(spec.synapses_per_core, "synapses", f"synaptic_memory_bytes * 8 / {spec.weight_bits}-bit weights"),
        )
        chip = ChipLimits(
            neuro_cores=Figure.datasheet(spec.neuro_cores_per_chip, "cores", INTEL_BRIEF),
            neurons=Figure.datasheet(spec.neurons_per_chip, "neurons", INTEL_BRIEF),
            synapses=Figure.datasheet(spec.synapses_per_chip, "synapses", INTEL_BRIEF, "with compressed synapse formats; 8-bit dense weights fit fewer (see core)"),
        )
        system = ChipLimits(
            neuro_cores=Figure.derived(chips * spec.neuro_cores_per_chip, "cores", f"chips * neuro_cores_per_chip = {chips} * {spec.neuro_cores_per_chip}"),
            neurons=Figure.derived(chips * spec.neurons_per_chip, "neurons", f"chips * neurons_per_chip = {chips} * {spec.neurons_per_chip}"),
            synapses=Figure.derived(chips * spec.synapses_per_chip, "synapses", f"chips * synapses_per_chip = {chips} * {spec.synapses_per_chip:.4g}"),
        )
        chip_count = Figure.assumed(chips, "chips", "the system size the device string declares (?chips=, default 1): hal simulates that many chips")

        def bits(n: int, note: str = "") -> Figure:
            return Figure(n, "bits", lava_src, note)

        formats = NumberFormats(
            weight_bits=bits(8, "mixed-sign matrices spend one bit on the sign: -256..254 in steps of 2"),
            weight_exponent_bits=bits(4, "signed, -8..7"),
            current_bits=bits(24, "u wraps"),
            voltage_bits=bits(24, "v saturates"),
            threshold_mantissa_bits_unsigned=bits(17, "threshold = vth << 6"),
            decay_bits_unsigned=bits(12, "du, dv over 4096"),
            bias_mantissa_bits=bits(13),
            bias_exponent_bits_unsigned=bits(3),
            graded_spike_payload_bits=bits(24, "num_message_bits up to 24"),
        )
        lava = find_lava_python(self.options["python"])
        backends = {
            "engine": f"available (torch on {self.torch_device})",
            "lava": f"available ({lava.path})" if lava.ok else f"unavailable: {lava.reason}",
        }
        section = NeuromorphicSection(chip_count, "CUBA leaky integrate-and-fire, fixed point (lava PyLifModelBitAcc)", core, chip, system, formats, backends)
        tolerance = self._linear_error(self.options["steps"])
        return Capabilities(
            uri=str(self.uri),
            kind=self.kind,
            paradigm=Paradigm.SPIKING,
            simulated=True,
            identity={
                "model": "Intel Loihi 2 (bit-accurate simulation)",
                "backend": self.options["backend"],
                "compute": str(self.torch_device),
                "chips": str(chips),
                "lava_python": lava.path or "absent",
            },
            ops={
                "lif_layer": OpSupport(
                    SPIKE_DTYPES,
                    {d: 0.0 for d in SPIKE_DTYPES},
                    {"max_fan_in": spec.synapses_per_core, "max_neurons": chips * spec.neurons_per_chip},
                    "spikes (T, B, n_in) -> spikes (T, B, n_out) uint8; params weight (n_out, n_in), bias (n_out,) in Loihi integer units; "
                    "attrs du, dv, vth, weight_exp, bias_exp, num_message_bits. Bit-exact with lava fixed_pt.",
                ),
                "linear": OpSupport(
                    ("float32",),
                    {"float32": tolerance},
                    {"max_in_features": spec.synapses_per_core // 2},
                    f"activation='relu' only, rate coded over ?steps= (here {self.options['steps']}) steps; tolerance = derived error model 1/(T r) + r/2 at r = min(0.25, sqrt(2/T)), times 2",
                ),
            },
            deterministic=True,
            estimates_include_edge_conversion=True,  # linear prices its host-side encode and decode (edge cost)
            memory_bytes=Figure.derived(
                chips * spec.neuro_cores_per_chip * spec.synaptic_memory_per_core_bytes, "B",
                f"chips * neuro_cores_per_chip * synaptic_memory_bytes = {chips} * {spec.neuro_cores_per_chip} * {spec.synaptic_memory_per_core_bytes}",
                "synaptic memory only, at hal's assumed share of each core's memory",
            ),
            peak={
                "synaptic_ops_per_s_per_core": Figure.derived(
                    1.0 / self.events.synaptic_op_s, "op/s", f"1 / time per synaptic op = 1 / {self.events.synaptic_op_s:.3g} s ({DAVIES_2018})",
                    LOIHI_1_NOTE,
                ),
                "edge_bytes_per_s": Figure.datasheet(1.0 / self.edge.byte_s, "B/s", DDR5_CHANNEL, "host memory bandwidth of the rate encode/decode at the device's edge"),
            },
            energy={
                "j_per_synaptic_op": Figure.paper(self.events.synaptic_op_j, "J", DAVIES_2018, LOIHI_1_NOTE),
                "j_per_neuron_update": Figure.paper(self.events.neuron_update_j, "J", DAVIES_2018, "active neuron update; " + LOIHI_1_NOTE),
                "j_per_edge_byte": Figure.paper(self.edge.byte_j, "J/B", HOROWITZ_2014, "host memory traffic of the rate encode/decode at the device's edge"),
            },
            sections={"neuromorphic": section},
            notes=[
                "NaN/inf inputs are refused (spikes are integers).",
                "linear(activation='none') is refused: spike rates cannot represent negative outputs.",
                "Energy estimates use Loihi (first generation) per-event figures; after a call, Program.cost holds counted events.",
                "Rate-coded ops and models add the host memory traffic of their encode and decode (j_per_edge_byte, edge_bytes_per_s).",
                "Claims chains of linear(activation='relu') ops (one spiking network, encoded once, decoded once) and chains of lif_layer ops.",
            ],
        )

    @staticmethod
    def _linear_error(steps: int) -> float:
        """The declared tolerance of the rate-coded linear: twice its error model."""
        return 2.0 * rate_code_error(steps, target_rate(steps))

    # ---- support
    def _lif_shapes(self, op: OpSpec) -> tuple[int, int, int, int]:
        """(T, B, n_in, n_out) of a lif_layer op, or ShapeError."""
        if len(op.inputs) != 1 or len(op.inputs[0].shape) != 3:
            raise ShapeError("lif_layer takes one input: spikes of shape (T, B, n_in)")
        weight = op.param("weight")
        if weight is None or len(weight.shape) != 2:
            raise ShapeError("lif_layer needs a weight parameter of shape (n_out, n_in)")
        steps, batch, n_in = op.inputs[0].shape
        if n_in is not None and weight.shape[1] != n_in:
            raise ShapeError(f"lif_layer: weight has {weight.shape[1]} inputs but the spikes have {n_in}")
        bias = op.param("bias")
        if bias is not None and tuple(bias.shape) != (weight.shape[0],):
            raise ShapeError(f"lif_layer: bias has shape {tuple(bias.shape)}, expected ({weight.shape[0]},)")
        unknown = {k for k, _ in op.attrs} - set(LIF_LAYER_ATTRS)
        if unknown:
            raise InvalidInput(f"lif_layer has no attribute(s) {sorted(unknown)}; its attributes are {sorted(LIF_LAYER_ATTRS)}")
        return steps, batch, weight.shape[1], weight.shape[0]

    def _mapping(self, shapes: list[LayerShape]) -> Mapping:
        return map_layers(shapes, self.spec, self.options["chips"])

    def _validate(self, op: OpSpec) -> None:
        """Raise ShapeError / InvalidInput for malformed lif_layer operands, CapacityExceeded for a layer too large."""
        if op.name == "lif_layer":
            _, _, n_in, n_out = self._lif_shapes(op)
            self._mapping([LayerShape(n_out, n_in)])
        elif op.name == "linear":
            weight = op.param("weight")
            if weight is not None:
                self._mapping([LayerShape(weight.shape[0], 2 * weight.shape[1])])

    def _check(self, op: OpSpec) -> Support | None:
        if op.name == "linear" and op.attr("activation") != "relu":
            return Support.no(
                f"{self.uri} computes linear only with activation='relu': a spiking layer's output is a spike rate, which "
                "cannot be negative. Use activation='relu', or run the plain linear on a digital device"
            )
        try:
            self._validate(op)
        except (ShapeError, InvalidInput, CapacityExceeded) as exc:
            return Support.no(str(exc))
        return None

    def prepare(self, op: OpSpec, params: dict[str, torch.Tensor | None] | None = None) -> Program:
        """Map and program ``op``. A layer that does not fit raises CapacityExceeded with the cores or synapses needed
        and available (as ``estimate()`` does), bad operands ShapeError / InvalidInput, before the generic support check."""
        self._ensure_open()
        given = {k: v for k, v in (params or {}).items() if isinstance(v, torch.Tensor)}
        self._validate(op if op.params or not given else OpSpec(op.name, op.inputs, given, dict(op.attrs)))
        return super().prepare(op, params)

    # ---- estimates
    def _event_cost(self, synaptic_ops: float, neuron_updates: float, mapping: Mapping, how: str) -> tuple[float, float, str]:
        """(latency_s, energy_j, formula) of a run with these event counts on this mapping."""
        events = self.events
        energy = synaptic_ops * events.synaptic_op_j + neuron_updates * events.neuron_update_j
        latency = synaptic_ops / mapping.cores * events.synaptic_op_s
        formula = (
            f"energy = synaptic_ops ({how}: {synaptic_ops:.4g}) * {events.synaptic_op_j * 1e12:.3g} pJ + neuron_updates ({neuron_updates:.4g}) "
            f"* {events.neuron_update_j * 1e12:.3g} pJ; latency = synaptic_ops / {mapping.cores} core(s) * {events.synaptic_op_s * 1e9:.3g} ns "
            "(cores in parallel, each serial; samples one after another; neuron-update time not included); "
            "per-event figures of Loihi 1 (Davies et al. 2018), none being published for Loihi 2"
        )
        return latency, energy, formula

    def _edge_cost(self, batch: int, n_in: int, input_trains: int, n_out: int, run_steps: int) -> tuple[float, float, str]:
        """(latency_s, energy_j, formula) of one rate encode of (batch, n_in) floats and one decode of (batch, n_out).

        The encode reads the floats and writes ``input_trains`` spike trains per value over ``run_steps`` steps;
        the decode reads the output trains over ``run_steps`` steps and writes the floats (``EdgeCosts``).
        """
        enc_s, enc_j, enc_b = self.edge.cost(batch * n_in, run_steps * batch * input_trains * n_in)
        dec_s, dec_j, dec_b = self.edge.cost(batch * n_out, run_steps * batch * n_out)
        formula = (
            f"edge = encode (4 B x {batch * n_in} floats + {run_steps} steps x {batch * input_trains * n_in} trains x 1 B) + decode "
            f"(4 B x {batch * n_out} floats + {run_steps} steps x {batch * n_out} trains x 1 B) = {enc_b + dec_b} B of host memory traffic "
            f"at {self.edge.byte_j * 1e12:.3g} pJ/B and {1e-9 / self.edge.byte_s:.3g} GB/s"
        )
        return enc_s + dec_s, enc_j + dec_j, formula

    def _linear_events(self, op: OpSpec) -> tuple[float, float, str]:
        """(latency_s, energy_j, formula) of the events of one rate-coded linear at the assumed input rate."""
        n_out, n_in = op.param("weight").shape
        batch = math.prod(s or 1 for s in op.inputs[0].shape[:-1])
        steps = self.options["steps"]
        mapping = self._mapping([LayerShape(n_out, 2 * n_in)])
        synops = steps * batch * n_in * ASSUMED_INPUT_RATE * n_out
        return self._event_cost(synops, steps * batch * n_out, mapping, f"assumed input rate {ASSUMED_INPUT_RATE}")

    def _linear_edge(self, op: OpSpec, run_steps: int) -> tuple[float, float, str]:
        n_out, n_in = op.param("weight").shape
        batch = math.prod(s or 1 for s in op.inputs[0].shape[:-1])
        return self._edge_cost(batch, n_in, 2, n_out, run_steps)

    def _linear_error_text(self) -> str:
        steps = self.options["steps"]
        return f"error = 1/(T r) + r/2 with T={steps}, r={target_rate(steps):.3g} (count resolution + reset-to-zero loss)"

    def estimate(self, op: OpSpec) -> Cost:
        """Energy and latency from synaptic operations and neuron updates (assumed input activity until counted),
        plus the rate encode and decode at the edge for the rate-coded ``linear``."""
        if op.name == "lif_layer":
            steps, batch, n_in, n_out = self._lif_shapes(op)
            steps, batch = steps or 1, batch or 1
            mapping = self._mapping([LayerShape(n_out, n_in)])
            synops = steps * batch * n_in * ASSUMED_INPUT_RATE * n_out
            latency, energy, formula = self._event_cost(synops, steps * batch * n_out, mapping, f"assumed input rate {ASSUMED_INPUT_RATE}")
            return Cost(latency, energy, 0.0, formula + "; error 0: bit-exact with lava fixed_pt")
        if op.name == "linear":
            latency, energy, formula = self._linear_events(op)
            edge_s, edge_j, edge = self._linear_edge(op, self.options["steps"] + 1)
            return Cost(latency + edge_s, energy + edge_j, self._linear_error(self.options["steps"]) / 2.0, f"{formula}; {edge}; {self._linear_error_text()}")
        raise UnsupportedOp(f"{self.uri} has no estimate for {op.name}")

    def estimate_subgraph(self, sub: Subgraph) -> Cost:
        """A claimed linear chain: its layers' events as the single ops estimate them, one encode and one decode.

        Against the sum of the per-op estimates it saves exactly the edges between layers: per op, every layer
        encodes its input over T + 1 steps and decodes its output; the chain encodes its input once over T + L
        steps and decodes its output once. Saving = sum_l edge(layer l, T + 1) - edge(chain input -> chain output,
        T + L), in energy and latency alike. A lif_layer chain (spikes in and out, no coding) costs its ops' sum.
        """
        claimed = self.claim(sub)
        if not claimed:
            raise UnsupportedOp(f"{self.uri} does not claim the subgraph {sub}: {claimed.reason}")
        if sub.ops[0].name == "lif_layer":
            return super().estimate_subgraph(sub)
        steps, depth = self.options["steps"], len(sub.ops)
        events = [self._linear_events(op) for op in sub.ops]
        first, last = sub.ops[0], sub.ops[-1]
        batch = math.prod(s or 1 for s in first.inputs[0].shape[:-1])
        edge_s, edge_j, edge = self._edge_cost(batch, first.param("weight").shape[1], 2, last.param("weight").shape[0], steps + depth)
        error = depth * self._linear_error(steps) / 2.0
        formula = (
            f"{depth} layers' events as the single ops estimate them (the first: {events[0][2]}); one {edge}, instead of one per layer "
            f"over T + 1 steps; {self._linear_error_text()} per layer, {depth} layers adding"
        )
        return Cost(sum(e[0] for e in events) + edge_s, sum(e[1] for e in events) + edge_j, error, formula)

    # ---- subgraph claims
    def claim(self, sub: Subgraph) -> Support:
        """Chains of linear(activation='relu') ops, or of lif_layer ops, that fit the system together."""
        if not sub.is_chain:
            return Support.no(f"{self.uri} claims chains only (each op reading the previous op's output, the last one's result leaving); {sub} is wired otherwise")
        for j, op in enumerate(sub.ops):
            support = self.supports(op)
            if not support:
                return Support.no(f"op {j} ({op.name}) does not run on {self.uri}: {support.reason}")
        if len({op.name for op in sub.ops}) > 1:
            return Support.no(
                "a claimed chain is all linear(activation='relu') (floats in and out, rate coded once) or all lif_layer (spikes in and out); "
                f"{sub} mixes them"
            )
        try:
            self._check_chain(sub.ops)
        except (ShapeError, CapacityExceeded) as exc:
            return Support.no(str(exc))
        return Support.yes()

    def _check_chain(self, ops: tuple[OpSpec, ...]) -> None:
        """ShapeError where one op's output does not fit the next op's input, CapacityExceeded where the chain does not fit."""
        lif = ops[0].name == "lif_layer"
        shapes = []
        for j, op in enumerate(ops):
            weight = op.param("weight")
            if weight is None:
                continue
            n_out, n_in = weight.shape
            shapes.append(LayerShape(n_out, 2 * n_in if j == 0 and not lif else n_in))
            if j + 1 < len(ops):
                following = ops[j + 1].inputs[0].shape
                lead, here = following[:-1], op.inputs[0].shape[:-1]
                if following[-1] not in (None, n_out) or any(a is not None and b is not None and a != b for a, b in zip(lead, here)):
                    raise ShapeError(f"chain op {j + 1} ({ops[j + 1].name}) reads {following} but op {j} gives {(*here, n_out)}")
        if len(shapes) == len(ops):
            self._mapping(shapes)

    def _compile_subgraph(self, sub: Subgraph, params: list[dict[str, torch.Tensor]]) -> Program:
        if sub.ops[0].name == "lif_layer":
            return self._compile_lif_chain(sub, params)
        return self._compile_linear_chain(sub, params)

    # ---- models (hal.nn.convert)
    def convert_module(self, module: nn.Module, **options: Any) -> nn.Module | None:
        """A whole trained ReLU network as a SpikingModule on this device (see ``CONVERSION_OPTIONS``).

        Refuses (InvalidInput) a module that is not a convertible network and a call without ``calibration``:
        the device runs no float layer on its own, so there is nothing to fall back to layer by layer.
        """
        unknown = sorted(set(options) - set(CONVERSION_OPTIONS))
        if unknown:
            known = "; ".join(f"{k}: {v}" for k, v in CONVERSION_OPTIONS.items())
            raise InvalidInput(f"{self.uri} has no conversion option(s) {unknown}; its options are {known}")
        if not isinstance(module, (nn.Sequential, nn.Linear, nn.Conv2d)):
            raise InvalidInput(
                f"{self.uri} converts a whole trained ReLU network, an nn.Sequential of Linear, Conv2d, ReLU, AvgPool2d and Flatten (or one "
                f"Linear / Conv2d); {type(module).__name__} is neither. Write the model as nn.Sequential: Loihi 2 runs no float layer on its own "
                "(its linear op is rate coded, ReLU only), so it cannot convert layer by layer"
            )
        calibration = options.get("calibration")
        if calibration is None:
            raise InvalidInput(
                f"{self.uri} needs calibration data to convert {type(module).__name__}: each spiking layer's threshold is set from the "
                "layer's activations on typical inputs. Pass calibration=<a batch (B, *input_shape) of training inputs>, e.g. "
                f"hal.nn.convert(model, {str(self.uri)!r}, calibration=x_train[:500])"
            )
        steps = options.get("steps", self.options["steps"])
        spiking = spiking_model(module, calibration, steps, percentile=options.get("percentile", 99.9), max_rate=options.get("max_rate", 0.25))
        if self.options["strict"] and spiking.report.clipped_weights:
            raise InvalidInput(
                f"strict mode: {spiking.report.clipped_weights} weight(s) fall outside the 8-bit mantissa range after normalisation; rescale the "
                "layers (or drop ?strict=1 to accept and report it)"
            )
        return SpikingModule(spiking, str(self.uri), spiking.place(self.options["chips"], self.spec))

    def run_spiking(self, model: SpikingModel, x: torch.Tensor, steps: int, mapping: Mapping, signed_halves: bool = False) -> tuple[torch.Tensor, EngineResult, Cost]:
        """Run a converted ``model`` on a float batch ``x`` (B, n) for ``steps`` steps: (decoded outputs, event counts, cost).

        On the engine it runs the model's LifNetwork on this device's torch device; through lava (or hardware)
        the same integer network runs in the worker and is decoded here. The cost is the counted events on
        ``mapping`` plus one encode and one decode at the edge; ``signed_halves``: ``x`` is ``[relu(v), relu(-v)]``
        of a signed input ``v`` (B, n / 2), two trains per value.
        """
        self._ensure_open()
        self.check_finite([x], "spiking model input")
        if self.options["backend"] == "engine":
            out = model(x, steps, device=self.torch_device)
            run = model.last_run
        else:
            layers = model.layers(steps)
            last, final_v, run = self._execute(layers, model.encode(x, steps), LifNetwork(layers))
            out = model.decode(last.sum(dim=0), final_v, steps)
        trains = 2 if signed_halves else 1
        latency, energy, formula = self._event_cost(run.synaptic_ops, run.neuron_updates, mapping, "counted")
        edge_s, edge_j, edge = self._edge_cost(x.shape[0], math.prod(x.shape[1:]) // trains, trains, out.shape[-1], steps + model.depth)
        error = model.depth * rate_code_error(steps, model.max_rate)
        return out, run, Cost(latency + edge_s, energy + edge_j, error, f"{formula}; {edge}; error = {model.depth} layers x (1/(T r) + r/2), T={steps}, r={model.max_rate:g}")

    # ---- execution
    def _network(self, layers: list[LifLayer]) -> LifNetwork:
        """The layers prepared on the engine's torch device (on the CPU for lava, where the engine only counts events)."""
        return LifNetwork(layers, self.torch_device if self.options["backend"] == "engine" else "cpu")

    def _execute(self, layers: list[LifLayer], spikes: torch.Tensor, network: LifNetwork) -> tuple[torch.Tensor, torch.Tensor, EngineResult]:
        """Run layers on spikes (T, B, n_in): (last layer's spikes (T, B, n_out) bool, its final v (B, n_out), event counts)."""
        if self.options["backend"] == "engine":
            result = network.run(spikes)
            return result.spikes[-1], result.final_v[-1], result
        if self._worker is None:
            self._worker = LavaWorker(self._lava_python)
        outs, finals = [], []
        hardware = self.options["backend"] == "hardware"
        for b in range(spikes.shape[1]):
            header, arrays = network_request(layers, spikes[:, b].cpu().numpy(), record_state=True, hardware=hardware)
            _, out = self._worker.request(header, arrays)
            last = len(layers) - 1
            outs.append(torch.from_numpy(out[f"spikes{last}"]).to(torch.bool))
            finals.append(torch.from_numpy(out[f"v{last}"][-1]))
        counted = network.run(spikes.cpu(), record_spikes=False)  # event counts for the energy figure
        return torch.stack(outs, dim=1), torch.stack(finals), counted

    def _compile(self, op: OpSpec, params: dict[str, torch.Tensor]) -> Program:
        if op.name == "lif_layer":
            return self._compile_lif(op, params)
        return self._compile_linear(op, params)

    def _integer_param(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        if tensor.is_floating_point() and not bool((tensor == tensor.round()).all()):
            raise InvalidInput(f"lif_layer {name} must hold Loihi integers (mantissas); quantise floats first, or use linear(activation='relu')")
        return tensor.detach().to(torch.int64).cpu()

    def _lif_layer(self, op: OpSpec, params: dict[str, torch.Tensor]) -> LifLayer:
        """The LifLayer of a lif_layer op (strict mode refuses weights the core would clip or truncate)."""
        attrs = dict(LIF_LAYER_ATTRS, **dict(op.attrs))
        weight = self._integer_param("weight", params["weight"])
        bias = self._integer_param("bias", params["bias"]) if "bias" in params else None
        synapse = DenseSynapse(weight, int(attrs["weight_exp"]), int(attrs["num_message_bits"]))
        hw = synapse.hardware
        if self.options["strict"] and (hw.clipped or hw.truncated):
            raise InvalidInput(
                f"strict mode: {hw.clipped} weight(s) lie outside the 8-bit {hw.sign_mode.value} range and {hw.truncated} lose their "
                "least significant bit on Loihi; rescale the weights (or drop ?strict=1 to accept and report it)"
            )
        lif = LifParams(weight.shape[0], int(attrs["du"]), int(attrs["dv"]), int(attrs["vth"]), bias, int(attrs["bias_exp"]))
        return LifLayer(synapse, lif)

    def _compile_lif(self, op: OpSpec, params: dict[str, torch.Tensor]) -> Program:
        return self._lif_program(op, [self._lif_layer(op, params)], self.estimate(op))

    def _compile_lif_chain(self, sub: Subgraph, params: list[dict[str, torch.Tensor]]) -> Program:
        layers = [self._lif_layer(op, p) for op, p in zip(sub.ops, params)]
        return self._lif_program(sub.as_opspec(), layers, self.estimate_subgraph(sub))

    def _lif_program(self, op: OpSpec, layers: list[LifLayer], estimate: Cost) -> Program:
        """One LifNetwork of ``layers``: spikes (T, B, n_in) in, the last layer's spikes (T, B, n_out) uint8 out."""
        network = self._network(layers)  # also checks that each layer's inputs match the previous layer's neurons
        mapping = self._mapping([LayerShape(layer.lif.size, layer.synapse.n_in) for layer in layers])
        clipped = sum(layer.synapse.hardware.clipped for layer in layers)
        truncated = sum(layer.synapse.hardware.truncated for layer in layers)
        program: LoihiProgram

        def run(spikes: torch.Tensor) -> torch.Tensor:
            out, _, counted = self._execute(layers, spikes, network)
            latency, energy, formula = self._event_cost(counted.synaptic_ops, counted.neuron_updates, mapping, "counted")
            program.cost = Cost(latency, energy, 0.0, formula)
            program.report = {
                "synaptic_ops": counted.synaptic_ops, "neuron_updates": counted.neuron_updates, "spikes": int(out.sum()),
                "weights_clipped": clipped, "weights_truncated": truncated,
            }
            return out.to(torch.uint8).to(spikes.device)

        program = LoihiProgram(op, self, estimate, run)
        program.report = {"weights_clipped": clipped, "weights_truncated": truncated}
        return program

    def _compile_linear_chain(self, sub: Subgraph, params: list[dict[str, torch.Tensor]]) -> Program:
        """One spiking network for a chain of linear(relu) ops: the input split into relu(x), relu(-x) trains once."""
        weights = [p["weight"].detach().to(torch.float64).cpu() for p in params]
        biases = [p["bias"].detach().to(torch.float64).cpu() if "bias" in p else torch.zeros(w.shape[0], dtype=torch.float64) for p, w in zip(params, weights)]
        for j in range(1, len(weights)):
            if weights[j].shape[1] != weights[j - 1].shape[0]:
                raise ShapeError(f"chain op {j} (linear) takes {weights[j].shape[1]} features but op {j - 1} gives {weights[j - 1].shape[0]}")
        n_in, n_out = weights[0].shape[1], weights[-1].shape[0]
        first = Stage("dense", torch.cat([weights[0], -weights[0]], dim=1), biases[0], (2 * n_in,), (weights[0].shape[0],), True, {})
        stages = [first] + [Stage("dense", w, b, (w.shape[1],), (w.shape[0],), True, {}) for w, b in zip(weights[1:], biases[1:])]
        mapping = self._mapping([LayerShape(s.weight.shape[0], s.weight.shape[1]) for s in stages])
        steps = self.options["steps"]
        program: LoihiProgram

        def run(x: torch.Tensor) -> torch.Tensor:
            lead = x.shape[:-1]
            flat = x.detach().reshape(-1, n_in).to(torch.float64).cpu()
            split = torch.cat([flat.clamp(min=0), (-flat).clamp(min=0)], dim=1)
            model = from_stages(stages, split, (2 * n_in,), steps, percentile=CHAIN_PERCENTILE, max_rate=target_rate(steps))
            report = model.report
            if self.options["strict"] and max(report.weight_rel_error) > 0.01:
                raise InvalidInput(f"strict mode: 8-bit weight quantisation error {max(report.weight_rel_error):.3g} exceeds 1%; rescale or drop ?strict=1")
            y, counted, cost = self.run_spiking(model, split, steps, mapping, signed_halves=True)
            program.cost = cost
            program.report = {
                "synaptic_ops": counted.synaptic_ops, "neuron_updates": counted.neuron_updates, "spikes": counted.spike_total,
                "vth": report.vth, "weight_exp": report.weight_exp, "weight_quantisation_rel_error": report.weight_rel_error,
                "weights_clipped": report.clipped_weights, "bias_clipped": model.bias_clipped,
            }
            return y.reshape(*lead, n_out).to(x.dtype).to(x.device)

        program = LoihiProgram(sub.as_opspec(), self, self.estimate_subgraph(sub), run)
        return program

    def _compile_linear(self, op: OpSpec, params: dict[str, torch.Tensor]) -> Program:
        weight = params["weight"].detach().to(torch.float64).cpu()
        bias = params["bias"].detach().to(torch.float64).cpu() if "bias" in params else torch.zeros(weight.shape[0], dtype=torch.float64)
        steps = self.options["steps"]
        signed = torch.cat([weight, -weight], dim=1)  # inputs: relu(x) trains, then relu(-x) trains
        peak_w = float(signed.abs().max())
        unit = peak_w / 254.0 if peak_w > 0 else 1.0
        quantized = quantize_weights(signed, unit)
        if self.options["strict"] and quantized.rel_error > 0.01:
            raise InvalidInput(f"strict mode: 8-bit weight quantisation error {quantized.rel_error:.3g} exceeds 1%; rescale or drop ?strict=1")
        mantissa = quantized.mantissa
        weight_unit = unit * 2.0**quantized.weight_exp  # float value of mantissa 1 at weight_exp 0
        n_out = weight.shape[0]
        mapping = self._mapping([LayerShape(n_out, signed.shape[1])])
        rate = target_rate(steps)
        program: LoihiProgram

        def run(x: torch.Tensor) -> torch.Tensor:
            lead = x.shape[:-1]
            flat = x.detach().reshape(-1, x.shape[-1]).to(torch.float64).cpu()
            scale = float(flat.abs().max())
            scale = scale if scale > 0 else 1.0
            pre = flat @ weight.t() + bias  # only the scale of the largest pre-activation is used (threshold balancing)
            peak = float(pre.clamp(min=0).max())
            if peak <= 0:
                program.report = {"note": "no positive pre-activation: every neuron stays silent"}
                return torch.zeros(*lead, n_out, dtype=x.dtype, device=x.device)
            out_scale = peak / rate  # output value of one spike per step
            # one input spike of value `scale` must move v by W * scale / out_scale thresholds
            vth_ideal = out_scale / (weight_unit * scale)
            exp = 0
            while vth_ideal * 2.0**exp > VTH_RANGE[1] and exp > WEIGHT_EXP_RANGE[0]:
                exp -= 1
            while vth_ideal * 2.0 ** (exp + 1) <= VTH_RANGE[1] and exp < WEIGHT_EXP_RANGE[1]:
                exp += 1
            vth = max(1, min(VTH_RANGE[1], round(vth_ideal * 2.0**exp)))
            threshold_v = vth << 6
            # steps + 1 steps so that the one-step synaptic delay delivers every input step; bias over steps + 1
            bias_q = quantize_bias(bias / out_scale * threshold_v * steps / (steps + 1))
            layers = [LifLayer(DenseSynapse(mantissa, exp), LifParams(n_out, 4095, 0, vth, bias_q.mantissa, bias_q.exponent))]
            network = self._network(layers)
            phases = golden_phases((2 * flat.shape[1],))
            trains = torch.cat([rate_encode(flat.clamp(min=0), steps, scale, phases[: flat.shape[1]]), rate_encode((-flat).clamp(min=0), steps, scale, phases[flat.shape[1] :])], dim=2)
            trains = torch.cat([trains, torch.zeros_like(trains[:1])], dim=0).to(self.torch_device)
            out, final_v, counted = self._execute(layers, trains, network)
            synops, updates = counted.synaptic_ops, counted.neuron_updates
            counts = out.sum(dim=0).to(torch.float64).cpu() + final_v.to(torch.float64).cpu() / threshold_v
            y = (counts.clamp(min=0) * out_scale / steps).to(x.dtype)
            latency, energy, formula = self._event_cost(synops, updates, mapping, "counted")
            edge_s, edge_j, edge = self._edge_cost(flat.shape[0], flat.shape[1], 2, n_out, steps + 1)
            program.cost = Cost(latency + edge_s, energy + edge_j, self._linear_error(steps) / 2.0, f"{formula}; {edge}")
            program.report = {
                "synaptic_ops": synops, "neuron_updates": updates, "spikes": int(out.sum()), "vth": vth, "weight_exp": exp,
                "weight_quantisation_rel_error": quantized.rel_error, "bias_quantisation_rel_error": bias_q.rel_error, "bias_clipped": bias_q.clipped,
            }
            return y.reshape(*lead, n_out).to(x.device)

        program = LoihiProgram(op, self, self.estimate(op), run)
        program.report = {"weight_quantisation_rel_error": quantized.rel_error}
        return program

    # ---- lifecycle
    def close(self) -> None:
        if self._worker is not None:
            self._worker.close()
            self._worker = None
        super().close()

