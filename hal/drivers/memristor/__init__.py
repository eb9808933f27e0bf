"""Memristor (PCM crossbar) emulator: ``hal.device("memristor:0")``; ``hal.nn.convert(model, "memristor:0")`` for analog layers.

Read top-down: ``driver.py`` (the Device), ``allocator.py`` (tile ownership), ``compiler.py`` (OpSpec -> programmed
tiles, the Programs), ``cost.py`` (latency, energy, error of a call), ``accuracy.py`` (the expected error derived from
the configuration), ``capabilities.py`` (what the device declares), ``tile.py`` (tiles, DAC, analog MVM, ADC),
``pcm.py`` (device physics), ``energy.py`` (energy and latency counters), ``config.py`` (every parameter and its
source), ``layers.py`` (AnalogLinear / AnalogConv2d modules and hardware-aware training), ``chain.py`` (claimed chains
of linear layers, analog between tiles).
"""

from hal.drivers.memristor.compiler import MemristorProgram
from hal.drivers.memristor.config import CrossbarConfig, EnergyConstants, NonIdealities, PcmStatistics, TileConfig
from hal.drivers.memristor.driver import MemristorDevice
from hal.drivers.memristor.layers import AnalogConv2d, AnalogLinear

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
]
