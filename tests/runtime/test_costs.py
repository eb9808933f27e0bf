"""hal.runtime.costs: a paradigm conversion is priced once, by the device when its estimates include it."""

from __future__ import annotations

import pytest
import torch
from runtime_fakes import fake
from torch import nn

from hal.capability import Paradigm
from hal.runtime import plan
from hal.runtime.costs import HostModel, edge_rates


def relu_layer() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 8), nn.ReLU())


def test_edge_of_a_device_that_prices_its_conversion_holds_the_link_only():
    host = HostModel.default()
    converting = edge_rates(fake("spk", paradigm=Paradigm.SPIKING), host)
    pricing = edge_rates(fake("own", paradigm=Paradigm.SPIKING, converts_in_estimates=True), host)
    assert converting.ingress_j > 0 and converting.egress_j > 0 and converting.conversion == "host traffic"
    assert (pricing.ingress_s, pricing.ingress_j, pricing.egress_s, pricing.egress_j) == (0.0, 0.0, 0.0, 0.0)
    assert pricing.conversion == "in the device's estimates"


def test_a_node_on_a_device_that_prices_its_conversion_is_counted_once():
    """The plan's total is the device's estimate alone; without the flag the runtime adds its own conversions."""
    x = torch.randn(4, 16)
    own = fake("own", paradigm=Paradigm.SPIKING, ops=("linear",), converts_in_estimates=True)
    p = plan(relu_layer(), x, policy="energy", devices=[own], pins={"0": "own:0"})
    estimate = own.estimate(p.graph.nodes[0].op)
    assert p.totals().energy_j == pytest.approx(estimate.energy_j, rel=1e-12)
    assert p.totals().latency_s == pytest.approx(estimate.latency_s, rel=1e-12)
    # the crossing is still listed (a plan shows where paradigms change), at the link's cost: none in host memory
    crossings = p.to_dict()["transfers"]
    assert {(t["from"], t["to"]) for t in crossings} == {("host", "own:0"), ("own:0", "host")}
    assert all(t["energy_j"] == 0 for t in crossings)

    plain = fake("spk", paradigm=Paradigm.SPIKING, ops=("linear",))
    q = plan(relu_layer(), x, policy="energy", devices=[plain], pins={"0": "spk:0"})
    assert q.totals().energy_j > plain.estimate(q.graph.nodes[0].op).energy_j * (1 + 1e-6)


def test_a_loihi_linear_is_charged_its_edge_once():
    """Loihi 2's linear estimate includes its rate encode and decode (the driver's EdgeCosts): the plan adds none."""
    x = torch.randn(4, 16)
    p = plan(relu_layer(), x, policy="energy", devices=["loihi2:0"], pins={"0": "loihi2:0"})
    loihi = p.placement.locations[p.placement.assignment[0]]
    estimate = loihi.estimate(p.graph.nodes[0].op)
    assert p.totals().energy_j == pytest.approx(estimate.energy_j, rel=1e-12)
