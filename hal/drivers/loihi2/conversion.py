"""ANN -> SNN conversion for Loihi 2: a trained ``nn.Sequential`` of Linear, Conv2d, ReLU, AvgPool2d and Flatten
becomes a stack of integrate-and-fire layers on the bit-accurate engine.

Users reach it through ``hal.nn.convert(model, "loihi2:0", calibration=x)`` (``Loihi2Device.convert_module``); the
device's claimed chains of ``linear(activation="relu")`` ops (``Loihi2Device.claim``) use ``from_stages`` directly.

Method (Rueckauer et al., "Conversion of continuous-valued deep networks to efficient event-driven networks for
image classification", Front. Neurosci. 11, 2017):

- data-based normalisation: run the ANN on calibration data, take the ``percentile`` (99.9 %) of each ReLU
  layer's activations as its scale lambda_l, and rescale ``W_l <- W_l * lambda_{l-1} / lambda_l``,
  ``b_l <- b_l / lambda_l``, so that a neuron firing at one spike per step stands for lambda_l;
- neurons are non-leaky integrate-and-fire (``du = 4095``: the current is this step's input; ``dv = 0``), the
  threshold ``vth`` and weight exponent chosen per layer so the largest weight uses the full 8-bit mantissa;
  the bias is a per-step voltage increment (13-bit mantissa << exponent);
- AvgPool2d is linear, so it is folded into the next synaptic layer (into a conv kernel when a Conv2d follows,
  into the dense matrix when Flatten + Linear follows);
- inputs are rate coded (``hal.kernels.spike_coding.rate_encode``) at the calibration maximum; the output layer
  is read as spike count plus residual membrane charge (``count + v / threshold``), times lambda_L / T.

Loihi resets the voltage to zero after a spike (not by subtraction), so each spike loses the overshoot above
threshold; more steps (``steps``) trade latency for accuracy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from hal.drivers.loihi2.engine import ConvSynapse, DenseSynapse, LifLayer, LifNetwork, LifParams
from hal.drivers.loihi2.mapper import LayerShape, Loihi2Spec, Mapping, map_layers
from hal.drivers.loihi2.quantize import VTH_RANGE, WEIGHT_EXP_RANGE, quantize_bias, quantize_weights
from hal.errors import InvalidInput, ShapeError
from hal.kernels.spike_coding import golden_phases, rate_encode, saturated

CONVERTIBLE = (nn.Linear, nn.Conv2d, nn.ReLU, nn.AvgPool2d, nn.Flatten)


@dataclass
class Stage:
    """One synaptic layer of the ANN with what precedes it folded in: a float weight over its input map."""

    kind: str  # "dense" or "conv"
    weight: torch.Tensor
    bias: torch.Tensor
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    relu: bool
    conv_args: dict


def _flatten_modules(model: nn.Module) -> list[nn.Module]:
    if isinstance(model, nn.Sequential):
        out: list[nn.Module] = []
        for child in model:
            out.extend(_flatten_modules(child))
        return out
    return [model]


def _check_convertible(modules: list[nn.Module]) -> None:
    bad = [f"layer {i} ({type(m).__name__})" for i, m in enumerate(modules) if not isinstance(m, CONVERTIBLE)]
    if bad:
        raise InvalidInput(
            f"cannot convert {', '.join(bad)} to spiking layers; convertible layers are Linear, Conv2d, ReLU, AvgPool2d, Flatten "
            "(replace max pooling by AvgPool2d, drop or fold normalisation layers, retrain)"
        )


def _pool_factor(pool: nn.AvgPool2d, in_shape: tuple[int, ...], exact: bool) -> int:
    """The k of a foldable AvgPool2d(k, stride=k, padding=0); ``exact`` also requires H and W divisible by k."""
    k = pool.kernel_size if isinstance(pool.kernel_size, int) else pool.kernel_size[0]
    square = pool.kernel_size in (k, (k, k)) and pool.stride in (k, (k, k), None)
    if not square or pool.padding not in (0, (0, 0)) or (exact and (in_shape[-2] % k or in_shape[-1] % k)):
        raise InvalidInput(
            f"AvgPool2d(kernel={pool.kernel_size}, stride={pool.stride}, padding={pool.padding}) on {in_shape} folds into the next layer "
            "only as a square k x k pool with stride k, no padding (and, before a Conv2d, H and W divisible by k)"
        )
    return k


def _pool_into_conv(pool: nn.AvgPool2d, conv: nn.Conv2d, in_shape: tuple[int, ...]) -> tuple[torch.Tensor, dict]:
    """conv(avgpool_k(x)) as one conv on x: kernel k*K (each tap spread over a k x k block / k^2), stride k*s, padding k*p."""
    k = _pool_factor(pool, in_shape, exact=True)
    if conv.dilation != (1, 1):
        raise InvalidInput("an AvgPool2d folds only into an undilated Conv2d")
    w = conv.weight.detach().to(torch.float64)
    spread = w.repeat_interleave(k, dim=2).repeat_interleave(k, dim=3) / (k * k)
    args = {"stride": (conv.stride[0] * k, conv.stride[1] * k), "padding": (conv.padding[0] * k, conv.padding[1] * k), "dilation": (1, 1), "groups": conv.groups}
    return spread, args


def _pool_into_linear(pool: nn.AvgPool2d, linear: nn.Linear, in_shape: tuple[int, ...]) -> torch.Tensor:
    """linear(flatten(avgpool_k(x))) as one matrix on flatten(x): each weight spread over its k x k block / k^2."""
    k = _pool_factor(pool, in_shape, exact=False)
    c, h, w = in_shape
    weight = linear.weight.detach().to(torch.float64).reshape(-1, c, h // k, w // k)
    spread = weight.repeat_interleave(k, dim=2).repeat_interleave(k, dim=3) / (k * k)
    spread = torch.nn.functional.pad(spread, (0, w - spread.shape[3], 0, h - spread.shape[2]))  # rows/columns the pool drops
    return spread.reshape(weight.shape[0], -1)


def _out_shape(module: nn.Module, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The per-sample output shape of ``module`` on inputs of per-sample ``shape``."""
    weight = getattr(module, "weight", None)
    with torch.no_grad():
        return tuple(module(torch.zeros(1, *shape, dtype=weight.dtype if weight is not None else torch.float32)).shape[1:])


def _stages(modules: list[nn.Module], input_shape: tuple[int, ...]) -> list[Stage]:
    """Group modules into synaptic stages, folding AvgPool2d/Flatten into the next Linear/Conv2d."""
    stages: list[Stage] = []
    shape = tuple(input_shape)
    pending: list[nn.Module] = []  # pooling/flatten between the last stage and the next synaptic layer
    pending_in = shape
    for i, m in enumerate(modules):
        if isinstance(m, (nn.AvgPool2d, nn.Flatten)):
            pending.append(m)
            shape = _out_shape(m, shape)
            continue
        if isinstance(m, nn.ReLU):
            if not stages or stages[-1].relu or pending:
                raise InvalidInput(f"layer {i} (ReLU) must directly follow a Linear or Conv2d to become a spiking layer")
            stages[-1].relu = True
            continue
        bias = m.bias.detach().to(torch.float64) if m.bias is not None else torch.zeros(m.weight.shape[0], dtype=torch.float64)
        out_shape = _out_shape(m, shape)
        kinds = [type(p) for p in pending]
        if isinstance(m, nn.Conv2d) and kinds in ([], [nn.AvgPool2d]):
            if pending:
                weight, args = _pool_into_conv(pending[0], m, pending_in)
            else:
                weight = m.weight.detach().to(torch.float64)
                args = {"stride": m.stride, "padding": m.padding, "dilation": m.dilation, "groups": m.groups}
            stages.append(Stage("conv", weight, bias, pending_in, out_shape, False, args))
        elif isinstance(m, nn.Linear) and kinds in ([], [nn.Flatten], [nn.AvgPool2d, nn.Flatten]):
            weight = _pool_into_linear(pending[0], m, pending_in) if pending and kinds[0] is nn.AvgPool2d else m.weight.detach().to(torch.float64)
            stages.append(Stage("dense", weight, bias, pending_in, out_shape, False, {}))
        else:
            between = " -> ".join(k.__name__ for k in kinds) or "nothing"
            raise InvalidInput(
                f"layer {i} ({type(m).__name__}) follows {between}; convertible sequences are [AvgPool2d] -> Conv2d and "
                "[AvgPool2d] -> Flatten -> Linear between spiking layers"
            )
        pending, shape, pending_in = [], out_shape, out_shape
    if pending:
        raise InvalidInput(f"the model ends in {type(pending[-1]).__name__}; end it with a Linear or Conv2d (the output layer)")
    for stage in stages[:-1]:
        if not stage.relu:
            raise InvalidInput("every hidden Linear/Conv2d must be followed by ReLU (spike rates are non-negative)")
    return stages


def _stage_apply(stage: Stage, x: torch.Tensor) -> torch.Tensor:
    if stage.kind == "dense":
        return x.reshape(x.shape[0], -1) @ stage.weight.t() + stage.bias
    out = torch.nn.functional.conv2d(x.reshape(x.shape[0], *stage.in_shape), stage.weight, stage.bias, **stage.conv_args)
    return out.reshape(x.shape[0], -1)


@dataclass
class ConversionReport:
    """What conversion decided and what quantisation cost, layer by layer."""

    input_scale: float
    layer_scales: list[float]
    vth: list[int]
    weight_exp: list[int]
    weight_rel_error: list[float]
    clipped_weights: int


@dataclass(frozen=True)
class SpikingStage:
    """A converted layer before its bias is fixed: the synapse, the threshold and the bias in thresholds per step."""

    synapse: DenseSynapse | ConvSynapse
    vth: int
    bias_per_step: torch.Tensor  # float64 (n_out,), in units of the threshold


class SpikingModel:
    """A converted network: call it on a float batch to get decoded outputs (``last_run`` keeps the event counts).

    A run lasts ``steps + depth`` steps (``depth`` = number of layers: each synapse delays by one step); the input
    is rate coded over the whole run and every bias is scaled by ``steps / (steps + depth)``, so each layer sees
    the totals of ``steps`` steps of the ANN activity. ``relu_output``: the last layer is followed by a ReLU in the
    ANN, so its decoded output is clamped at zero (a negative residual voltage stands for no output, as the ReLU's).
    """

    def __init__(
        self, stages: list[SpikingStage], input_scale: float, output_scale: float, input_shape: tuple[int, ...], steps: int,
        report: ConversionReport | None, max_rate: float, relu_output: bool = False,
    ):
        self.stages = stages
        self.input_scale = input_scale
        self.output_scale = output_scale
        self.input_shape = input_shape
        self.steps = steps
        self.report = report
        self.max_rate = max_rate
        self.relu_output = relu_output
        self.saturated_inputs = 0
        self.bias_clipped = 0
        self.last_run = None
        self._networks: dict[tuple[int, str], LifNetwork] = {}

    @property
    def depth(self) -> int:
        return len(self.stages)

    def layers(self, steps: int | None = None) -> list[LifLayer]:
        """The Loihi layers for a run of ``steps`` steps (biases quantised for that length)."""
        steps = steps or self.steps
        layers, clipped = [], 0
        for stage in self.stages:
            bq = quantize_bias(stage.bias_per_step * (stage.vth << 6) * steps / (steps + self.depth))
            clipped += bq.clipped
            lif = LifParams(stage.synapse.n_out, du=4095, dv=0, vth=stage.vth, bias_mant=bq.mantissa, bias_exp=bq.exponent)
            layers.append(LifLayer(stage.synapse, lif))
        self.bias_clipped = clipped
        return layers

    def place(self, chips: int = 1, spec: Loihi2Spec | None = None) -> Mapping:
        """Map the layers onto a ``chips``-chip Loihi 2 system (CapacityExceeded names the limit a layer hits)."""
        shapes = []
        for stage in self.stages:
            syn = stage.synapse
            fan_in = syn.n_in if isinstance(syn, DenseSynapse) else math.prod(syn.weights.shape[1:])
            shapes.append(LayerShape(syn.n_out, fan_in))
        return map_layers(shapes, spec or Loihi2Spec(), chips)

    def network(self, steps: int | None = None, device: torch.device | str = "cpu") -> LifNetwork:
        key = (steps or self.steps, str(torch.device(device)))
        if key not in self._networks:
            self._networks[key] = LifNetwork(self.layers(key[0]), device)
        return self._networks[key]

    def encode(self, x: torch.Tensor, steps: int) -> torch.Tensor:
        """Rate-code a batch (B, *input_shape) into (steps + depth, B, n_in) spikes; inputs above the calibration scale saturate (counted)."""
        if not bool(torch.isfinite(x).all()):
            raise InvalidInput("the input holds NaN/inf; the spiking model refuses non-finite inputs")
        if tuple(x.shape[1:]) != self.input_shape:
            raise ShapeError(f"expected inputs of shape (B, {', '.join(map(str, self.input_shape))}), got {tuple(x.shape)}")
        if bool((x < 0).any()):
            raise InvalidInput("inputs must be non-negative to be rate coded (shift or split signed inputs)")
        flat = x.reshape(x.shape[0], -1).to(torch.float64)
        self.saturated_inputs = saturated(flat, self.input_scale)
        total = steps + self.depth
        return rate_encode(flat, total, self.input_scale * total / (steps * self.max_rate), golden_phases(tuple(flat.shape[1:])))

    def decode(self, counts: torch.Tensor, final_v: torch.Tensor, steps: int) -> torch.Tensor:
        """Outputs (B, n_out) float32 from the last layer's spike counts and final voltages after a run of ``steps``."""
        threshold = self.stages[-1].vth << 6
        value = counts.to(torch.float64).cpu() + final_v.to(torch.float64).cpu() / threshold
        if self.relu_output:
            value = value.clamp(min=0)
        return (value * self.output_scale / (steps * self.max_rate)).to(torch.float32)

    def __call__(self, x: torch.Tensor, steps: int | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
        """Decoded outputs (B, n_out) float32 after ``steps`` steps of rate-coded input (plus the pipeline depth)."""
        steps = steps or self.steps
        network = self.network(steps, device)
        result = network.run(self.encode(x, steps).to(device), record_spikes=False)
        self.last_run = result
        return self.decode(result.counts[-1], result.final_v[-1], steps)


def _choose_threshold(peak_weight: float) -> tuple[int, int]:
    """(vth, weight_exp) so that the largest normalised weight maps to a full 8-bit mantissa: w * vth = m * 2**exp."""
    if peak_weight <= 0:
        return VTH_RANGE[1], 0
    exp = 0
    vth_ideal = 254.0 / peak_weight
    while vth_ideal * 2.0**exp > VTH_RANGE[1] and exp > WEIGHT_EXP_RANGE[0]:
        exp -= 1
    while vth_ideal * 2.0 ** (exp + 1) <= VTH_RANGE[1] and exp < WEIGHT_EXP_RANGE[1] and vth_ideal * 2.0**exp < 2**10:
        exp += 1
    return max(1, min(VTH_RANGE[1], round(vth_ideal * 2.0**exp))), exp


def _check_options(steps: int, percentile: float, max_rate: float) -> None:
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise InvalidInput(f"steps must be a positive int (time steps of a run), got {steps!r}")
    if not 0 < percentile <= 100:
        raise InvalidInput(f"percentile must be in (0, 100] (the activation percentile that sets each layer's scale), got {percentile}")
    if not 0 < max_rate <= 1:
        raise InvalidInput(f"max_rate must be in (0, 1] spikes per step, got {max_rate}")


def spiking_model(model: nn.Module, calibration_data: torch.Tensor, steps: int = 256, *, percentile: float = 99.9, max_rate: float = 0.25) -> SpikingModel:
    """Convert a trained ``nn.Sequential`` to a Loihi 2 spiking model, normalised on ``calibration_data`` (B, *input_shape).

    ``max_rate`` (spikes per step) is what a neuron at its layer's scale fires: below 1 it keeps each step's input
    small against the threshold, which bounds what reset-to-zero loses. Raises InvalidInput naming any layer that
    cannot become a spiking layer.
    """
    _check_options(steps, percentile, max_rate)
    modules = _flatten_modules(model)
    _check_convertible(modules)
    if not isinstance(calibration_data, torch.Tensor) or not calibration_data.is_floating_point() or calibration_data.dim() < 2:
        raise InvalidInput("calibration data must be a floating-point batch (B, *input_shape) of typical inputs")
    if not bool(torch.isfinite(calibration_data).all()):
        raise InvalidInput("calibration data holds NaN/inf")
    if bool((calibration_data < 0).any()):
        raise InvalidInput("calibration inputs must be non-negative (rate codes carry no sign)")
    input_shape = tuple(calibration_data.shape[1:])
    try:
        stages = _stages(modules, input_shape)
    except RuntimeError as exc:  # torch's own shape error from running a layer on the calibration shape
        raise ShapeError(f"calibration inputs of shape {tuple(calibration_data.shape)} do not fit the model: {exc}") from None
    return from_stages(stages, calibration_data.reshape(calibration_data.shape[0], -1), input_shape, steps, percentile=percentile, max_rate=max_rate)


def from_stages(
    stages: list[Stage], calibration: torch.Tensor, input_shape: tuple[int, ...], steps: int, *, percentile: float = 99.9, max_rate: float = 0.25,
) -> SpikingModel:
    """The spiking model of synaptic ``stages``, normalised on ``calibration`` (B, n_in) non-negative inputs.

    Rueckauer et al. 2017's data-based normalisation: each layer's scale is the ``percentile`` of its (positive)
    activations on the calibration batch; weights and biases are rescaled layer to layer and quantised.
    """
    _check_options(steps, percentile, max_rate)
    x = calibration.to(torch.float64)
    input_scale = float(x.max()) or 1.0
    scales = []
    with torch.no_grad():
        for stage in stages:
            a = _stage_apply(stage, x)
            positive = a.clamp(min=0) if stage.relu else a.abs()
            scales.append(float(torch.quantile(positive.flatten().float(), percentile / 100.0)) or 1.0)
            x = a.clamp(min=0) if stage.relu else a
    spiking, vths, exps, werr = [], [], [], []
    clipped = 0
    previous = input_scale
    for stage, scale in zip(stages, scales):
        w_norm = stage.weight * previous / scale
        vth, exp = _choose_threshold(float(w_norm.abs().max()))
        q = quantize_weights(w_norm * vth, 2.0**exp)
        exp += q.weight_exp
        n_out = math.prod(stage.out_shape)
        b_norm = stage.bias * max_rate / scale
        bias = b_norm if stage.kind == "dense" else b_norm.repeat_interleave(n_out // b_norm.numel())
        if stage.kind == "dense":
            synapse = DenseSynapse(q.mantissa, exp)
        else:
            args = {k: tuple(v) if isinstance(v, (tuple, list)) else v for k, v in stage.conv_args.items()}
            synapse = ConvSynapse(q.mantissa, tuple(stage.in_shape), weight_exp=exp, **args)
        spiking.append(SpikingStage(synapse, vth, bias))
        vths.append(vth)
        exps.append(exp)
        werr.append(q.rel_error)
        clipped += q.clipped
        previous = scale
    report = ConversionReport(input_scale, scales, vths, exps, werr, clipped)
    return SpikingModel(spiking, input_scale, scales[-1], input_shape, steps, report, max_rate, relu_output=stages[-1].relu)
