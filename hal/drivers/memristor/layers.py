"""Crossbar-backed torch layers: AnalogLinear, AnalogConv2d, ``convert(model)`` and hardware-aware training.

In ``eval()`` mode a layer programs its weight onto a memristor device (through the public contract:
``registry.open_device(uri).prepare(...)``) and runs every forward pass through that Program: DACs, drifted
noisy conductances, ADCs. The weight is reprogrammed only when it changed (written in place, its ``.data``
replaced, or the parameter itself replaced) or its tiles were overwritten (``hal.programs.Reprogrammer``).

In ``train()`` mode the forward pass is digital with *noise injection* (hardware-aware training, as in Joshi et
al., Nat. Commun. 2020): each weight is perturbed by Gaussian noise of the std the PCM model predicts for its
conductance (programming noise plus the 1/f noise of a read at t0), so the network learns weights that tolerate
the analog errors. Gradients flow through the clean weight (the noise is a constant of each step).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from hal import registry
from hal.device import OpSpec, Program, TensorSpec
from hal.drivers.memristor import pcm
from hal.drivers.memristor.config import CrossbarConfig
from hal.errors import InvalidInput
from hal.programs import Reprogrammer


def weight_noise_std(weight: torch.Tensor, config: CrossbarConfig, scale: float = 1.0, age_s: float = 0.0) -> torch.Tensor:
    """Std of the analog error of each weight (rows = outputs) ``age_s`` after t0, in weight units.

    Each output's weights are mapped to conductances by their largest magnitude (the per-column scale of the
    crossbar). The std combines, in quadrature, the programming noise, the 1/f read noise accumulated to that age
    and the spread of drift across devices, ``g * ln((t0 + age) / t0) * sigma_nu(g)`` (first order in nu; global
    compensation removes the mean decay).
    """
    tile, model = config.tile, config.pcm
    w = weight.detach()
    column_scale = w.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12)
    span = tile.g_max_us - tile.g_min_us
    g = tile.g_min_us + span * (w.abs() / column_scale)
    programming = pcm.programming_sigma_us(g, tile.g_max_us, model)
    reading = g * pcm.read_noise_sigma(g, tile.g_max_us, age_s, model)
    _, nu_sigma = pcm.drift_exponent_statistics(g, tile.g_max_us, model)
    drifting = g * math.log((model.drift_reference_time_s + age_s) / model.drift_reference_time_s) * nu_sigma
    return scale * torch.sqrt(programming**2 + reading**2 + drifting**2) / span * column_scale


class _AnalogLayer:
    """Shared machinery: the hal device, the current Program and when it must be reprogrammed."""

    device_uri: str
    noise_scale: float
    noise_age_s: float

    def _setup(self, device_uri: str, noise_scale: float, noise_age_s: float) -> None:
        for name, value in (("noise_scale", noise_scale), ("noise_age_s", noise_age_s)):
            if not value >= 0 or math.isinf(value):
                raise InvalidInput(f"{name} must be a finite number >= 0, got {value!r}")
        self.device_uri = device_uri
        self.noise_scale = noise_scale
        self.noise_age_s = noise_age_s
        self._resident = Reprogrammer()

    @property
    def hal_device(self):
        return registry.open_device(self.device_uri)

    def analog_program(self) -> Program:
        """The Program holding this layer's weight, programmed now if the weight changed or was overwritten."""
        return self._resident.program({"weight": self.weight, "bias": self.bias}, lambda params: self.hal_device.prepare(self._op_spec(), params))

    def reprogram(self) -> None:
        """Give this layer's tiles back; the next eval-mode forward programs the weight again (a new device draw)."""
        program = self._resident.forget()
        release = getattr(program, "release", None)  # MemristorProgram frees its tiles; other hosts may not
        if release is not None and program.valid:
            release()

    def _noisy_weight(self) -> torch.Tensor:
        if self.noise_scale == 0:
            return self.weight
        config = getattr(self.hal_device, "config", CrossbarConfig())
        flat = self.weight.reshape(self.weight.shape[0], -1)
        std = weight_noise_std(flat, config, self.noise_scale, self.noise_age_s).view_as(self.weight)
        return self.weight + std * torch.randn_like(self.weight)


class AnalogLinear(nn.Linear, _AnalogLayer):
    """``nn.Linear`` whose inference runs on a memristor crossbar (``device_uri``) and trains noise-aware."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device_uri: str = "memristor:0", noise_scale: float = 1.0, noise_age_s: float = 0.0):
        super().__init__(in_features, out_features, bias)
        self._setup(device_uri, noise_scale, noise_age_s)

    def _op_spec(self) -> OpSpec:
        dtype = self.weight.dtype
        params = {"weight": TensorSpec(tuple(self.weight.shape), dtype), "bias": None if self.bias is None else TensorSpec(tuple(self.bias.shape), dtype)}
        return OpSpec("linear", [TensorSpec((None, self.in_features), dtype)], params)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return F.linear(x, self._noisy_weight(), self.bias)
        flat = x.reshape(-1, self.in_features).to(self.weight.dtype)
        return self.analog_program()(flat).reshape(*x.shape[:-1], self.out_features).to(x.dtype)


class AnalogConv2d(nn.Conv2d, _AnalogLayer):
    """``nn.Conv2d`` whose inference runs on a memristor crossbar (im2col) and trains noise-aware."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1, groups: int = 1, bias: bool = True, device_uri: str = "memristor:0", noise_scale: float = 1.0, noise_age_s: float = 0.0):
        if isinstance(padding, str):
            raise InvalidInput(f"AnalogConv2d takes numeric padding, got {padding!r}; give the padding in pixels")
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        self._setup(device_uri, noise_scale, noise_age_s)

    def _op_spec(self) -> OpSpec:
        dtype = self.weight.dtype
        params = {"weight": TensorSpec(tuple(self.weight.shape), dtype), "bias": None if self.bias is None else TensorSpec(tuple(self.bias.shape), dtype)}
        attrs = {"stride": tuple(self.stride), "padding": tuple(self.padding), "dilation": tuple(self.dilation), "groups": self.groups}
        return OpSpec("conv2d", [TensorSpec((None, self.in_channels, None, None), dtype)], params, attrs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return F.conv2d(x, self._noisy_weight(), self.bias, self.stride, self.padding, self.dilation, self.groups)
        return self.analog_program()(x.to(self.weight.dtype)).to(x.dtype)


def convert(model: nn.Module, device_uri: str = "memristor:0", noise_scale: float = 1.0, noise_age_s: float = 0.0, inplace: bool = False) -> nn.Module:
    """Swap every ``nn.Linear`` / ``nn.Conv2d`` of ``model`` for its crossbar-backed twin (weights copied).

    ``noise_scale`` scales the training-time noise injection (0: plain training); ``noise_age_s`` is the time after
    t0 whose noise (read noise and drift spread) training prepares for. The converted model trains like the
    original in ``train()`` mode and runs on ``device_uri`` in ``eval()`` mode.
    """
    target = model if inplace else copy.deepcopy(model)
    for name, child in list(target.named_children()):
        replacement = _analog_twin(child, device_uri, noise_scale, noise_age_s)
        if replacement is not None:
            setattr(target, name, replacement)
        else:
            convert(child, device_uri, noise_scale, noise_age_s, inplace=True)
    top = _analog_twin(target, device_uri, noise_scale, noise_age_s)
    return top if top is not None else target


def _analog_twin(module: nn.Module, device_uri: str, noise_scale: float, noise_age_s: float) -> nn.Module | None:
    if isinstance(module, (AnalogLinear, AnalogConv2d)):
        return None
    if isinstance(module, nn.Linear):
        twin = AnalogLinear(module.in_features, module.out_features, module.bias is not None, device_uri, noise_scale, noise_age_s)
    elif isinstance(module, nn.Conv2d):
        if module.padding_mode != "zeros":
            raise InvalidInput(f"convert: Conv2d with padding_mode={module.padding_mode!r} has no crossbar twin; use zero padding")
        twin = AnalogConv2d(module.in_channels, module.out_channels, module.kernel_size, module.stride, module.padding, module.dilation, module.groups, module.bias is not None, device_uri, noise_scale, noise_age_s)
    else:
        return None
    twin.load_state_dict(module.state_dict())
    twin.train(module.training)
    return twin.to(module.weight.device)
