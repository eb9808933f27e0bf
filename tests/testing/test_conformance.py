"""The conformance kit must fail a device that breaks the contract (a kit that cannot fail tests nothing).

Each wrong driver below is the conforming ``GoodDevice`` with one defect; the kit's checks are called
directly on an instance (no registry), and each defect must fail the check that names it.
"""

from __future__ import annotations

import inspect
import math

import pytest
import torch

from hal.capability import Capabilities, OpSupport, Paradigm
from hal.device import Cost, Device, DeviceInfo, OpSpec, Program, Support
from hal.testing.conformance import TOLERANCE_CEILINGS, DeviceConformance, Sample

SEED = 5
GOOD_COST = Cost(1e-6, 1e-9, 1e-7, "fixed test figures")


class GoodDevice(Device):
    """A conforming digital device: matmul, linear and relu with torch, in float32 and float64."""

    kind = "good"
    paradigm = Paradigm.DIGITAL
    deterministic = True

    @classmethod
    def probe(cls) -> list[DeviceInfo]:
        return [DeviceInfo(f"{cls.kind}:0", cls.kind, True)]

    def tolerance(self, name: str) -> dict[str, float]:
        return {"float32": 1e-4, "float64": 1e-10}

    def _build_capabilities(self) -> Capabilities:
        ops = {name: OpSupport(("float32", "float64"), self.tolerance(name)) for name in ("matmul", "linear", "relu")}
        return Capabilities(str(self.uri), self.kind, self.paradigm, True, {"model": "test fake"}, ops, deterministic=self.deterministic)

    def estimate(self, op: OpSpec) -> Cost:
        return GOOD_COST

    def cost(self, op: OpSpec) -> Cost:
        return GOOD_COST

    def kernel(self, op: OpSpec, params: dict[str, torch.Tensor]):
        if op.name == "matmul":
            return lambda a, b: a @ b
        if op.name == "linear":
            return lambda x: torch.nn.functional.linear(x, params["weight"], params.get("bias"))
        return torch.relu

    def _compile(self, op: OpSpec, params: dict[str, torch.Tensor]) -> Program:
        return Program(op, self, self.cost(op), self.kernel(op, params))


def run_kit(device: Device, kit: DeviceConformance | None = None) -> dict[str, str]:
    """Every check of the kit (but close, which needs the registry) on ``device``: failing check -> its message."""
    kit = kit or DeviceConformance()
    failures = {}
    for name, check in inspect.getmembers(kit, inspect.ismethod):
        if not name.startswith("test_") or name == "test_close_is_idempotent":
            continue
        arguments = {"device": device, "conformance_seed": SEED}
        try:
            check(**{p: arguments[p] for p in inspect.signature(check).parameters})
        except pytest.skip.Exception:
            pass
        except Exception as exc:  # noqa: BLE001 (any error of a check is its failure, as under pytest)
            failures[name] = str(exc) if isinstance(exc, AssertionError) else f"{type(exc).__name__}: {exc}"
    return failures


def only_failure(device: Device) -> tuple[str, str]:
    failures = run_kit(device)
    assert failures, f"the kit passed {type(device).__name__}"
    return next(iter(failures.items())) if len(failures) == 1 else ("several", "\n".join(f"{k}: {v}" for k, v in failures.items()))


def test_a_conforming_device_passes_every_check():
    assert run_kit(GoodDevice("good:0")) == {}


# ---------------------------------------------------------------------------- one defect each


class MutatesItsInput(GoodDevice):
    def kernel(self, op, params):
        if op.name == "relu":
            return lambda x: torch.relu(x.clamp_(min=0))  # right result, and the caller's x is clamped too
        return super().kernel(op, params)


class MutatesItsWeightAtPrepare(GoodDevice):
    def _compile(self, op, params):
        if op.name == "linear":
            params["weight"].mul_(2.0)  # "programming" the weight in place
            weight, bias = params["weight"] / 2.0, params.get("bias")
            return Program(op, self, GOOD_COST, lambda x: torch.nn.functional.linear(x, weight, bias))
        return super()._compile(op, params)


def test_kit_catches_a_driver_that_mutates_its_inputs():
    check, message = only_failure(MutatesItsInput("good:0"))
    assert check == "test_declared_ops_match_reference"
    assert "relu[float32] call changed its input 0 in place" in message


def test_kit_catches_a_driver_that_mutates_its_parameters_when_preparing():
    check, message = only_failure(MutatesItsWeightAtPrepare("good:0"))
    assert check == "test_declared_ops_match_reference"
    assert "linear[float32] prepare() changed its parameter 'weight' in place" in message
    assert "call changed" not in message  # reported once, where it happened


@pytest.mark.parametrize("latency_s", [-1.0, math.inf, math.nan])
def test_kit_catches_a_bad_cost_in_an_op_that_is_not_the_first(latency_s):
    class BadCostInRelu(GoodDevice):
        def cost(self, op):
            return Cost(latency_s, 0.0, 0.0) if op.name == "relu" else GOOD_COST

    device = BadCostInRelu("good:0")
    assert next(iter(device.capabilities.ops)) == "matmul"
    check, message = only_failure(device)
    assert check == "test_declared_ops_match_reference"
    assert f"relu[float32] Program.cost after prepare: latency_s = {latency_s!r}" in message


def test_kit_catches_a_nan_estimate():
    class NanEstimate(GoodDevice):
        def estimate(self, op):
            return Cost(1e-6, 1e-9, math.nan) if op.name == "linear" else GOOD_COST

    check, message = only_failure(NanEstimate("good:0"))
    assert check == "test_declared_ops_match_reference"
    assert "linear[float32] estimate(): error = nan" in message


def test_kit_catches_an_empty_tolerance_table():
    class EmptyTolerance(GoodDevice):
        def tolerance(self, name):
            return {} if name == "relu" else super().tolerance(name)

    check, message = only_failure(EmptyTolerance("good:0"))
    assert check == "test_tolerance_tables_are_bounded"
    assert "relu: the tolerance table is empty" in message


def test_kit_catches_a_tolerance_table_missing_a_declared_dtype():
    class HalfTable(GoodDevice):
        def tolerance(self, name):
            return {"float32": 1e-4}

    check, message = only_failure(HalfTable("good:0"))
    assert check == "test_tolerance_tables_are_bounded"
    assert "matmul: no tolerance for declared dtype float64" in message


def test_kit_catches_a_driver_that_refuses_an_op_it_declares():
    class RefusesRelu(GoodDevice):
        def _check(self, op):
            return Support.no("relu is switched off today") if op.name == "relu" else None

    check, message = only_failure(RefusesRelu("good:0"))
    assert check == "test_declared_ops_match_reference"
    assert "relu[float32]: declared, but supports() refuses the kit's operands: relu is switched off today" in message


def test_kit_catches_a_driver_that_accepts_an_undeclared_dtype():
    class AcceptsAnyDtype(GoodDevice):
        def supports(self, op):
            return Support.yes() if op.name in self.capabilities.ops else super().supports(op)

    check, message = only_failure(AcceptsAnyDtype("good:0"))
    assert check == "test_undeclared_dtypes_are_refused"
    assert "matmul[float16]: float16 is not declared but supports() did not refuse it" in message


@pytest.mark.parametrize(("paradigm", "tolerance", "expected"), [
    (Paradigm.ANALOG, 1.0, "tolerance 1 >= 1 accepts any output"),
    (Paradigm.DIGITAL, 0.2, "tolerance 0.2 is above the ceiling 0.125"),
    (Paradigm.PHOTONIC, 0.6, "tolerance 0.6 is above the ceiling 0.5"),
])
def test_kit_catches_a_tolerance_at_or_above_one_or_above_the_paradigm_ceiling(paradigm, tolerance, expected):
    class Overpromising(GoodDevice):
        def tolerance(self, name):
            return {"float32": tolerance, "float64": 1e-10} if name == "matmul" else super().tolerance(name)

    Overpromising.paradigm = paradigm
    failures = run_kit(Overpromising("good:0"))
    assert set(failures) == {"test_tolerance_tables_are_bounded"}
    assert f"matmul[float32]: {expected}" in failures["test_tolerance_tables_are_bounded"]


@pytest.mark.parametrize("tolerance", [-1e-3, math.nan, math.inf])
def test_kit_catches_a_negative_or_non_finite_tolerance(tolerance):
    class Nonsense(GoodDevice):
        def tolerance(self, name):
            return {"float32": tolerance, "float64": 1e-10} if name == "matmul" else super().tolerance(name)

    failures = run_kit(Nonsense("good:0"))  # the schema (test_capabilities_valid) refuses some of these too
    assert f"matmul[float32]: tolerance {tolerance!r} is not a finite number >= 0" in failures["test_tolerance_tables_are_bounded"]


@pytest.mark.parametrize("tolerance", [0.3, 1.0])
def test_kit_catches_an_all_zero_output(tolerance):
    """The circular case of issue 14: coarse converters, a tolerance measured from the device's own output."""

    class AllZeros(GoodDevice):
        paradigm = Paradigm.ANALOG

        def tolerance(self, name):
            return {"float32": tolerance, "float64": tolerance} if name == "matmul" else super().tolerance(name)

        def kernel(self, op, params):
            if op.name == "matmul":
                return lambda a, b: torch.zeros(a.shape[0], b.shape[1], dtype=a.dtype)
            return super().kernel(op, params)

    failures = run_kit(AllZeros("good:0"))
    assert "matmul[float32]: the result is all zeros and the reference is not" in failures["test_declared_ops_match_reference"]
    assert ("test_tolerance_tables_are_bounded" in failures) == (tolerance >= 1)


class NoisyOutput(GoodDevice):
    """Adds 1% noise to every result (and reseeds nothing) while declaring float32 tolerance 1e-4."""

    def kernel(self, op, params):
        inner = super().kernel(op, params)
        return lambda *inputs: (lambda y: y + 0.01 * y.abs().mean() * torch.randn_like(y))(inner(*inputs))


def test_kit_catches_results_outside_the_declared_tolerance():
    failures = run_kit(NoisyOutput("good:0"))
    assert "matmul[float32]: relative error" in failures["test_declared_ops_match_reference"]
    assert "> declared tolerance 0.0001" in failures["test_declared_ops_match_reference"]


def test_kit_catches_unrepeatable_programs_of_every_op():
    failures = run_kit(NoisyOutput("good:0"))
    message = failures["test_program_is_reusable_and_repeatable"]
    assert all(f"{name} program gave different results" in message for name in ("matmul", "linear", "relu"))


def test_kit_catches_a_wrong_output_shape():
    class Transposed(GoodDevice):
        def kernel(self, op, params):
            return (lambda a, b: (a @ b).T.contiguous()) if op.name == "matmul" else super().kernel(op, params)

    failures = run_kit(Transposed("good:0"))
    assert "matmul[float32]: result shape (8, 4), the reference's is (4, 8)" in failures["test_declared_ops_match_reference"]


# ---------------------------------------------------------------------------- paradigm ops


class WithParadigmOp(GoodDevice):
    """Also declares ``square`` (x -> x * x), an op outside the vocabulary."""

    def _build_capabilities(self) -> Capabilities:
        caps = super()._build_capabilities()
        caps.ops["square"] = OpSupport(("float32",), {"float32": 1e-6})
        return caps

    def _check(self, op):
        return Support.no("square takes one input") if op.name == "square" and len(op.inputs) != 1 else None

    def kernel(self, op, params):
        return (lambda x: x * x) if op.name == "square" else super().kernel(op, params)


class SquareKit(DeviceConformance):
    def sample(self, op_name, dtype, generator):
        if op_name == "square":
            return Sample([torch.randn(4, 8, generator=generator, dtype=torch.float64).to(dtype)])
        return super().sample(op_name, dtype, generator)

    def reference(self, op_name, sample):
        return sample.inputs[0].double() ** 2 if op_name == "square" else super().reference(op_name, sample)


def test_a_paradigm_op_without_operands_fails_with_what_to_override():
    failures = run_kit(WithParadigmOp("good:0"))
    assert set(failures) == {"test_paradigm_ops_run"}
    assert "square: declared, but the kit has no operands for it: override sample()" in failures["test_paradigm_ops_run"]


def test_a_paradigm_op_with_operands_and_a_reference_is_checked_like_a_vocabulary_op():
    assert run_kit(WithParadigmOp("good:0"), SquareKit()) == {}

    class WrongSquare(WithParadigmOp):
        def kernel(self, op, params):
            return (lambda x: x * x * 1.01) if op.name == "square" else super().kernel(op, params)

    failures = run_kit(WrongSquare("good:0"), SquareKit())
    assert set(failures) == {"test_paradigm_ops_run"}
    assert "square[float32]: relative error 0.01 > declared tolerance 1e-06" in failures["test_paradigm_ops_run"]


# ---------------------------------------------------------------------------- seeds


class RecordsOperands(GoodDevice):
    """Keeps every input it is called with."""

    def __init__(self, uri):
        super().__init__(uri)
        self.seen: list[torch.Tensor] = []

    def kernel(self, op, params):
        inner = super().kernel(op, params)

        def run(*inputs):
            self.seen += [t.clone() for t in inputs]
            return inner(*inputs)

        return run


def operands_for(seed: int) -> list[torch.Tensor]:
    device = RecordsOperands("good:0")
    DeviceConformance().test_declared_ops_match_reference(device, seed)
    return device.seen


def test_the_seed_fixes_the_operands():
    first, again, other = operands_for(1), operands_for(1), operands_for(2)
    assert len(first) == len(again) and all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))


def test_a_failure_names_the_seed_that_reproduces_it():
    failures = run_kit(NoisyOutput("good:0"))
    assert f"--hal-conformance-seed={SEED}" in failures["test_declared_ops_match_reference"]


def test_every_paradigm_has_a_ceiling_below_one_with_its_reason():
    assert set(TOLERANCE_CEILINGS) == set(Paradigm)
    for ceiling in TOLERANCE_CEILINGS.values():
        assert 0 < ceiling.value < 1 and ceiling.kind == "assumed" and ceiling.unit == "1"
