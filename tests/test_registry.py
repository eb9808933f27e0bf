"""Driver discovery through entry points, time-bounded probing that never raises, open-device table."""

import subprocess
import sys
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


# --------------------------------------------------------------------------- indices checked against the probe


@pytest.mark.parametrize(("uri", "listed"), [("memristor:-1", "memristor:0"), ("memristor:abc", "memristor:0"), ("photonic:5", "photonic:0"), ("cpu:1", "cpu:0")])
def test_index_the_probe_does_not_list_is_refused_with_the_listed_ones(uri, listed):
    assert not hal.is_available(uri)
    with pytest.raises(DeviceUnavailable, match=f"there is no .* here.*available: {listed}") as caught:
        hal.device(uri)
    assert caught.value.fix == f"use {listed}"


def test_named_devices_open_only_as_the_probe_lists_them(fake_drivers):
    assert hal.device("named:alpha").uri.index == "alpha"
    with pytest.raises(DeviceUnavailable, match="offline") as caught:
        hal.device("named:beta")
    assert caught.value.fix == "power it on"
    with pytest.raises(DeviceUnavailable, match=r"no named device 'gamma'.*available: named:alpha; unavailable: named:beta \(offline\)"):
        hal.device("named:gamma")


class ManyDevice(NamedDevice):
    kind = "many"

    @classmethod
    def probe(cls):
        return [DeviceInfo(uri=f"many:n{i:02d}", kind="many", available=True) for i in range(20)]


def test_a_long_listing_says_how_many_more_and_where_to_see_them(fake_drivers):
    fake_drivers["many"] = registry.DriverEntry("many", "test_registry:ManyDevice")
    with pytest.raises(DeviceUnavailable, match=r"many:n07 and 12 more \(`hal devices --kind many` lists them\)"):
        hal.device("many:n99")


def test_board_devices_named_by_port_are_left_to_the_board_driver(tmp_path):
    """A ``?port=`` device is in no probe list: the board driver is asked, and says the port does not open."""
    with pytest.raises(DeviceUnavailable) as caught:
        hal.device(f"memristor:5?port={tmp_path / 'no_such_port'}")
    assert "there is no memristor device" not in str(caught.value)


# --------------------------------------------------------------------------- broken drivers vs absent devices


MISSING_DEPENDENCY_DRIVER = "import no_such_vendor_library  # an optional dependency that is not installed\n"


class DiagnoseRaises(CpuDevice):
    kind = "diagnose_raises"

    @classmethod
    def probe(cls):
        return [DeviceInfo(uri="diagnose_raises:0", kind="diagnose_raises", available=True)]

    @classmethod
    def diagnose(cls):
        raise KeyError("driver bug")


def test_health_tells_a_broken_driver_from_an_absent_device(fake_drivers, monkeypatch, tmp_path):
    (tmp_path / "vendor_driver.py").write_text(MISSING_DEPENDENCY_DRIVER)
    monkeypatch.syspath_prepend(str(tmp_path))
    fake_drivers["vendor"] = registry.DriverEntry("vendor", "vendor_driver:Device")
    fake_drivers["diagnose_raises"] = registry.DriverEntry("diagnose_raises", "test_registry:DiagnoseRaises")
    registry.probe("hung", timeout_s=0.2)
    assert "failed to import" in registry.health("broken").broken
    assert "USB bridge answered garbage" in registry.health("raising").broken
    assert "did not answer" in registry.health("hung").broken
    assert "KeyError" in registry.health("diagnose_raises").broken
    vendor = registry.health("vendor")
    assert not vendor.broken and not vendor.devices[0].available and "no_such_vendor_library" in vendor.devices[0].reason
    assert registry.health("named").broken == "" and registry.health("cpu").broken == ""


# --------------------------------------------------------------------------- a light import


def test_import_hal_loads_no_torch_and_no_driver():
    code = (
        "import sys, hal\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'qiskit', 'qiskit_ibm_runtime', 'scipy', 'numpy', 'serial') or m.startswith('hal.drivers.'))\n"
        "print(heavy)\n"
        "from hal.device import OpSpec\n"
        "print(callable(hal.device), hal.OpSpec is OpSpec, hal.Device.__name__)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["[]", "True True Device"]
