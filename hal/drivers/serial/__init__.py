"""Boards over a serial link: the wire protocol, its transport, the board emulator, and BoardDevice.

Reading order: ``driver.py`` (the Device) and the parts it owns: ``slots.py`` (which matrix is in which board
slot), ``compiler.py`` (an OpSpec as a write-verified slot and RUN requests), ``cost.py`` (estimates),
``capabilities.py`` (what the board declares); then ``client.py`` (request/response, chunked transfers,
selective repeat), ``protocol.py`` and ``framing.py`` (the bytes), ``transport.py`` (ports, ptys, sockets),
``board.py`` + ``firmware.py`` + ``transfer.py`` + ``faults.py`` (the emulator), ``discovery.py`` (which
opted-in ports answer).
"""

from hal.drivers.serial.driver import BoardDevice

__all__ = ["BoardDevice"]
