"""PhotonicLinear and ``convert(model)``: run a model's Linear layers on the photonic processor.

A ``PhotonicLinear`` is an ``nn.Linear`` whose ``eval()`` forward pass runs through a Program of the photonic
device (``hal.device(uri).prepare(OpSpec("linear", ...))``, the public contract only): its weight is written
to the meshes once and rewritten only when it changes (in place, by ``.data =``, or a new parameter) or the
Program is invalidated (``hal.programs.Reprogrammer``). In ``train()`` mode the
layer is the digital ``nn.Linear`` (the optics have no backward pass); train, then ``eval()`` to deploy.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from hal import registry
from hal.device import OpSpec, Program, TensorSpec
from hal.programs import Reprogrammer


class PhotonicLinear(nn.Linear):
    """``nn.Linear`` whose inference runs on a photonic device (``device_uri``, default ``photonic:0``)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device_uri: str = "photonic:0", activation: str = "none"):
        super().__init__(in_features, out_features, bias)
        self.device_uri = device_uri
        self.activation = activation
        self._resident = Reprogrammer()

    def photonic_program(self) -> Program:
        """The Program holding this layer's weight as mesh phases (programmed now if the weight changed)."""
        return self._resident.program({"weight": self.weight, "bias": self.bias}, self._prepare)

    def _prepare(self, params) -> Program:
        dtype = self.weight.dtype
        specs = {k: None if v is None else TensorSpec(tuple(v.shape), dtype) for k, v in params.items()}
        op = OpSpec("linear", [TensorSpec((None, self.in_features), dtype)], specs, {"activation": self.activation})
        return registry.open_device(self.device_uri).prepare(op, params)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            y = F.linear(x, self.weight, self.bias)
            return F.relu(y) if self.activation == "relu" else y
        flat = x.reshape(-1, self.in_features).to(self.weight.dtype)
        out = self.photonic_program()(flat)
        return out.reshape(*x.shape[:-1], self.out_features).to(device=x.device, dtype=x.dtype)


def convert(model: nn.Module, device_uri: str = "photonic:0", inplace: bool = False) -> nn.Module:
    """Swap every ``nn.Linear`` of ``model`` for a ``PhotonicLinear`` on ``device_uri`` (weights copied).

    The converted model trains digitally in ``train()`` mode and runs on the photonic device in ``eval()``.
    """
    target = model if inplace else copy.deepcopy(model)
    if isinstance(target, nn.Linear) and not isinstance(target, PhotonicLinear):
        return _twin(target, device_uri)
    for name, child in list(target.named_children()):
        if isinstance(child, nn.Linear) and not isinstance(child, PhotonicLinear):
            setattr(target, name, _twin(child, device_uri))
        else:
            convert(child, device_uri, inplace=True)
    return target


def _twin(module: nn.Linear, device_uri: str) -> PhotonicLinear:
    twin = PhotonicLinear(module.in_features, module.out_features, module.bias is not None, device_uri)
    twin.load_state_dict(module.state_dict())
    twin.train(module.training)
    return twin.to(module.weight.device)
