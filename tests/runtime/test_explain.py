"""hal.runtime.explain: table, JSON and PNG describe the same plan."""

from __future__ import annotations

import json

import pytest
import torch
from runtime_fakes import fake
from torch import nn

from hal.capability import Paradigm
from hal.runtime import plan


@pytest.fixture
def a_plan():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 4))
    # per value crossing into spikes and back the host moves ~20 B (~3 nJ); a 64-wide layer on "dig" spends 13 nJ
    spk = fake("spk", j_per_flop=1e-15, ops=("linear",), paradigm=Paradigm.SPIKING)
    dig = fake("dig", j_per_flop=1e-10)
    return plan(m, torch.randn(32, 64), policy="energy", devices=[spk, dig])


def test_table_lists_stages_devices_costs_and_conversions(a_plan):
    text = str(a_plan)
    for column in ("stage", "device", "ops", "est. latency", "est. energy", "est. error", "conversions"):
        assert column in text
    assert "spk:0" in text and "dig:0" in text and "linear+relu" in text
    assert "digital->spiking" in text and "spiking->digital" in text


def test_json_round_trips_and_adds_up(a_plan):
    d = json.loads(a_plan.to_json())
    assert d["policy"] == "energy" and sorted(d["devices"]) == ["dig:0", "spk:0"]
    assert [n["name"] for n in d["nodes"]] == a_plan.graph.node_names()
    assert sum(s["energy_j"] for s in d["stages"]) + sum(t["energy_j"] for t in d["transfers"] if t["to_node"] == "output") == pytest.approx(d["totals"]["energy_j"])
    assert sum(d["energy_by_device_j"].values()) == pytest.approx(d["totals"]["energy_j"])
    assert any(t["from"] == "host" and t["to"] == "spk:0" for t in d["transfers"])


def test_png_has_gantt_and_energy(a_plan, tmp_path):
    path = tmp_path / "plan.png"
    a_plan.save_plot(str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    _, report = a_plan.run(torch.randn(32, 64), profile=True)
    measured = tmp_path / "measured.png"
    a_plan.save_plot(str(measured), report)
    assert measured.stat().st_size > 1000
