"""hal.runtime.placement: the DP is optimal on chains, follows the policy, honours pins, capacities and supports."""

from __future__ import annotations

import itertools

import pytest
import torch
from runtime_fakes import fake, fleet
from torch import nn

import hal
from hal.capability import Paradigm
from hal.errors import CapacityExceeded, InvalidInput, UnsupportedOp
from hal.runtime import plan
from hal.runtime.placement import place


def chain(widths=(16, 32, 32, 16, 8)) -> nn.Module:
    layers = []
    for a, b in itertools.pairwise(widths):
        layers += [nn.Linear(a, b), nn.GELU()]
    return nn.Sequential(*layers)


@pytest.mark.parametrize("policy", ["latency", "energy", "accuracy"])
def test_chain_placement_matches_brute_force(policy):
    torch.manual_seed(0)
    devices = [
        fake("fa", s_per_flop=1e-12, j_per_flop=5e-12, error=1e-3, paradigm=Paradigm.ANALOG),
        fake("fb", s_per_flop=3e-12, j_per_flop=1e-12, error=1e-5, ops=("linear",)),
        fake("fc", s_per_flop=2e-12, j_per_flop=2e-12, error=1e-4, paradigm=Paradigm.SPIKING, fixed_s=1e-9),
    ]
    model = chain((8, 64, 8, 64, 8))
    best = plan(model, torch.randn(4, 8), policy=policy, devices=devices)
    graph = best.graph
    names = graph.node_names()
    allowed = _candidate_sets(best, devices)
    scores = []
    for combo in itertools.product(*allowed):
        pins = {n: best.placement.label(loc) for n, loc in zip(names, combo)}
        p = place(graph, devices, policy, pins, best.host)
        scores.append(p)
    component = {"latency": 0, "energy": 1, "accuracy": 2}[policy]

    def pick(c):
        return (c.latency_s, c.energy_j, c.error)[component]

    brute = min(pick(p.totals()) for p in scores)
    assert pick(best.placement.totals()) <= brute * (1 + 1e-6)
    assert len(scores) > 20


def _candidate_sets(the_plan, devices):
    out = []
    for node in the_plan.graph.nodes:
        locs = [i + 1 for i, d in enumerate(sorted(devices, key=str)) if d.supports(node.op)]
        out.append(locs or [0])
    return out


def test_policy_picks_the_fast_or_the_frugal_device():
    fast = fake("fast", s_per_flop=1e-13, j_per_flop=1e-10)
    frugal = fake("frugal", s_per_flop=1e-10, j_per_flop=1e-14)
    model, x = chain(), torch.randn(8, 16)
    by_latency = plan(model, x, policy="latency", devices=[fast, frugal])
    by_energy = plan(model, x, policy="energy", devices=[fast, frugal])
    assert {by_latency.device_of(n) for n in by_latency.graph.node_names()} == {"fast:0"}
    assert {by_energy.device_of(n) for n in by_energy.graph.node_names()} == {"frugal:0"}


def test_accuracy_policy_prefers_the_lowest_error():
    noisy = fake("noisy", s_per_flop=1e-14, error=0.05)
    exact = fake("exact", s_per_flop=1e-11, error=1e-7)
    p = plan(chain(), torch.randn(2, 16), policy="accuracy", devices=[noisy, exact])
    assert {p.device_of(n) for n in p.graph.node_names()} == {"exact:0"}


def test_conversion_cost_keeps_a_lone_cheap_op_off_another_paradigm():
    """A spiking device slightly cheaper per op loses when using it means encoding into spikes and back."""
    digital = fake("dig", j_per_flop=1.0e-12, ops=("linear", "gelu"))
    spiking = fake("spk", j_per_flop=0.9e-12, paradigm=Paradigm.SPIKING, ops=("gelu",))
    p = plan(chain(), torch.randn(64, 16), policy="energy", devices=[digital, spiking])
    assert {p.device_of(n) for n in p.graph.node_names()} == {"dig:0"}
    # with conversions free (a digital twin), the cheaper gelu device wins its ops
    twin = fake("twin", j_per_flop=0.9e-12, ops=("gelu",))
    q = plan(chain(), torch.randn(64, 16), policy="energy", devices=[digital, twin])
    assert any(q.device_of(n) == "twin:0" for n in q.graph.node_names())


def test_pins_are_honoured_and_a_pin_the_device_cannot_run_fails_before_running():
    a, b = fake("pa", s_per_flop=1e-13), fake("pb", s_per_flop=1e-11, ops=("linear",))
    model, x = chain(), torch.randn(2, 16)
    p = plan(model, x, pins={"2": "pb:0"}, devices=[a, b])
    assert p.device_of("2") == "pb:0" and p.device_of("0") == "pa:0"
    with pytest.raises(UnsupportedOp, match="pinned to pb:0.*does not implement 'gelu'"):
        plan(model, x, pins={"1": "pb:0"}, devices=[a, b])
    assert b.prepared == 0 and a.prepared == 0


def test_prefix_pins_and_unknown_pins():
    a, b = fake("qa", s_per_flop=1e-13), fake("qb", s_per_flop=1e-11)
    model = nn.Sequential(nn.Sequential(nn.Linear(4, 4), nn.GELU()), nn.Linear(4, 2))
    p = plan(model, torch.randn(2, 4), pins={"0": "qb:0"}, devices=[a, b])
    assert p.device_of("0.0") == "qb:0" and p.device_of("0.1") == "qb:0" and p.device_of("1") == "qa:0"
    with pytest.raises(InvalidInput, match="names no node"):
        plan(model, torch.randn(2, 4), pins={"encoder": "qb:0"}, devices=[a, b])


def test_capacity_moves_the_largest_weights_off_a_full_device():
    weights_per_layer = 64 * 64 * 4 + 64 * 4
    small = fake("small", s_per_flop=1e-14, memory_bytes=2.5 * weights_per_layer)
    big = fake("big", s_per_flop=1e-11)
    model = nn.Sequential(*[nn.Linear(64, 64) for _ in range(4)])
    p = plan(model, torch.randn(2, 64), devices=[small, big])
    on_small = [n for n in p.graph.node_names() if p.device_of(n) == "small:0"]
    assert len(on_small) == 2
    assert any("exceed" in note for note in p.placement.notes)
    with pytest.raises(CapacityExceeded):
        plan(model, torch.randn(2, 64), devices=[small, big], pins={str(i): "small:0" for i in range(3)})


def test_unsupported_everywhere_runs_on_the_cpu_reference_with_a_note():
    only_linear = fake("lin", ops=("linear",))
    p = plan(chain(), torch.randn(2, 16), devices=[only_linear])
    assert p.device_of("1") == "host"
    assert "no device supports gelu" in p.placement.fallback_reasons["1"]
    assert "CPU reference" in str(p)


def test_placement_is_deterministic_and_independent_of_device_order():
    devices = fleet()
    model, x = chain((16, 32, 8, 32, 16, 8)), torch.randn(4, 16)
    first = plan(model, x, policy="energy", devices=devices)
    again = plan(model, x, policy="energy", devices=list(reversed(devices)))
    assert first.placement.assignment == again.placement.assignment
    assert first.to_dict()["nodes"] == again.to_dict()["nodes"]


class Diamond(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c, self.d = nn.Linear(16, 32), nn.Linear(32, 32), nn.Linear(32, 32), nn.Linear(32, 8)

    def forward(self, x):
        h = self.a(x)
        return self.d(self.b(h) + self.c(h))


def test_dag_placement_beats_every_single_device_placement():
    devices = [fake("da", s_per_flop=1e-12, ops=("linear",)), fake("db", s_per_flop=4e-12), fake("dc", s_per_flop=2e-12, ops=("add", "linear"), fixed_s=1e-8)]
    model, x = Diamond(), torch.randn(8, 16)
    best = plan(model, x, devices=devices)
    for d in devices:
        pins = {n.name: str(d) for n in best.graph.nodes if d.supports(n.op)}
        other = place(best.graph, devices, "latency", pins, best.host)
        assert best.placement.totals().latency_s <= other.totals().latency_s * (1 + 1e-9)


def test_unknown_policy_is_refused():
    with pytest.raises(InvalidInput, match="unknown policy"):
        plan(chain(), torch.randn(2, 16), policy="speed", devices=[hal.device("cpu")])
