"""IbmQpuDevice: IBM quantum processors, their fake snapshots and the ideal Aer simulator as hal devices.

Ops (paradigm ops, not the tensor vocabulary):

=============== ============================= =========================================== =======================
op              input tensor                  attributes                                  output
=============== ============================= =========================================== =======================
expectation     parameter values              ``circuit`` (Circuit), ``observables``      (values, std_errors),
                (batch, n_params)             (Pauli terms), ``shots`` (optional)         each (batch, n_obs)
sample          parameter values              ``circuit`` (with measurements),            bits (batch, shots,
                (batch, n_params)             ``shots`` (optional)                        n_clbits) uint8
=============== ============================= =========================================== =======================

The circuit is part of *what* is computed, so it travels in the OpSpec attributes; the numbers that change
between calls (parameter values) are the tensor input. ``d.prepare_circuit(circuit, observables)`` builds
that OpSpec and prepares it: one call of the Program = one primitive job over all rows. ``shots=0`` (ideal
simulator only) gives exact expectation values.

QAOA (``solvers.qubo_minimize``) and VQE (``solvers.vqe``) are algorithms built on these two ops, not device
ops: a heuristic optimiser has no a-priori error bound to declare as a tolerance.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, ClassVar

import torch

from hal.capability import Capabilities, Figure, OpSupport, Paradigm
from hal.device import Check, Cost, Device, DeviceInfo, OpSpec, Option, Program, Support, TensorSpec
from hal.drivers.ibm_qpu import backends, section_cache
from hal.drivers.ibm_qpu.primitives import (
    IDEAL_BASIS,
    Circuit,
    Executor,
    TranspileCache,
    binding_array,
    observable_terms,
    sparse_observables,
)
from hal.drivers.ibm_qpu.service import SETUP_FIX, Connection, Credentials, JobPolicy, JobRunner, connect, find_credentials
from hal.errors import DeviceUnavailable, HalError, InvalidInput, ShapeError, UnsupportedOp

QISKIT_PACKAGES = ("qiskit", "qiskit-aer", "qiskit-ibm-runtime")
INSTALL_FIX = "pip install 'hal[quantum]' (qiskit, qiskit-aer, qiskit-ibm-runtime)"
PARADIGM_OPS = ("expectation", "sample")
DTYPES = ("float64", "float32")
#: Name under which probe() reports real IBM Quantum processors when no account is configured.
REMOTE_PLACEHOLDER = "ibm_quantum"
#: Whole-system electrical power of a dilution-refrigerated superconducting quantum computer, almost all of it
#: cryogenics and control electronics (the chip itself dissipates microwatts). IBM publishes no figure, so this is
#: an engineering choice: the order of magnitude of a comparable system, for energy estimates only.
SYSTEM_POWER_W = Figure.assumed(
    25e3,
    "W",
    "IBM publishes no system power; taken as the order of magnitude of a comparable dilution-refrigerated system "
    "(IEEE Spectrum, 'How much power will quantum computing need?' (2015): a D-Wave 2X drew just under 25 kW, mostly refrigeration)",
    "order of magnitude only",
)
#: Standard errors within which sampled expectation values are promised (4 sigma: 1 in 16,000 outside).
TOLERANCE_SIGMAS = 4.0


def _level(text: str) -> int:
    level = int(text)
    if level not in (0, 1, 2, 3):
        raise ValueError("the transpiler optimisation level is 0, 1, 2 or 3")
    return level


def _shots(text: str) -> int:
    shots = int(text)
    if shots < 0:
        raise ValueError("shots must be >= 0")
    return shots


@functools.cache
def _installed_versions() -> tuple[tuple[str, str], ...]:
    found = []
    for name in QISKIT_PACKAGES:
        try:
            found.append((name, version(name)))
        except PackageNotFoundError:
            found.append((name, "missing"))
    return tuple(found)


def _versions() -> dict[str, str]:
    """Installed versions of the qiskit stack ("missing" when absent), read once per process (about 1 ms a package,
    which 69 devices would pay several times each)."""
    return dict(_installed_versions())


def _no_such_fake_backend(uri: str, name: str) -> DeviceUnavailable:
    import difflib

    close = difflib.get_close_matches(name, backends.fake_backend_names(), n=3)
    hint = f"did you mean {', '.join(close)}?" if close else "run `hal devices --all` for the list"
    return DeviceUnavailable(uri, f"qiskit-ibm-runtime ships no fake backend {name!r}", hint)


def _open_fake_backend(uri: str, name: str) -> Any:
    """The fake backend object of snapshot ``name`` (a snapshot folder without its backend class is unavailable)."""
    try:
        return backends.fake_backend(name)
    except KeyError:
        raise _no_such_fake_backend(uri, name) from None


class IbmQpuDevice(Device):
    """One IBM quantum backend: ``ibm_qpu:aer`` (ideal), ``ibm_qpu:fake_<device>`` (noisy snapshot), ``ibm_qpu:<qpu>`` (real)."""

    kind = "ibm_qpu"
    refuses_nonfinite = True
    OPTIONS = {
        "shots": Option(_shots, 4096, "shots per circuit (0 = exact expectation values, ideal simulator only)"),
        "seed": Option(int, None, "simulator and transpiler seed; job k after seeding uses seed + k, so seeded runs repeat"),
        "optimization_level": Option(_level, 1, "preset transpiler optimisation level 0-3"),
        "timeout_s": Option(float, 3600.0, "seconds a job may take before it is cancelled"),
    }
    #: Builds the IBM Quantum service (QiskitRuntimeService when None); tests put a stand-in here.
    service_factory: ClassVar[Any] = None

    def __init__(self, uri):
        super().__init__(uri)
        missing = [name for name, v in _versions().items() if v == "missing"]
        if missing:
            raise DeviceUnavailable(str(self.uri), f"{', '.join(missing)} not installed", INSTALL_FIX)
        self.name = str(self.index)
        self.ideal = self.name == backends.IDEAL_SIMULATOR
        self.local = self.ideal or self.name.startswith(backends.FAKE_PREFIX)
        self.connection: Connection | None = None
        self._snapshot: list[Path] = []  # a fake backend's snapshot files (its section's cache key)
        if self.ideal:
            self._backend = backends.LazyBackend(backends.ideal_simulator)
        elif self.local:
            self._snapshot = backends.snapshot_files(self.name)
            if not self._snapshot:
                raise _no_such_fake_backend(str(self.uri), self.name)
            self._backend = backends.LazyBackend(functools.partial(_open_fake_backend, str(self.uri), self.name))
        else:
            remote = self._open_remote()
            self._backend = backends.LazyBackend(lambda: remote)
        self.shots: int = self.options["shots"]
        if self.shots == 0 and not self.ideal:
            raise InvalidInput(f"{self.uri}: shots=0 (exact expectation values) exists only on the ideal simulator ibm_qpu:aer; give shots > 0")
        secrets = self.connection.secrets if self.connection else []
        self.runner = JobRunner(JobPolicy(timeout_s=self.options["timeout_s"]), secrets)
        self.executor = Executor(self._backend.get, self.runner, local=self.local)
        self.executor.reseed(self.options["seed"])
        self.transpiler = TranspileCache(self._backend.get, self.options["optimization_level"], self.options["seed"], IDEAL_BASIS if self.ideal else None)

    @property
    def backend(self) -> Any:
        """The qiskit backend object. A real processor's is opened with the device; a local one's on first use (a
        transpilation, a job, an estimate): describing the device does not need it (``section_cache``)."""
        return self._backend.get()

    def _open_remote(self) -> Any:
        credentials = find_credentials()
        if credentials is None:
            raise DeviceUnavailable(str(self.uri), "no IBM Quantum credentials are configured, so real processors cannot be reached", SETUP_FIX)
        self.connection = connect(credentials, self.service_factory)
        return self.connection.backend(self.name)

    # ---- discovery
    @classmethod
    def probe(cls) -> list[DeviceInfo]:
        """The ideal simulator, every fake backend (names and widths only, no noise model), and real QPUs if an account is set."""
        if any(v == "missing" for v in _versions().values()):
            return [DeviceInfo(f"{cls.kind}:{backends.IDEAL_SIMULATOR}", cls.kind, False, "qiskit is not installed", INSTALL_FIX)]
        infos = [
            DeviceInfo(
                uri=f"{cls.kind}:{ref.name}",
                kind=cls.kind,
                available=True,
                simulated=True,
                paradigm=Paradigm.QUANTUM.value,
                summary={"backend": ref.name, "family": ref.family, "num_qubits": ref.num_qubits},
            )
            for ref in backends.local_backends()
        ]
        return infos + cls._probe_remote()

    @classmethod
    def _probe_remote(cls) -> list[DeviceInfo]:
        credentials = find_credentials()
        if credentials is None:
            return [DeviceInfo(f"{cls.kind}:{REMOTE_PLACEHOLDER}", cls.kind, False, "no IBM Quantum credentials configured (real processors are listed once an account is set)", SETUP_FIX, paradigm=Paradigm.QUANTUM.value)]
        try:
            connection = connect(credentials, cls.service_factory)
            names = connection.backend_names()
        except DeviceUnavailable as exc:
            return [DeviceInfo(f"{cls.kind}:{REMOTE_PLACEHOLDER}", cls.kind, False, exc.reason, exc.fix, paradigm=Paradigm.QUANTUM.value)]
        return [DeviceInfo(f"{cls.kind}:{name}", cls.kind, True, paradigm=Paradigm.QUANTUM.value, summary={"backend": name, "family": "IBM Quantum", "account": credentials.source}) for name in names]

    @classmethod
    def diagnose(cls) -> list[Check]:
        """Library versions, fake backends shipped, and where credentials come from (found without any network call)."""
        found = _versions()
        missing = [n for n, v in found.items() if v == "missing"]
        checks = [Check("qiskit stack", not missing, ", ".join(f"{n} {v}" for n, v in found.items()), INSTALL_FIX if missing else "")]
        if missing:
            return checks
        names = backends.fake_backend_names()
        checks.append(Check("fake backends", bool(names), f"{len(names)} device snapshots (e.g. {', '.join(names[:3])})"))
        credentials = find_credentials()
        if credentials is None:
            checks.append(Check("IBM Quantum credentials", False, "none found in the environment (QISKIT_IBM_TOKEN) or saved accounts; real processors are not listed, local ones are", SETUP_FIX))
        else:
            where = credentials.source + (f" ({credentials.account_name})" if credentials.account_name else "")
            checks.append(Check("IBM Quantum credentials", True, f"found: {where}, channel {credentials.channel or 'default'}, instance {credentials.instance or 'default'}"))
        return checks

    # ---- capabilities
    def _max_shots(self) -> int | None:
        configuration = getattr(self.backend, "configuration", None)
        return int(configuration().max_shots) if callable(configuration) and getattr(configuration(), "max_shots", None) else None

    def _max_circuits(self) -> int | None:
        value = getattr(self.backend, "max_circuits", None)
        return int(value) if isinstance(value, int) else None

    def _derive_section(self) -> section_cache.Derived:
        """The quantum section read off the backend object (opening it), and the backend's version string."""
        from hal.drivers.ibm_qpu.target_facts import quantum_section

        section = quantum_section(self.backend, self.name, self._max_shots(), self._max_circuits(), noise_model=self.local and not self.ideal, ideal=self.ideal)
        version_text = getattr(self.backend, "backend_version", None)
        return section, str(version_text) if version_text else None

    def _section(self) -> section_cache.Derived:
        """The quantum section: a local backend's from the on-disk cache when its inputs are unchanged, else derived."""
        if not self.local:
            return self._derive_section()
        versions = _versions()
        key = section_cache.ideal_simulator_key(versions) if self.ideal else section_cache.fake_backend_key(self.name, self._snapshot, versions)
        return section_cache.cached_section(self.name, key, self._derive_section)

    def _build_capabilities(self) -> Capabilities:
        section, version_text = self._section()
        width = int(section.num_qubits.value)
        limits = {"max_qubits": width}
        if section.max_shots:
            limits["max_shots"] = int(section.max_shots.value)
        tolerance = 1e-9 if self.shots == 0 else TOLERANCE_SIGMAS / math.sqrt(self.shots)
        tol = {d: tolerance for d in DTYPES}
        noise = "" if self.ideal else " Hardware noise adds a bias that shots do not average away; estimate() reports it."
        ops = {
            "expectation": OpSupport(DTYPES, tol, dict(limits), f"values within {TOLERANCE_SIGMAS:g} standard errors (1/sqrt(shots) per unit-norm Pauli) of the exact ones.{noise}"),
            "sample": OpSupport(DTYPES, tol, dict(limits), "bits (batch, shots, n_clbits); frequencies within 4/sqrt(shots) of the exact probabilities."),
        }
        versions = _versions()
        identity = {"backend": self.name, "family": "ideal simulator" if self.ideal else ("fake backend" if self.local else "IBM Quantum"), **versions}
        if version_text:
            identity["backend_version"] = str(version_text)
        notes = [
            "Paradigm ops only: prepare circuits with device.prepare_circuit(circuit, observables); parameter values are the input tensor (batch, n_params).",
            "Not deterministic: sample draws shots (expectation values are exact with shots=0 on the ideal simulator); seed the device (?seed=, manual_seed) to repeat them.",
            "One Program call = one primitive job for all rows (batched); ISA transpilation is cached per circuit structure.",
        ]
        if self.local and not self.ideal:
            notes.append("Fake backend: a real device's calibration snapshot simulated on Aer with a noise model built from it (built on the first job).")
        if self.name == "fake_nighthawk":
            notes.append("qiskit-ibm-runtime warns that fake_nighthawk's figures are not typical nighthawk error values.")
        return Capabilities(
            uri=str(self.uri),
            kind=self.kind,
            paradigm=Paradigm.QUANTUM,
            simulated=self.local,
            identity=identity,
            ops=ops,
            deterministic=False,  # sample draws shots even where expectation values are exact (shots=0)
            energy={} if self.local else {"system_power_w": SYSTEM_POWER_W},
            sections={"quantum": section},
            notes=notes,
        )

    # ---- validation shared by supports() and prepare()
    def _validate(self, op: OpSpec, count: bool = True) -> None:
        """Raise the specific hal error for bad input (wrong widths, too many shots, unsupported instructions)."""
        if op.name not in PARADIGM_OPS:
            return
        shots = self._op_shots(op)
        limit = self._max_shots()
        if limit is not None and shots > limit:
            raise InvalidInput(f"{op.name}: {shots} shots exceed {self.name}'s limit of {limit} per circuit; use fewer shots or repeat the job")
        if shots == 0 and not self.ideal:
            raise InvalidInput(f"{op.name}: shots=0 (exact values) exists only on ibm_qpu:aer; give shots > 0")
        circuit = op.attr("circuit")
        if not isinstance(circuit, Circuit):
            raise InvalidInput(f"{op.name} needs the attribute circuit=Circuit(quantum_circuit); build the op with device.prepare_circuit(circuit, observables)")
        if len(op.inputs) != 1 or len(op.inputs[0].shape) != 2 or op.inputs[0].shape[1] != circuit.num_parameters:
            got = [list(s.shape) for s in op.inputs]
            raise ShapeError(f"{op.name} takes one input of parameter values (batch, {circuit.num_parameters}) for this circuit's {circuit.num_parameters} parameters, got {got}")
        if op.name == "expectation":
            observable_terms(op.attr("observables") or (), circuit.num_qubits)
        elif shots == 0:
            raise InvalidInput("sample needs shots > 0")
        elif circuit.circuit.num_clbits == 0:
            raise InvalidInput("sample: the circuit measures nothing; add measurements (circuit.measure_all())")
        self.transpiler.isa(circuit, count=count)

    def _op_shots(self, op: OpSpec) -> int:
        shots = op.attr("shots", None)
        shots = self.shots if shots is None else shots
        if not isinstance(shots, int) or shots < 0:
            raise InvalidInput(f"{op.name}: shots must be an integer >= 0, got {shots!r}")
        return shots

    def _check(self, op: OpSpec) -> Support | None:
        try:
            self._validate(op, count=False)
        except HalError as exc:
            return Support.no(str(exc))
        return None

    def prepare(self, op: OpSpec, params: dict[str, torch.Tensor] | None = None) -> Program:
        """Prepare an op; bad input raises its specific error (ShapeError, CapacityExceeded...) before any job."""
        self._ensure_open()
        self._validate(op)
        return super().prepare(op, params)

    def prepare_circuit(self, circuit: Any, observables: Any = None, shots: int | None = None, dtype: torch.dtype = torch.float64) -> Program:
        """Prepare a parameterised circuit: ``expectation`` when observables are given, else ``sample``.

        The Program takes parameter values ``(batch, circuit.num_parameters)`` (column j binds
        ``circuit.parameters[j]``) and runs all rows in one job.
        """
        wrapped = Circuit(circuit)
        attrs: dict[str, Any] = {"circuit": wrapped}
        if shots is not None:
            attrs["shots"] = int(shots)
        spec = TensorSpec((None, wrapped.num_parameters), dtype)
        if observables is None:
            return self.prepare(OpSpec("sample", [spec], attrs=attrs))
        attrs["observables"] = observable_terms(observables, wrapped.num_qubits)
        return self.prepare(OpSpec("expectation", [spec], attrs=attrs))

    # ---- estimates
    def estimate(self, op: OpSpec) -> Cost:
        """QPU time and shot/gate error of one call, from the ISA circuit and the calibration figures.

        latency = rows * shots * (critical-path duration of the ISA circuit + repetition delay); on the ideal
        simulator, the statevector work rows * gates * 2^n at the measured amplitude-update rate. error = shot
        noise 1/sqrt(shots) + (1 - product of (1 - gate error)) over the ISA gates + readout errors.
        energy = latency * system power (real processors only; local simulation energy is the host's).
        """
        if op.name not in PARADIGM_OPS:
            raise UnsupportedOp(f"{self.uri} estimates only {', '.join(PARADIGM_OPS)}")
        shots = self._op_shots(op)
        rows = op.inputs[0].shape[0] if op.inputs and op.inputs[0].shape and op.inputs[0].shape[0] else 1
        circuit = op.attr("circuit")
        if not isinstance(circuit, Circuit):
            raise InvalidInput(f"{op.name} needs the attribute circuit=Circuit(quantum_circuit); build the op with device.prepare_circuit(circuit, observables)")
        isa = self.transpiler.isa(circuit, count=False)
        section = self.capabilities.sections["quantum"]
        shot_error = 0.0 if shots == 0 else 1.0 / math.sqrt(shots)
        if self.ideal:
            rate = self._amplitude_rate()
            latency = rows * isa.size() * 2.0 ** isa.num_qubits * max(shots if op.name == "sample" else 1, 1) / rate
            return Cost(latency, 0.0, shot_error, f"ideal simulator: rows * gates * 2^n / measured {rate:.3g} amplitude updates/s; error = 1/sqrt(shots) (0 when exact)")
        one_q = section.gate_duration_1q_s.median.value if section.gate_duration_1q_s else 0.0
        two_q = section.gate_duration_2q_s.median.value if section.gate_duration_2q_s else 0.0
        readout = section.readout_duration_s.median.value if section.readout_duration_s else 0.0
        depth_2q = isa.depth(lambda instr: instr.operation.num_qubits == 2)
        depth = isa.depth()
        duration = depth_2q * two_q + (depth - depth_2q) * one_q + readout
        rep_delay = float(getattr(self.backend.configuration(), "default_rep_delay", 0.0) or 0.0) * 1e-6 if callable(getattr(self.backend, "configuration", None)) else 0.0
        latency = rows * max(shots, 1) * (duration + rep_delay)
        ops = isa.count_ops()
        n_2q = sum(count for name, count in ops.items() if name in section.two_qubit_gates)
        n_1q = sum(count for name, count in ops.items() if name not in section.two_qubit_gates and name not in ("measure", "barrier", "delay"))
        e1 = section.gate_error_1q.median.value if section.gate_error_1q else 0.0
        e2 = section.gate_error_2q.median.value if section.gate_error_2q else 0.0
        er = section.readout_error.median.value if section.readout_error else 0.0
        measured = ops.get("measure", 0) if op.name == "sample" else isa.num_qubits
        gate_error = 1.0 - (1 - e1) ** n_1q * (1 - e2) ** n_2q * (1 - er) ** measured
        energy = 0.0 if self.local else latency * SYSTEM_POWER_W.value
        return Cost(latency, energy, shot_error + gate_error, "latency = rows * shots * (2q depth * median 2q duration + other depth * median 1q duration + readout + rep delay); error = 1/sqrt(shots) + 1 - prod(1 - median gate/readout errors) over ISA gates; energy = latency * system power (real QPUs)")

    def _amplitude_rate(self) -> float:
        """Measured Aer statevector speed: amplitude updates per second on a 12-qubit, 240-gate circuit (measured once)."""
        cached = getattr(self, "_measured_rate", None)
        if cached is None:
            from qiskit import QuantumCircuit, transpile

            n, layers = 12, 10
            qc = QuantumCircuit(n)
            for layer in range(layers):
                for q in range(n):
                    qc.rx(0.1 * (q + layer), q)
                for q in range(n - 1):
                    qc.cx(q, q + 1)
            qc.save_statevector()
            isa = transpile(qc, self.backend)
            start = time.perf_counter()
            self.backend.run(isa).result()
            elapsed = time.perf_counter() - start
            cached = isa.size() * 2.0**n / max(elapsed, 1e-9)
            self._measured_rate = cached
        return cached

    # ---- programs
    def _compile(self, op: OpSpec, params: dict[str, torch.Tensor]) -> Program:
        circuit: Circuit = op.attr("circuit")
        isa = self.transpiler.isa(circuit, count=False)
        shots = self._op_shots(op)
        n_params = circuit.num_parameters
        cost = self.estimate(op)
        if op.name == "expectation":
            observables = sparse_observables(observable_terms(op.attr("observables"), circuit.num_qubits))

            def run_expectation(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                rows = binding_array(values.detach().cpu().double().numpy(), n_params)
                evs, stds = self.executor.expectation(isa, observables, rows, shots)
                return torch.from_numpy(evs), torch.from_numpy(stds)

            return Program(op, self, cost, run_expectation)

        def run_sample(values: torch.Tensor) -> torch.Tensor:
            rows = binding_array(values.detach().cpu().double().numpy(), n_params)
            return torch.from_numpy(self.executor.sample(isa, rows, shots))

        return Program(op, self, cost, run_sample)

    # ---- lifecycle
    def manual_seed(self, seed: int) -> None:
        """Seed the simulator: the next jobs use seed, seed + 1, ... (real processors are not seedable)."""
        self.executor.reseed(seed)

    @contextlib.contextmanager
    def seeded(self, seed: int) -> Iterator[None]:
        """Jobs inside the block use simulator seeds seed, seed + 1, ...; the device's own seed stream resumes after.

        For calls that promise "same seed, same answer" (``qubo_minimize(seed=...)``, ``vqe(seed=...)``) without
        disturbing the seeding the device was opened with. Real processors cannot be seeded: InvalidInput.
        """
        if not self.local:
            raise InvalidInput(f"{self.uri} is a real processor: its shots cannot be seeded, so a seeded call cannot repeat; pass seed=None")
        with self.executor.seeded(seed):
            yield

    def telemetry(self) -> dict[str, Any]:
        """Jobs and circuits run, the last job id, transpile-cache hits and misses, retries."""
        return {
            "jobs": self.executor.jobs,
            "circuits": self.executor.circuits,
            "last_job_id": self.runner.job_ids[-1] if self.runner.job_ids else None,
            "transpile_cache_hits": self.transpiler.hits,
            "transpile_cache_misses": self.transpiler.misses,
            "transpile_cache_hit_rate": self.transpiler.hit_rate,
            "submission_retries": self.runner.retried,
        }

    def close(self) -> None:
        """Cancel jobs still running and release the backend; idempotent."""
        if self.closed:
            return
        self.runner.cancel_all()
        super().close()

    def describe_credentials(self) -> Credentials | None:
        """Where this device's account came from (None for local backends); never the token."""
        return self.connection.credentials if self.connection else None
