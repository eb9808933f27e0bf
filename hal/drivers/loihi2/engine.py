"""A bit-accurate, batched torch engine for Loihi 2's fixed-point CUBA LIF neuron and its dense/conv synapses.

What one time step computes, per neuron (integer arithmetic, as lava's ``PyLifModelBitAcc`` defines it):

    u <- trunc(u * (4096 - (du + 1)) / 4096) + (a_in << 6)         12-bit current decay (ds_offset = 1)
    u <- u - 2**24 if u > 2**23; u + 2**24 if u <= -2**23          24-bit wrap of the current
    v <- trunc(v * (4096 - dv) / 4096) + u + (bias_mant << bias_exp)
    v <- clip(v, -(2**23 - 1), 2**23 - 1)                          24-bit saturation of the voltage
    spike = v > (vth << 6);  v <- 0 where spike                    reset to zero

and each synapse (lava ``PyDenseModelBitAcc`` / ``PyConvModelFixed``) turns the spikes it receives at step t into
``a_in`` at step t + 1: ``acc = W @ s`` over 8-bit hardware weights (binary spikes, or integer payloads when
``num_message_bits > 0``: graded spikes), shifted by the weight exponent, held in a 32-bit register (dense) or
wrapped to 24 bits (conv).

How it is fast: a feed-forward network is evaluated layer by layer over a block of time steps, so each synaptic
layer is one large integer matrix product (int8 x int8 -> int32, or float64 where a bound check proves every
sum exact), and only the neuron recurrence steps through time, as in-place elementwise ops over (batch, neurons):
on the CPU cache-sized blocks of neurons run all their steps in turn, on a GPU ``fused=True`` compiles the step
into one kernel. States are held in float64, which represents every 24-bit state and every 36-bit decay product
exactly; static and per-block bounds decide where the 24-bit wrap and lava's int32 overflows can occur.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from hal.drivers.loihi2.quantize import (
    BIAS_EXP_RANGE,
    BIAS_MANT_RANGE,
    DECAY_RANGE,
    VTH_RANGE,
    WEIGHT_EXP_RANGE,
    HardwareWeights,
    check_range,
    hardware_weights,
)
from hal.errors import InvalidInput, ShapeError

DECAY_SHIFT = 12  # decays are 12-bit fractions of 4096
DECAY_UNITY = 1 << DECAY_SHIFT
CURRENT_OFFSET = 1  # ds_offset: the current decay is du + 1, so du = 4095 empties u every step
ACTIVATION_SHIFT = 6  # synaptic input is MSB-aligned by << 6
THRESHOLD_SHIFT = 6  # so is the threshold
STATE_LIMIT = 1 << 23  # u and v are 24-bit signed
ACCUMULATOR_LIMIT = 1 << 31  # the synaptic accumulator is a 32-bit register
FLOAT32_EXACT = 1 << 24  # integers below this add exactly in float32
CHUNK_ELEMENTS = 1 << 22  # elements per (steps, batch, neurons) block the engine holds at once
CHUNK_ELEMENTS_CUDA = 1 << 27  # the same on a GPU (tens of GB of memory)
CPU_BLOCK_ELEMENTS = 1 << 15  # (batch, neuron) elements stepped together on the CPU: a few float64 arrays fit L2
_INT32_SPAN = 1 << 32
_STATE_SPAN = 1 << 24


# --------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class LifParams:
    """One CUBA LIF population in Loihi units (the fields lava's fixed-point LIF process takes).

    ``du``/``dv``: 12-bit current/voltage decays (0..4095); ``vth``: 17-bit threshold mantissa (the voltage
    threshold is ``vth << 6``); ``bias_mant``: per-neuron signed 13-bit bias mantissa; ``bias_exp``: 3-bit
    exponent (scalar or per neuron). Source: lava-nc 0.10 ``lava/proc/lif/models.py`` (PyLifModelBitAcc).
    """

    size: int
    du: int = 4095
    dv: int = 0
    vth: int = 100
    bias_mant: torch.Tensor | None = None
    bias_exp: int | torch.Tensor = 0

    def __post_init__(self) -> None:
        check_range("du", self.du, DECAY_RANGE)
        check_range("dv", self.dv, DECAY_RANGE)
        check_range("vth", self.vth, VTH_RANGE)
        if self.bias_mant is not None:
            if self.bias_mant.shape != (self.size,):
                raise ShapeError(f"bias_mant has shape {tuple(self.bias_mant.shape)}; the population has {self.size} neurons, give ({self.size},)")
            if int(self.bias_mant.min()) < BIAS_MANT_RANGE[0] or int(self.bias_mant.max()) > BIAS_MANT_RANGE[1]:
                raise InvalidInput(f"bias_mant spans {int(self.bias_mant.min())}..{int(self.bias_mant.max())}, outside the signed 13-bit range {BIAS_MANT_RANGE[0]}..{BIAS_MANT_RANGE[1]}; raise bias_exp instead")
        exps = torch.as_tensor(self.bias_exp)
        if int(exps.min()) < BIAS_EXP_RANGE[0] or int(exps.max()) > BIAS_EXP_RANGE[1]:
            raise InvalidInput(f"bias_exp must be {BIAS_EXP_RANGE[0]}..{BIAS_EXP_RANGE[1]} (3 bits), got {self.bias_exp!r}")

    @property
    def threshold(self) -> int:
        """The voltage threshold in state units: vth << 6."""
        return self.vth << THRESHOLD_SHIFT

    def effective_bias(self) -> torch.Tensor:
        """bias_mant << bias_exp per neuron (int64), zeros when no bias is set."""
        if self.bias_mant is None:
            return torch.zeros(self.size, dtype=torch.int64)
        exps = torch.as_tensor(self.bias_exp, dtype=torch.int64).expand(self.size)
        return self.bias_mant.to(torch.int64) << exps


def _check_message_bits(num_message_bits: int) -> int:
    return check_range("num_message_bits", num_message_bits, (0, 24))


@dataclass(frozen=True)
class DenseSynapse:
    """All-to-all synapses: ``weights`` (n_out, n_in) integers, stored as the core stores them.

    The given integer weights go through ``hardware_weights`` (8-bit clip and truncation of the sign mode);
    ``hardware`` says how many changed. ``num_message_bits`` > 0 makes the inputs graded spikes (integer payloads).
    """

    weights: torch.Tensor
    weight_exp: int = 0
    num_message_bits: int = 0
    hardware: HardwareWeights = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.weights.dim() != 2:
            raise ShapeError(f"dense weights must be (n_out, n_in), got shape {tuple(self.weights.shape)}")
        check_range("weight_exp", self.weight_exp, WEIGHT_EXP_RANGE)
        _check_message_bits(self.num_message_bits)
        hw = hardware_weights(self.weights)
        object.__setattr__(self, "hardware", hw)

    @property
    def n_in(self) -> int:
        return self.weights.shape[1]

    @property
    def n_out(self) -> int:
        return self.weights.shape[0]


@dataclass(frozen=True)
class ConvSynapse:
    """Convolutional synapses over a (C, H, W) spike map: ``weights`` (O, C/groups, kh, kw), torch's cross-correlation.

    Output neurons are the flattened (O, H', W') map. As lava's fixed-point Conv, the accumulator wraps to 24 bits.
    """

    weights: torch.Tensor
    input_shape: tuple[int, int, int]
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    weight_exp: int = 0
    num_message_bits: int = 0
    hardware: HardwareWeights = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.weights.dim() != 4:
            raise ShapeError(f"conv weights must be (O, C/groups, kh, kw), got shape {tuple(self.weights.shape)}")
        c = self.input_shape[0]
        if c % self.groups or self.weights.shape[0] % self.groups or self.weights.shape[1] * self.groups != c:
            raise ShapeError(f"conv weights {tuple(self.weights.shape)} with groups={self.groups} do not fit {c} input channels")
        check_range("weight_exp", self.weight_exp, WEIGHT_EXP_RANGE)
        _check_message_bits(self.num_message_bits)
        object.__setattr__(self, "hardware", hardware_weights(self.weights))
        if min(self.output_shape) < 1:
            raise ShapeError(f"conv over input {self.input_shape} gives an empty output {self.output_shape}; reduce kernel/stride or pad")

    @property
    def output_shape(self) -> tuple[int, int, int]:
        _, h, w = self.input_shape
        kh, kw = self.weights.shape[2:]
        oh = (h + 2 * self.padding[0] - self.dilation[0] * (kh - 1) - 1) // self.stride[0] + 1
        ow = (w + 2 * self.padding[1] - self.dilation[1] * (kw - 1) - 1) // self.stride[1] + 1
        return (self.weights.shape[0], oh, ow)

    @property
    def n_in(self) -> int:
        return math.prod(self.input_shape)

    @property
    def n_out(self) -> int:
        return math.prod(self.output_shape)


Synapse = DenseSynapse | ConvSynapse


@dataclass(frozen=True)
class LifLayer:
    """A synapse group feeding one LIF population."""

    synapse: Synapse
    lif: LifParams

    def __post_init__(self) -> None:
        if self.synapse.n_out != self.lif.size:
            raise ShapeError(f"the synapse drives {self.synapse.n_out} neurons but the LIF population has {self.lif.size}")


# --------------------------------------------------------------------------- exact synaptic products


def _int8_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """int8 (M, K) @ int8 (K, N) -> int32, exactly; padded to the shapes CUDA's int8 GEMM accepts.

    Where the int8 GEMM is refused (an older GPU or library), float64 products give the same integers: every
    |sum| <= 128 * 127 * K stays far below 2**53.
    """
    if a.device.type != "cuda":
        return torch._int_mm(a, b)
    m, k = a.shape
    n = b.shape[1]
    pm, pk, pn = max(17 - m, 0), (-k) % 8, (-n) % 8
    if pm or pk:
        a = F.pad(a, (0, pk, 0, pm))
    if pk or pn:
        b = F.pad(b, (0, pn, 0, pk))  # copies the weights: only when their shape needs it
    try:
        return torch._int_mm(a.contiguous(), b.contiguous())[:m, :n]
    except RuntimeError:
        return (a.to(torch.float64) @ b.to(torch.float64)).to(torch.int32)[:m, :n]


class _PreparedSynapse:
    """A synapse on a torch device, with the integer weight forms its exact products need."""

    def __init__(self, synapse: Synapse, device: torch.device):
        self.synapse = synapse
        self.device = device
        w = synapse.hardware.weights
        self.abs_row_sum = int(w.abs().flatten(1).sum(1, dtype=torch.int64).max()) if w.numel() else 0
        if isinstance(synapse, DenseSynapse):
            wt = w.t().contiguous()
            # W = 2 * hi + lo with hi in [-128, 127] and lo in {0, 1}: two int8 products, exact in int32.
            self.hi = (wt >> 1).to(torch.int8).to(device)
            lo = (wt & 1).to(torch.int8)
            self.lo = lo.to(device) if bool(lo.any()) else None
            self._wt = wt  # host copy; the float64 form for large graded payloads is made on first use
            self._wt64: torch.Tensor | None = None
            self.fanout_per_input = (w != 0).sum(0, dtype=torch.int64).to(torch.float64).to(device)
        else:
            self.w64 = w.to(torch.float64).to(device)
            self.w32 = w.to(torch.float32).to(device)
            self.kernel_nonzero = (w != 0).to(torch.float64).to(device)

    def check_payload(self, max_abs_input: int) -> None:
        """Refuse inputs whose worst-case sum could leave the 32-bit accumulator (lava's numpy would wrap)."""
        bound = self.abs_row_sum * max_abs_input
        if bound >= ACCUMULATOR_LIMIT:
            raise InvalidInput(
                f"a synaptic sum can reach {bound} (max |weight| row sum {self.abs_row_sum} x max |spike payload| {max_abs_input}), "
                "beyond Loihi's 32-bit dendritic accumulator; use fewer message bits or split the layer"
            )

    def synaptic_input(self, spikes: torch.Tensor, max_abs_input: int) -> tuple[torch.Tensor, int]:
        """Spikes (M, n_in) -> the LIF input ``a_in << 6`` (M, n_out) int32, exactly as the hardware holds it, and a bound.

        ``acc = W @ s`` (exact integer products), shifted by the weight exponent (arithmetic shift: floor for
        negative exponents); a dense result sits in a 32-bit register and a conv result wraps to 24 bits, as in
        lava, and the LIF shifts its int32 input by 6. Wraps are applied only where the static bound
        |acc| <= row_sum(|W|) * max|input| says they can happen.
        """
        syn = self.synapse
        exp = syn.weight_exp
        bound = self.abs_row_sum * max_abs_input
        scaled = bound << exp if exp >= 0 else bound >> -exp
        if isinstance(syn, DenseSynapse) and max_abs_input <= 127 and exp >= 0 and scaled << ACTIVATION_SHIFT < ACCUMULATOR_LIMIT:
            # fast path: int8 products into int32, and no register can overflow, so everything stays int32
            s8 = spikes if spikes.dtype == torch.int8 else spikes.to(torch.int8)
            act = _int8_matmul(s8, self.hi)
            if self.lo is None:
                return act.mul_(1 << (1 + exp + ACTIVATION_SHIFT)), scaled << ACTIVATION_SHIFT
            act.mul_(2).add_(_int8_matmul(s8, self.lo))
            return act.mul_(1 << (exp + ACTIVATION_SHIFT)), scaled << ACTIVATION_SHIFT
        shifted = self._accumulate(spikes, max_abs_input)
        shifted = shifted << exp if exp >= 0 else shifted >> -exp
        span = _STATE_SPAN if isinstance(syn, ConvSynapse) else _INT32_SPAN
        if scaled >= span // 2:
            shifted = _wrap(shifted, span)
            scaled = span // 2
        if scaled << ACTIVATION_SHIFT >= ACCUMULATOR_LIMIT:
            return _wrap(shifted << ACTIVATION_SHIFT, _INT32_SPAN).to(torch.int32), ACCUMULATOR_LIMIT
        return (shifted << ACTIVATION_SHIFT).to(torch.int32), scaled << ACTIVATION_SHIFT

    def _accumulate(self, spikes: torch.Tensor, max_abs_input: int) -> torch.Tensor:
        """Integer sums W @ s for spikes (M, n_in) -> (M, n_out) int64, exactly."""
        syn = self.synapse
        if isinstance(syn, DenseSynapse):
            if max_abs_input <= 127:
                s8 = spikes if spikes.dtype == torch.int8 else spikes.to(torch.int8)
                acc = _int8_matmul(s8, self.hi).to(torch.int64) * 2
                if self.lo is not None:
                    acc += _int8_matmul(s8, self.lo).to(torch.int64)
                return acc
            # |sum| < 2**31 (check_payload) < 2**53: every float64 partial sum is an exact integer.
            if self._wt64 is None:
                self._wt64 = self._wt.to(torch.float64).to(self.device)
            return (spikes.to(torch.float64) @ self._wt64).to(torch.int64)
        # float32 holds every partial sum exactly while the worst case stays below 2**24; float64 below 2**53
        exact32 = self.abs_row_sum * max_abs_input < FLOAT32_EXACT
        weight = self.w32 if exact32 else self.w64
        maps = spikes.to(weight.dtype).reshape(-1, *syn.input_shape)
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            out = F.conv2d(maps, weight, stride=syn.stride, padding=syn.padding, dilation=syn.dilation, groups=syn.groups)
        return out.reshape(spikes.shape[0], -1).to(torch.int64)

    def synaptic_ops(self, spike_events: torch.Tensor) -> int:
        """Synaptic operations for (n_in,) counts of nonzero input spikes: each event reads its nonzero fan-out."""
        syn = self.synapse
        if isinstance(syn, DenseSynapse):
            return round(float(spike_events.to(torch.float64) @ self.fanout_per_input))
        counts = spike_events.to(torch.float64).reshape(1, *syn.input_shape)
        per_out = F.conv2d(counts, self.kernel_nonzero, stride=syn.stride, padding=syn.padding, dilation=syn.dilation, groups=syn.groups)
        return round(float(per_out.sum()))

def _wrap(x: torch.Tensor, span: int) -> torch.Tensor:
    """Two's-complement wrap of int64 values to a signed register of log2(span) bits."""
    half = span // 2
    return torch.remainder(x + half, span) - half


# --------------------------------------------------------------------------- simulation


@dataclass
class EngineResult:
    """What a run produced: spike trains/counts per layer, optional state traces, and event counts for energy.

    ``spikes[l]``: (T, B, N_l) bool when recorded; ``voltages``/``currents``: (T, B, N_l) int64 when recorded;
    ``counts[l]``: (B, N_l) spike counts; ``final_v``/``final_u``: state after the last step.
    """

    spikes: list[torch.Tensor]
    counts: list[torch.Tensor]
    final_v: list[torch.Tensor]
    final_u: list[torch.Tensor]
    voltages: list[torch.Tensor] | None
    currents: list[torch.Tensor] | None
    synaptic_ops: int
    neuron_updates: int
    spike_total: int


class LifNetwork:
    """A feed-forward stack of LIF layers prepared on a torch device (CPU or CUDA), run by ``run``.

    ``fused=True`` compiles each population's time step into one kernel with ``torch.compile`` (worth it for
    large populations and long runs; the first run pays the compilation). Results are identical either way.
    """

    def __init__(self, layers: Sequence[LifLayer], device: torch.device | str = "cpu", fused: bool = False):
        if not layers:
            raise InvalidInput("a network needs at least one LIF layer")
        for i in range(1, len(layers)):
            if layers[i].synapse.n_in != layers[i - 1].lif.size:
                raise ShapeError(f"layer {i} takes {layers[i].synapse.n_in} inputs but layer {i - 1} has {layers[i - 1].lif.size} neurons")
        self.layers = list(layers)
        self.device = torch.device(device)
        self._synapses = [_PreparedSynapse(layer.synapse, self.device) for layer in self.layers]
        self._steppers = [_LifStepper(layer.lif, self.device, fused) for layer in self.layers]

    def _stepper(self, index: int) -> _LifStepper:
        return self._steppers[index]

    @property
    def n_in(self) -> int:
        return self.layers[0].synapse.n_in

    @property
    def sizes(self) -> list[int]:
        return [layer.lif.size for layer in self.layers]

    def run(
        self,
        spikes_in: torch.Tensor,
        *,
        record_spikes: bool = True,
        record_state: bool = False,
        chunk_steps: int | None = None,
    ) -> EngineResult:
        """Run ``spikes_in`` (T, B, n_in) integer spikes through the network from the zero state.

        Binary layers treat any nonzero input as a spike (as lava's Dense does); graded layers take the
        integer payloads, which must fit ``num_message_bits`` signed bits.
        """
        if spikes_in.dim() != 3 or spikes_in.shape[2] != self.n_in:
            raise ShapeError(f"spikes_in must be (T, B, {self.n_in}), got {tuple(spikes_in.shape)}")
        if spikes_in.is_floating_point() and not (bool(torch.isfinite(spikes_in).all()) and bool((spikes_in == spikes_in.round()).all())):
            raise InvalidInput("spike inputs must be integers (0/1, or integer payloads for graded spikes); encode tensors with hal.kernels.spike_coding first")
        steps, batch, _ = spikes_in.shape
        if chunk_steps is None:
            # time steps per block: bounded so that a block's (steps, batch, neurons) arrays stay near CHUNK_ELEMENTS
            budget = CHUNK_ELEMENTS_CUDA if self.device.type == "cuda" else CHUNK_ELEMENTS
            chunk_steps = max(1, min(64, budget // max(1, batch * max(self.sizes + [self.n_in]))))
        dev = self.device
        first = self.layers[0].synapse
        if first.num_message_bits == 0:
            source = (spikes_in.to(dev) != 0).to(torch.int8)
            max_in = 1
        else:
            source = spikes_in.to(dev).to(torch.int64)
            limit = 1 << (first.num_message_bits - 1)
            low, high = (int(source.min()), int(source.max())) if source.numel() else (0, 0)
            if low < -limit or high > limit - 1:
                raise InvalidInput(f"graded spike payloads span {low}..{high}, beyond {first.num_message_bits} signed message bits ({-limit}..{limit - 1}); raise num_message_bits")
            max_in = max(abs(low), abs(high), 1)
            if max_in <= 127:
                source = source.to(torch.int8)
        self._synapses[0].check_payload(max_in)
        for syn in self._synapses[1:]:
            syn.check_payload(1)

        n_layers = len(self.layers)
        u = [torch.zeros(batch, n, dtype=torch.float64, device=dev) for n in self.sizes]
        v = [torch.zeros(batch, n, dtype=torch.float64, device=dev) for n in self.sizes]
        pending = [torch.zeros(batch, n, dtype=torch.int32, device=dev) for n in self.sizes]
        bounds = [0] * len(self.layers)
        counts = [torch.zeros(batch, n, dtype=torch.int64, device=dev) for n in self.sizes]
        events = [torch.zeros(layer.synapse.n_in, dtype=torch.int64, device=dev) for layer in self.layers]
        spike_chunks: list[list[torch.Tensor]] = [[] for _ in range(n_layers)]
        v_chunks: list[list[torch.Tensor]] = [[] for _ in range(n_layers)]
        u_chunks: list[list[torch.Tensor]] = [[] for _ in range(n_layers)]
        for start in range(0, steps, chunk_steps):
            block = source[start : start + chunk_steps]
            tc = block.shape[0]
            for li, syn in enumerate(self._synapses):
                events[li] += (block != 0).sum(dim=(0, 1))
                peak_in = max_in if li == 0 else 1
                arriving, act_bound = syn.synaptic_input(block.reshape(tc * batch, -1), peak_in)
                arriving = arriving.reshape(tc, batch, -1)
                if arriving.numel():  # the block's actual peak is usually far below the static bound
                    act_bound = min(act_bound, max(int(arriving.max()), -int(arriving.min())))
                # one-step synaptic delay: what arrives at step t was sent at step t - 1
                bound = max(act_bound, bounds[li])
                out, trace_v, trace_u = self._stepper(li)(pending[li], arriving, bound, u[li], v[li], record_state)
                pending[li], bounds[li] = arriving[-1], act_bound
                counts[li] += out.sum(dim=0)
                if record_spikes:
                    spike_chunks[li].append(out)
                if record_state:
                    v_chunks[li].append(trace_v)
                    u_chunks[li].append(trace_u)
                block = out.view(torch.int8)
        synops = sum(syn.synaptic_ops(e) for syn, e in zip(self._synapses, events))
        spike_total = int(sum(int(c.sum()) for c in counts))
        return EngineResult(
            spikes=[torch.cat(c, dim=0) for c in spike_chunks] if record_spikes else [],
            counts=counts,
            final_v=[x.to(torch.int64) for x in v],
            final_u=[x.to(torch.int64) for x in u],
            voltages=[torch.cat(c, dim=0).to(torch.int64) for c in v_chunks] if record_state else None,
            currents=[torch.cat(c, dim=0).to(torch.int64) for c in u_chunks] if record_state else None,
            synaptic_ops=synops,
            neuron_updates=steps * batch * sum(self.sizes),
            spike_total=spike_total,
        )


def _lif_step(u: torch.Tensor, v: torch.Tensor, act: torch.Tensor, bias: torch.Tensor | None, u_keep: float, v_keep: float, threshold: float, wrap: bool, fired: torch.Tensor | None = None) -> torch.Tensor:
    """One time step of a population on float64 integer states (the fast path: |u + input| < 3 * 2**23), in place.

    Writes the spikes into ``fired`` when given (a bool view of the output), else returns a new tensor.
    """
    u.mul_(u_keep).trunc_().add_(act)
    if wrap:
        # fold into (-2**23, 2**23]: subtract 2**24 * floor((u + 2**23 - 1) / 2**24)
        u.sub_(torch.floor((u + (STATE_LIMIT - 1)) * (1.0 / _STATE_SPAN)) * _STATE_SPAN)
    v.mul_(v_keep).trunc_().add_(u)
    if bias is not None:
        v.add_(bias)
    v.clamp_(-(STATE_LIMIT - 1), STATE_LIMIT - 1)
    fired = torch.gt(v, threshold, out=fired) if fired is not None else v > threshold
    v.masked_fill_(fired, 0.0)
    return fired


def _lif_step_folding(u, v, act, bias, u_keep, v_keep, threshold):
    return _lif_step(u, v, act, bias, u_keep, v_keep, threshold, True)


def _lif_step_plain(u, v, act, bias, u_keep, v_keep, threshold):
    return _lif_step(u, v, act, bias, u_keep, v_keep, threshold, False)


_COMPILED: dict[bool, object] = {}


def _compiled_step(wrap: bool):
    """The fast step through torch.compile (one fused kernel per step), one compiled function per wrap variant.

    Shapes and constants are specialised (static code is several times faster than symbolic-shape code here), so
    each new (batch, neurons, decays, threshold) compiles once; dynamo allows a handful per function.
    """
    if wrap not in _COMPILED:
        _COMPILED[wrap] = torch.compile(_lif_step_folding if wrap else _lif_step_plain, dynamic=False, fullgraph=True)
    return _COMPILED[wrap]


class _LifStepper:
    """Advances one population through blocks of synaptic input, choosing the exact path each block needs."""

    def __init__(self, lif: LifParams, device: torch.device, fused: bool):
        self.lif = lif
        bias = lif.effective_bias()
        self.bias = bias.to(torch.float64).to(device) if bool(bias.any()) else None
        self.u_keep = (DECAY_UNITY - (lif.du + CURRENT_OFFSET)) / DECAY_UNITY  # exact in float64 (12-bit fraction)
        self.v_keep = (DECAY_UNITY - lif.dv) / DECAY_UNITY
        self.threshold = float(lif.threshold)
        self.fused = fused

    def __call__(self, first: torch.Tensor, later: torch.Tensor, act_bound: int, u: torch.Tensor, v: torch.Tensor, record_state: bool):
        """Steps with inputs ``first`` (B, N), then ``later[0..T-2]`` (the block's own arrivals, one step late)."""
        lif = self.lif
        u_peak = float(u.abs().max()) if u.numel() else 0.0
        # Steady-state bound of |u| under this input: below 2**23 the 24-bit wrap can never fire.
        needs_wrap = max(u_peak, act_bound * DECAY_UNITY / (lif.du + CURRENT_OFFSET)) >= STATE_LIMIT
        # Inputs above 2**24 can carry u past what one fold brings back, or past int32 in lava's numpy: emulate both.
        general = act_bound > 2 * STATE_LIMIT or u_peak > STATE_LIMIT
        if general:
            step = functools.partial(_lif_step_general, u_keep=self.u_keep, v_keep=self.v_keep, threshold=self.threshold)
        elif self.fused:
            step = functools.partial(_compiled_step(needs_wrap), u_keep=self.u_keep, v_keep=self.v_keep, threshold=self.threshold)
        else:
            step = functools.partial(_lif_step, u_keep=self.u_keep, v_keep=self.v_keep, threshold=self.threshold, wrap=needs_wrap)
        shape, device = later.shape, later.device
        out = torch.empty(shape, dtype=torch.bool, device=device)
        trace_v = torch.empty(shape, dtype=torch.float64, device=device) if record_state else None
        trace_u = torch.empty(shape, dtype=torch.float64, device=device) if record_state else None
        # Neurons are independent within a step, so on the CPU each cache-sized block of (batch, neuron) runs all
        # its steps before the next block: the states stay in cache instead of streaming through memory every step.
        batch, neurons = shape[1], shape[2]
        block = batch * neurons if device.type != "cpu" else CPU_BLOCK_ELEMENTS
        rows, cols = (max(1, block // neurons), neurons) if neurons <= block else (1, block)
        for r0 in range(0, batch, rows):
            for c0 in range(0, neurons, cols):
                rs, cs = slice(r0, r0 + rows), slice(c0, c0 + cols)
                ub, vb = u[rs, cs], v[rs, cs]
                bias = self.bias[cs] if self.bias is not None else None
                for t in range(shape[0]):
                    if self.fused or general:
                        out[t, rs, cs] = step(ub, vb, (first if t == 0 else later[t - 1])[rs, cs], bias)
                    else:
                        step(ub, vb, (first if t == 0 else later[t - 1])[rs, cs], bias, fired=out[t, rs, cs])
                    if record_state:
                        trace_v[t, rs, cs] = vb
                        trace_u[t, rs, cs] = ub
        return out, trace_v, trace_u


def _lif_step_general(u: torch.Tensor, v: torch.Tensor, act: torch.Tensor, bias: torch.Tensor | None, u_keep: float, v_keep: float, threshold: float) -> torch.Tensor:
    """One step with lava's int32 overflow of the current sum and of the voltage sum emulated (huge inputs)."""
    u.mul_(u_keep).trunc_().add_(act)
    u.copy_(_wrap_state_general(u))
    v.mul_(v_keep).trunc_().add_(u)
    if bias is not None:
        v.add_(bias)
    v.copy_(_wrap_float(v, _INT32_SPAN)).clamp_(-(STATE_LIMIT - 1), STATE_LIMIT - 1)
    fired = v > threshold
    v.masked_fill_(fired, 0.0)
    return fired


def _wrap_float(x: torch.Tensor, span: int) -> torch.Tensor:
    half = float(span // 2)
    return torch.remainder(x + half, float(span)) - half


def _wrap_state_general(x: torch.Tensor) -> torch.Tensor:
    """Lava's current wrap when inputs are large: int32 overflow of the sum, then one +-2**24 fold."""
    x = _wrap_float(x, _INT32_SPAN)
    limit = float(STATE_LIMIT)
    span = float(_STATE_SPAN)
    return torch.where(x > limit, x - span, torch.where(x <= -limit, x + span, x))
