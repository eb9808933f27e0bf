"""The conformance kit: a pytest suite every driver runs with one subclass.

    from hal.testing.conformance import DeviceConformance

    class TestConformance(DeviceConformance):
        uri = "memristor:0?seed=0"

Each declared vocabulary op is checked against the float64 CPU reference (``cpu:0?precision=float64``)
within the device's declared tolerance (``capabilities.ops[name].tolerance[dtype]``, a relative
Frobenius error), on fresh random inputs every run. Undeclared ops must raise UnsupportedOp; bad shapes
ShapeError; a Program must be reusable and repeat its result (after ``manual_seed(0)`` when the device
is not deterministic); ``close()`` must be idempotent; capabilities must validate against the schema.

Override ``sample`` when the default small shapes do not fit a device's limits.
"""

from __future__ import annotations

import random

import pytest
import torch

import hal
from hal import ops as vocabulary
from hal.capability import validate
from hal.device import Device, OpSpec, Program
from hal.errors import DTypeError, HalError, ShapeError, UnsupportedOp
from hal.testing.samples import Sample, default_sample, relative_error

REFERENCE_URI = "cpu:0?precision=float64"


class DeviceConformance:
    """Subclass with ``uri = "kind:index?options"``; pytest collects the checks below for that device."""

    uri: str = ""

    # ---- hooks
    def sample(self, op_name: str, dtype: torch.dtype, generator: torch.Generator) -> Sample:
        """Operands for ``op_name``; override to fit a device's size limits."""
        return default_sample(op_name, dtype, generator)

    # ---- fixtures and helpers
    @pytest.fixture
    def device(self) -> Device:
        if not self.uri:
            pytest.fail("set `uri` on your DeviceConformance subclass")
        return hal.device(self.uri)

    def _generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(random.SystemRandom().randrange(2**31))

    def _vocabulary_ops(self, device: Device) -> list[str]:
        return [name for name in device.capabilities.ops if name in vocabulary.VOCABULARY]

    def _run(self, device: Device, name: str, sample: Sample) -> torch.Tensor:
        program = device.prepare(OpSpec(name, sample.inputs, sample.params, sample.attrs), sample.params)
        return program(*sample.inputs)

    # ---- the checks
    def test_capabilities_valid(self, device: Device) -> None:
        caps = device.capabilities
        validate(caps.to_dict())
        assert caps.uri == str(device.uri)
        assert caps.kind == device.kind

    def test_declared_ops_match_reference(self, device: Device) -> None:
        reference = hal.device(REFERENCE_URI)
        failures = []
        names = self._vocabulary_ops(device)
        if not names:
            pytest.skip(f"{device} declares no vocabulary op")
        for name in names:
            for dtype_text, tolerance in device.capabilities.ops[name].tolerance.items():
                dtype = getattr(torch, dtype_text)
                sample = self.sample(name, dtype, self._generator())
                if not device.supports(OpSpec(name, sample.inputs, sample.params, sample.attrs)):
                    continue
                out = self._run(device, name, sample)
                ref = self._run(reference, name, sample)
                error = relative_error(out, ref)
                if not error <= tolerance:
                    failures.append(f"{name}[{dtype_text}]: relative error {error:.3g} > declared tolerance {tolerance:.3g}")
        assert not failures, "\n".join(failures)

    def test_undeclared_ops_are_refused(self, device: Device) -> None:
        declared = set(device.capabilities.ops)
        for name in sorted(set(vocabulary.VOCABULARY) - declared):
            sample = default_sample(name, torch.float32, self._generator())
            op = OpSpec(name, sample.inputs, sample.params, sample.attrs)
            support = device.supports(op)
            assert not support and support.reason, f"{name} is not declared but supports() did not refuse it with a reason"
            with pytest.raises(UnsupportedOp):
                device.prepare(op, sample.params)

    def test_bad_shapes_are_refused(self, device: Device) -> None:
        names = [n for n in ("linear", "matmul") if n in device.capabilities.ops]
        if not names:
            pytest.skip(f"{device} runs neither linear nor matmul")
        dtype = getattr(torch, device.capabilities.ops[names[0]].dtypes[0])
        if names[0] == "linear":
            x, w = torch.randn(4, 16, dtype=dtype), torch.randn(8, 15, dtype=dtype)
            with pytest.raises((ShapeError, UnsupportedOp)) as caught:
                device.prepare(OpSpec("linear", [x], {"weight": w}), {"weight": w})
        else:
            a, b = torch.randn(4, 16, dtype=dtype), torch.randn(15, 8, dtype=dtype)
            with pytest.raises((ShapeError, UnsupportedOp)) as caught:
                device.prepare(OpSpec("matmul", [a, b]))
        assert "15" in str(caught.value) or "16" in str(caught.value), f"the error should name the mismatched sizes: {caught.value}"

    def _first_program(self, device: Device) -> tuple[Program, Sample, torch.dtype]:
        """A Program of the device's first declared vocabulary op, with its sample operands."""
        names = self._vocabulary_ops(device)
        if not names:
            pytest.skip(f"{device} declares no vocabulary op")
        name = names[0]
        dtype = getattr(torch, device.capabilities.ops[name].dtypes[0])
        sample = self.sample(name, dtype, self._generator())
        return device.prepare(OpSpec(name, sample.inputs, sample.params, sample.attrs), sample.params), sample, dtype

    def test_program_checks_its_inputs(self, device: Device) -> None:
        program, sample, dtype = self._first_program(device)
        wrong = [torch.zeros(*(s + 1 for s in sample.inputs[0].shape), dtype=dtype), *sample.inputs[1:]]
        with pytest.raises(ShapeError):
            program(*wrong)
        with pytest.raises((DTypeError, HalError)):
            program(sample.inputs[0].to(torch.int32), *sample.inputs[1:])

    def test_program_is_reusable_and_repeatable(self, device: Device) -> None:
        program, sample, _ = self._first_program(device)
        name = program.op.name
        seeded = not device.capabilities.deterministic
        if seeded:
            device.manual_seed(0)
        first = program(*sample.inputs)
        if seeded:
            device.manual_seed(0)
        second = program(*sample.inputs)
        assert torch.equal(first, second), f"{name} program gave different results on the same input{' after manual_seed(0)' if seeded else ''}"
        assert program.cost.latency_s >= 0 and program.cost.energy_j >= 0 and program.cost.error >= 0

    def test_close_is_idempotent(self) -> None:
        device = hal.device(self.uri)
        device.close()
        device.close()
        assert device.closed
        reopened = hal.device(self.uri)
        assert reopened is not device and not reopened.closed
