"""hal.runtime on a real NVIDIA GPU: placement with link costs, cuda tensors crossing devices, fallback to the CPU."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import hal
from hal.errors import DeviceFailure
from hal.runtime import plan

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def gpu():
    for info in hal.devices():
        if info.kind in ("hopper", "blackwell", "cuda"):
            return hal.device(info.uri)
    pytest.skip("no NVIDIA device available to hal here")


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(512, 2048), nn.GELU(), nn.Linear(2048, 2048), nn.GELU(), nn.Linear(2048, 512)).eval()


def test_large_layers_go_to_the_gpu_and_results_match(gpu):
    model, x = mlp(), torch.randn(1024, 512)
    p = plan(model, x, policy="latency", devices=[hal.device("cpu"), gpu])
    placed = {p.device_of(n) for n in p.graph.node_names()}
    assert str(gpu) in placed
    into_gpu = [t for t in p.to_dict()["transfers"] if t["to"] == str(gpu)]
    assert into_gpu and all(t["latency_s"] > 0 for t in into_gpu)
    out = p.run(x)
    assert out.device.type == "cpu"
    ref = model.double()(x.double()).detach()
    assert float((out.double() - ref).norm() / ref.norm()) < 1e-2


def test_cuda_tensors_cross_to_a_cpu_pinned_layer_and_back(gpu):
    model, x = mlp(), torch.randn(256, 512)
    pins = {"0": str(gpu), "2": "cpu:0", "4": str(gpu)}
    p = plan(model, x, pins=pins, devices=[hal.device("cpu"), gpu])
    assert [p.device_of(n) for n in ("0", "2", "4")] == [str(gpu), "cpu:0", str(gpu)]
    out = p.run(x)
    ref = model.double()(x.double()).detach()
    assert float((out.double() - ref).norm() / ref.norm()) < 1e-2


def test_gpu_failure_mid_run_falls_back_to_the_cpu(gpu):
    model, x = mlp(), torch.randn(1024, 512)
    p = plan(model, x, policy="latency", devices=[hal.device("cpu"), gpu])
    p.prepare()

    def lost(*inputs):
        raise DeviceFailure(f"{gpu}: injected Xid 79 (fell off the bus)")

    for (node, uri), program in p.programs.items():
        if uri == str(gpu):
            program.run = lost
    for (nodes, uri), entry in p.stage_programs.items():  # stages the GPU claimed as one Program
        if uri == str(gpu):
            entry.program.run = lost
    with pytest.warns(RuntimeWarning, match="fell off the bus"):
        out, report = p.run(x, profile=True)
    assert report.fallbacks and report.fallbacks[0].device == str(gpu)
    assert {p.device_of(n) for n in p.graph.node_names()} <= {"cpu:0", "host"}
    ref = model.double()(x.double()).detach()
    assert float((out.double() - ref).norm() / ref.norm()) < 1e-3


class WritesADeviceResult(nn.Module):
    """A GPU layer's output viewed and then doubled in place on the host, and read again on the GPU."""

    def __init__(self):
        super().__init__()
        self.fc, self.fc2 = nn.Linear(256, 256), nn.Linear(256, 256)

    def forward(self, x):
        h = self.fc(x)
        v = h.view(-1)
        h.mul_(2)
        return self.fc2(h), v.sum()


def test_a_host_write_to_a_gpu_result_reaches_its_views_and_later_gpu_readers(gpu):
    torch.manual_seed(0)
    model, x = WritesADeviceResult(), torch.randn(64, 256)
    p = plan(model, x, pins={"fc": str(gpu), "fc2": str(gpu)}, devices=[hal.device("cpu"), gpu])
    assert [p.device_of(n) for n in ("fc", "view", "mul_", "fc2")] == [str(gpu), "host", "host", str(gpu)]
    out, total = p.run(x)
    with torch.no_grad():
        h = model.fc(x) * 2
        ref_out, ref_total = model.fc2(h), h.sum()
    assert float((out - ref_out).norm() / ref_out.norm()) < 1e-2
    assert abs(float(total) - float(ref_total)) <= 1e-2 * float(h.abs().sum())


def test_a_chain_on_the_gpu_runs_as_its_claim_says_and_matches(gpu):
    model, x = mlp(), torch.randn(256, 512)
    p = plan(model, x, pins={n: str(gpu) for n in ("0", "1", "2", "3", "4")}, devices=[gpu])
    (claim,) = p.claims()
    out, report = p.run(x, profile=True)
    assert report.stages[0].claimed == claim.claimed
    assert len(p.stage_programs) == int(claim.claimed) and len(p.programs) == (0 if claim.claimed else 5)
    ref = model.double()(x.double()).detach()
    assert float((out.double() - ref).norm() / ref.norm()) < 1e-2
