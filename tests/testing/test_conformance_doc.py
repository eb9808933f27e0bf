"""docs/writing-a-driver.md: its example driver passes the whole kit under pytest, and the seed option works.

The inner pytest sessions run in subprocesses: run in-process, the second one crashed the interpreter
(segmentation fault) once the first had torn down the modules it imported.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

DOC = Path(__file__).parents[2] / "docs" / "writing-a-driver.md"
#: Registers the doc's driver for the inner session only, as its pyproject entry point would.
CONFTEST = '''
import pytest
import hal
from hal import registry


@pytest.fixture(autouse=True)
def toy_driver(monkeypatch):
    table = dict(registry.drivers())
    table["toy"] = registry.DriverEntry("toy", "toy_hal.driver:ToyDevice")
    monkeypatch.setattr(registry, "_drivers", table)
    yield
    hal.device("toy:0").close()
'''


def doc_block(marker: str) -> str:
    """The python code block of the doc that contains ``marker``."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
    found = [b for b in blocks if marker in b]
    assert len(found) == 1, f"{DOC.name} should have one python block with {marker!r}, has {len(found)}"
    return found[0]


@pytest.fixture
def toy_project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.mkpydir("toy_hal")
    (pytester.path / "toy_hal" / "driver.py").write_text(doc_block("class ToyDevice(Device)"))
    pytester.makepyfile(test_toy=doc_block("class TestToyConformance(DeviceConformance)"))
    pytester.makeconftest(CONFTEST)
    return pytester


def test_the_doc_driver_is_about_30_lines():
    code = [line for line in doc_block("class ToyDevice(Device)").splitlines() if line.strip() and not line.lstrip().startswith(("#", '"""'))]
    assert len(code) <= 40


def test_the_doc_driver_passes_the_kit_with_a_given_seed(toy_project):
    result = toy_project.runpytest_subprocess("-p", "hal.testing.plugin", "--hal-conformance-seed=7", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=10)
    result.stdout.fnmatch_lines(["hal conformance seed 7: rerun with --hal-conformance-seed=7"])


def test_without_the_option_the_seed_is_random_and_printed(toy_project):
    result = toy_project.runpytest_subprocess("-p", "hal.testing.plugin", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=10)
    result.stdout.re_match_lines([r"hal conformance seed \d+: rerun with --hal-conformance-seed=\d+"])
