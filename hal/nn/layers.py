"""Generic device layers: ``nn.Linear`` / ``nn.Conv2d`` whose inference runs as a Program on any hal device.

A device with torch layers of its own (a crossbar's noise-aware ``AnalogLinear``, Loihi's spiking network)
provides them through ``Device.convert_module``; every other device that supports ``linear`` / ``conv2d``
gets these. ``train()`` mode computes digitally with torch (the device has no training path of its own);
``eval()`` mode runs the device Program, prepared once and again only when the weight changed
(``hal.programs.Reprogrammer``). A backward through an eval-mode device forward raises ``UnsupportedOp``
naming the device: the device computed the result, it has no gradient to give.

Not thread-safe: one layer object is driven from one thread at a time, like the torch modules it extends.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hal import registry
from hal.device import Device, OpSpec, Program, TensorSpec
from hal.errors import UnsupportedOp
from hal.programs import Reprogrammer, without_gradient


class _DeviceLayer:
    """What both generic layers share: the device, the Program kept up to date, the grad guard."""

    device_uri: str
    weight: torch.Tensor
    bias: torch.Tensor | None

    def _setup(self, device_uri: str) -> None:
        self.device_uri = device_uri
        self._programs = Reprogrammer()

    @property
    def hal_device(self) -> Device:
        return registry.open_device(self.device_uri)

    def hal_program(self) -> Program:
        """The device Program of this layer's current weights (programmed now if they changed)."""
        params: Mapping[str, torch.Tensor | None] = {"weight": self.weight.detach(), "bias": None if self.bias is None else self.bias.detach()}
        return self._programs.program(params, lambda p: self.hal_device.prepare(self._op_spec(), p))  # type: ignore[attr-defined]

    def _on_device(self, x: torch.Tensor) -> torch.Tensor:
        sources = [x, self.weight] + ([] if self.bias is None else [self.bias])
        return without_gradient(self.hal_program()(x), sources, f"{type(self).__name__} on {self.device_uri}")

    def _specs(self) -> dict[str, TensorSpec | None]:
        return {"weight": TensorSpec(tuple(self.weight.shape), self.weight.dtype), "bias": None if self.bias is None else TensorSpec(tuple(self.bias.shape), self.bias.dtype)}


class DeviceLinear(nn.Linear, _DeviceLayer):
    """``nn.Linear`` run on ``device_uri`` in eval mode (any batch shape), digitally in train mode."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device_uri: str = "cpu:0", dtype: torch.dtype | None = None):
        super().__init__(in_features, out_features, bias, dtype=dtype)
        self._setup(device_uri)

    def _op_spec(self) -> OpSpec:
        return OpSpec("linear", [TensorSpec((None, self.in_features), self.weight.dtype)], self._specs())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return F.linear(x, self.weight, self.bias)
        flat = x.reshape(-1, self.in_features)
        return self._on_device(flat).reshape(*x.shape[:-1], self.out_features)


class DeviceConv2d(nn.Conv2d, _DeviceLayer):
    """``nn.Conv2d`` (zero padding) run on ``device_uri`` in eval mode, digitally in train mode."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Any, stride: Any = 1, padding: Any = 0, dilation: Any = 1, groups: int = 1, bias: bool = True, device_uri: str = "cpu:0", dtype: torch.dtype | None = None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, dtype=dtype)
        self._setup(device_uri)

    def _op_spec(self) -> OpSpec:
        attrs = {"stride": tuple(self.stride), "padding": tuple(self.padding), "dilation": tuple(self.dilation), "groups": self.groups}
        return OpSpec("conv2d", [TensorSpec((None, self.in_channels, None, None), self.weight.dtype)], self._specs(), attrs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        return self._on_device(x)


def generic_twin(module: nn.Module, device: Device) -> nn.Module | None:
    """The generic device layer for a Linear / Conv2d whose op ``device`` supports; None for other modules.

    Raises UnsupportedOp with the device's reason when the device cannot run the layer's op.
    """
    if isinstance(module, (DeviceLinear, DeviceConv2d)):
        return None
    if isinstance(module, nn.Linear):
        twin: nn.Module = DeviceLinear(module.in_features, module.out_features, module.bias is not None, str(device.uri), module.weight.dtype)
    elif isinstance(module, nn.Conv2d):
        if module.padding_mode != "zeros" or isinstance(module.padding, str):
            raise UnsupportedOp(f"{device.uri}: Conv2d with padding {module.padding!r} / padding_mode {module.padding_mode!r} has no device twin; use numeric zero padding")
        twin = DeviceConv2d(module.in_channels, module.out_channels, module.kernel_size, module.stride, module.padding, module.dilation, module.groups, module.bias is not None, str(device.uri), module.weight.dtype)
    else:
        return None
    support = device.supports(twin._op_spec())
    if not support:
        raise UnsupportedOp(f"cannot convert {type(module).__name__} to {device.uri}: {support.reason}")
    twin.load_state_dict(module.state_dict())
    twin.train(module.training)
    return twin
