"""The CPU reference driver: conformance, reference mode, options, estimates."""

import pytest
import torch

import hal
from hal import cache as hal_cache
from hal.drivers.cpu import CpuDevice, host
from hal.errors import InvalidInput, UnknownDevice
from hal.testing.conformance import DeviceConformance


class TestConformance(DeviceConformance):
    uri = "cpu:0"


class TestReferenceConformance(DeviceConformance):
    uri = "cpu:0?precision=float64"


def test_reference_mode_computes_in_float64():
    ref = hal.device("cpu?precision=float64")
    a = torch.randn(3, 4)
    b = torch.randn(4, 2)
    out = ref.matmul(a, b)
    assert out.dtype == torch.float64
    assert torch.allclose(out, a.double() @ b.double())


def test_native_mode_keeps_dtype():
    d = hal.device("cpu")
    a = torch.randn(3, 4, dtype=torch.bfloat16)
    assert d.relu(a).dtype == torch.bfloat16


def test_unknown_option_names_the_known_ones():
    with pytest.raises(InvalidInput, match="precision"):
        hal.device("cpu:0?precison=float64")


def test_bad_option_value_says_what_is_allowed():
    with pytest.raises(InvalidInput, match="native"):
        hal.device("cpu:0?precision=half")


def test_only_one_cpu_device():
    with pytest.raises(hal.DeviceUnavailable, match="cpu:0"):
        hal.device("cpu:3")


def test_nan_propagates_as_documented():
    d = hal.device("cpu")
    x = torch.tensor([[float("nan"), 1.0]])
    assert torch.isnan(d.relu(x)).any()


def test_estimate_shows_its_formula_and_scales_with_work():
    d = hal.device("cpu")
    small = d.estimate(hal.OpSpec("matmul", [torch.empty(8, 8), torch.empty(8, 8)]))
    large = d.estimate(hal.OpSpec("matmul", [torch.empty(512, 512), torch.empty(512, 512)]))
    assert large.latency_s > small.latency_s > 0
    assert large.energy_j > small.energy_j > 0
    assert "flops" in small.formula


def test_capabilities_figures_have_sources():
    caps = hal.device("cpu").capabilities
    assert caps.peak["float32_flop_per_s"].kind == "measured"
    assert caps.energy["j_per_flop"].kind == "paper"


def test_unknown_kind_suggests_close_match():
    with pytest.raises(UnknownDevice, match="cpu"):
        hal.device("cpux:0")


# --------------------------------------------------------------------------- measured once, cached with its spread


@pytest.fixture
def rate_cache(tmp_path, monkeypatch):
    """An empty cache directory and no figure remembered by this process; counts the measurements taken."""
    monkeypatch.setenv(hal_cache.CACHE_DIR_VARIABLE, str(tmp_path))
    monkeypatch.setattr(host, "_memo", {})
    calls = []
    time_calls = host._time_calls
    monkeypatch.setattr(host, "_time_calls", lambda fn, repeats: calls.append(repeats) or time_calls(fn, repeats))
    return calls


def test_peak_is_measured_once_and_reused_by_later_processes(rate_cache, monkeypatch):
    first = host.peak_matmul_flops(torch.float32, 64)
    monkeypatch.setattr(host, "_memo", {})  # as a new process would start
    again = host.peak_matmul_flops(torch.float32, 64)
    assert rate_cache == [host.REPEATS]
    assert again == first and host.cache_file().is_file()
    assert "median of 7 calls" in first.source and "min " in first.note and ", max " in first.note and "measured 20" in first.note


def test_cache_entries_do_not_alias_across_measurements(rate_cache):
    float32 = host.peak_matmul_flops(torch.float32, 64)
    float64 = host.peak_matmul_flops(torch.float64, 64)
    assert len(rate_cache) == 2 and "float32" in float32.source and "float64" in float64.source


def test_unreadable_cache_is_measured_again(rate_cache):
    host.cache_file().write_text("{not json")
    figure = host.peak_matmul_flops(torch.float32, 64)
    assert rate_cache == [host.REPEATS] and figure.value > 0


def test_probe_never_measures(rate_cache):
    (info,) = CpuDevice.probe()
    assert rate_cache == [] and "peak_flop_per_s" not in info.summary and "not measured" in info.summary["peak"]
    host.peak_matmul_flops(torch.float32)
    (info,) = CpuDevice.probe()
    assert info.summary["peak_flop_per_s"] == host.peak_matmul_flops(torch.float32).value and len(rate_cache) == 1


def test_a_subclass_probe_lists_its_own_kind():
    class Other(CpuDevice):
        kind = "other_cpu"

    (info,) = Other.probe()
    assert info.uri == "other_cpu:0" and info.kind == "other_cpu"
