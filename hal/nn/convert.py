"""``hal.nn.convert(model, uri)``: one front end that takes a torch model to any hal device.

The device is asked first for a twin of the whole model (``Device.convert_module``: Loihi 2 turns a
ReLU network into a spiking one at once), then layer by layer: a layer the device has a twin for
becomes that (a crossbar's noise-aware ``AnalogLinear``, a photonic mesh layer), a Linear / Conv2d it
merely supports becomes hal.nn's generic device layer, anything else stays as it is and runs on the
host. The result is a ``DeviceModel``: it runs like the original, ``state_dict`` round-trips with the
original's keys, and it forwards the device's own verbs (``elapse`` on a crossbar, ...).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from typing import Any

from torch import nn

from hal import registry
from hal.device import Device
from hal.errors import InvalidInput, UnsupportedOp
from hal.nn.layers import generic_twin


class DeviceModel(nn.Module):
    """A model converted for one device: the converted module, the device, and the device's verbs."""

    def __init__(self, module: nn.Module, device: Device):
        super().__init__()
        self.module = module
        self.__dict__["device"] = device  # not a submodule: the device is shared, never copied into state_dict

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)

    def device_layers(self) -> Iterator[tuple[str, nn.Module]]:
        """(name, layer) for every layer that runs on the device (those with ``hal_program``)."""
        for name, m in self.module.named_modules():
            if callable(getattr(m, "hal_program", None)):
                yield name, m

    def program_weights(self) -> int:
        """Program every device layer's current weights now (instead of at its first eval forward); returns how many."""
        layers = list(self.device_layers())
        for _, layer in layers:
            layer.hal_program()
        return len(layers)

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return self.module.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        return self.module.load_state_dict(state_dict, strict=strict, assign=assign)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            device = self.__dict__.get("device")
            if device is not None and name in type(device).MODULE_VERBS:
                return getattr(device, name)
            verbs = ", ".join(type(device).MODULE_VERBS) if device is not None else ""
            raise AttributeError(f"{type(self).__name__} on {device} has no attribute {name!r}" + (f"; the device's verbs are: {verbs}" if verbs else "")) from None


def convert(model: nn.Module, uri: str | Device, layers: Sequence[type[nn.Module]] | None = None, inplace: bool = False, **options: Any) -> DeviceModel:
    """Convert ``model`` for the device ``uri``; ``layers`` limits which layer types convert (default: all it can).

    ``options`` go to the device's own converter (``noise_scale`` for a crossbar, ``calibration`` data for
    Loihi 2...); a device refuses options it does not know. Raises UnsupportedOp when nothing of the model
    can run on the device, naming the device's reason.
    """
    device = uri if isinstance(uri, Device) else registry.open_device(uri)
    if not isinstance(model, nn.Module):
        raise InvalidInput(f"hal.nn.convert takes a torch.nn.Module, got {type(model).__name__}")
    if layers is not None and not all(isinstance(t, type) and issubclass(t, nn.Module) for t in layers):
        raise InvalidInput(f"layers must be torch.nn.Module classes (e.g. [nn.Linear]), got {layers!r}")
    target = model if inplace else copy.deepcopy(model)
    whole = _twin(target, device, layers, options)  # the whole model first (a spiking network), or a bare layer
    if whole is not None:
        return DeviceModel(whole, device)
    if _convert_children(target, device, layers, options) == 0:
        among = f" among {[t.__name__ for t in layers]}" if layers else ""
        raise UnsupportedOp(f"nothing in {type(model).__name__} converts to {device.uri}: it has no layer of a type the device runs{among}")
    return DeviceModel(target, device)


def _twin(module: nn.Module, device: Device, layers: Sequence[type[nn.Module]] | None, options: dict[str, Any]) -> nn.Module | None:
    if layers is not None and not isinstance(module, tuple(layers)):
        return None
    own = device.convert_module(module, **options)
    return own if own is not None else generic_twin(module, device)


def _convert_children(parent: nn.Module, device: Device, layers: Sequence[type[nn.Module]] | None, options: dict[str, Any]) -> int:
    count = 0
    for name, child in list(parent.named_children()):
        twin = _twin(child, device, layers, options)
        if twin is not None:
            setattr(parent, name, twin)
            count += 1
        else:
            count += _convert_children(child, device, layers, options)
    return count
