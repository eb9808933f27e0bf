"""hal/programs.py: ResidentWeight / ResidentWeights / ResidentProgram / Reprogrammer semantics, and the guard that
refuses a backward through a device-computed value."""

from __future__ import annotations

import copy
import gc
import weakref

import pytest
import torch
from torch import nn

import hal
from hal.device import Cost, OpSpec, Program
from hal.errors import UnsupportedOp
from hal.programs import Reprogrammer, ResidentProgram, ResidentWeight, ResidentWeights, without_gradient


class _Preparer:
    """A ``prepare`` callback that counts its calls and returns a fresh CPU Program each time."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, params) -> Program:
        self.calls += 1
        op = OpSpec("relu", [torch.empty(2, 3)])
        return Program(op, hal.device("cpu:0"), Cost(0.0, 0.0, 0.0), torch.relu)


def _layer() -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(4, 3)


def _params(layer: nn.Linear, detach: bool = False) -> dict[str, torch.Tensor | None]:
    if detach:
        return {"weight": layer.weight.detach(), "bias": layer.bias.detach()}
    return {"weight": layer.weight, "bias": layer.bias}


@pytest.mark.parametrize("detach", [False, True])
def test_unchanged_parameters_keep_their_program(detach):
    """A layer that passes ``w.detach()`` (a new tensor object every forward) keeps its Program too: it used to be
    reprogrammed at every forward, since only the very tensor object matched."""
    layer, prepare, keeper = _layer(), _Preparer(), Reprogrammer()
    first = keeper.program(_params(layer, detach), prepare)
    for _ in range(3):
        assert keeper.program(_params(layer, detach), prepare) is first
    assert prepare.calls == 1


@pytest.mark.parametrize("detach", [False, True])
def test_an_in_place_write_reprograms(detach):
    layer, prepare, keeper = _layer(), _Preparer(), Reprogrammer()
    first = keeper.program(_params(layer, detach), prepare)
    with torch.no_grad():
        layer.weight.add_(1.0)
    assert keeper.program(_params(layer, detach), prepare) is not first and prepare.calls == 2


def test_a_write_through_another_view_of_the_storage_reprograms():
    layer, prepare, keeper = _layer(), _Preparer(), Reprogrammer()
    first = keeper.program(_params(layer, detach=True), prepare)
    view = layer.weight.detach()
    view[0, 0] = 5.0  # bumps the version counter the storage's views share
    assert keeper.program(_params(layer, detach=True), prepare) is not first


def test_replacing_data_reprograms():
    """``w.data = other`` swaps the storage and may leave ``_version`` alone."""
    layer, prepare, keeper = _layer(), _Preparer(), Reprogrammer()
    first = keeper.program(_params(layer), prepare)
    version = layer.weight._version
    layer.weight.data = torch.randn(3, 4)
    assert layer.weight._version == version
    assert keeper.program(_params(layer), prepare) is not first


def test_a_view_of_another_shape_or_dtype_does_not_match():
    w = torch.randn(4, 3)
    record = ResidentWeight(w)
    assert record.matches(w) and record.matches(w.detach())
    assert not record.matches(w.view(-1))
    assert not record.matches(w.t())
    assert not record.matches(w.view(torch.int32))


def test_a_freed_tensor_reallocated_at_the_same_address_is_reprogrammed():
    """The record keeps the programmed storage alive, so a new weight cannot land at its address and pass for it."""
    layer, prepare, keeper = _layer(), _Preparer(), Reprogrammer()
    for i in range(12):
        keeper.program(_params(layer), prepare)
        layer.weight = None  # frees the parameter unless the record holds it
        gc.collect()
        layer.weight = nn.Parameter(torch.randn(3, 4))
        assert prepare.calls == i + 1
    keeper.program(_params(layer), prepare)
    assert prepare.calls == 13


def test_a_record_keeps_its_tensor_and_its_address():
    w = torch.randn(64, 64)
    address, alive = w.data_ptr(), weakref.ref(w)
    record = ResidentWeight(w)
    del w
    gc.collect()
    assert alive() is not None
    fresh = [torch.randn(64, 64) for _ in range(8)]
    assert all(t.data_ptr() != address for t in fresh)
    assert record.matches(alive())


def test_an_invalidated_program_is_prepared_again():
    layer, prepare, keeper = _layer(), _Preparer(), Reprogrammer()
    first = keeper.program(_params(layer), prepare)
    first.invalidate("its tiles were overwritten")
    second = keeper.program(_params(layer), prepare)
    assert second is not first and second.valid and prepare.calls == 2


def test_resident_weights_compare_every_named_parameter():
    w, b = torch.randn(3, 4), torch.randn(3)
    weights = ResidentWeights({"weight": w, "bias": b})
    assert weights.matches({"weight": w, "bias": b})
    assert not weights.matches({"weight": w, "bias": None})  # None means absent
    assert not weights.matches({"weight": w})
    assert not weights.matches({"weight": w, "bias": b.clone()})
    assert ResidentWeights({"weight": w, "bias": None}).matches({"weight": w})


def test_a_resident_program_keeps_its_parameters_alive():
    w = torch.randn(3, 4)
    alive = weakref.ref(w)
    program = ResidentProgram(OpSpec("relu", [torch.empty(2, 3)]), hal.device("cpu:0"), Cost(0.0, 0.0, 0.0), torch.relu, {"weight": w})
    del w
    gc.collect()
    assert alive() is not None and program.resident.matches({"weight": alive()})


def test_deepcopy_starts_empty_and_leaves_the_original_alone():
    layer, prepare, keeper = _layer(), _Preparer(), Reprogrammer()
    first = keeper.program(_params(layer), prepare)
    copied = copy.deepcopy(keeper)
    assert copied.forget() is None
    other = copy.deepcopy(layer)
    assert copied.program(_params(other), prepare) is not first
    assert keeper.program(_params(layer), prepare) is first and prepare.calls == 2


def test_forget_returns_the_dropped_program():
    layer, prepare, keeper = _layer(), _Preparer(), Reprogrammer()
    first = keeper.program(_params(layer), prepare)
    assert keeper.forget() is first and keeper.forget() is None
    assert keeper.program(_params(layer), prepare) is not first


def test_a_backward_through_a_device_computed_value_is_a_named_error():
    x, w = torch.randn(2, 4, requires_grad=True), torch.randn(3, 4)
    out = without_gradient((x.detach() @ w.T), (x, w), "AnalogLinear on memristor:0")
    with pytest.raises(UnsupportedOp, match="AnalogLinear on memristor:0 ran on the device"):
        out.sum().backward()
    plain = without_gradient(torch.ones(2), (torch.ones(2),), "nothing requires grad")
    assert not plain.requires_grad
