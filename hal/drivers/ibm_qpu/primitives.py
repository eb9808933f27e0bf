"""Circuits and observables as op attributes, the ISA transpile cache, and the batched primitive jobs.

How a circuit goes through the hal contract: a circuit is not a tensor, so it is part of *what* to
compute (the OpSpec attributes), while the numbers that vary from call to call, the circuit's parameter
values, are the Program's input tensor ``(batch, n_params)``. ``Circuit`` wraps a QuantumCircuit so that
it is hashable by structure (an OpSpec keys caches); ``observable_terms`` turns observables into
hashable Pauli-term tuples. Column ``j`` of the parameter tensor binds ``circuit.parameters[j]`` (Qiskit
sorts parameters by name, ParameterVector elements by index).

Both the transpile cache and the executor are given a function that opens the backend rather than the backend, so
that a device opens its backend (and imports qiskit-ibm-runtime) only when a circuit is first transpiled or run.

The transpile cache maps a circuit's structure to its ISA circuit (the backend's native gates on its
physical qubits): each distinct circuit is transpiled once with its parameters left symbolic, and every
later call only binds values. One call of a Program is one primitive job however many rows it has.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from hal.drivers.ibm_qpu.service import JobRunner
from hal.errors import CapacityExceeded, InvalidInput, ShapeError, UnsupportedOp


class Circuit:
    """A QuantumCircuit as an OpSpec attribute: equal and hashable by structure, not by object identity.

    Two circuits with the same gates on the same qubits with the same (symbolic) parameters share one
    ``key``, so they share one transpilation and one Program.
    """

    __slots__ = ("circuit", "key")

    def __init__(self, circuit: Any):
        from qiskit import QuantumCircuit

        if isinstance(circuit, Circuit):
            circuit = circuit.circuit
        if not isinstance(circuit, QuantumCircuit):
            raise InvalidInput(f"expected a qiskit QuantumCircuit, got {type(circuit).__name__}")
        self.circuit = circuit
        self.key = structure_key(circuit)

    @property
    def num_qubits(self) -> int:
        return self.circuit.num_qubits

    @property
    def num_parameters(self) -> int:
        return self.circuit.num_parameters

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Circuit) and other.key == self.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __repr__(self) -> str:
        return f"Circuit({self.circuit.num_qubits} qubits, {self.circuit.size()} instructions, {self.circuit.num_parameters} parameters, key {self.key[:12]})"


def structure_key(circuit: Any) -> str:
    """A digest of a circuit's instructions, qubits, clbits and symbolic parameters (its identity for caching)."""
    parts = [f"q{circuit.num_qubits} c{circuit.num_clbits} phase {circuit.global_phase}"]
    for instruction in circuit.data:
        qubits = tuple(circuit.find_bit(q).index for q in instruction.qubits)
        clbits = tuple(circuit.find_bit(c).index for c in instruction.clbits)
        params = tuple(str(p) for p in instruction.operation.params)
        parts.append(f"{instruction.operation.name}{qubits}{clbits}{params}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


#: Gate set circuits are lowered to on the ideal simulator: IBM Heron's native gates (rz, sx, x, cz), the ISA the
#: runtime's executor primitives expect (their twirling boxes reject others, e.g. ``ry``).
IDEAL_BASIS = ("rz", "sx", "x", "cz")

ObservableTerms = tuple[tuple[tuple[str, float], ...], ...]


def observable_terms(observables: Any, num_qubits: int) -> ObservableTerms:
    """Observables (a SparsePauliOp, a Pauli label, ``(label, coeff)`` pairs, or a list of them) as hashable ``((label, coeff), ...)`` tuples.

    Raises ShapeError when an observable's width differs from the circuit's and InvalidInput when one is
    not Hermitian (a complex coefficient), because its expectation value would not be a real number.
    """
    from qiskit.quantum_info import SparsePauliOp

    items = [observables] if isinstance(observables, (str, SparsePauliOp)) else list(observables)
    if not items:
        raise InvalidInput("expectation needs at least one observable")
    result = []
    for i, item in enumerate(items):
        try:
            if isinstance(item, SparsePauliOp):
                op = item
            elif isinstance(item, (tuple, list)) and item and all(isinstance(t, (tuple, list)) and len(t) == 2 for t in item):
                op = SparsePauliOp.from_list(list(item))
            else:
                op = SparsePauliOp(item)
        except Exception as exc:  # noqa: BLE001 - qiskit raises assorted types for a malformed operator/circuit; reported as hal errors
            raise InvalidInput(f"observable {i} ({item!r}) is not a Pauli operator ({exc}); give a SparsePauliOp or a label like 'ZIZ'") from None
        if op.num_qubits != num_qubits:
            raise ShapeError(f"observable {i} acts on {op.num_qubits} qubits but the circuit has {num_qubits}; write one Pauli letter per circuit qubit (rightmost letter = qubit 0)")
        coeffs = np.asarray(op.coeffs)
        if np.any(np.abs(coeffs.imag) > 1e-12):
            raise InvalidInput(f"observable {i} has complex coefficients, so it is not Hermitian and has no real expectation value; use real coefficients")
        if not np.all(np.isfinite(coeffs.real)):
            raise InvalidInput(f"observable {i} has NaN/inf coefficients")
        result.append(tuple((label, float(c.real)) for label, c in op.to_list()))
    return tuple(result)


def sparse_observables(terms: ObservableTerms) -> list[Any]:
    """The SparsePauliOps of observable term tuples."""
    from qiskit.quantum_info import SparsePauliOp

    return [SparsePauliOp.from_list(list(t)) for t in terms]


class TranspileCache:
    """ISA circuits by circuit structure, with hit/miss counts; transpiles with parameters left symbolic.

    After transpilation every instruction is checked against the backend Target, so an instruction
    the backend cannot run is refused here, before any job. ``basis_gates`` overrides the Target's gate set
    (the ideal simulator accepts almost any gate, but the runtime's executor primitives accept only IBM ISA
    gates, so its circuits are lowered to ``IDEAL_BASIS``).
    """

    def __init__(self, open_backend: Callable[[], Any], optimization_level: int, seed: int | None, basis_gates: Sequence[str] | None = None):
        self._open_backend = open_backend
        self.basis_gates = list(basis_gates) if basis_gates else None
        self.optimization_level = optimization_level
        self.seed = seed
        self.hits = 0
        self.misses = 0
        self._isa: dict[str, Any] = {}
        self._pass_manager: Any = None

    @property
    def backend(self) -> Any:
        """The backend transpiled for, opened by the device on first use."""
        return self._open_backend()

    def isa(self, circuit: Circuit, count: bool = True) -> Any:
        """The ISA circuit of ``circuit`` (transpiled once per structure).

        ``count=False`` for the driver's own repeat lookups within one prepare, so that ``hits`` counts
        requests served from the cache, not bookkeeping.
        """
        cached = self._isa.get(circuit.key)
        if cached is not None:
            self.hits += count
            return cached
        self.misses += 1
        target = self.backend.target
        if circuit.num_qubits > target.num_qubits:
            raise CapacityExceeded(
                f"the circuit has {circuit.num_qubits} qubits but {self.backend.name} has {target.num_qubits}; use a wider backend or fewer qubits",
                needed=circuit.num_qubits,
                available=target.num_qubits,
            )
        if self._pass_manager is None:
            from qiskit.transpiler import generate_preset_pass_manager

            if self.basis_gates:
                self._pass_manager = generate_preset_pass_manager(optimization_level=self.optimization_level, basis_gates=self.basis_gates, seed_transpiler=self.seed)
            else:
                self._pass_manager = generate_preset_pass_manager(optimization_level=self.optimization_level, backend=self.backend, seed_transpiler=self.seed)
        try:
            isa = self._pass_manager.run(circuit.circuit)
        except Exception as exc:  # noqa: BLE001 - qiskit raises assorted types for a malformed operator/circuit; reported as hal errors
            raise UnsupportedOp(f"{self.backend.name} cannot run this circuit: transpilation failed ({type(exc).__name__}: {exc})") from None
        check_isa(isa, target, self.backend.name)
        self._isa[circuit.key] = isa
        return isa

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


def check_isa(isa: Any, target: Any, backend_name: str) -> None:
    """Raise UnsupportedOp naming the first instruction the Target does not support on its qubits."""
    for instruction in isa.data:
        name = instruction.operation.name
        if name == "barrier":
            continue
        qargs = tuple(isa.find_bit(q).index for q in instruction.qubits)
        if not target.instruction_supported(name, qargs):
            raise UnsupportedOp(
                f"after transpilation the circuit still holds {name!r} on qubits {qargs}, which {backend_name} does not support "
                f"(its instructions: {', '.join(sorted(target.operation_names))}); decompose it into supported gates first"
            )


def binding_array(params: np.ndarray, num_parameters: int) -> np.ndarray:
    """Parameter rows as the float64 array a primitive pub takes; a circuit without parameters takes no columns."""
    values = np.ascontiguousarray(params, dtype=np.float64)
    if values.ndim != 2 or values.shape[1] != num_parameters:
        raise ShapeError(f"parameter values must be (batch, {num_parameters}), got {values.shape}")
    return values


class Executor:
    """Runs batched Estimator/Sampler jobs on one backend through the current qiskit-ibm-runtime primitives.

    Shot-based jobs use ``qiskit_ibm_runtime.executor_estimator.Estimator`` / ``executor_sampler.Sampler``
    (local mode for Aer and fake backends, IBM Quantum for real ones) with resilience level 0: raw
    estimates, no twirling, no mitigation, so the standard errors are the plain shot-noise ones.
    ``shots=0`` on the ideal simulator gives exact expectation values from Aer's estimator (statevector).
    Simulator seeds: job ``k`` after ``reseed(s)`` uses seed ``s + k``, so seeded runs repeat exactly.
    """

    def __init__(self, open_backend: Callable[[], Any], runner: JobRunner, local: bool):
        self._open_backend = open_backend
        self.runner = runner
        self.local = local
        self.jobs = 0
        self.circuits = 0
        self._seeds: Iterator[int] | None = None

    @property
    def backend(self) -> Any:
        """The backend jobs run on, opened by the device on first use."""
        return self._open_backend()

    def reseed(self, seed: int | None) -> None:
        self._seeds = None if seed is None else itertools.count(seed)

    @contextlib.contextmanager
    def seeded(self, seed: int) -> Iterator[None]:
        """Jobs inside the block use seeds seed, seed + 1, ...; the stream in place before resumes after the block."""
        before = self._seeds
        self._seeds = itertools.count(seed)
        try:
            yield
        finally:
            self._seeds = before

    def _seed_options(self) -> dict[str, Any]:
        if not self.local or self._seeds is None:
            return {}
        return {"simulator": {"seed_simulator": next(self._seeds)}}

    def expectation(self, isa: Any, observables: list[Any], params: np.ndarray, shots: int) -> tuple[np.ndarray, np.ndarray]:
        """Expectation values and standard errors, both ``(batch, n_observables)``, in one job."""
        layout_obs = [[o.apply_layout(isa.layout) for o in observables]]
        pub = (isa, layout_obs, params[:, None, :])
        if shots == 0:
            from qiskit_aer.primitives import EstimatorV2 as AerEstimator

            estimator = AerEstimator(options={"default_precision": 0.0})
        else:
            from qiskit_ibm_runtime.executor_estimator import Estimator

            estimator = Estimator(mode=self.backend, options={"resilience_level": 0, "default_shots": shots, **self._seed_options()})
        result = self._run(lambda: estimator.run([pub]), "expectation", len(params))
        data = result[0].data
        return np.asarray(data.evs, dtype=np.float64).reshape(len(params), -1), np.asarray(data.stds, dtype=np.float64).reshape(len(params), -1)

    def sample(self, isa: Any, params: np.ndarray, shots: int) -> np.ndarray:
        """Measured bits ``(batch, shots, num_clbits)`` (uint8, column j = classical bit j), in one job."""
        from qiskit_ibm_runtime.executor_sampler import Sampler

        sampler = Sampler(mode=self.backend, options=self._seed_options())
        result = self._run(lambda: sampler.run([(isa, params)], shots=shots), "sample", len(params))
        data = result[0].data
        bits = np.zeros((len(params), shots, isa.num_clbits), dtype=np.uint8)
        for register in isa.cregs:
            array = getattr(data, register.name).to_bool_array(order="little").reshape(len(params), shots, register.size)
            for k, clbit in enumerate(register):
                bits[..., isa.find_bit(clbit).index] = array[..., k]
        return bits

    def _run(self, submit: Any, what: str, rows: int) -> Any:
        result = self.runner.run(submit, f"{what} on {self.backend.name}")
        self.jobs += 1
        self.circuits += rows
        return result


def counts(bits: np.ndarray | Sequence[Sequence[int]]) -> dict[str, int]:
    """Counts of bitstrings from one row of sample bits ``(shots, num_clbits)``; strings are Qiskit-ordered (bit 0 rightmost)."""
    array = np.asarray(bits, dtype=np.uint8)
    result: dict[str, int] = {}
    for row in array:
        key = "".join(str(int(b)) for b in row[::-1])
        result[key] = result.get(key, 0) + 1
    return result
