"""SpikingModule: a ReLU network converted for Loihi 2, as the torch module ``hal.nn.convert`` returns.

``forward`` is the spiking inference: rate-code the batch, run the integer network on the device the URI names
(the bit-accurate engine, or lava with ``?backend=lava``), decode the last layer. What the module computes is
entirely its spiking state, so that state is what ``state_dict`` holds: per layer the 8-bit weight mantissas, the
weight exponent, the threshold mantissa and the bias in thresholds per step, plus the input scale, the output
scale and the rate a neuron fires at its layer's scale. Loading a state dict restores exactly that network (the
layers' shapes, kernels and strides are the architecture, fixed at conversion). The float weights of the source
model are not part of it: thresholds were set for them on calibration data, so new float weights need a new
conversion. Changing a buffer in place rebuilds the network before the next forward.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from hal import registry
from hal.device import Cost
from hal.drivers.loihi2.conversion import ConversionReport, SpikingModel, SpikingStage
from hal.drivers.loihi2.engine import DenseSynapse
from hal.drivers.loihi2.mapper import Mapping
from hal.errors import InvalidInput, UnsupportedOp
from hal.programs import ResidentWeights


class SpikingLayer(nn.Module):
    """One converted layer's state (buffers) and its architecture (the synapse it was built with)."""

    def __init__(self, stage: SpikingStage):
        super().__init__()
        self.register_buffer("weight_mantissa", stage.synapse.weights.detach().clone())
        self.register_buffer("weight_exp", torch.tensor(stage.synapse.weight_exp, dtype=torch.int64))
        self.register_buffer("vth", torch.tensor(stage.vth, dtype=torch.int64))
        self.register_buffer("bias_per_step", stage.bias_per_step.detach().to(torch.float64).clone())
        self._synapse = stage.synapse  # the architecture: dense or conv, input map, kernel, stride, padding

    def stage(self) -> SpikingStage:
        """The layer as the converter's SpikingStage, from the current buffers."""
        synapse = dataclasses.replace(self._synapse, weights=self.weight_mantissa.to(torch.int64).cpu(), weight_exp=int(self.weight_exp))
        return SpikingStage(synapse, int(self.vth), self.bias_per_step.to(torch.float64).cpu())

    def extra_repr(self) -> str:
        kind = "dense" if isinstance(self._synapse, DenseSynapse) else "conv"
        return f"{kind}, {self._synapse.n_in} -> {self._synapse.n_out} neurons"


class _NoSpikingGradient(torch.autograd.Function):
    """Identity forward; a backward that says the spiking network has no gradient to give."""

    @staticmethod
    def forward(ctx: Any, out: torch.Tensor, x: torch.Tensor, what: str) -> torch.Tensor:
        ctx.what = what
        return out.view_as(out)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, None, None]:
        raise UnsupportedOp(f"{ctx.what} is an integer spiking network and has no gradient; train the float model, then convert it again")


class SpikingModule(nn.Module):
    """A converted network on ``device_uri``: ``forward(x, steps=None)`` returns the decoded outputs (B, n_out).

    ``steps`` defaults to the steps it was converted for. After a call, ``last_run`` holds the engine's event
    counts (``synaptic_ops``, ``neuron_updates``, ``spike_total``) and ``last_cost`` their latency and energy;
    ``placement`` is the mapping of its layers onto the device's neuro cores; ``report`` what conversion decided
    (None once a state dict was loaded: it described the float weights of the conversion).
    """

    def __init__(self, spiking: SpikingModel, device_uri: str, placement: Mapping):
        super().__init__()
        self.device_uri = device_uri
        self.placement = placement
        self.steps = spiking.steps
        self.input_shape = spiking.input_shape
        self.relu_output = spiking.relu_output
        self.report: ConversionReport | None = spiking.report
        self.layers = nn.ModuleList(SpikingLayer(stage) for stage in spiking.stages)
        self.register_buffer("input_scale", torch.tensor(spiking.input_scale, dtype=torch.float64))
        self.register_buffer("output_scale", torch.tensor(spiking.output_scale, dtype=torch.float64))
        self.register_buffer("max_rate", torch.tensor(spiking.max_rate, dtype=torch.float64))
        self.last_run: Any = None
        self.last_cost: Cost | None = None
        self._spiking = spiking
        self._built_from = ResidentWeights(self._state())

    def _state(self) -> dict[str, torch.Tensor]:
        return dict(self.named_buffers())

    @property
    def spiking(self) -> SpikingModel:
        """The engine's model of the current buffers (rebuilt when a buffer changed since it was built)."""
        state = self._state()
        if not self._built_from.matches(state):
            stages = [layer.stage() for layer in self.layers]
            self._spiking = SpikingModel(
                stages, float(self.input_scale), float(self.output_scale), self.input_shape, self.steps, None, float(self.max_rate), self.relu_output,
            )
            self._built_from = ResidentWeights(state)
        return self._spiking

    def forward(self, x: torch.Tensor, steps: int | None = None) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise InvalidInput(f"a spiking model takes a floating-point batch (B, {', '.join(map(str, self.input_shape))}), got {type(x).__name__ if not isinstance(x, torch.Tensor) else x.dtype}")
        device = registry.open_device(self.device_uri)
        with torch.no_grad():
            out, run, cost = device.run_spiking(self.spiking, x.detach(), steps or self.steps, self.placement)
        self.last_run, self.last_cost = run, cost
        out = out.to(x.device)
        if torch.is_grad_enabled() and x.requires_grad:
            out = _NoSpikingGradient.apply(out, x, f"the spiking model on {self.device_uri}")
        return out

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        """Restore a spiking state saved from a module of the same architecture (see the module docstring)."""
        mine = set(self.state_dict())
        given = set(state_dict)
        if strict and given != mine:
            missing, unexpected = sorted(mine - given), sorted(given - mine)
            raise InvalidInput(
                f"this state dict does not describe this spiking network (missing {missing[:4]}, unexpected {unexpected[:4]}): it holds spiking "
                "parameters (weight mantissas, thresholds, scales). To run other float weights, load them into the float model and convert it again "
                "with calibration data"
            )
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self.report = None
        return result

    def extra_repr(self) -> str:
        return f"on {self.device_uri}, {self.steps} steps, input {self.input_shape}"
