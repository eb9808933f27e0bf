"""Modules drivers provide to hal.nn by name (the hal.modules entry-point group)."""

import pytest
import torch

import hal.nn
from hal import registry


def test_quantum_layer_comes_through_hal_nn_and_trains():
    pytest.importorskip("qiskit_aer")
    assert "QuantumLayer" in hal.nn.__all__ and "QuantumLayer" in registry.module_names()
    layer = hal.nn.QuantumLayer(n_qubits=2, device="ibm_qpu:aer?shots=0")
    out = layer(torch.rand(3, 2, dtype=torch.float64))
    assert out.shape == (3, 2)
    out.sum().backward()
    assert layer.weight.grad is not None and torch.isfinite(layer.weight.grad).all()


def test_an_unknown_module_name_lists_the_provided_ones():
    with pytest.raises(AttributeError, match="QuantumLayer"):
        registry.load_module("NoSuchLayer")
    with pytest.raises(AttributeError, match="has no attribute"):
        hal.nn.NoSuchLayer  # noqa: B018
