"""Memristor (PCM crossbar) emulator: ``hal.device("memristor:0")`` and ``convert(model)`` for analog layers.

Read top-down: ``driver.py`` (the Device), ``allocator.py`` (tile ownership), ``compiler.py`` (OpSpec -> programmed
tiles, the Programs), ``cost.py`` (latency, energy, error of a call), ``accuracy.py`` (the expected error derived from
the configuration), ``capabilities.py`` (what the device declares), ``tile.py`` (tiles, DAC, analog MVM, ADC),
``pcm.py`` (device physics), ``energy.py`` (energy and latency counters), ``config.py`` (every parameter and its
source), ``layers.py`` (AnalogLinear / AnalogConv2d modules and hardware-aware training).
"""

from hal.drivers.memristor.compiler import MemristorProgram
from hal.drivers.memristor.config import CrossbarConfig, EnergyConstants, NonIdealities, PcmStatistics, TileConfig
from hal.drivers.memristor.driver import MemristorDevice
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
