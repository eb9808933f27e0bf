"""Subgraph claims on the memristor crossbar (hal/drivers/memristor/chain.py): a chain of linear layers is one Program
that rounds at the DAC of its first layer and the ADC of its last only; its estimate saves exactly the ADC
conversions in between; chains it cannot run analog end to end are refused with the reason."""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn

import hal
import hal.runtime
from hal.device import OpSpec
from hal.drivers.memristor import MemristorProgram
from hal.drivers.memristor.tile import Crossbar
from hal.errors import InvalidInput, ShapeError, UnsupportedOp
from hal.subgraph import Subgraph

SIZES = (96, 64, 48, 10)
BATCH = 128


def rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.double() - ref.double()).norm() / ref.double().norm())


def fresh(uri: str):
    device = hal.device(uri)
    device.close()
    return hal.device(uri)


def _network(seed: int, sizes=SIZES):
    g = torch.Generator().manual_seed(seed)
    weights = [torch.randn(b, a, generator=g) for a, b in zip(sizes, sizes[1:])]
    biases = [0.1 * torch.randn(b, generator=g) for b in sizes[1:]]
    return weights, biases, torch.randn(BATCH, sizes[0], generator=g)


def _chain(weights, biases, batch=BATCH):
    last = len(weights) - 1
    ops = [
        OpSpec("linear", [torch.empty(batch, w.shape[1])], {"weight": w, "bias": b}, {"activation": "none" if j == last else "relu"})
        for j, (w, b) in enumerate(zip(weights, biases))
    ]
    return Subgraph.chain(ops), [{"weight": w, "bias": b} for w, b in zip(weights, biases)]


def _reference(weights, biases, x):
    y = x.double()
    for j, (w, b) in enumerate(zip(weights, biases)):
        y = y @ w.double().T + b.double()
        if j < len(weights) - 1:
            y = y.relu()
    return y


def _per_op(device, weights, biases, x):
    y = x
    for j, (w, b) in enumerate(zip(weights, biases)):
        y = device.linear(y, w, b, activation="none" if j == len(weights) - 1 else "relu")
    return y


def test_a_claimed_chain_is_one_program_within_its_declared_tolerance(monkeypatch):
    device = fresh("memristor:0?seed=1")
    weights, biases, x = _network(1)
    sub, params = _chain(weights, biases)
    assert device.claim(sub)
    program = device.prepare_subgraph(sub, params)
    assert isinstance(program, MemristorProgram) and program.op.name == "subgraph"
    assert len(program.tiles) == 3 and device.tiles_in_use == 3  # every layer resident on its own tile
    rounding = []
    original = Crossbar.read

    def read(self, *args, **kwargs):
        bound = inspect.signature(original).bind(self, *args, **kwargs)
        bound.apply_defaults()
        rounding.append((bound.arguments["dac_rounding"], bound.arguments["adc_rounding"]))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Crossbar, "read", read)
    out = program(x)
    assert rounding == [(True, False), (False, False), (False, True)]  # one read per layer, rounding at the two ends
    declared = 2 * program.cost.error + 1e-3  # the device's margin and floor, as for its ops
    assert rel(out, _reference(weights, biases, x)) < declared < 0.5
    assert program.cost.error == pytest.approx(device.estimate_subgraph(sub).error)


@pytest.mark.parametrize("uri", ["memristor:0?seed={}&dac_bits=4&adc_bits=6&tile=64", "memristor:0?ideal=1&quantization=1&seed={}"])
def test_fewer_conversions_give_a_smaller_error_than_op_by_op(uri):
    chain_errors, op_errors = [], []
    for seed in range(2):
        device = fresh(uri.format(seed))
        weights, biases, x = _network(seed)
        ref = _reference(weights, biases, x)
        sub, params = _chain(weights, biases)
        chain_errors.append(rel(device.prepare_subgraph(sub, params)(x), ref))
        op_errors.append(rel(_per_op(device, weights, biases, x), ref))
    assert sum(chain_errors) < 0.9 * sum(op_errors)


def test_with_the_defaults_the_chain_is_no_worse_than_op_by_op():
    chain_errors, op_errors = [], []
    for seed in range(2):
        device = fresh(f"memristor:0?seed={seed}")
        weights, biases, x = _network(seed)
        ref = _reference(weights, biases, x)
        sub, params = _chain(weights, biases)
        chain_errors.append(rel(device.prepare_subgraph(sub, params)(x), ref))
        op_errors.append(rel(_per_op(device, weights, biases, x), ref))
    assert sum(chain_errors) <= 1.05 * sum(op_errors)  # converters are a small share of the default error budget


def test_the_estimate_saves_exactly_the_adc_conversions_between_layers():
    device = fresh("memristor:0?seed=0")
    weights, biases, _ = _network(0)
    sub, _ = _chain(weights, biases)
    per_op = [device.estimate(op) for op in sub.ops]
    chain = device.estimate_subgraph(sub)
    energy = device.config.energy
    inner_conversions = BATCH * sum(SIZES[1:-1])  # one row block per layer: one conversion per output and vector
    assert sum(c.energy_j for c in per_op) - chain.energy_j == pytest.approx(inner_conversions * energy.adc_energy_j, rel=1e-9)
    assert sum(c.latency_s for c in per_op) - chain.latency_s == pytest.approx(2 * BATCH * energy.adc_conversion_time_s, rel=1e-9)
    assert chain.error < sum(c.error for c in per_op)
    assert f"{inner_conversions} fewer than op by op" in chain.formula and "last layer" in chain.formula
    budget = device.accuracy.chain_budget([(a, b) for a, b in zip(SIZES, SIZES[1:])])
    assert chain.error == pytest.approx(budget.error)
    assert "dac_rounding (layer 0)" in budget.terms and "dac_rounding (layer 1)" not in budget.terms
    assert "adc (layer 2)" in budget.terms and "output_swing (layer 0)" in budget.terms and "adc (layer 0)" not in budget.terms


def test_a_one_layer_chain_costs_what_the_op_costs():
    device = fresh("memristor:0?seed=0")
    weights, biases, _ = _network(0, (96, 10))
    sub, _ = _chain(weights, biases)
    single, chain = device.estimate(sub.ops[0]), device.estimate_subgraph(sub)
    assert chain.energy_j == pytest.approx(single.energy_j) and chain.latency_s == pytest.approx(single.latency_s) and chain.error == pytest.approx(single.error)


def _refusal(device, sub) -> str:
    support = device.claim(sub)
    assert not support
    with pytest.raises(UnsupportedOp, match="does not claim"):
        device.estimate_subgraph(sub)
    return support.reason


def test_chains_it_cannot_run_analog_are_refused_with_the_reason():
    device = fresh("memristor:0?seed=0&tile=64&tiles=4")
    x = torch.empty(4, 32)
    w1, w2 = torch.randn(32, 32), torch.randn(8, 32)
    linear = OpSpec("linear", [x], {"weight": w1})
    tail = OpSpec("linear", [x], {"weight": w2})
    assert "fused into the linear before it" in _refusal(device, Subgraph.chain([linear, OpSpec("relu", [x]), tail]))
    conv = OpSpec("conv2d", [torch.empty(1, 1, 8, 8)], {"weight": torch.randn(2, 1, 3, 3)})
    assert "chains of linear ops only" in _refusal(device, Subgraph((conv,), ((-1,),), (0,)))
    assert "chains only" in _refusal(device, Subgraph((linear, tail), ((-1,), (-1,)), (0, 1)))
    wrong = OpSpec("linear", [torch.empty(4, 16)], {"weight": torch.randn(8, 16)})
    assert "op 1 (linear) reads (4, 16) but op 0 gives (4, 32)" in _refusal(device, Subgraph.chain([linear, wrong]))
    double = OpSpec("linear", [torch.empty(4, 32, dtype=torch.float64)], {"weight": torch.randn(8, 32, dtype=torch.float64)})
    assert "mixes input dtypes" in _refusal(device, Subgraph.chain([linear, double]))
    big = OpSpec("linear", [x], {"weight": torch.randn(128, 32)})
    after = OpSpec("linear", [torch.empty(4, 128)], {"weight": torch.randn(64, 128)})
    reason = _refusal(device, Subgraph.chain([linear, big, after]))
    assert "holds 4 tiles" in reason and "needs 5 (1 + 2 + 2)" in reason and "?tiles=5" in reason
    with pytest.raises(UnsupportedOp, match="holds 4 tiles"):
        device.prepare_subgraph(Subgraph.chain([linear, big, after]), [{"weight": w1}, {"weight": torch.randn(128, 32)}, {"weight": torch.randn(64, 128)}])


def test_parameters_that_do_not_fit_the_opspecs_are_refused():
    device = fresh("memristor:0?seed=0")
    weights, biases, _ = _network(0)
    sub, params = _chain(weights, biases)
    with pytest.raises(ShapeError, match="'weight' has shape \\(32, 96\\) where its OpSpec says \\(64, 96\\)"):
        device.prepare_subgraph(sub, [{"weight": torch.randn(32, 96), "bias": biases[0]}, *params[1:]])
    with pytest.raises(InvalidInput, match="declares a 'bias'"):
        device.prepare_subgraph(sub, [{"weight": weights[0]}, *params[1:]])


def test_elapse_ages_a_chain_and_rederives_its_error():
    device = fresh("memristor:0?seed=3")
    weights, biases, x = _network(3)
    sub, params = _chain(weights, biases)
    program = device.prepare_subgraph(sub, params)
    before = program.cost.error
    device.elapse(86400.0)
    assert program.age_s == 86400.0 and program.cost.error > before
    assert program.cost.error == pytest.approx(device.accuracy_at(86400.0).chain_budget(program.shapes).error)
    assert rel(program(x), _reference(weights, biases, x)) < 2 * program.cost.error + 1e-3
    program.release()
    assert device.tiles_in_use == 0


def test_the_runtime_runs_a_memristor_stage_as_one_claimed_program():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    x = torch.randn(16, 32)
    plan = hal.runtime.plan(model, x, policy="energy", devices=["memristor:0?seed=4"])
    claims = [c for c in plan.claims() if c is not None]
    assert len(claims) == 1 and claims[0].claimed, claims[0].reason if claims else "no stage"
    assert claims[0].cost.energy_j < claims[0].per_op.energy_j
    with torch.no_grad():
        out, ref = plan.run(x), model(x)
    assert rel(out, ref) < 2 * claims[0].cost.error + 1e-3
