"""The conformance kit must fail a device that breaks the contract (a kit that cannot fail tests nothing)."""

import pytest
import torch

import hal
from hal import registry
from hal.drivers.cpu import CpuDevice
from hal.testing.conformance import DeviceConformance


class SloppyDevice(CpuDevice):
    """Adds 1% noise to every result but declares float32 tolerance 1e-4."""

    kind = "sloppy"

    def _compile(self, op, params):
        program = super()._compile(op, params)
        inner = program.run
        program.run = lambda *inputs: (lambda y: y + 0.01 * y.abs().mean() * torch.randn_like(y))(inner(*inputs))
        return program


@pytest.fixture
def sloppy(monkeypatch):
    table = dict(registry.drivers())
    table["sloppy"] = registry.DriverEntry("sloppy", "test_conformance:SloppyDevice")
    monkeypatch.setattr(registry, "_drivers", table)
    yield
    hal.device("sloppy:0").close()


def test_kit_catches_results_outside_the_declared_tolerance(sloppy):
    kit = DeviceConformance()
    kit.uri = "sloppy:0"
    with pytest.raises(AssertionError, match="declared tolerance"):
        kit.test_declared_ops_match_reference(hal.device("sloppy:0"))


def test_kit_catches_unrepeatable_programs(sloppy):
    kit = DeviceConformance()
    kit.uri = "sloppy:0"
    with pytest.raises(AssertionError, match="different results"):
        kit.test_program_is_reusable_and_repeatable(hal.device("sloppy:0"))
