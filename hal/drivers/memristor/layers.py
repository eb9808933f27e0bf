"""Crossbar-backed torch layers: AnalogLinear, AnalogConv2d and hardware-aware training.

``hal.nn.convert(model, "memristor:0", noise_scale=1.0, noise_age_s=0.0)`` builds them (``analog_twin``, called by
``MemristorDevice.convert_module``). In ``eval()`` mode a layer programs its weight onto a memristor device (through
the public contract: ``registry.open_device(uri).prepare(...)``; ``hal_program()`` is the hal.nn protocol) and runs
every forward pass through that Program: DACs, drifted noisy conductances, ADCs. The weight is reprogrammed only when
it changed (written in place, its ``.data`` replaced, or the parameter itself replaced) or its tiles were
overwritten (``hal.programs.Reprogrammer``). A backward through an eval-mode forward raises UnsupportedOp.

In ``train()`` mode the forward pass is digital with *noise injection* (hardware-aware training, as in Joshi et
al., Nat. Commun. 2020): each weight is perturbed by Gaussian noise of the std the PCM model predicts for its
conductance (programming noise plus the 1/f noise of a read at t0), so the network learns weights that tolerate
the analog errors. Gradients flow through the clean weight (the noise is a constant of each step).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hal import registry
from hal.device import Device, OpSpec, Program, TensorSpec
from hal.drivers.memristor import pcm
from hal.drivers.memristor.config import CrossbarConfig
from hal.errors import InvalidInput, UnsupportedOp
from hal.programs import Reprogrammer, without_gradient

#: The options ``hal.nn.convert(model, "memristor:0", ...)`` takes, with their meaning.
CONVERSION_OPTIONS = {
    "noise_scale": "the std of the weight noise injected in train() mode, in units of the PCM model's (default 1; 0: plain training)",
    "noise_age_s": "seconds after t0 whose read noise and drift spread training prepares for (default 0)",
}


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
    weight: torch.Tensor
    bias: torch.Tensor | None

    def _setup(self, device_uri: str, noise_scale: float, noise_age_s: float) -> None:
        for name, value in (("noise_scale", noise_scale), ("noise_age_s", noise_age_s)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 or math.isinf(value):
                raise InvalidInput(f"{name} must be a finite number >= 0, got {value!r}")
        self.device_uri = device_uri
        self.noise_scale = float(noise_scale)
        self.noise_age_s = float(noise_age_s)
        self._resident = Reprogrammer()

    @property
    def hal_device(self) -> Device:
        return registry.open_device(self.device_uri)

    def hal_program(self) -> Program:
        """The Program holding this layer's weight, programmed now if the weight changed or was overwritten."""
        params = {"weight": self.weight.detach(), "bias": None if self.bias is None else self.bias.detach()}
        return self._resident.program(params, lambda p: self.hal_device.prepare(self._op_spec(), p))  # type: ignore[attr-defined]

    def reprogram(self) -> None:
        """Give this layer's tiles back; the next eval-mode forward programs the weight again (a new device draw)."""
        program = self._resident.forget()
        release = getattr(program, "release", None)  # MemristorProgram frees its tiles; other hosts may not
        if release is not None and program.valid:
            release()

    def _on_device(self, x: torch.Tensor) -> torch.Tensor:
        out = self.hal_program()(x.detach())
        return without_gradient(out, (x, self.weight), f"{type(self).__name__} on {self.device_uri}")

    def _noisy_weight(self) -> torch.Tensor:
        if self.noise_scale == 0:
            return self.weight
        config = getattr(self.hal_device, "config", CrossbarConfig())
        flat = self.weight.reshape(self.weight.shape[0], -1)
        std = weight_noise_std(flat, config, self.noise_scale, self.noise_age_s).view_as(self.weight)
        return self.weight + std * torch.randn_like(self.weight)

    def _specs(self) -> dict[str, TensorSpec | None]:
        dtype = self.weight.dtype
        return {"weight": TensorSpec(tuple(self.weight.shape), dtype), "bias": None if self.bias is None else TensorSpec(tuple(self.bias.shape), dtype)}


class AnalogLinear(nn.Linear, _AnalogLayer):
    """``nn.Linear`` whose inference runs on a memristor crossbar (``device_uri``) and trains noise-aware."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device_uri: str = "memristor:0",
        noise_scale: float = 1.0,
        noise_age_s: float = 0.0,
        dtype: torch.dtype | None = None,
    ):
        super().__init__(in_features, out_features, bias, dtype=dtype)
        self._setup(device_uri, noise_scale, noise_age_s)

    def _op_spec(self) -> OpSpec:
        return OpSpec("linear", [TensorSpec((None, self.in_features), self.weight.dtype)], self._specs())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return F.linear(x, self._noisy_weight(), self.bias)
        flat = x.reshape(-1, self.in_features).to(self.weight.dtype)
        return self._on_device(flat).reshape(*x.shape[:-1], self.out_features).to(x.dtype)


class AnalogConv2d(nn.Conv2d, _AnalogLayer):
    """``nn.Conv2d`` whose inference runs on a memristor crossbar (im2col) and trains noise-aware."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Any,
        stride: Any = 1,
        padding: Any = 0,
        dilation: Any = 1,
        groups: int = 1,
        bias: bool = True,
        device_uri: str = "memristor:0",
        noise_scale: float = 1.0,
        noise_age_s: float = 0.0,
        dtype: torch.dtype | None = None,
    ):
        if isinstance(padding, str):
            raise InvalidInput(f"AnalogConv2d takes numeric padding, got {padding!r}; give the padding in pixels")
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, dtype=dtype)
        self._setup(device_uri, noise_scale, noise_age_s)

    def _op_spec(self) -> OpSpec:
        attrs = {"stride": tuple(self.stride), "padding": tuple(self.padding), "dilation": tuple(self.dilation), "groups": self.groups}
        return OpSpec("conv2d", [TensorSpec((None, self.in_channels, None, None), self.weight.dtype)], self._specs(), attrs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return F.conv2d(x, self._noisy_weight(), self.bias, self.stride, self.padding, self.dilation, self.groups)
        return self._on_device(x.to(self.weight.dtype)).to(x.dtype)


def analog_twin(module: nn.Module, device: Device, noise_scale: float = 1.0, noise_age_s: float = 0.0) -> nn.Module | None:
    """The crossbar twin on ``device`` of an ``nn.Linear`` / ``nn.Conv2d`` (weights copied, same mode, dtype and torch
    device), None for any other module. Raises UnsupportedOp when the device cannot run the layer (its reason)."""
    uri = str(device.uri)
    if isinstance(module, nn.Linear):
        twin: AnalogLinear | AnalogConv2d = AnalogLinear(module.in_features, module.out_features, module.bias is not None, uri, noise_scale, noise_age_s, module.weight.dtype)
    elif isinstance(module, nn.Conv2d):
        if module.padding_mode != "zeros" or isinstance(module.padding, str):
            raise UnsupportedOp(f"{uri}: Conv2d with padding {module.padding!r} / padding_mode {module.padding_mode!r} has no crossbar twin; use numeric zero padding")
        twin = AnalogConv2d(
            module.in_channels, module.out_channels, module.kernel_size, module.stride, module.padding, module.dilation, module.groups,
            module.bias is not None, uri, noise_scale, noise_age_s, module.weight.dtype,
        )
    else:
        return None
    support = device.supports(twin._op_spec())
    if not support:
        raise UnsupportedOp(f"cannot convert {type(module).__name__} to {uri}: {support.reason}")
    twin.load_state_dict(module.state_dict())
    twin.train(module.training)
    return twin.to(module.weight.device)
