"""Subgraph claims on Loihi 2: a chain of linear(relu) ops is one spiking network (encoded once, decoded once),
its estimate saves exactly the edges between layers, a lif_layer chain is one LifNetwork, anything else is refused."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

import hal
import hal.nn
from hal.device import OpSpec, TensorSpec
from hal.drivers.loihi2.driver import LoihiProgram, target_rate
from hal.drivers.loihi2.engine import LifNetwork
from hal.errors import UnsupportedOp
from hal.subgraph import Subgraph

STEPS = 128
SIZES = (12, 10, 8, 5)


def _layers() -> list[nn.Linear]:
    torch.manual_seed(0)
    return [nn.Linear(a, b) for a, b in zip(SIZES, SIZES[1:])]


def _chain(layers: list[nn.Linear], batch: int) -> tuple[Subgraph, list[dict[str, torch.Tensor]]]:
    ops = [OpSpec("linear", [torch.empty(batch, layer.in_features)], {"weight": layer.weight, "bias": layer.bias}, {"activation": "relu"}) for layer in layers]
    return Subgraph.chain(ops), [{"weight": layer.weight.detach(), "bias": layer.bias.detach()} for layer in layers]


def test_a_claimed_three_layer_chain_is_one_program_equal_to_the_converted_network(monkeypatch) -> None:
    device = hal.device(f"loihi2:0?steps={STEPS}")
    layers = _layers()
    x = torch.rand(16, SIZES[0], generator=torch.Generator().manual_seed(1))
    sub, params = _chain(layers, 16)
    assert device.claim(sub)
    program = device.prepare_subgraph(sub, params)
    assert isinstance(program, LoihiProgram) and program.op.name == "subgraph"

    runs = []
    original = LifNetwork.run
    monkeypatch.setattr(LifNetwork, "run", lambda self, *a, **k: runs.append(len(self.layers)) or original(self, *a, **k))
    out = program(x)
    assert runs == [3], "one run of one three-layer network: no decode and re-encode between layers"
    # the same network hal.nn.convert builds, calibrated on the same batch with the chain's balancing
    model = nn.Sequential(*[m for layer in layers for m in (layer, nn.ReLU())])
    converted = hal.nn.convert(model, f"loihi2:0?steps={STEPS}", calibration=x, percentile=100.0, max_rate=target_rate(STEPS))
    assert torch.equal(out, converted(x))
    assert program.report["synaptic_ops"] == converted.module.last_run.synaptic_ops
    ref = model(x).detach()
    assert float((out - ref).norm() / ref.norm()) < device.estimate_subgraph(sub).error
    signed = torch.randn(16, SIZES[0], generator=torch.Generator().manual_seed(2))  # relu(x) and relu(-x) trains
    ref = model(signed).detach()
    assert float((program(signed) - ref).norm() / ref.norm()) < device.estimate_subgraph(sub).error


def _edge(batch: int, n_in: int, n_out: int, run_steps: int) -> tuple[float, float]:
    """(latency_s, energy_j) of one encode and decode: 4 B per float, 1 B per spike-train step, 160 pJ/B at 38.4 GB/s."""
    traffic = 4 * batch * n_in + run_steps * batch * 2 * n_in + 4 * batch * n_out + run_steps * batch * n_out
    return traffic / 38.4e9, traffic * 160e-12


def test_the_chain_estimate_saves_exactly_the_encodes_and_decodes_between_layers() -> None:
    device = hal.device(f"loihi2:0?steps={STEPS}")
    batch = 16
    sub, _ = _chain(_layers(), batch)
    per_op = [device.estimate(op) for op in sub.ops]
    chain = device.estimate_subgraph(sub)
    per_op_edges = [_edge(batch, a, b, STEPS + 1) for a, b in zip(SIZES, SIZES[1:])]
    chain_edge = _edge(batch, SIZES[0], SIZES[-1], STEPS + len(sub.ops))
    saved_s = sum(e[0] for e in per_op_edges) - chain_edge[0]
    saved_j = sum(e[1] for e in per_op_edges) - chain_edge[1]
    assert saved_j > 0 and saved_s > 0
    assert sum(c.energy_j for c in per_op) - chain.energy_j == pytest.approx(saved_j, rel=1e-9)
    assert sum(c.latency_s for c in per_op) - chain.latency_s == pytest.approx(saved_s, rel=1e-9)
    assert chain.error == pytest.approx(sum(c.error for c in per_op))
    assert "edge" in chain.formula and "T + 1" in chain.formula


def test_a_lif_layer_chain_is_one_network_equal_to_the_ops_one_by_one() -> None:
    device = hal.device("loihi2:0")
    g = torch.Generator().manual_seed(4)
    spikes = (torch.rand(40, 3, 12, generator=g) < 0.4).to(torch.uint8)
    w1, w2 = torch.randint(-200, 200, (9, 12), generator=g), torch.randint(-200, 200, (5, 9), generator=g)
    attrs = {"du": 300, "dv": 100, "vth": 40}
    first = OpSpec("lif_layer", [spikes], {"weight": w1}, attrs)
    middle = device.prepare(first, {"weight": w1})(spikes)
    second = OpSpec("lif_layer", [middle], {"weight": w2}, attrs)
    one_by_one = device.prepare(second, {"weight": w2})(middle)
    program = device.prepare_subgraph(Subgraph.chain([first, second]), [{"weight": w1}, {"weight": w2}])
    out = program(spikes)
    assert torch.equal(out, one_by_one) and out.dtype == torch.uint8
    assert program.report["spikes"] == int(out.sum())


def _linear(n_in: int, n_out: int, activation: str = "relu") -> OpSpec:
    return OpSpec("linear", [TensorSpec((4, n_in))], {"weight": TensorSpec((n_out, n_in))}, {"activation": activation})


@pytest.mark.parametrize(
    "sub, reason",
    [
        (Subgraph.chain([_linear(8, 6), OpSpec("softmax", [torch.empty(4, 6)])]), r"op 1 \(softmax\) does not run on loihi2:0.*implements: lif_layer, linear"),
        (Subgraph.chain([_linear(8, 6), _linear(6, 3, "none")]), r"op 1 \(linear\).*activation='relu'"),
        (Subgraph.chain([_linear(8, 6), _linear(7, 3)]), r"op 1 \(linear\) reads \(4, 7\) but op 0 gives \(4, 6\)"),
        (Subgraph.chain([_linear(8, 6), OpSpec("lif_layer", [torch.empty(5, 4, 6, dtype=torch.uint8)], {"weight": torch.empty(3, 6)})]), "mixes them"),
        (Subgraph((_linear(8, 6), _linear(8, 6)), ((-1,), (-1,)), (0, 1)), "chains only"),
        # each layer fits on its own (100 and 62 cores), the chain needs 100 + 31 of a chip's 128
        (Subgraph.chain([_linear(60_000, 100), _linear(100, 40_000)]), "needs 131 neuro cores"),
    ],
)
def test_what_loihi_does_not_run_as_one_network_is_refused_with_the_reason(sub: Subgraph, reason: str) -> None:
    device = hal.device("loihi2:0")
    support = device.claim(sub)
    assert not support
    assert re.search(reason, support.reason), support.reason
    with pytest.raises(UnsupportedOp):
        device.estimate_subgraph(sub)


def test_a_refused_chain_is_not_prepared() -> None:
    device = hal.device("loihi2:0")
    sub = Subgraph.chain([_linear(8, 6), OpSpec("softmax", [torch.empty(4, 6)])])
    with pytest.raises(UnsupportedOp, match="softmax"):
        device.prepare_subgraph(sub, [{"weight": torch.randn(6, 8)}, {}])
