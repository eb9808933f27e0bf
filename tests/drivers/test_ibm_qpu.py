"""Tests of hal/drivers/ibm_qpu: discovery, Target capabilities, batched primitives, bad input, credentials and jobs."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

import hal
from hal.capability import validate
from hal.device import OpSpec, TensorSpec
from hal.drivers.ibm_qpu import Circuit, IbmQpuDevice, backends, counts, service
from hal.drivers.ibm_qpu.primitives import check_isa, observable_terms
from hal.drivers.ibm_qpu.solvers import brute_force_qubo, h2_hamiltonian, qubo_minimize, vqe
from hal.errors import CapacityExceeded, DeviceFailure, DeviceUnavailable, InvalidInput, ShapeError, UnsupportedOp
from hal.testing.conformance import DeviceConformance
from hal.testing.samples import Sample

qiskit = pytest.importorskip("qiskit")
from qiskit import QuantumCircuit
from qiskit.circuit import Gate, ParameterVector
from qiskit.quantum_info import SparsePauliOp, Statevector

pytestmark = pytest.mark.filterwarnings("error::DeprecationWarning")
TOKEN = "sekrit-token-0123456789abcdef"


class TestConformance(DeviceConformance):
    uri = "ibm_qpu:aer?shots=0"

    def sample(self, op_name: str, dtype: torch.dtype, generator: torch.Generator) -> Sample:
        if op_name == "expectation":
            qc, _ = ansatz(2)
            rows = (torch.rand(3, qc.num_parameters, generator=generator, dtype=torch.float64) * 6).to(dtype)
            return Sample([rows], attrs={"circuit": Circuit(qc), "observables": observable_terms(["ZZ", "XI"], 2)})
        if op_name == "sample":  # RX(0) or RX(pi) then measure: bits that do not depend on the shots' randomness
            theta = ParameterVector("a", 1)
            qc = QuantumCircuit(1)
            qc.rx(theta[0], 0)
            qc.measure_all()
            return Sample([torch.tensor([[0.0], [np.pi]], dtype=dtype)], attrs={"circuit": Circuit(qc), "shots": 16})
        return super().sample(op_name, dtype, generator)

    def reference(self, op_name: str, sample: Sample) -> torch.Tensor | None:
        if op_name == "sample":
            ones = sample.inputs[0][:, 0] > 1.0
            return ones[:, None, None].expand(-1, sample.attrs["shots"], 1).to(torch.uint8)
        return super().reference(op_name, sample)  # expectation returns (values, errors) pairs


def fresh(uri: str) -> IbmQpuDevice:
    """A device not shared with other tests."""
    device = hal.device(uri)
    device.close()
    return hal.device(uri)


def ansatz(n: int = 3) -> tuple[QuantumCircuit, ParameterVector]:
    theta = ParameterVector("t", 2 * n)
    qc = QuantumCircuit(n)
    for q in range(n):
        qc.ry(theta[q], q)
    for q in range(n - 1):
        qc.cx(q, q + 1)
    for q in range(n):
        qc.rx(theta[n + q], q)
    return qc, theta


@pytest.fixture
def no_credentials(monkeypatch, tmp_path):
    monkeypatch.delenv(service.TOKEN_VARIABLE, raising=False)
    monkeypatch.setattr(service, "ACCOUNT_FILE", str(tmp_path / "none.json"))


# ---------------------------------------------------------------------------- discovery and capabilities


@pytest.mark.filterwarnings("ignore:Properties of fake_nighthawk:UserWarning")
def test_probe_lists_the_simulator_and_every_fake_backend_without_building_them(no_credentials, monkeypatch):
    from qiskit_ibm_runtime import fake_provider

    monkeypatch.setattr(backends, "fake_backend", lambda name: pytest.fail("probe must not instantiate backends"))
    infos = IbmQpuDevice.probe()
    uris = {i.uri for i in infos if i.available}
    shipped = {f"ibm_qpu:{b.name}" for b in fake_provider.FakeProviderForBackendV2().backends()}
    assert "ibm_qpu:aer" in uris and shipped <= uris
    torino = next(i for i in infos if i.uri == "ibm_qpu:fake_torino")
    assert torino.summary["num_qubits"] == 133 and torino.simulated
    remote = [i for i in infos if not i.available]
    assert len(remote) == 1 and "credentials" in remote[0].reason and "QISKIT_IBM_TOKEN" in remote[0].fix


def test_fake_backend_capabilities_come_from_its_calibration():
    caps = hal.device("ibm_qpu:fake_manila").capabilities
    validate(caps.to_dict())
    section = caps.sections["quantum"]
    assert section.num_qubits.value == 5 and section.num_qubits.source == "measured:backend Target num_qubits"
    assert {"cx", "rz", "sx", "x"} <= set(section.basis_gates) and section.two_qubit_gates == ["cx"]
    assert [0, 1] in section.connectivity.edges and section.connectivity.degree_max.value == 2 and section.connectivity.degree_max.kind == "derived"
    assert section.t1_s.median.source.startswith("measured:calibration 2024")
    assert section.t1_s.worst.value <= section.t1_s.median.value and section.t1_s.count == 5
    assert section.gate_error_2q.worst.value >= section.gate_error_2q.median.value > section.gate_error_1q.median.value
    assert section.readout_error.median.value > 0 and section.gate_duration_2q_s.median.value > section.gate_duration_1q_s.median.value
    assert section.max_shots.value == 100000 and section.max_shots.kind == "measured"
    assert caps.ops["expectation"].limits["max_qubits"] == 5 and section.unusable_2q_pairs.value == 0
    assert caps.simulated and not caps.deterministic and section.noise_model


def test_ideal_simulator_reports_no_noise_figures():
    caps = hal.device("ibm_qpu:aer?shots=0").capabilities
    section = caps.sections["quantum"]
    assert section.t1_s is None and section.gate_error_2q is None and section.connectivity.all_to_all
    assert section.connectivity.degree_max is None and section.unusable_2q_pairs is None
    assert section.num_qubits.kind == "derived" and "host memory" in section.num_qubits.source  # Aer sizes it from RAM
    assert not section.noise_model
    # expectation values are exact here, but sample draws shots: the device is not deterministic
    assert not caps.deterministic and any("seed the device" in n for n in caps.notes)


def _bare_numbers(value, path="") -> list[str]:
    """Paths of numbers in a capability section that are not inside a Figure (every figure must say its source)."""
    if isinstance(value, dict):
        if {"value", "unit", "source"} <= set(value):
            return []
        return [p for key, item in value.items() for p in _bare_numbers(item, f"{path}.{key}")]
    if isinstance(value, list):
        return [p for i, item in enumerate(value) for p in _bare_numbers(item, f"{path}[{i}]")]
    return [path] if isinstance(value, (int, float)) and not isinstance(value, bool) else []


def test_broken_couplers_are_counted_once_per_qubit_pair():
    # fake_torino lists each cz coupler in both directions: 22 calibrations with error 1 are 11 broken couplers
    section = hal.device("ibm_qpu:fake_torino").capabilities.sections["quantum"]
    assert section.gate_error_2q.count == 300 and section.gate_error_2q.worst.value == 1.0
    assert section.unusable_2q_pairs.value == 11 and section.unusable_2q_pairs.kind == "derived"


@pytest.mark.parametrize("uri", ["ibm_qpu:fake_manila", "ibm_qpu:aer?shots=0"])
def test_every_number_in_the_quantum_section_is_a_sourced_figure(uri):
    section = hal.device(uri).capabilities.to_dict()["sections"]["quantum"]
    # coupling-map edges are qubit indices and a Spread's count is its sample size: data, not figures
    bare = [p for p in _bare_numbers(section) if not p.startswith(".connectivity.edges") and not p.endswith(".count")]
    assert bare == []


def test_unknown_fake_backend_suggests_close_names():
    with pytest.raises(DeviceUnavailable, match="fake_manila"):
        hal.device("ibm_qpu:fake_manilla")


# ---------------------------------------------------------------------------- primitives


def test_expectation_is_exact_on_the_ideal_simulator_and_one_job_per_call():
    d = hal.device("ibm_qpu:aer?shots=0")
    qc, _ = ansatz(3)
    observables = [SparsePauliOp("ZZI"), SparsePauliOp.from_list([("XIX", 0.5), ("IYI", -1.0)])]
    program = d.prepare_circuit(qc, observables)
    rows = torch.rand(5, qc.num_parameters, dtype=torch.float64) * 6
    jobs = d.telemetry()["jobs"]
    values, stds = program(rows)
    assert d.telemetry()["jobs"] == jobs + 1 and values.shape == (5, 2) and torch.all(stds == 0)
    for r in range(5):
        state = Statevector(qc.assign_parameters(rows[r].numpy()))
        exact = [state.expectation_value(o).real for o in observables]
        assert np.allclose(values[r].numpy(), exact, atol=1e-10)


def test_sampled_jobs_on_the_ideal_simulator_take_any_gate_set():
    # the runtime's executor primitives accept only IBM ISA gates: the ideal simulator lowers circuits to IDEAL_BASIS
    from qiskit.circuit.library import real_amplitudes

    d = hal.device("ibm_qpu:aer?shots=1000&seed=1")
    qc = real_amplitudes(2, reps=1)
    values, _ = d.prepare_circuit(qc, ["ZZ"])(torch.zeros(1, qc.num_parameters, dtype=torch.float64))
    assert float(values[0, 0]) == pytest.approx(1.0) and set(d.transpiler.isa(Circuit(qc)).count_ops()) <= {"rz", "sx", "x", "cz"}


def test_transpilation_is_cached_by_circuit_structure():
    d = fresh("ibm_qpu:fake_manila?seed=3")
    d.prepare_circuit(ansatz(3)[0], ["ZZZ"])
    misses = d.transpiler.misses
    d.prepare_circuit(ansatz(3)[0], ["ZZZ", "XII"])  # a new but identical circuit object
    assert d.transpiler.misses == misses and d.transpiler.hits >= 1
    assert Circuit(ansatz(3)[0]) == Circuit(ansatz(3)[0]) and Circuit(ansatz(3)[0]) != Circuit(ansatz(2)[0])


def test_sampled_expectation_agrees_with_exact_within_its_standard_error_and_repeats_when_seeded():
    d = fresh("ibm_qpu:aer?shots=4000&seed=7")
    qc, _ = ansatz(2)
    program = d.prepare_circuit(qc, ["ZZ", "XI"])
    rows = torch.rand(6, qc.num_parameters, dtype=torch.float64) * 6
    d.manual_seed(0)
    values, stds = program(rows)
    d.manual_seed(0)
    again, _ = program(rows)
    assert torch.equal(values, again)
    exact = np.array([[Statevector(qc.assign_parameters(r.numpy())).expectation_value(SparsePauliOp(o)).real for o in ("ZZ", "XI")] for r in rows])
    sigma = np.sqrt(np.maximum(1 - exact**2, 1 / 4000) / 4000)  # a +-1 outcome's standard error (floored near +-1)
    assert np.all(np.abs(values.numpy() - exact) <= 5 * sigma)
    assert np.allclose(stds.numpy(), np.sqrt((1 - values.numpy() ** 2) / 4000), rtol=1e-3, atol=1e-6)
    assert np.all(stds.numpy() <= 1 / np.sqrt(4000 - 1) + 1e-9)  # a +-1 outcome's sample std over 4000 shots


def test_sample_on_a_noisy_fake_backend_returns_bits_of_the_bell_state_mostly():
    d = fresh("ibm_qpu:fake_manila?seed=1&shots=500")
    theta = ParameterVector("a", 1)
    qc = QuantumCircuit(2)
    qc.ry(theta[0], 0)
    qc.cx(0, 1)
    qc.measure_all()
    bits = d.prepare_circuit(qc)(torch.tensor([[np.pi / 2], [0.0]], dtype=torch.float64))
    assert bits.shape == (2, 500, 2) and bits.dtype == torch.uint8
    bell, ground = counts(bits[0].numpy()), counts(bits[1].numpy())
    assert bell.get("00", 0) + bell.get("11", 0) > 0.85 * 500 and min(bell.get("00", 0), bell.get("11", 0)) > 150
    assert ground.get("00", 0) > 0.9 * 500
    assert d.telemetry()["last_job_id"]


def test_estimate_adds_gate_errors_to_shot_noise_on_a_noisy_backend():
    qc, _ = ansatz(3)
    noisy = hal.device("ibm_qpu:fake_manila?shots=1000").prepare_circuit(qc, ["ZZZ"]).cost
    ideal = hal.device("ibm_qpu:aer?shots=1000").prepare_circuit(qc, ["ZZZ"]).cost
    assert ideal.error == pytest.approx(1 / np.sqrt(1000))
    assert noisy.error > ideal.error + 0.01  # two CX at ~1% each, plus readout
    assert noisy.latency_s > 1000 * 1e-6 and noisy.energy_j == 0.0  # 1000 shots of a microsecond-scale circuit; local


def test_qubo_minimize_is_a_solver_not_a_device_op():
    d = hal.device("ibm_qpu:aer?shots=0")
    assert "qubo_minimize" not in d.capabilities.ops  # a heuristic has no error bound to declare as a tolerance
    q = np.array([[-1.0, 2.0, 0.0, 0.0], [0.0, -1.0, 2.0, 0.0], [0.0, 0.0, -1.0, 2.0], [0.0, 0.0, 0.0, -1.0]])
    result = qubo_minimize(q, d, seed=3)
    _, best = brute_force_qubo(q)
    assert result.energy == pytest.approx(best) and float(result.x @ q @ result.x) == pytest.approx(best)


# ---------------------------------------------------------------------------- bad input, refused before any job


def test_bad_input_is_refused_before_any_job():
    d = fresh("ibm_qpu:fake_manila?seed=0")
    jobs = d.telemetry()["jobs"]
    wide, _ = ansatz(6)
    with pytest.raises(CapacityExceeded, match="6 qubits") as caught:
        d.prepare_circuit(wide, ["Z" * 6])
    assert caught.value.needed == 6 and caught.value.available == 5
    qc, _ = ansatz(3)
    with pytest.raises(ShapeError, match="acts on 2 qubits but the circuit has 3"):
        d.prepare_circuit(qc, ["ZZ"])
    with pytest.raises(InvalidInput, match="limit of 100000"):
        d.prepare_circuit(qc, ["ZZZ"], shots=200_000)
    with pytest.raises(InvalidInput, match="not Hermitian"):
        d.prepare_circuit(qc, [SparsePauliOp(["ZZZ"], coeffs=[1j])])
    with pytest.raises(InvalidInput, match="only on"):
        d.prepare_circuit(qc, ["ZZZ"], shots=0)
    with pytest.raises(InvalidInput, match="measure"):
        d.prepare_circuit(qc)
    opaque = QuantumCircuit(1)
    opaque.append(Gate("mystery", 1, []), [0])
    with pytest.raises(UnsupportedOp, match="manila"):
        d.prepare_circuit(opaque, ["Z"])
    program = d.prepare_circuit(qc, ["ZZZ"])
    with pytest.raises(InvalidInput, match="NaN"):
        program(torch.tensor([[0.1, float("nan"), 0, 0, 0, 0]], dtype=torch.float64))
    with pytest.raises(ShapeError):
        program(torch.zeros(2, 5, dtype=torch.float64))
    assert d.telemetry()["jobs"] == jobs
    assert not d.supports(OpSpec("expectation", [TensorSpec((None, 6), torch.float64)], attrs={"circuit": Circuit(wide), "observables": (("Z" * 6, 1.0),)}))


def test_an_instruction_the_target_lacks_is_named():
    target = backends.fake_backend("fake_manila").target
    qc = QuantumCircuit(5)
    qc.h(0)
    with pytest.raises(UnsupportedOp, match="'h' on qubits \\(0,\\)"):
        check_isa(qc, target, "fake_manila")


# ---------------------------------------------------------------------------- credentials and jobs (no network)


class FakeJob:
    def __init__(self, job_id: str, result=None, finishes: bool = True):
        self._id, self._result, self._finishes, self.cancelled = job_id, result, finishes, False

    def job_id(self):
        return self._id

    def done(self):
        return self._finishes

    def result(self):
        return self._result

    def cancel(self):
        self.cancelled = True


class FakeService:
    """Stands in for QiskitRuntimeService: its backends are fake snapshots, its errors quote the token."""

    def __init__(self, **kwargs):
        self._account = type("Account", (), {"token": TOKEN})()

    def backends(self, simulator=False, operational=True):
        return [type("B", (), {"name": "ibm_manila"})()]

    def backend(self, name):
        if name != "ibm_manila":
            raise RuntimeError(f"401 for token {TOKEN}: no backend {name}")
        return backends.fake_backend("fake_manila")


def test_no_credentials_means_no_connection_and_a_clear_reason(no_credentials, monkeypatch):
    monkeypatch.setattr(IbmQpuDevice, "service_factory", lambda **kw: pytest.fail("no credentials: no network call"))
    assert service.find_credentials() is None
    with pytest.raises(DeviceUnavailable, match="no IBM Quantum credentials") as caught:
        IbmQpuDevice("ibm_qpu:ibm_torino")
    assert "save_account" in caught.value.fix
    check = next(c for c in IbmQpuDevice.diagnose() if c.name == "IBM Quantum credentials")
    assert not check.ok and "QISKIT_IBM_TOKEN" in check.detail


def test_credentials_from_environment_and_saved_accounts_hold_no_token(monkeypatch):
    found = service.find_credentials({service.TOKEN_VARIABLE: TOKEN, "QISKIT_IBM_INSTANCE": "crn:x"})
    assert found.source == "environment variable QISKIT_IBM_TOKEN" and found.instance == "crn:x" and TOKEN not in repr(found)
    saved = service.find_credentials({}, lambda: {"work": {"channel": "ibm_quantum_platform", "token": TOKEN, "is_default_account": True}})
    assert saved.source == "saved account" and saved.account_name == "work" and TOKEN not in repr(saved)


def test_real_backends_go_through_the_service_and_never_leak_the_token(monkeypatch, caplog):
    monkeypatch.setenv(service.TOKEN_VARIABLE, TOKEN)
    monkeypatch.setattr(IbmQpuDevice, "service_factory", FakeService)
    caplog.set_level(logging.DEBUG)
    remote = [i for i in IbmQpuDevice.probe() if not i.simulated]
    assert [i.uri for i in remote] == ["ibm_qpu:ibm_manila"] and remote[0].available
    d = IbmQpuDevice("ibm_qpu:ibm_manila?seed=2&shots=200")
    values, _ = d.prepare_circuit(ansatz(2)[0], ["ZZ"])(torch.zeros(1, 4, dtype=torch.float64))
    assert values.shape == (1, 1) and d.telemetry()["last_job_id"]
    assert d.describe_credentials().source == "environment variable QISKIT_IBM_TOKEN" and not d.capabilities.simulated
    assert d.capabilities.energy["system_power_w"].kind == "assumed"  # another system's order of magnitude, no IBM datasheet
    with pytest.raises(DeviceUnavailable) as caught:
        IbmQpuDevice("ibm_qpu:ibm_nowhere")
    assert TOKEN not in str(caught.value) and service.REDACTED in str(caught.value) and caught.value.__cause__ is None
    assert all(TOKEN not in record.getMessage() for record in caplog.records)
    d.close()


def test_a_real_processor_refuses_a_seeded_solver_call_before_any_job(monkeypatch):
    # its shots cannot be seeded, so "same seed, same answer" cannot hold: an error naming the fix, not a silent ignore
    monkeypatch.setenv(service.TOKEN_VARIABLE, TOKEN)
    monkeypatch.setattr(IbmQpuDevice, "service_factory", FakeService)
    d = IbmQpuDevice("ibm_qpu:ibm_manila?shots=200")
    with pytest.raises(InvalidInput, match="cannot be seeded.*seed=None"):
        qubo_minimize(np.diag([-1.0, 1.0]), d, seed=1)
    with pytest.raises(InvalidInput, match="seed=None"):
        vqe(h2_hamiltonian(), d, seed=0)
    assert d.telemetry()["jobs"] == 0
    d.close()


def test_job_runner_retries_transient_errors_with_backoff_then_reports_the_job_id():
    sleeps: list[float] = []
    attempts = iter([ConnectionError("reset"), type("E", (Exception,), {"status_code": 503})(f"busy {TOKEN}"), FakeJob("job-1", "answer")])

    def submit():
        item = next(attempts)
        if isinstance(item, Exception):
            raise item
        return item

    runner = service.JobRunner(service.JobPolicy(retries=3, backoff_s=2.0, poll_s=0.0), secrets=[TOKEN], sleep=sleeps.append)
    assert runner.run(submit, "test") == "answer"
    assert sleeps == [2.0, 4.0] and runner.job_ids == ["job-1"] and runner.retried == 2


def test_job_runner_gives_up_on_permanent_errors_and_redacts_them():
    runner = service.JobRunner(service.JobPolicy(retries=3), secrets=[TOKEN], sleep=lambda s: pytest.fail("no retry"))

    def submit():
        raise PermissionError(f"token {TOKEN} is not authorised")

    with pytest.raises(DeviceFailure) as caught:
        runner.run(submit, "test")
    assert TOKEN not in str(caught.value) and caught.value.__cause__ is None


def test_job_runner_cancels_a_job_past_its_timeout():
    clock = iter(range(0, 1000, 10))
    job = FakeJob("job-slow", finishes=False)
    runner = service.JobRunner(service.JobPolicy(timeout_s=25, poll_s=0.0), sleep=lambda s: None, clock=lambda: next(clock))
    with pytest.raises(DeviceFailure, match="job-slow did not finish within 25 s"):
        runner.run(lambda: job, "test")
    assert job.cancelled
