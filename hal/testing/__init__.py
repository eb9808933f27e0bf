"""Test tools shipped with hal so third-party drivers can use them.

``conformance``: the kit every driver subclasses (docs/writing-a-driver.md); ``plugin``: its pytest option
``--hal-conformance-seed``; ``samples``: the operands and error measure it shares with ``hal demo``;
``hil``: the hardware-in-the-loop pytest plugin (docs/hil.md).
"""
