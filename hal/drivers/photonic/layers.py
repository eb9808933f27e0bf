"""PhotonicLinear: a model's Linear layers on the photonic processor (``hal.nn.convert(model, "photonic:0")``).

A ``PhotonicLinear`` is an ``nn.Linear`` whose ``eval()`` forward pass runs through a Program of the photonic
device (``hal.device(uri).prepare(OpSpec("linear", ...))``, the public contract only; ``hal_program()`` is the hal.nn
protocol): its weight is written to the meshes once and rewritten only when it changes (in place, by ``.data =``, or
a new parameter) or the Program is invalidated (``hal.programs.Reprogrammer``). In ``train()`` mode the layer is the
digital ``nn.Linear`` (the optics have no backward pass); train, then ``eval()`` to deploy. A backward through an
eval-mode forward raises UnsupportedOp. ``photonic_twin`` builds one from an ``nn.Linear``
(``PhotonicDevice.convert_module``).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from hal import registry
from hal.device import Device, OpSpec, Program, TensorSpec
from hal.errors import InvalidInput, UnsupportedOp
from hal.programs import Reprogrammer, without_gradient

ACTIVATIONS = ("none", "relu")


class PhotonicLinear(nn.Linear):
    """``nn.Linear`` whose inference runs on a photonic device (``device_uri``, default ``photonic:0``); ``activation``
    "relu" is applied electronically after detection."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device_uri: str = "photonic:0", activation: str = "none", dtype: torch.dtype | None = None):
        if activation not in ACTIVATIONS:
            raise InvalidInput(f"PhotonicLinear activation must be one of {ACTIVATIONS}, got {activation!r}")
        super().__init__(in_features, out_features, bias, dtype=dtype)
        self.device_uri = device_uri
        self.activation = activation
        self._resident = Reprogrammer()

    def hal_program(self) -> Program:
        """The Program holding this layer's weight as mesh phases (programmed now if the weight changed)."""
        params = {"weight": self.weight.detach(), "bias": None if self.bias is None else self.bias.detach()}
        return self._resident.program(params, self._prepare)

    def _prepare(self, params: Mapping[str, torch.Tensor | None]) -> Program:
        dtype = self.weight.dtype
        specs = {k: None if v is None else TensorSpec(tuple(v.shape), dtype) for k, v in params.items()}
        op = OpSpec("linear", [TensorSpec((None, self.in_features), dtype)], specs, {"activation": self.activation})
        return registry.open_device(self.device_uri).prepare(op, params)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            y = F.linear(x, self.weight, self.bias)
            return F.relu(y) if self.activation == "relu" else y
        flat = x.reshape(-1, self.in_features).to(self.weight.dtype)
        out = without_gradient(self.hal_program()(flat.detach()), (x, self.weight), f"PhotonicLinear on {self.device_uri}")
        return out.reshape(*x.shape[:-1], self.out_features).to(device=x.device, dtype=x.dtype)


def photonic_twin(module: nn.Module, device: Device) -> PhotonicLinear | None:
    """The ``PhotonicLinear`` on ``device`` of an ``nn.Linear`` (weights copied, same mode, dtype and torch device; a
    PhotonicLinear keeps its activation), None for any other module. Raises UnsupportedOp when the device cannot run
    the layer (its reason)."""
    if not isinstance(module, nn.Linear):
        return None
    activation = module.activation if isinstance(module, PhotonicLinear) else "none"
    twin = PhotonicLinear(module.in_features, module.out_features, module.bias is not None, str(device.uri), activation, module.weight.dtype)
    specs = {"weight": module.weight, "bias": module.bias}
    support = device.supports(OpSpec("linear", [TensorSpec((None, module.in_features), module.weight.dtype)], specs, {"activation": activation}))
    if not support:
        raise UnsupportedOp(f"cannot convert {type(module).__name__} to {device.uri}: {support.reason}")
    twin.load_state_dict(module.state_dict())
    twin.train(module.training)
    return twin.to(module.weight.device)
