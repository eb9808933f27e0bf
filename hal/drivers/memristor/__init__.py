"""Memristor (PCM crossbar) emulator: ``hal.device("memristor:0")`` and ``convert(model)`` for analog layers.

Read top-down: ``driver.py`` (the Device and its Programs), ``tile.py`` (tiles, DAC, analog MVM, ADC),
``pcm.py`` (device physics), ``energy.py`` (energy and latency), ``config.py`` (every parameter and its source),
``layers.py`` (AnalogLinear / AnalogConv2d modules and hardware-aware training).
"""

from hal.drivers.memristor.config import CrossbarConfig, EnergyConstants, NonIdealities, PcmStatistics, TileConfig
from hal.drivers.memristor.driver import MemristorDevice, MemristorProgram
from hal.drivers.memristor.layers import AnalogConv2d, AnalogLinear, convert

__all__ = [
    "AnalogConv2d",
    "AnalogLinear",
    "CrossbarConfig",
    "EnergyConstants",
    "MemristorDevice",
    "MemristorProgram",
    "NonIdealities",
    "PcmStatistics",
    "TileConfig",
    "convert",
]
