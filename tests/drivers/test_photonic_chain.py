"""Subgraph claims on the photonic processor (hal/drivers/photonic/chain.py): linear layers whose light passes from
processor to processor are one Program detected once; a relu or the loss budget cuts the chain into optical
segments (detection and re-modulation between them); chains where no boundary stays optical are refused."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import hal
import hal.runtime
from hal.device import OpSpec
from hal.drivers.photonic import PhotonicProgram
from hal.drivers.photonic.readout import Receiver
from hal.errors import ShapeError, UnsupportedOp
from hal.subgraph import Subgraph

BATCH = 256


def rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.double() - ref.double()).norm() / ref.double().norm())


def _network(seed: int, sizes, activations):
    g = torch.Generator().manual_seed(seed)
    weights = [torch.randn(b, a, generator=g, dtype=torch.float64) for a, b in zip(sizes, sizes[1:])]
    biases = [0.1 * torch.randn(b, generator=g, dtype=torch.float64) for b in sizes[1:]]
    ops = [
        OpSpec("linear", [torch.empty(BATCH, w.shape[1], dtype=torch.float64)], {"weight": w, "bias": b}, {"activation": a})
        for w, b, a in zip(weights, biases, activations)
    ]
    x = torch.randn(BATCH, sizes[0], generator=g, dtype=torch.float64)
    return Subgraph.chain(ops), [{"weight": w, "bias": b} for w, b in zip(weights, biases)], x


def _reference(sub, params, x):
    y = x
    for op, p in zip(sub.ops, params):
        y = y @ p["weight"].T + p["bias"]
        if op.attr("activation") == "relu":
            y = y.relu()
    return y


def _per_op(device, sub, params, x):
    y = x
    for op, p in zip(sub.ops, params):
        y = device.linear(y, p["weight"], p["bias"], activation=op.attr("activation"))
    return y


def _detections(monkeypatch) -> list[int]:
    calls: list[int] = []
    original = Receiver.detect
    monkeypatch.setattr(Receiver, "detect", lambda self, field, *a, **k: calls.append(field.shape[-1]) or original(self, field, *a, **k))
    return calls


def test_two_layers_are_one_pass_of_light_detected_once(monkeypatch):
    device = hal.device("photonic:0?N=16&seed=1")
    sub, params, x = _network(1, (16, 16, 12), ("none", "none"))
    assert device.claim(sub)
    program = device.prepare_subgraph(sub, params)
    assert isinstance(program, PhotonicProgram) and program.op.name == "subgraph" and program.segments == [[0, 1]]
    detections = _detections(monkeypatch)
    out = program(x)
    assert detections == [12]  # the 16 outputs of the first processor are never detected
    assert rel(out, _reference(sub, params, x)) < 2 * program.cost.error + 2e-5 < 0.5
    assert 0.5 < rel(out, _reference(sub, params, x)) / program.cost.error < 2.0


def test_the_chain_is_exact_without_imperfections_biases_folded():
    device = hal.device("photonic:0?N=16&ideal=1")
    sub, params, x = _network(0, (16, 16, 12), ("none", "none"))
    assert rel(device.prepare_subgraph(sub, params)(x), _reference(sub, params, x)) < 1e-12


def test_one_detection_fewer_is_no_worse_than_op_by_op():
    chain_errors, op_errors = [], []
    for seed in range(3):
        device = hal.device(f"photonic:0?N=16&seed={seed}")
        sub, params, x = _network(seed, (16, 16, 12), ("none", "none"))
        ref = _reference(sub, params, x)
        chain_errors.append(rel(device.prepare_subgraph(sub, params)(x), ref))
        op_errors.append(rel(_per_op(device, sub, params, x), ref))
    assert sum(chain_errors) <= sum(op_errors)


def test_a_relu_cuts_the_chain_into_segments_with_detection_between(monkeypatch):
    device = hal.device("photonic:0?N=16&seed=2")
    sub, params, x = _network(2, (16, 16, 16, 8), ("none", "relu", "none"))
    program = device.prepare_subgraph(sub, params)
    assert program.segments == [[0, 1], [2]]
    detections = _detections(monkeypatch)
    out = program(x)
    assert detections == [16, 8]  # O-E-O at the relu: detected, rectified, modulated again
    assert rel(out, _reference(sub, params, x)) < 2 * program.cost.error + 2e-5
    estimate = device.estimate_subgraph(sub)
    assert "detection between segments at: op 1 -> 2: a relu" in estimate.formula


def test_the_estimate_saves_latency_and_detections_and_pays_the_compounded_loss_in_laser_power():
    """Light through two processors loses both their losses (and the attenuation kappa) before one detector: the lasers
    make it up. At 50 dB SNR that costs more energy than the detection it saves; at 40 dB (10x less signal) less."""
    sub, _, _ = _network(0, (16, 16, 12), ("none", "none"))
    for uri, cheaper in (("photonic:0?N=16&seed=0", False), ("photonic:0?N=16&snr_db=40&seed=0", True)):
        device = hal.device(uri)
        per_op = [device.estimate(op) for op in sub.ops]
        chain = device.estimate_subgraph(sub)
        assert chain.latency_s < sum(c.latency_s for c in per_op)  # one stream of the batch instead of two
        assert (chain.energy_j < sum(c.energy_j for c in per_op)) is cheaper
        assert chain.error < sum(c.error for c in per_op)
        assert "one pass of light through 2 processors" in chain.formula and "attenuation" in chain.formula and "detected once" in chain.formula


def _refusal(device, sub) -> str:
    support = device.claim(sub)
    assert not support
    with pytest.raises(UnsupportedOp, match="does not claim"):
        device.estimate_subgraph(sub)
    return support.reason


def test_chains_where_no_boundary_stays_optical_are_refused_with_the_reason():
    sub, params, _ = _network(0, (32, 32, 10), ("none", "none"))
    default = hal.device("photonic:0?seed=0")
    reason = _refusal(default, sub)
    assert "2 32-port processors in series lose" in reason and "31.4 dB" in reason
    with pytest.raises(UnsupportedOp, match="costs what op by op does"):
        default.prepare_subgraph(sub, params)
    device = hal.device("photonic:0?N=16&seed=0")
    relus, _, _ = _network(0, (16, 16, 16, 8), ("relu", "relu", "none"))
    assert "op 0 -> 1: a relu" in _refusal(device, relus) and "op 1 -> 2: a relu" in _refusal(device, relus)
    tiled, _, _ = _network(0, (16, 20, 8), ("none", "none"))
    assert "larger than 16x16 is tiled" in _refusal(device, tiled)
    x = torch.empty(4, 16)
    w = torch.randn(16, 16)
    linear = OpSpec("linear", [x], {"weight": w})
    assert "fused into the linear before it" in _refusal(device, Subgraph.chain([linear, OpSpec("relu", [x]), linear]))
    assert "chains only" in _refusal(device, Subgraph((linear, linear), ((-1,), (-1,)), (0, 1)))
    assert "reads (4, 8)" in _refusal(device, Subgraph.chain([linear, OpSpec("linear", [torch.empty(4, 8)], {"weight": torch.randn(4, 8)})]))
    intensity = hal.device("photonic:0?N=16&detection=intensity")
    assert "does not run on" in _refusal(intensity, Subgraph.chain([linear, linear]))


def test_parameters_that_do_not_fit_the_opspecs_are_refused():
    device = hal.device("photonic:0?N=16&seed=0")
    sub, params, _ = _network(0, (16, 16, 12), ("none", "none"))
    with pytest.raises(ShapeError, match="'weight' has shape \\(8, 16\\) where its OpSpec says \\(16, 16\\)"):
        device.prepare_subgraph(sub, [{"weight": torch.randn(8, 16, dtype=torch.float64), "bias": params[0]["bias"]}, params[1]])


@pytest.mark.parametrize("snr_db, claimed", [(40, True), (50, False)])
def test_the_runtime_claims_the_chain_when_it_is_cheaper_under_the_energy_policy(snr_db, claimed):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 12)).eval()
    x = torch.randn(BATCH, 16)
    plan = hal.runtime.plan(model, x, policy="energy", devices=[f"photonic:0?N=16&snr_db={snr_db}"])
    claims = [c for c in plan.claims() if c is not None]
    assert len(claims) == 1 and claims[0].claimed is claimed, claims[0].reason
    if not claimed:
        assert "above the ops' sum" in claims[0].reason
    with torch.no_grad():
        out, ref = plan.run(x), model(x)
    assert rel(out, ref) < 0.5
