"""Torch modules for hal devices: ``convert(model, uri)`` for every device, the generic device layers, and the
modules drivers provide by name (``QuantumLayer``, through the ``hal.modules`` entry-point group).

    analog = hal.nn.convert(model, "memristor:0?tile=256")   # layers become device layers
    analog.eval(); analog(x); analog.program_weights()
    qlayer = hal.nn.QuantumLayer(n_qubits=4, device="ibm_qpu:aer")

It sits beside the runtime: both reach devices only through ``hal.registry``.
"""

from typing import Any

from hal import registry
from hal.nn.convert import DeviceModel, convert
from hal.nn.layers import DeviceConv2d, DeviceLinear

__all__ = ["DeviceConv2d", "DeviceLinear", "DeviceModel", "convert", *registry.module_names()]


def __getattr__(name: str) -> Any:
    """A module class a driver provides (``QuantumLayer`` from the IBM quantum driver), loaded on first use."""
    if name in registry.module_names():
        return registry.load_module(name)
    raise AttributeError(f"module 'hal.nn' has no attribute {name!r}")
