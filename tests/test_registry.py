"""Driver discovery through entry points, time-bounded probing that never raises, open-device table."""

import time

import pytest

import hal
from hal import registry
from hal.device import DeviceInfo
from hal.drivers.cpu import CpuDevice
from hal.errors import DeviceUnavailable, UnknownDevice


class HungDevice(CpuDevice):
    """A driver whose probe never answers in time."""

    kind = "hung"

    @classmethod
    def probe(cls):
        time.sleep(5)
        return []


class RaisingDevice(CpuDevice):
    kind = "raising"

    @classmethod
    def probe(cls):
        raise OSError("the board's USB bridge answered garbage")


class NamedDevice(CpuDevice):
    kind = "named"

    def __init__(self, uri):
        super(CpuDevice, self).__init__(uri)
        self.reference_dtype = None

    @classmethod
    def probe(cls):
        return [DeviceInfo(uri="named:alpha", kind="named", available=True), DeviceInfo(uri="named:beta", kind="named", available=False, reason="offline", fix="power it on")]


@pytest.fixture
def fake_drivers(monkeypatch):
    table = dict(registry.drivers())
    table.update(
        {
            "hung": registry.DriverEntry("hung", "test_registry:HungDevice"),
            "raising": registry.DriverEntry("raising", "test_registry:RaisingDevice"),
            "broken": registry.DriverEntry("broken", "no_such_module_anywhere:Device"),
            "named": registry.DriverEntry("named", "test_registry:NamedDevice"),
        }
    )
    monkeypatch.setattr(registry, "_drivers", table)
    monkeypatch.setattr(registry, "_probed", {})
    return table


def test_builtin_drivers_come_from_entry_points():
    kinds = registry.drivers()
    for kind in ("cpu", "hopper", "blackwell", "cuda", "loihi2", "ibm_qpu", "memristor", "photonic"):
        assert kind in kinds
    assert kinds["cpu"].target == "hal.drivers.cpu:CpuDevice"


def test_hung_probe_is_reported_not_waited_for(fake_drivers):
    start = time.monotonic()
    (info,) = registry.probe("hung", timeout_s=0.2)
    assert time.monotonic() - start < 2
    assert not info.available and "did not answer within 0.2 s" in info.reason


def test_raising_probe_becomes_a_reason(fake_drivers):
    (info,) = registry.probe("raising")
    assert not info.available
    assert "USB bridge answered garbage" in info.reason and info.fix


def test_driver_that_fails_to_import_is_unavailable_with_reason(fake_drivers):
    (info,) = registry.probe("broken")
    assert not info.available and "failed to import" in info.reason
    with pytest.raises(DeviceUnavailable, match="no_such_module_anywhere"):
        hal.device("broken:0")


def test_named_devices_and_availability(fake_drivers):
    assert hal.is_available("named:alpha")
    assert not hal.is_available("named:beta")
    assert hal.device_count("named") == 1
    infos = hal.devices(all=True, kind="named")
    assert [i.uri for i in infos] == ["named:alpha", "named:beta"]
    assert infos[1].fix == "power it on"


def test_unknown_kind_lists_known_ones():
    with pytest.raises(UnknownDevice) as caught:
        hal.device("memristr:0")
    assert "memristor" in caught.value.close_matches
    assert "hal doctor" in str(caught.value)


def test_board_transport_is_not_a_device_kind():
    with pytest.raises(UnknownDevice):
        hal.device("serial:0")
