"""Boards over a serial link: the wire protocol, its transport, the board emulator, and BoardDevice.

Reading order: ``driver.py`` (the Device), ``client.py`` (request/response), ``protocol.py`` and
``framing.py`` (the bytes), ``transport.py`` (ports, ptys, sockets), ``board.py`` + ``firmware.py`` +
``faults.py`` (the emulator), ``discovery.py`` (which ports answer).
"""

from hal.drivers.serial.driver import BoardDevice

__all__ = ["BoardDevice"]
