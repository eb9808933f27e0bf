"""The CPU reference driver: conformance, reference mode, options, estimates."""

import pytest
import torch

import hal
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
