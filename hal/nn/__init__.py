"""Torch modules for hal devices: ``convert(model, uri)`` for every device, and the generic device layers.

    analog = hal.nn.convert(model, "memristor:0?tile=256")   # layers become device layers
    analog.eval(); analog(x); analog.program_weights()

It sits beside the runtime: both reach devices only through ``hal.registry``.
"""

from hal.nn.convert import DeviceModel, convert
from hal.nn.layers import DeviceConv2d, DeviceLinear

__all__ = ["DeviceConv2d", "DeviceLinear", "DeviceModel", "convert"]
