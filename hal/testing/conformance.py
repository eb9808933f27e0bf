"""The conformance kit: a pytest suite every driver runs with one subclass.

    from hal.testing.conformance import DeviceConformance

    class TestConformance(DeviceConformance):
        uri = "memristor:0?seed=0"

What it checks, for the device at ``uri`` (docs/writing-a-driver.md lists the same, for driver authors):

- capabilities validate against the schema; every declared op has dtypes and a tolerance for each of them
  and for nothing else; every tolerance is a finite number in [0, 1) and at most the ceiling of the
  device's paradigm (``TOLERANCE_CEILINGS``), a bound that does not come from the device's own measurement;
- every declared vocabulary op, in every declared dtype, on fresh random operands: ``supports()`` accepts it,
  ``estimate()`` and the Program's ``cost`` (after prepare and after the call) are finite and >= 0, neither
  ``prepare()`` nor the call changes an input or parameter, and the result has the reference's shape, is
  finite, is not all zeros where the float64 CPU reference (``cpu:0?precision=float64``) is not, and lies
  within the declared tolerance of it (relative Frobenius error);
- every declared paradigm op (``lif_layer``, ``expectation``...) runs the same checks on the operands the
  subclass's ``sample()`` gives (the kit cannot invent them), compared with ``reference()`` when it gives one;
- undeclared ops and undeclared float dtypes are refused, by ``supports()`` with a reason and by ``prepare()``
  with UnsupportedOp; bad shapes raise ShapeError naming the sizes; a Program checks its inputs;
- every op's Program is reusable and repeats its result (after ``manual_seed(0)`` on a noisy device);
  ``close()`` is idempotent.

Operands come from one seed per pytest session (``--hal-conformance-seed``, see ``hal.testing.plugin``),
random unless given and printed with every failure. Override ``sample`` when the default small shapes do not
fit a device's limits, and to give operands for paradigm ops.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable, Mapping

import pytest
import torch

import hal
from hal import ops as vocabulary
from hal.capability import Figure, Paradigm, validate
from hal.device import Cost, Device, OpSpec, dtype_name
from hal.errors import DTypeError, HalError, ShapeError, UnsupportedOp
from hal.testing.plugin import rerun_hint, session_seed
from hal.testing.samples import Sample, default_sample, relative_error

__all__ = ["REFERENCE_URI", "TOLERANCE_CEILINGS", "DeviceConformance", "Sample"]

REFERENCE_URI = "cpu:0?precision=float64"
#: The float dtypes the kit offers to every declared vocabulary op: declared ones must run, the rest be refused.
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

#: The largest tolerance a device of each paradigm may declare, whatever it measured on itself. An all-zero
#: output has relative error exactly 1 and an output at half the right amplitude 0.5; docs/writing-a-driver.md
#: gives the reasoning per paradigm.
TOLERANCE_CEILINGS: dict[Paradigm, Figure] = {
    Paradigm.DIGITAL: Figure.assumed(
        0.125, "1",
        "digital error is rounding only; the coarsest float format in use, FP8 E5M2 (2 mantissa bits), has unit roundoff 2^-3",
    ),
    Paradigm.ANALOG: Figure.assumed(
        0.5, "1",
        "conductance noise, drift and converter quantisation may cost accuracy, but an error above half the signal "
        "(below 6 dB signal-to-error) is a configuration that computes noise",
    ),
    Paradigm.PHOTONIC: Figure.assumed(
        0.5, "1",
        "phase, coupler and loss errors and detector noise may cost accuracy, but an error above half the signal "
        "(below 6 dB signal-to-error) is a configuration that computes noise",
    ),
    Paradigm.SPIKING: Figure.assumed(
        0.5, "1",
        "rate coding loses count resolution over few time steps, but an error above half the signal means too few steps to code the values",
    ),
    Paradigm.QUANTUM: Figure.assumed(
        0.5, "1",
        "shot noise falls as 1/sqrt(shots); an error above half the signal means too few shots for the estimate to say anything",
    ),
}


class DeviceConformance:
    """Subclass with ``uri = "kind:index?options"``; pytest collects the checks below for that device."""

    uri: str = ""

    # ---- hooks
    def sample(self, op_name: str, dtype: torch.dtype, generator: torch.Generator) -> Sample:
        """Operands for ``op_name``; override to fit a device's size limits and to give paradigm ops operands.

        Raises KeyError for an op the kit has no operands for (every paradigm op, unless overridden).
        """
        return default_sample(op_name, dtype, generator)

    def reference(self, op_name: str, sample: Sample) -> torch.Tensor | None:
        """The exact result of ``op_name`` on ``sample``, or None when there is none to compare with.

        Vocabulary ops run on the float64 CPU reference; override to give paradigm ops a reference.
        """
        if op_name not in vocabulary.VOCABULARY:
            return None
        return _run(hal.device(REFERENCE_URI), op_name, sample)

    # ---- fixtures
    @pytest.fixture
    def device(self) -> Device:
        if not self.uri:
            pytest.fail("set `uri` on your DeviceConformance subclass")
        return hal.device(self.uri)

    @pytest.fixture
    def conformance_seed(self, request: pytest.FixtureRequest) -> int:
        seed = session_seed(request.config)
        print(f"hal {rerun_hint(seed)}")
        return seed

    # ---- the checks
    def test_capabilities_valid(self, device: Device) -> None:
        caps = device.capabilities
        validate(caps.to_dict())
        assert caps.uri == str(device.uri)
        assert caps.kind == device.kind

    def test_tolerance_tables_are_bounded(self, device: Device) -> None:
        caps = device.capabilities
        ceiling = TOLERANCE_CEILINGS[Paradigm(caps.paradigm)]
        problems = []
        for name, declared in caps.ops.items():
            problems += _tolerance_table_problems(name, declared.dtypes, declared.tolerance, ceiling)
        assert not problems, "\n".join(problems)

    def test_declared_ops_match_reference(self, device: Device, conformance_seed: int) -> None:
        names = [name for name in device.capabilities.ops if name in vocabulary.VOCABULARY]
        if not names:
            pytest.skip(f"{device} declares no vocabulary op")
        self._assert_ops_conform(device, names, conformance_seed)

    def test_paradigm_ops_run(self, device: Device, conformance_seed: int) -> None:
        names = [name for name in device.capabilities.ops if name not in vocabulary.VOCABULARY]
        self._assert_ops_conform(device, names, conformance_seed)

    def test_undeclared_ops_are_refused(self, device: Device, conformance_seed: int) -> None:
        declared = set(device.capabilities.ops)
        problems = []
        for name in sorted(set(vocabulary.VOCABULARY) - declared):
            sample = default_sample(name, torch.float32, _generator(conformance_seed, name, torch.float32))
            problems += _refusal_problems(device, name, sample, f"{name} is not declared")
        assert not problems, _with_seed(problems, conformance_seed)

    def test_undeclared_dtypes_are_refused(self, device: Device, conformance_seed: int) -> None:
        problems = []
        for name, declared in device.capabilities.ops.items():
            if name not in vocabulary.VOCABULARY:
                continue
            for dtype in FLOAT_DTYPES:
                if dtype_name(dtype) in declared.dtypes:
                    continue
                sample = self.sample(name, dtype, _generator(conformance_seed, name, dtype))
                problems += _refusal_problems(device, name, sample, f"{name}[{dtype_name(dtype)}]: {dtype_name(dtype)} is not declared")
        assert not problems, _with_seed(problems, conformance_seed)

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

    def test_program_checks_its_inputs(self, device: Device, conformance_seed: int) -> None:
        names = [name for name in device.capabilities.ops if name in vocabulary.VOCABULARY]
        if not names:
            pytest.skip(f"{device} declares no vocabulary op")
        name = names[0]
        dtype = getattr(torch, device.capabilities.ops[name].dtypes[0])
        sample = self.sample(name, dtype, _generator(conformance_seed, name, dtype))
        program = device.prepare(_spec(name, sample), sample.params)
        wrong = [torch.zeros(*(s + 1 for s in sample.inputs[0].shape), dtype=dtype), *sample.inputs[1:]]
        with pytest.raises(ShapeError):
            program(*wrong)
        with pytest.raises((DTypeError, HalError)):
            program(sample.inputs[0].to(torch.int32), *sample.inputs[1:])

    def test_program_is_reusable_and_repeatable(self, device: Device, conformance_seed: int) -> None:
        seeded = not device.capabilities.deterministic
        problems = []
        for name, declared in device.capabilities.ops.items():
            dtype = _torch_dtype(declared.dtypes[0]) if declared.dtypes else None
            sample = self._sample_or_none(name, dtype, conformance_seed)
            if sample is None or not device.supports(_spec(name, sample)):
                continue  # reported by test_declared_ops_match_reference / test_paradigm_ops_run
            program = device.prepare(_spec(name, sample), sample.params)
            results = []
            for _ in range(2):
                if seeded:
                    device.manual_seed(0)
                results.append(program(*sample.inputs))
            if not _equal(*results):
                problems.append(f"{name} program gave different results on the same input{' after manual_seed(0)' if seeded else ''}")
        assert not problems, _with_seed(problems, conformance_seed)

    def test_close_is_idempotent(self) -> None:
        device = hal.device(self.uri)
        device.close()
        device.close()
        assert device.closed
        reopened = hal.device(self.uri)
        assert reopened is not device and not reopened.closed

    # ---- helpers
    def _sample_or_none(self, name: str, dtype: torch.dtype | None, seed: int) -> Sample | None:
        if dtype is None:
            return None
        try:
            return self.sample(name, dtype, _generator(seed, name, dtype))
        except KeyError:
            return None

    def _assert_ops_conform(self, device: Device, names: Iterable[str], seed: int) -> None:
        problems = []
        for name in names:
            dtypes = [dtype for dtype in map(_torch_dtype, device.capabilities.ops[name].dtypes) if dtype is not None]
            if dtypes and self._sample_or_none(name, dtypes[0], seed) is None:
                problems.append(f"{name}: declared, but the kit has no operands for it: override sample() in your DeviceConformance "
                                f"subclass to return a Sample for {name!r} (and reference() to check its values)")
                continue
            for dtype in dtypes:  # a name that is no dtype is reported by test_tolerance_tables_are_bounded
                problems += self._op_problems(device, name, dtype, seed)
        assert not problems, _with_seed(problems, seed)

    def _op_problems(self, device: Device, name: str, dtype: torch.dtype, seed: int) -> list[str]:
        """Everything wrong with one declared op in one declared dtype (empty when it conforms)."""
        where = f"{name}[{dtype_name(dtype)}]"
        sample = self._sample_or_none(name, dtype, seed)
        if sample is None:
            return [f"{where}: declared, but sample() gives no operands for this dtype"]
        op = _spec(name, sample)
        support = device.supports(op)
        if not support:
            return [f"{where}: declared, but supports() refuses the kit's operands: {support.reason} "
                    "(if they do not fit the device's limits, override sample())"]
        try:
            problems = _cost_problems(f"{where} estimate()", device.estimate(op))
        except HalError as exc:
            problems = [f"{where}: supports() accepts it but estimate() raised {type(exc).__name__}: {exc}"]
        expected = self.reference(name, _copy(sample))
        before = _copy(sample)
        try:
            program = device.prepare(op, sample.params)
        except HalError as exc:
            return [*problems, f"{where}: supports() accepts it but prepare() raised {type(exc).__name__}: {exc}"]
        problems += _mutation_problems(f"{where} prepare()", before, sample)
        problems += _cost_problems(f"{where} Program.cost after prepare", program.cost)
        before = _copy(sample)
        if not device.capabilities.deterministic:
            device.manual_seed(_derived_seed(seed, name, dtype))
        out = program(*sample.inputs)
        problems += _mutation_problems(f"{where} call", before, sample)
        problems += _cost_problems(f"{where} Program.cost after a call", program.cost)
        tolerance = device.capabilities.ops[name].tolerance.get(dtype_name(dtype))
        return problems + _output_problems(where, out, expected, tolerance)


# --------------------------------------------------------------------------- pure checks (no device state)


def _spec(name: str, sample: Sample) -> OpSpec:
    return OpSpec(name, sample.inputs, sample.params, sample.attrs)


def _run(device: Device, name: str, sample: Sample) -> torch.Tensor:
    return device.prepare(_spec(name, sample), sample.params)(*sample.inputs)


def _derived_seed(seed: int, name: str, dtype: torch.dtype) -> int:
    """A seed per (session seed, op, dtype), independent of the order the checks run in."""
    return zlib.crc32(f"{seed}/{name}/{dtype_name(dtype)}".encode())


def _generator(seed: int, name: str, dtype: torch.dtype) -> torch.Generator:
    return torch.Generator().manual_seed(_derived_seed(seed, name, dtype))


def _with_seed(problems: list[str], seed: int) -> str:
    return "\n".join(problems) + f"\n({rerun_hint(seed)})"


def _copy(sample: Sample) -> Sample:
    """A deep copy of the operands (attributes are frozen by OpSpec, so they are shared)."""
    return Sample([t.clone() for t in sample.inputs], {k: v.clone() for k, v in sample.params.items()}, dict(sample.attrs))


def _torch_dtype(text: str) -> torch.dtype | None:
    """``"float32"`` -> ``torch.float32``; None for a name that is not a torch dtype."""
    dtype = getattr(torch, text, None)
    return dtype if isinstance(dtype, torch.dtype) else None


def _equal(a: object, b: object) -> bool:
    """Exact equality of results (NaN equal to NaN): tensors, or tuples/lists of them."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        if a.shape != b.shape or a.dtype != b.dtype or a.device != b.device:
            return False
        if a.is_floating_point() or a.is_complex():
            return torch.equal(a.isnan(), b.isnan()) and torch.equal(a.masked_fill(a.isnan(), 0), b.masked_fill(b.isnan(), 0))
        return torch.equal(a, b)
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b


def _mutation_problems(what: str, before: Sample, after: Sample) -> list[str]:
    """Operands that differ from the copies taken before ``what`` ran."""
    pairs: list[tuple[str, torch.Tensor, torch.Tensor]] = [(f"input {i}", b, a) for i, (b, a) in enumerate(zip(before.inputs, after.inputs))]
    pairs += [(f"parameter {k!r}", before.params[k], after.params[k]) for k in before.params]
    return [f"{what} changed its {label} in place; a driver must leave its operands as it found them (work on a copy)"
            for label, old, new in pairs if not _equal(old, new)]


def _refusal_problems(device: Device, name: str, sample: Sample, why: str) -> list[str]:
    """Why ``device`` failed to refuse an op it must refuse: supports() with a reason, prepare() with UnsupportedOp."""
    op = _spec(name, sample)
    support = device.supports(op)
    if support or not support.reason:
        return [f"{why} but supports() did not refuse it with a reason"]
    try:
        device.prepare(op, sample.params)
    except (UnsupportedOp, DTypeError):
        return []
    except HalError as exc:
        return [f"{why}: prepare() raised {type(exc).__name__} ({exc}), not UnsupportedOp"]
    return [f"{why} but prepare() accepted it"]


def _cost_problems(what: str, cost: object) -> list[str]:
    if not isinstance(cost, Cost):
        return [f"{what} is a {type(cost).__name__}, not a hal.device.Cost"]
    problems = []
    for field in ("latency_s", "energy_j", "error"):
        value = getattr(cost, field)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            problems.append(f"{what}: {field} = {value!r}; a cost is a finite number >= 0 (the planner adds and compares them)")
    return problems


def _tolerance_table_problems(name: str, dtypes: Iterable[str], tolerance: Mapping[str, object], ceiling: Figure) -> list[str]:
    dtypes = tuple(dtypes)
    if not dtypes:
        return [f"{name}: declares no dtype; list the dtypes it runs in OpSupport.dtypes"]
    if not tolerance:
        return [f"{name}: the tolerance table is empty; give each of {', '.join(dtypes)} the relative error the device promises"]
    problems = [f"{name}: dtype {text!r} is not a torch dtype name (e.g. 'float32')" for text in dtypes if _torch_dtype(text) is None]
    problems += [f"{name}: no tolerance for declared dtype {text}" for text in dtypes if text not in tolerance]
    problems += [f"{name}: a tolerance for {text}, which it does not declare in dtypes" for text in tolerance if text not in dtypes]
    for text, value in tolerance.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            problems.append(f"{name}[{text}]: tolerance {value!r} is not a finite number >= 0")
        elif value >= 1:
            problems.append(f"{name}[{text}]: tolerance {value:.3g} >= 1 accepts any output, even all zeros (relative error 1); "
                            "declare what the device achieves, or refuse the configuration")
        elif value > ceiling.value:
            problems.append(f"{name}[{text}]: tolerance {value:.3g} is above the ceiling {ceiling.value:g} for this paradigm ({ceiling.source}); "
                            "a configuration this inaccurate should be refused, not declared")
    return problems


def _output_problems(where: str, out: object, expected: torch.Tensor | None, tolerance: object) -> list[str]:
    results = list(out) if isinstance(out, (tuple, list)) else [out]
    if not all(isinstance(t, torch.Tensor) for t in results):
        return [f"{where}: returned {type(out).__name__}, not a tensor (or a tuple of tensors)"]
    problems = [f"{where}: the result holds NaN/inf" for t in results if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all())]
    if expected is None or problems:
        return problems
    if not isinstance(out, torch.Tensor):
        return [f"{where}: returned {type(out).__name__} where the reference is one tensor"]
    if out.shape != expected.shape:
        return [f"{where}: result shape {tuple(out.shape)}, the reference's is {tuple(expected.shape)}"]
    if not bool(out.any()) and bool(expected.any()):
        return [f"{where}: the result is all zeros and the reference is not"]
    if not isinstance(tolerance, (int, float)):
        return []  # reported by test_tolerance_tables_are_bounded
    error = relative_error(out, expected)
    if not error <= tolerance:
        return [f"{where}: relative error {error:.3g} > declared tolerance {tolerance:.3g}"]
    return []

