"""Intel Loihi 2: a bit-accurate spiking engine, lava-nc as the vendor runtime, and ANN-to-SNN conversion."""

from hal.drivers.loihi2.driver import Loihi2Device

__all__ = ["Loihi2Device"]
