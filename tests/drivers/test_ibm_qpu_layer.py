"""Tests of hal/drivers/ibm_qpu/layer.py: QuantumLayer forward/backward, parameter-shift gradients, batching."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import hal
from hal.drivers.ibm_qpu import QuantumLayer, angle_encoding_circuit
from hal.drivers.ibm_qpu.layer import check_shift_rule
from hal.errors import InvalidInput

pytest.importorskip("qiskit")
from qiskit import QuantumCircuit
from qiskit.circuit import Parameter
from qiskit.quantum_info import SparsePauliOp, Statevector

pytestmark = pytest.mark.filterwarnings("error::DeprecationWarning")


def torch_statevector_outputs(x: torch.Tensor, w: torch.Tensor, n: int, n_layers: int) -> torch.Tensor:
    """<Z_q> of angle_encoding_circuit simulated in torch (autograd gives the exact gradient), (batch, n)."""
    outputs = []
    for row in x:
        state = torch.zeros(2**n, dtype=torch.complex128)
        state[0] = 1.0

        def rotate(state: torch.Tensor, q: int, angle: torch.Tensor, axis: str) -> torch.Tensor:
            c, s = torch.cos(angle / 2), torch.sin(angle / 2)
            if axis == "y":
                m = torch.stack([torch.stack([c, -s]), torch.stack([s, c])]).to(torch.complex128)
            else:
                m = torch.stack([torch.stack([c + 0j, -1j * s]), torch.stack([-1j * s, c + 0j])])
            psi = state.reshape([2] * n)  # axis k is qubit n-1-k (qubit 0 is the least significant bit)
            psi = torch.movedim(torch.tensordot(m, psi, dims=([1], [n - 1 - q])), 0, n - 1 - q)
            return psi.reshape(-1)

        index = torch.arange(2**n)
        bits = [(index >> q) & 1 for q in range(n)]
        for q in range(n):
            state = rotate(state, q, row[q], "y")
        for layer in range(n_layers):
            offset = 2 * n * layer
            for q in range(n):
                state = rotate(state, q, w[offset + q], "y")
            pairs = [(q, (q + 1) % n) for q in range(n if n > 2 else 1)]
            for a, b in pairs:
                state = state * torch.where((bits[a] & bits[b]) == 1, -1.0, 1.0).to(torch.complex128)
            for q in range(n):
                state = rotate(state, q, w[offset + n + q], "x")
        probabilities = state.abs() ** 2
        outputs.append(torch.stack([(probabilities * (1 - 2 * bits[q]).double()).sum() for q in range(n)]))
    return torch.stack(outputs)


def test_forward_matches_the_statevector_and_gradients_match_exact_and_finite_differences():
    n, n_layers = 3, 2
    layer = QuantumLayer(n, n_layers, device="ibm_qpu:aer?shots=0", seed=1)
    x = (torch.rand(4, n, dtype=torch.float64) * 3).requires_grad_()
    weights = torch.randn(4, n, dtype=torch.float64)
    out = layer(x)
    (out * weights).sum().backward()

    w_ref = layer.weight.detach().clone().requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    ref = torch_statevector_outputs(x_ref, w_ref, n, n_layers)
    (ref * weights).sum().backward()
    assert torch.allclose(out, ref, atol=1e-10)
    assert torch.allclose(layer.weight.grad, w_ref.grad, atol=1e-9)
    assert torch.allclose(x.grad, x_ref.grad, atol=1e-9)

    circuit, inputs, params = angle_encoding_circuit(n, n_layers)
    observables = [SparsePauliOp.from_sparse_list([("Z", [q], 1.0)], n) for q in range(n)]

    def loss(w: np.ndarray) -> float:
        total = 0.0
        for r in range(x.shape[0]):
            binding = dict(zip(inputs, x[r].detach().numpy())) | dict(zip(params, w))
            state = Statevector(circuit.assign_parameters(binding))
            total += sum(float(weights[r, q]) * state.expectation_value(observables[q]).real for q in range(n))
        return total

    w0, h = layer.weight.detach().numpy().copy(), 1e-5
    k = 3
    plus, minus = w0.copy(), w0.copy()
    plus[k] += h
    minus[k] -= h
    assert float(layer.weight.grad[k]) == pytest.approx((loss(plus) - loss(minus)) / (2 * h), abs=1e-6)


def test_forward_and_backward_are_one_job_each():
    layer = QuantumLayer(4, 1, device="ibm_qpu:aer?shots=0")
    jobs = layer.device.telemetry()["jobs"]
    out = layer(torch.rand(16, 4, dtype=torch.float64))
    assert layer.device.telemetry()["jobs"] == jobs + 1 and out.shape == (16, 4)
    out.sum().backward()
    assert layer.device.telemetry()["jobs"] == jobs + 2 and layer.weight.grad.shape == (8,)


def test_per_circuit_mode_gives_the_same_values_with_one_job_per_row():
    batched = QuantumLayer(3, 1, device="ibm_qpu:aer?shots=0", seed=4)
    single = QuantumLayer(3, 1, device="ibm_qpu:aer?shots=0", seed=4, job_mode="per_circuit")
    x = torch.rand(5, 3, dtype=torch.float64)
    jobs = single.device.telemetry()["jobs"]
    assert torch.allclose(batched(x), single(x), atol=1e-12)
    assert single.device.telemetry()["jobs"] - jobs == 1 + 5


def test_sampled_gradients_agree_with_exact_ones_within_shot_noise():
    exact = QuantumLayer(2, 1, device="ibm_qpu:aer?shots=0", seed=2)
    sampled = QuantumLayer(2, 1, device="ibm_qpu:aer?shots=20000&seed=5", seed=2)
    x = torch.rand(3, 2, dtype=torch.float64)
    exact(x).sum().backward()
    sampled(x).sum().backward()
    # each gradient entry sums 3 rows x 2 outputs of (f+ - f-)/2: std <= sqrt(6 * 2 / 4 / shots)
    assert torch.allclose(sampled.weight.grad, exact.weight.grad, atol=5 * math.sqrt(3.0 / 20000))


def test_layer_refuses_nan_inputs_and_circuits_the_shift_rule_does_not_cover():
    layer = QuantumLayer(2, 1, device="ibm_qpu:aer?shots=0")
    with pytest.raises(InvalidInput, match="NaN"):
        layer(torch.tensor([[0.1, float("nan")]], dtype=torch.float64))
    theta = Parameter("theta")
    twice = QuantumCircuit(1)
    twice.ry(theta, 0)
    twice.rx(theta, 0)
    with pytest.raises(InvalidInput, match="exactly once"):
        check_shift_rule(twice, [theta])
    scaled = QuantumCircuit(1)
    scaled.ry(2 * theta, 0)
    with pytest.raises(InvalidInput, match="bare"):
        check_shift_rule(scaled, [theta])
    controlled = QuantumCircuit(2)
    controlled.crx(theta, 0, 1)
    with pytest.raises(InvalidInput, match="crx"):
        QuantumLayer.from_circuit(controlled, [], [theta], ["ZZ"], device=hal.device("ibm_qpu:aer?shots=0"))


def _upward_imports(package: str) -> list[str]:
    """Imports in ``package``'s modules that reach above a driver: the package root ``hal`` itself (not one of its
    submodules), the runtime, hal.nn, the CLI, the testing kit, or another driver."""
    import ast
    import importlib.util
    from pathlib import Path

    own = package.rsplit(".", 1)[1]
    above = ("hal.runtime", "hal.nn", "hal.cli", "hal.testing")
    found = []
    for path in sorted(Path(importlib.util.find_spec(package).origin).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [f"{node.module}.{alias.name}" for alias in node.names]
                modules = [node.module] if node.module != "hal" else [n if importlib.util.find_spec(n) else "hal" for n in names]
            else:
                continue
            for module in modules:
                other_driver = module.startswith("hal.drivers.") and module.split(".")[2] != own
                if module == "hal" or module.startswith(above) or other_driver:
                    found.append(f"{path.name}:{node.lineno} imports {module}")
    return found


def test_the_driver_reaches_devices_through_the_registry_not_the_package_root():
    # layer.py opened its device with `import hal; hal.device(...)`: a driver must not import the front door
    assert _upward_imports("hal.drivers.ibm_qpu") == []
    device = hal.device("ibm_qpu:aer?shots=0")
    assert QuantumLayer(2, 1, device="ibm_qpu:aer?shots=0").device is device  # a string opens the registry's device
    assert QuantumLayer(2, 1, device=device).device is device
    with pytest.raises(InvalidInput, match="ibm_qpu device"):
        QuantumLayer(2, 1, device="cpu")
