"""The contract: device strings, equality, OpSpec, Programs, the eager cache, device scope."""

import pytest
import torch

import hal
from hal.device import DeviceURI, OpSpec, TensorSpec
from hal.drivers.cpu import CpuDevice
from hal.errors import DeviceMismatch, DTypeError, InvalidInput, ProgramInvalidated, ShapeError, UnknownDevice, UnsupportedOp


@pytest.mark.parametrize(
    "text, canonical",
    [
        ("cpu", "cpu:0"),
        ("cpu:0", "cpu:0"),
        ("memristor:0?tile=256", "memristor:0?tile=256"),
        ("memristor:1?tiles=16&tile=128", "memristor:1?tile=128&tiles=16"),
        ("ibm_qpu:fake_torino", "ibm_qpu:fake_torino"),
        ("memristor:0?port=/dev/ttyUSB0", "memristor:0?port=/dev/ttyUSB0"),
    ],
)
def test_uri_canonical_form(text, canonical):
    assert str(DeviceURI.parse(text)) == canonical
    assert DeviceURI.parse(canonical) == DeviceURI.parse(text)


def test_uri_plus_in_an_option_value_is_a_plus_not_a_space():
    uri = DeviceURI.parse("memristor:0?port=socket://h:1&note=a+b c")
    assert uri.option_map["note"] == "a+b c"
    assert DeviceURI.parse(str(uri)) == uri


def test_uri_index_types():
    assert DeviceURI.parse("hopper:3").index == 3
    assert DeviceURI.parse("ibm_qpu:fake_torino").index == "fake_torino"


@pytest.mark.parametrize("text", ["", "CPU", "cpu:", "cpu:0:1", "9pu", "cpu:/x", "cpu:0?a", "cpu:0?a=1&a=2"])
def test_malformed_uris_are_refused_with_a_reason(text):
    with pytest.raises((UnknownDevice, InvalidInput)) as caught:
        DeviceURI.parse(text)
    assert len(str(caught.value)) > 20


def test_device_is_torch_device_like():
    d = hal.device("cpu")
    assert str(d) == "cpu:0"
    assert d == hal.device("cpu:0") == "cpu:0"
    assert d is hal.device("cpu:0")
    assert hash(d) == hash(hal.device("cpu:0"))
    assert {d: 1}[hal.device("cpu")] == 1
    assert d != "cpu:0?precision=float64"
    assert d != "not a device!"


def test_opspec_is_hashable_and_fills_defaults():
    x = torch.randn(2, 3)
    a = OpSpec("softmax", [x])
    b = OpSpec("softmax", [TensorSpec((2, 3), torch.float32)], attrs={"dim": -1})
    assert a == b and hash(a) == hash(b)
    assert a.attr("dim") == -1
    assert "softmax" in str(a)


def test_prepare_then_call_and_cost():
    d = hal.device("cpu")
    x = torch.randn(5, 16)
    w = torch.randn(8, 16)
    p = d.prepare(OpSpec("linear", [TensorSpec((None, 16))], {"weight": w}), {"weight": w})
    assert torch.allclose(p(x), x @ w.T, atol=1e-5)
    assert torch.allclose(p(x[:2]), x[:2] @ w.T, atol=1e-5)  # open batch dimension
    assert p.cost.latency_s > 0 and p.cost.energy_j > 0


def test_program_refuses_wrong_inputs():
    d = hal.device("cpu")
    w = torch.randn(8, 16)
    p = d.prepare(OpSpec("linear", [TensorSpec((None, 16))], {"weight": w}), {"weight": w})
    with pytest.raises(ShapeError, match="16"):
        p(torch.randn(3, 15))
    with pytest.raises(DTypeError, match="float64"):
        p(torch.randn(3, 16, dtype=torch.float64))
    with pytest.raises(ShapeError, match="1 input"):
        p(torch.randn(3, 16), torch.randn(3, 16))


def test_invalidated_program_raises():
    d = hal.device("cpu")
    p = d.prepare(OpSpec("relu", [torch.randn(3)]))
    p.invalidate("its tile was reprogrammed")
    with pytest.raises(ProgramInvalidated, match="reprogrammed"):
        p(torch.randn(3))


def test_bad_shapes_name_the_sizes():
    d = hal.device("cpu")
    with pytest.raises(ShapeError, match="K=5"):
        d.matmul(torch.randn(2, 5), torch.randn(4, 3))
    with pytest.raises(ShapeError, match="multiple"):
        d.attention(torch.randn(1, 3, 4, 8), torch.randn(1, 2, 4, 8), torch.randn(1, 2, 4, 8))


def test_mixed_dtypes_are_refused():
    d = hal.device("cpu")
    with pytest.raises(DTypeError, match="mix"):
        d.add(torch.randn(3), torch.randn(3, dtype=torch.float64))


def test_unsupported_dtype_is_refused():
    d = hal.device("cpu")
    with pytest.raises(UnsupportedOp, match="int64"):
        d.matmul(torch.ones(2, 2, dtype=torch.int64), torch.ones(2, 2, dtype=torch.int64))


def test_unknown_attribute_and_bad_values():
    d = hal.device("cpu")
    with pytest.raises(InvalidInput, match="no attribute"):
        d.run_op("relu", (torch.randn(3),), inplace=True)
    with pytest.raises(InvalidInput, match="approximate"):
        d.gelu(torch.randn(3), approximate="cubic")


def test_non_tensor_inputs_are_refused():
    d = hal.device("cpu")
    with pytest.raises(InvalidInput):
        d.relu([1.0, 2.0])


def test_tensor_on_another_device_is_refused(monkeypatch):
    d = hal.device("cpu")
    meta = torch.empty(2, 2, device="meta")
    with pytest.raises(DeviceMismatch, match="meta"):
        d.relu(meta)


def test_eager_cache_reuses_programs_and_sees_weight_updates():
    d = hal.device("cpu")
    x, w = torch.randn(2, 4), torch.randn(3, 4)
    d.linear(x, w)
    before = len(d._eager)
    d.linear(x, w)
    assert len(d._eager) == before
    w.mul_(2)  # in-place update bumps the version: a new program, the new weights
    assert torch.allclose(d.linear(x, w), x @ w.T, atol=1e-5)


class _SnapshotCpu(CpuDevice):
    """A CPU device that programs a copy of each weight, as analog devices do (conductances, phases)."""

    def _compile(self, op, params):
        return super()._compile(op, {k: v.clone() for k, v in params.items()})


def test_eager_cache_never_aliases_a_freed_weight_whose_id_is_reused():
    d = _SnapshotCpu("cpu:0")
    x = torch.randn(4, 16)
    for i in range(24):  # a temporary weight each call: CPython reuses the freed tensor's id
        torch.manual_seed(i)
        want = x @ torch.randn(8, 16).T
        torch.manual_seed(i)
        assert torch.allclose(d.linear(x, torch.randn(8, 16)), want, atol=1e-5), f"call {i} answered with a previous weight"


def test_eager_cache_sees_data_assignment_and_drops_freed_weights():
    d = _SnapshotCpu("cpu:0")
    x, w = torch.randn(2, 4), torch.randn(3, 4)
    d.linear(x, w)
    w.data = torch.randn(3, 4)  # leaves w._version alone
    assert torch.allclose(d.linear(x, w), x @ w.T, atol=1e-5)
    assert len(d._eager) == 2
    del w
    assert len(d._eager) == 0, "entries of a freed weight must go with it"


def test_device_scope_sets_current_device():
    assert hal.current_device() == "cpu:0"
    with hal.device_scope("cpu:0?precision=float64") as d:
        assert hal.current_device() is d
        assert hal.device() is d
    assert hal.current_device() == "cpu:0"


def test_closed_device_refuses_work_and_reopens():
    d = hal.device("cpu:0?precision=float64")
    d.close()
    with pytest.raises(ProgramInvalidated, match="closed"):
        d.prepare(OpSpec("relu", [torch.randn(2)]))
    assert hal.device("cpu:0?precision=float64") is not d


def test_availability_queries():
    assert hal.is_available("cpu") and hal.is_available("cpu:0")
    assert not hal.is_available("cpu:5")
    assert not hal.is_available("nosuchkind")
    assert hal.device_count("cpu") == 1
    assert hal.device_count("nosuchkind") == 0
    assert any(i.uri == "cpu:0" for i in hal.devices())
    assert all(i.available for i in hal.devices())


def test_driver_check_refusal_is_honoured(monkeypatch):
    d = hal.device("cpu")
    monkeypatch.setattr(d, "_check", lambda op: hal.Support.no("only 4 tiles fit"))
    support = d.supports(OpSpec("relu", [torch.randn(3)]))
    assert not support and support.reason == "only 4 tiles fit"
    with pytest.raises(UnsupportedOp, match="4 tiles"):
        d.prepare(OpSpec("relu", [torch.randn(3)]))


def test_runtime_is_reachable_from_a_plain_import():
    import importlib

    fresh = importlib.import_module("hal")
    assert callable(fresh.runtime.plan)


def test_devices_that_refuse_nonfinite_inputs_say_how_many(monkeypatch):
    d = hal.device("cpu")
    monkeypatch.setattr(type(d), "refuses_nonfinite", True)
    x = torch.tensor([[1.0, float("nan"), float("inf")]])
    with pytest.raises(InvalidInput, match="2 NaN/inf"):
        d.relu(x)
    assert torch.equal(d.relu(torch.tensor([0.5, -1.0])), torch.tensor([0.5, 0.0]))
    d.relu(torch.empty(0))


def test_bounded_option_parsers_say_the_range():
    from hal.device import bounded_float, bounded_int

    assert bounded_int(1)("3") == 3
    with pytest.raises(ValueError, match=">= 1"):
        bounded_int(1)("0")
    with pytest.raises(ValueError, match="from 1 to 32"):
        bounded_int(1, 32)("33")
    assert bounded_float(0)("0") == 0.0
    for bad in ("-1", "inf", "nan"):
        with pytest.raises(ValueError, match="finite"):
            bounded_float(0)(bad)
    with pytest.raises(ValueError, match="> 0"):
        bounded_float(0, include_low=False)("0")


def test_an_invalidated_program_drops_its_run_and_refuses_calls():
    d = hal.device("cpu")
    program = d.prepare(OpSpec("relu", [torch.randn(3)]))
    program.invalidate("its resources were reprogrammed")
    assert not program.valid
    with pytest.raises(ProgramInvalidated, match="reprogrammed"):
        program.run(torch.randn(3))
    with pytest.raises(ProgramInvalidated, match="reprogrammed"):
        program(torch.randn(3))
