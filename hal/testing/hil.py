"""pytest plugin for hardware-in-the-loop tests against hal boards: emulated by default, real when pointed at a port.

    pytest -p hal.testing.hil                                             # emulated boards on ptys
    pytest -p hal.testing.hil --hil-target memristor=/dev/ttyUSB0         # a real memristor board
    pytest -p hal.testing.hil --hil-target photonic=socket://lab-pc:7000 --hil-records out/

Options: ``--hil-target KIND=URL`` (repeatable; URL is any ``?port=`` value: a serial device, a pyserial URL,
``emu`` or ``loop://``; default: ``emu`` for each of memristor and photonic whose driver is available, else
cpu), ``--hil-records DIR`` (default ``hil-records/``). Marker ``@pytest.mark.hil`` (optionally
``hil(kinds=["memristor"])`` to restrict a test to some targets).

Fixtures:
  ``hil_device``   a ready device for each target (the test runs once per target), opened once per session;
  ``hil_board``    a factory ``hil_board(faults="drop:0.01", kind=None, **options)`` opening a fresh emulated
                   board with a fault plan (skips on real targets, where faults cannot be injected, and for a kind
                   no target names when every target is a real board);
  ``hil_record``   the test's record: ``hil_record.measure(name, value, units=, low=, high=)``. A measurement
                   outside its limits fails the test (after it ran to the end), like an OpenHTF validator.

Every test that is marked ``hil`` or uses these fixtures leaves a JSON record in the records directory, in the
manner of an OpenHTF test record: outcome, start/end times, measurements with their limits and outcomes,
board identity (the DUT), firmware version, station, target.
"""

from __future__ import annotations

import json
import math
import platform
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytest

RECORD_KEY = pytest.StashKey["HilRecord"]()
DEFAULT_KINDS = ("memristor", "photonic")


@dataclass(frozen=True)
class Target:
    """One board under test: the device kind and the ``port`` it is reached on."""

    kind: str
    url: str

    @classmethod
    def parse(cls, text: str) -> Target:
        kind, sep, url = text.partition("=")
        if not sep or not kind or not url:
            raise pytest.UsageError(f"--hil-target {text!r}: write KIND=URL, e.g. memristor=/dev/ttyUSB0 or photonic=emu")
        return cls(kind.strip(), url.strip())

    @property
    def emulated(self) -> bool:
        return self.url in ("emu", "loop://")

    def uri(self, **options: Any) -> str:
        from urllib.parse import urlencode

        return f"{self.kind}:0?" + urlencode({"port": self.url, **{k: str(v) for k, v in options.items()}}, safe="/:")


@dataclass
class Measurement:
    """A named value with units and limits; ``outcome`` is PASS when it lies within them."""

    name: str
    measured_value: float | int | str | bool
    units: str = ""
    low: float | None = None
    high: float | None = None
    docstring: str = ""
    outcome: str = "PASS"

    def validate(self) -> None:
        value = self.measured_value
        ok = True
        if self.low is not None or self.high is not None:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            ok = ok and (self.low is None or value >= self.low) and (self.high is None or value <= self.high)
        self.outcome = "PASS" if ok else "FAIL"

    def to_dict(self) -> dict[str, Any]:
        validators = ([] if self.low is None else [f"x >= {self.low:g}"]) + ([] if self.high is None else [f"x <= {self.high:g}"])
        value = self.measured_value
        if isinstance(value, float) and not math.isfinite(value):
            value = str(value)
        return {"name": self.name, "measured_value": value, "units": self.units, "validators": validators,
                "outcome": self.outcome, "docstring": self.docstring}


@dataclass
class HilRecord:
    """The record of one test, written as JSON at the end of the test."""

    test_name: str
    start_time_millis: int
    target: Target | None = None
    end_time_millis: int = 0
    outcome: str = "PASS"
    dut_id: str = ""
    board: dict[str, str] = field(default_factory=dict)
    measurements: list[Measurement] = field(default_factory=list)
    failure: str = ""
    attachments: dict[str, Any] = field(default_factory=dict)

    def measure(self, name: str, value: float | str | bool, units: str = "", low: float | None = None,
                high: float | None = None, docstring: str = "") -> bool:
        """Record a measurement; returns whether it is within its limits (the test fails at its end if not)."""
        m = Measurement(name, value, units, low, high, docstring)
        m.validate()
        self.measurements.append(m)
        return m.outcome == "PASS"

    def attach(self, name: str, data: Any) -> None:
        """Attach JSON-ready data (counters, telemetry) to the record."""
        self.attachments[name] = data

    def set_dut(self, device: Any) -> None:
        """Take board identity and firmware from an open device."""
        identity = dict(device.capabilities.identity)
        self.board = identity
        self.dut_id = identity.get("serial", str(device.uri))

    @property
    def failed_measurements(self) -> list[Measurement]:
        return [m for m in self.measurements if m.outcome != "PASS"]

    def to_dict(self) -> dict[str, Any]:
        import hal

        return {
            "test_name": self.test_name,
            "dut_id": self.dut_id,
            "station_id": platform.node(),
            "start_time_millis": self.start_time_millis,
            "end_time_millis": self.end_time_millis,
            "outcome": self.outcome,
            "failure": self.failure,
            "measurements": [m.to_dict() for m in self.measurements],
            "metadata": {
                "target": asdict(self.target) if self.target else None,
                "board": self.board,
                "firmware": self.board.get("firmware", ""),
                "hal_version": hal.__version__,
            },
            "attachments": self.attachments,
        }


class HilSession:
    """Targets, records directory and the devices opened for this pytest session."""

    def __init__(self, config: pytest.Config):
        texts = config.getoption("hil_target", default=None) or []
        self.explicit = [Target.parse(t) for t in texts]
        self.records_dir = Path(config.getoption("hil_records", default=None) or "hil-records")
        self._targets: list[Target] | None = None
        self.opened: list[Any] = []

    @property
    def targets(self) -> list[Target]:
        if self._targets is None:
            if self.explicit:
                self._targets = self.explicit
            else:
                import hal

                kinds = [k for k in DEFAULT_KINDS if hal.is_available(k)] or ["cpu"]
                self._targets = [Target(k, "emu") for k in kinds]
        return self._targets

    def close(self) -> None:
        for device in self.opened:
            device.close()
        self.opened.clear()


def _session(config: pytest.Config) -> HilSession:
    session = getattr(config, "_hal_hil", None)
    if session is None:
        session = config._hal_hil = HilSession(config)
    return session


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("hil", "hardware-in-the-loop tests of hal boards")
    group.addoption("--hil-target", action="append", default=[], metavar="KIND=URL",
                    help="a board to test: KIND=URL with URL a serial device, pyserial URL, 'emu' or 'loop://' (repeatable; default: emulated boards on ptys)")
    group.addoption("--hil-records", default="hil-records", metavar="DIR", help="directory for the per-test JSON records (default hil-records/)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "hil(kinds=None): hardware-in-the-loop test against a board (emulated by default); kinds restricts the targets")
    _session(config)


def pytest_unconfigure(config: pytest.Config) -> None:
    session = getattr(config, "_hal_hil", None)
    if session is not None:
        session.close()


def _wanted_kinds(item_or_definition: Any) -> list[str] | None:
    marker = item_or_definition.get_closest_marker("hil")
    if marker is None:
        return None
    kinds = marker.kwargs.get("kinds") or (list(marker.args) if marker.args else None)
    return [kinds] if isinstance(kinds, str) else kinds


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "hil_target" not in metafunc.fixturenames:
        return
    targets = _session(metafunc.config).targets
    wanted = _wanted_kinds(metafunc.definition)
    chosen = [t for t in targets if wanted is None or t.kind in wanted]
    if not chosen:
        chosen = [pytest.param(None, marks=pytest.mark.skip(reason=f"no --hil-target of kind {', '.join(wanted or [])}"))]
    metafunc.parametrize("hil_target", chosen, ids=lambda t: f"{t.kind}={t.url}" if t else "none", scope="session")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    fixtures = {"hil_device", "hil_board", "hil_record", "hil_target"}
    for item in items:
        if fixtures & set(getattr(item, "fixturenames", ())) and item.get_closest_marker("hil") is None:
            item.add_marker(pytest.mark.hil)


@pytest.fixture(scope="session")
def hil_session(request: pytest.FixtureRequest) -> HilSession:
    return _session(request.config)


@pytest.fixture(scope="session")
def _hil_devices(hil_session: HilSession) -> dict[Target, Any]:
    return {}


@pytest.fixture
def hil_device(hil_target: Target, _hil_devices: dict, hil_session: HilSession, hil_record: HilRecord) -> Any:
    """The target's board, opened once per session and shared by every test of that target."""
    import hal

    device = _hil_devices.get(hil_target)
    if device is None or device.closed:
        device = hal.device(hil_target.uri())
        _hil_devices[hil_target] = device
        hil_session.opened.append(device)
    hil_record.target = hil_target
    hil_record.set_dut(device)
    return device


@pytest.fixture
def hil_board(request: pytest.FixtureRequest, hil_session: HilSession, hil_record: HilRecord):
    """Factory: ``hil_board(faults="corrupt:0.001", kind=None, **options)`` opens a fresh emulated board."""
    opened = []

    def open_board(faults: str = "", kind: str | None = None, **options: Any) -> Any:
        from hal.drivers.serial import BoardDevice

        kind = kind or hil_session.targets[0].kind
        base = next((t for t in hil_session.targets if t.kind == kind), None)
        if base is None:  # a kind no target names: emulate it only where the session emulates boards at all
            emulated = [t for t in hil_session.targets if t.emulated]
            if not emulated:
                real = ", ".join(f"{t.kind}={t.url}" for t in hil_session.targets)
                pytest.skip(f"faults are injected by the board emulator; every target is a real board ({real})")
            base = Target(kind, emulated[0].url)
        if not base.emulated:
            pytest.skip(f"faults are injected by the board emulator; the {kind} target is a real board ({base.url})")
        if faults:
            options["faults"] = faults
        device = BoardDevice(base.uri(**options), kind=kind)  # a private board, not the registry's shared one
        opened.append(device)
        hil_record.target = base
        hil_record.set_dut(device)
        return device

    yield open_board
    for device in opened:
        device.close()


@pytest.fixture
def hil_record(request: pytest.FixtureRequest) -> HilRecord:
    """This test's record (measurements, board identity); written to --hil-records at the end of the test."""
    record = request.node.stash.get(RECORD_KEY, None)
    if record is None:
        record = _start_record(request.node)
    return record


def _start_record(item: pytest.Item) -> HilRecord:
    record = HilRecord(test_name=item.nodeid, start_time_millis=int(time.time() * 1000))
    item.stash[RECORD_KEY] = record
    return record


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("hil") is not None and RECORD_KEY not in item.stash:
        _start_record(item)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    record = item.stash.get(RECORD_KEY, None)
    if record is None:
        return
    if report.when == "call" and report.passed and record.failed_measurements:
        names = ", ".join(f"{m.name}={m.measured_value!r} (limits {m.low}..{m.high})" for m in record.failed_measurements)
        report.outcome = "failed"
        report.longrepr = f"HIL measurement(s) outside limits: {names}"
    if report.skipped and record.outcome == "PASS":
        record.outcome = "SKIP"
    elif report.failed:
        if report.when == "call":
            record.outcome = "FAIL"
        elif record.outcome in ("PASS", "SKIP"):
            record.outcome = "ERROR"
        if not record.failure:
            record.failure = str(report.longrepr)[-2000:]
    if report.when == "teardown":
        record.end_time_millis = int(time.time() * 1000)
        _write(item, record)


def _write(item: pytest.Item, record: HilRecord) -> None:
    directory = _session(item.config).records_dir
    directory.mkdir(parents=True, exist_ok=True)
    name = re.sub(r"[^A-Za-z0-9_.=-]+", "_", item.nodeid).strip("_")[:180]
    (directory / f"{name}.json").write_text(json.dumps(record.to_dict(), indent=2, default=str))
