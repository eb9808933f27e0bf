"""hal.runtime.claims: stages offered to their device as subgraphs; claimed ones run as one Program, the rest op by op."""

from __future__ import annotations

import pytest
import torch
from runtime_fakes import fake
from torch import nn

from hal.capability import validate
from hal.device import Support
from hal.runtime import plan


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.GELU(), nn.Linear(32, 8))


class Residual(nn.Module):
    """A DAG inside one stage: h feeds both a layer and an add, and also leaves as an output."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.fc1, self.fc2 = nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x):
        h = self.fc1(x)
        return self.fc2(h) + h, h


def test_a_claimed_stage_runs_as_one_program_and_equals_the_ops_one_by_one():
    m, x = mlp(), torch.randn(4, 16)
    claiming = fake("claims", claim_ops=("linear", "gelu"))
    per_op = fake("declines")
    p, q = plan(m, x, devices=[claiming]), plan(m, x, devices=[per_op])
    assert len(p.stages) == 1 and p.claims()[0].claimed
    for _ in range(3):
        out = p.run(x)
    assert torch.equal(out, q.run(x))
    torch.testing.assert_close(out, m(x).detach())
    assert claiming.subgraphs_prepared == 1 and claiming.prepared == 0
    assert claiming.calls == 3  # one Program call per claimed stage and run
    assert per_op.prepared == 4 and per_op.calls == 4


def test_a_dag_inside_a_stage_is_wired_and_every_value_read_outside_leaves_it():
    m, x = Residual(), torch.randn(3, 8)
    claiming = fake("dagclaim", claim_ops=("linear", "add"))
    p = plan(m, x, devices=[claiming])
    (claim,) = p.claims()
    assert claim.claimed and claim.subgraph.sources == ((-1,), (0,), (1, 0))
    assert claim.outputs == ("fc1", "add") and claim.inputs == ("x",)  # in op order
    out, h = p.run(x)
    want_out, want_h = m(x)
    torch.testing.assert_close(out, want_out.detach())
    torch.testing.assert_close(h, want_h.detach())
    assert claiming.calls == 1


def test_the_plan_counts_the_claims_estimate_and_explains_it():
    m, x = mlp(), torch.randn(4, 16)
    p = plan(m, x, devices=[fake("cheaper", claim_ops=("linear", "gelu"), claim_factor=0.25)])
    claim = p.claims()[0]
    assert claim.cost.latency_s == pytest.approx(0.25 * claim.per_op.latency_s)
    assert p.totals().latency_s == pytest.approx(p.placement.totals().latency_s - 0.75 * claim.per_op.latency_s)
    text = str(p)
    assert "one (claimed)" in text and "runs as one claimed Program" in text and "op by op" in text
    d = p.to_dict()
    validate(d, "plan")
    assert d["totals"]["latency_s"] == pytest.approx(p.totals().latency_s)
    assert sum(s["energy_j"] for s in d["stages"]) == pytest.approx(d["totals"]["energy_j"])
    assert sum(d["energy_by_device_j"].values()) == pytest.approx(d["totals"]["energy_j"])
    assert "ran as" not in text, "no Program yet: nothing to say of how the stage ran"
    _, report = p.run(x, profile=True)
    assert f"stage 0 ran as: {len(claim.nodes)} ops composed by the fake" in str(p), "after a run the device's account of the Program"
    assert report.stages[0].claimed and report.stages[0].est_latency_s == pytest.approx(claim.cost.latency_s)
    assert "one (claimed)" in str(report)


def test_a_declined_claim_falls_back_to_one_program_per_op_and_says_why():
    m, x = mlp(), torch.randn(4, 16)
    picky = fake("picky", claim_ops=("gelu",))
    p = plan(m, x, devices=[picky])
    (claim,) = p.claims()
    assert not claim.claimed and "claims only groups of gelu, not linear" in claim.reason
    torch.testing.assert_close(p.run(x), m(x).detach())
    assert picky.subgraphs_prepared == 0 and picky.prepared == 4
    text = str(p)
    assert "per op" in text and "stage 0 on picky:0 run op by op: picky:0 claims only groups of gelu" in text
    assert p.totals().latency_s == p.placement.totals().latency_s


def test_a_claim_estimated_dearer_than_its_ops_is_not_used():
    m, x = mlp(), torch.randn(4, 16)
    dear = fake("dear", claim_ops=("linear", "gelu"), claim_factor=2.0)
    p = plan(m, x, devices=[dear])
    (claim,) = p.claims()
    assert not claim.claimed and "above the ops' sum" in claim.reason
    p.run(x)
    assert dear.subgraphs_prepared == 0


def test_a_device_whose_claim_raises_runs_the_stage_op_by_op():
    class Broken(type(fake("brk"))):
        def claim(self, sub):
            raise RuntimeError("driver bug")

    m, x = mlp(), torch.randn(2, 16)
    p = plan(m, x, devices=[Broken("brk:0")])
    assert "failed to answer for the group: RuntimeError: driver bug" in p.claims()[0].reason
    torch.testing.assert_close(p.run(x), m(x).detach())


def test_a_claimed_stage_whose_device_fails_is_re_placed():
    m, x = mlp(), torch.randn(4, 16)
    flaky = fake("cflaky", claim_ops=("linear", "gelu"), s_per_flop=1e-14, fail_on_call=1)
    steady = fake("csteady", s_per_flop=1e-11)
    p = plan(m, x, devices=[flaky, steady])
    assert p.claims()[0].claimed and p.claims()[0].device == "cflaky:0"
    with pytest.warns(RuntimeWarning, match="cflaky:0 failed .*injected link loss"):
        out, report = p.run(x, profile=True)
    torch.testing.assert_close(out, m(x).detach())
    (fb,) = report.fallbacks
    assert fb.device == "cflaky:0" and set(fb.replaced_by) == {"0", "2", "3", "4"} and set(fb.replaced_by.values()) == {"csteady:0"}
    calls = flaky.calls
    p.run(x)
    assert flaky.calls == calls


def test_a_claimed_program_is_prepared_again_after_its_weights_change_in_place():
    m, x = mlp(), torch.randn(4, 16)
    claiming = fake("refresh", claim_ops=("linear", "gelu"))
    p = plan(m, x, devices=[claiming])
    p.prepare()
    assert claiming.subgraphs_prepared == 1
    p.run(x)
    with torch.no_grad():
        m[2].weight.mul_(-1)
    torch.testing.assert_close(p.run(x), m(x).detach())
    assert claiming.subgraphs_prepared == 2
    p.run(x)
    assert claiming.subgraphs_prepared == 2


def test_host_steps_split_stages_and_single_ops_are_not_offered():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(16, 16), nn.GELU(), nn.Flatten(), nn.Linear(16, 4))
    asked = []

    class Counting(type(fake("cnt", claim_ops=("linear", "gelu")))):
        def claim(self, sub):
            asked.append(str(sub))
            return Support.yes()

    x = torch.randn(2, 16)
    p = plan(m, x, devices=[Counting("cnt:0")])
    assert [p.placement.label(s.location) for s in p.stages] == ["cnt:0", "host", "cnt:0"]
    assert asked == ["linear -> gelu"] and [c is not None for c in p.claims()] == [True, False, False]
    torch.testing.assert_close(p.run(x), m(x).detach())


def test_a_claimed_program_returning_too_few_outputs_is_a_device_failure_not_a_silent_drop():
    class Short(type(fake("short", claim_ops=("linear", "add")))):
        def _compile_subgraph(self, sub, params):
            whole = super()._compile_subgraph(sub, params)
            return type(whole)(whole.op, self, whole.cost, lambda *xs: whole.run(*xs)[:1])

    m, x = Residual(), torch.randn(3, 8)
    p = plan(m, x, devices=[Short("short:0")])
    with pytest.warns(RuntimeWarning, match="returned 1 values, not the 2 outputs"):
        out, h = p.run(x)
    want_out, want_h = m(x)
    torch.testing.assert_close(out, want_out.detach())
    torch.testing.assert_close(h, want_h.detach())
