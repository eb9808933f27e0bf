"""Intel Loihi 2: a bit-accurate spiking engine, lava-nc as the vendor runtime, and ANN-to-SNN conversion.

``hal.device("loihi2:0")`` opens the device (``driver.Loihi2Device``); ``hal.nn.convert(model, "loihi2:0",
calibration=x)`` turns a trained ``nn.Sequential`` ReLU network into a spiking ``SpikingModule`` on it
(``conversion.py`` converts, ``module.py`` is the torch module).
"""

from hal.drivers.loihi2.driver import Loihi2Device
from hal.drivers.loihi2.module import SpikingModule

__all__ = ["Loihi2Device", "SpikingModule"]
