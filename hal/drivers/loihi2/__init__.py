"""Intel Loihi 2: a bit-accurate spiking engine, lava-nc as the vendor runtime, and ANN-to-SNN conversion.

``hal.device("loihi2:0")`` opens the device (``driver.Loihi2Device``); ``convert(model, calibration_data, steps=...)``
turns a trained ``nn.Sequential`` into a spiking model on the engine (``conversion.py``).
"""

from hal.drivers.loihi2.conversion import SpikingModel, convert
from hal.drivers.loihi2.driver import Loihi2Device

__all__ = ["Loihi2Device", "SpikingModel", "convert"]
