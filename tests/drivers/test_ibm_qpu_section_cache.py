"""Tests of hal/drivers/ibm_qpu/section_cache.py: a cached quantum section is the derived one, figure for figure; it
is served without opening the backend (no qiskit-ibm-runtime parse) and never after one of its inputs changed."""

from __future__ import annotations

import json
import shutil

import pytest

from hal import cache as hal_cache
from hal.capability import Figure, to_jsonable
from hal.drivers.ibm_qpu import IbmQpuDevice, backends, section_cache, target_facts
from hal.drivers.ibm_qpu.driver import _versions

pytest.importorskip("qiskit_ibm_runtime")


@pytest.fixture
def cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv(hal_cache.CACHE_DIR_VARIABLE, str(tmp_path / "cache"))
    return tmp_path / "cache" / section_cache.CACHE_SUBDIR


def largest_snapshot() -> str:
    """The fake backend with the largest calibration file (the slowest one to parse)."""
    return max(backends.fake_backend_names(), key=lambda name: sum(f.stat().st_size for f in backends.snapshot_files(name)))


def exact(section) -> str:
    """A section as JSON text: equal texts mean equal figures with equal types (1 and 1.0 differ here)."""
    return json.dumps(to_jsonable(section), sort_keys=True)


@pytest.mark.filterwarnings("ignore:Properties of fake_nighthawk:UserWarning")
@pytest.mark.parametrize("name", ["fake_manila", "fake_torino", "largest", "aer"])
def test_the_cached_section_is_the_section_read_off_the_backend(cache_dir, name):
    name = largest_snapshot() if name == "largest" else name
    derived, version = IbmQpuDevice(f"ibm_qpu:{name}")._section()  # cold cache: read off the backend and stored
    assert (cache_dir / f"{name}.json").is_file()
    served, served_version = IbmQpuDevice(f"ibm_qpu:{name}")._section()
    assert served == derived and exact(served) == exact(derived) and served_version == version
    assert served.num_qubits.value > 0 and (name == "aer" or served.t1_s is not None)


def test_a_cached_section_is_served_without_opening_the_backend(cache_dir, monkeypatch):
    assert IbmQpuDevice("ibm_qpu:fake_manila").capabilities  # stores the section
    assert IbmQpuDevice("ibm_qpu:aer").capabilities
    monkeypatch.setattr(backends, "fake_backend", lambda name: pytest.fail("a cached section must not open the fake backend"))
    monkeypatch.setattr(backends, "ideal_simulator", lambda: pytest.fail("a cached section must not open the simulator"))
    monkeypatch.setattr(target_facts, "quantum_section", lambda *a, **k: pytest.fail("a cached section must not be derived again"))
    manila = IbmQpuDevice("ibm_qpu:fake_manila").capabilities
    assert manila.sections["quantum"].num_qubits.value == 5 and manila.identity["backend_version"]
    assert IbmQpuDevice("ibm_qpu:aer").capabilities.sections["quantum"].connectivity.all_to_all


def test_the_key_changes_with_every_input_of_the_section(tmp_path):
    files = backends.snapshot_files("fake_manila")
    versions = _versions()
    key = section_cache.fake_backend_key("fake_manila", files, versions)
    assert key == section_cache.fake_backend_key("fake_manila", list(files), dict(versions))
    edited = []
    for f in files:
        edited.append(tmp_path / f.name)
        shutil.copy(f, edited[-1])
    assert section_cache.fake_backend_key("fake_manila", edited, versions) == key  # same bytes, same key
    props = next(p for p in edited if p.name.startswith("props_"))
    props.write_text(props.read_text() + " ")  # one byte more: a figure that moved would change the bytes as well
    assert section_cache.fake_backend_key("fake_manila", edited, versions) != key
    assert section_cache.fake_backend_key("fake_manila", files, {**versions, "qiskit-ibm-runtime": "0.0.1"}) != key
    assert section_cache.fake_backend_key("fake_manila", files, {**versions, "qiskit": "0.0.1"}) != key
    assert section_cache.fake_backend_key("fake_lima", files, versions) != key
    assert section_cache.ideal_simulator_key(versions) != section_cache.ideal_simulator_key({**versions, "qiskit-aer": "0.0.1"})


def test_an_entry_under_another_key_or_unreadable_is_derived_again(cache_dir):
    section, _ = IbmQpuDevice("ibm_qpu:fake_manila")._section()
    calls = []

    def derive():
        calls.append(1)
        return section, "1.0"

    assert section_cache.cached_section("some_backend", "key-1", derive) == (section, "1.0") and len(calls) == 1
    assert section_cache.cached_section("some_backend", "key-1", derive) == (section, "1.0") and len(calls) == 1  # served
    assert section_cache.cached_section("some_backend", "key-2", derive) == (section, "1.0") and len(calls) == 2  # key changed
    (cache_dir / "some_backend.json").write_text('{"key": "key-2", "section": {"backend": "x"}}')  # parses, but is not a section
    assert section_cache.cached_section("some_backend", "key-2", derive) == (section, "1.0") and len(calls) == 3
    assert section_cache.cached_section("some_backend", None, derive) == (section, "1.0") and len(calls) == 4  # nothing to key on


def test_sections_rebuild_nested_figures_exactly():
    section, _ = IbmQpuDevice("ibm_qpu:fake_manila")._derive_section()
    rebuilt = section_cache.section_from_dict(json.loads(json.dumps(to_jsonable(section))))
    assert rebuilt == section and isinstance(rebuilt.t1_s.median, Figure) and isinstance(rebuilt.num_qubits.value, int)
    assert rebuilt.connectivity.degree_mean == section.connectivity.degree_mean and rebuilt.max_circuits is None


def test_a_snapshot_name_that_leaves_the_snapshot_folder_has_no_files():
    assert backends.snapshot_files("fake_manila") and backends.snapshot_files("fake_..") == [] and backends.snapshot_files("fake_../x") == []
    assert backends.snapshot_files("manila") == [] and backends.snapshot_files("fake_") == []
