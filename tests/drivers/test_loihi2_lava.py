"""Bit-exactness of hal's Loihi 2 engine against lava-nc's ``Loihi2SimCfg(select_tag="fixed_pt")``, run in its
Python 3.10 worker: random networks (sizes, decays, thresholds, biases, weight exponents, graded spikes, conv),
identical spike trains, currents and voltages at every step. Skipped with the reason when no lava environment.
"""

from __future__ import annotations

import pytest
import torch

import hal
from hal.device import OpSpec
from hal.drivers.loihi2.engine import ConvSynapse, DenseSynapse, LifLayer, LifNetwork, LifParams
from hal.drivers.loihi2.lava_client import LavaWorker, find_lava_python, network_request
from hal.errors import DeviceFailure

pytestmark = pytest.mark.lava


@pytest.fixture(scope="module")
def lava_python():
    """The lava interpreter, looked up inside the test session (so its verdict is kept in the session's cache folder)."""
    found = find_lava_python()
    if not found.ok:
        pytest.skip(f"lava-nc unavailable: {found.reason}")
    return found


@pytest.fixture(scope="module")
def worker(lava_python):
    w = LavaWorker(lava_python.path, timeout_s=120)
    yield w
    w.close()


def assert_bit_exact(worker: LavaWorker, layers: list[LifLayer], spikes: torch.Tensor) -> None:
    engine = LifNetwork(layers).run(spikes.unsqueeze(1), record_state=True)
    header, arrays = network_request(layers, spikes.numpy(), record_state=True)
    _, lava = worker.request(header, arrays)
    for i in range(len(layers)):
        for name, mine in (("spikes", engine.spikes[i].long()), ("v", engine.voltages[i]), ("u", engine.currents[i])):
            theirs = torch.from_numpy(lava[f"{name}{i}"])
            differ = (mine[:, 0] != theirs).nonzero()
            assert differ.numel() == 0, f"layer {i} {name} differs first at (step, neuron) {differ[0].tolist()}: engine {mine[:, 0][tuple(differ[0])]}, lava {theirs[tuple(differ[0])]}"
    assert engine.spike_total > 0


def random_dense_network(g: torch.Generator, n_in: int, sizes: list[int]) -> list[LifLayer]:
    layers, previous = [], n_in
    for n in sizes:
        def pick(lo: int, hi: int) -> int:
            return int(torch.randint(lo, hi, (1,), generator=g))
        weights = torch.randint(-300, 300, (n, previous), generator=g)
        lif = LifParams(n, du=pick(0, 4096), dv=pick(0, 4096), vth=pick(1, 400),
                        bias_mant=torch.randint(-500, 500, (n,), generator=g), bias_exp=pick(0, 5))
        layers.append(LifLayer(DenseSynapse(weights, pick(-3, 4)), lif))
        previous = n
    return layers


@pytest.mark.parametrize("seed,n_in,sizes", [(0, 30, [40, 20]), (1, 100, [100]), (2, 8, [50, 30, 10])])
def test_random_dense_networks_match_lava(worker, seed, n_in, sizes) -> None:
    g = torch.Generator().manual_seed(seed)
    layers = random_dense_network(g, n_in, sizes)
    spikes = (torch.rand(200, n_in, generator=g) < 0.3).to(torch.int64)
    assert_bit_exact(worker, layers, spikes)


def test_wraps_and_saturation_match_lava(worker) -> None:
    g = torch.Generator().manual_seed(10)
    wrap = LifLayer(DenseSynapse(torch.randint(0, 256, (20, 50), generator=g), 3), LifParams(20, du=0, dv=10, vth=131071))
    saturate = LifLayer(DenseSynapse(-torch.randint(0, 256, (10, 20), generator=g), 2),
                        LifParams(10, du=100, dv=0, vth=1000, bias_mant=torch.full((10,), -4096), bias_exp=7))
    assert_bit_exact(worker, [wrap, saturate], (torch.rand(150, 50, generator=g) < 0.5).to(torch.int64))
    overflow = LifLayer(DenseSynapse(torch.randint(200, 256, (10, 1000), generator=g), 7),
                        LifParams(10, du=0, dv=0, vth=131071, bias_mant=torch.full((10,), 4095), bias_exp=7))
    assert_bit_exact(worker, [overflow], (torch.rand(60, 1000, generator=g) < 0.9).to(torch.int64))


def test_graded_spikes_and_clipped_weights_match_lava(worker) -> None:
    g = torch.Generator().manual_seed(11)
    graded = LifLayer(DenseSynapse(torch.randint(-600, 600, (20, 50), generator=g), -1, num_message_bits=8), LifParams(20, du=3000, dv=200, vth=2000))
    binary = LifLayer(DenseSynapse(torch.randint(-50, 256, (10, 20), generator=g), 1), LifParams(10, du=4095, dv=0, vth=300))
    assert_bit_exact(worker, [graded, binary], torch.randint(-128, 128, (150, 50), generator=g))


def test_conv_networks_match_lava(worker) -> None:
    g = torch.Generator().manual_seed(12)
    conv = ConvSynapse(torch.randint(-256, 256, (3, 2, 2, 3), generator=g), (2, 7, 6), stride=(2, 1), padding=(0, 1), dilation=(1, 2))
    layers = [LifLayer(conv, LifParams(conv.n_out, du=4095, dv=0, vth=300, bias_mant=torch.randint(-100, 100, (conv.n_out,), generator=g))),
              LifLayer(DenseSynapse(torch.randint(-256, 256, (8, conv.n_out), generator=g)), LifParams(8, du=500, dv=50, vth=200))]
    assert_bit_exact(worker, layers, (torch.rand(150, conv.n_in, generator=g) < 0.3).to(torch.int64))


def test_lava_backend_gives_the_engine_result(lava_python) -> None:
    spikes = (torch.rand(50, 2, 12, generator=torch.Generator().manual_seed(13)) < 0.4).to(torch.uint8)
    weight = torch.randint(-200, 200, (6, 12), generator=torch.Generator().manual_seed(14))
    op = OpSpec("lif_layer", [spikes], {"weight": weight}, {"vth": 80, "du": 1000, "dv": 100})
    lava = hal.device("loihi2:0?backend=lava").prepare(op, {"weight": weight})(spikes)
    engine = hal.device("loihi2:0").prepare(op, {"weight": weight})(spikes)
    assert torch.equal(lava, engine)


def test_a_dead_worker_is_reported_with_its_stderr_and_restarted(worker) -> None:
    with pytest.raises(DeviceFailure, match="lava refused"):
        worker.request({"op": "no_such_op"})
    worker.kill()
    reply, _ = worker.request({"op": "ping"})  # restarted on demand
    assert reply["lava"].startswith("0.10")
    assert worker.restarts >= 1


def test_hardware_backend_is_unavailable_without_lava_loihi(lava_python) -> None:
    with pytest.raises(hal.DeviceUnavailable, match="lava-loihi"):
        hal.device("loihi2:0?backend=hardware")


def test_linear_through_lava_matches_the_engine(lava_python) -> None:
    g = torch.Generator().manual_seed(15)
    x, w, b = torch.randn(2, 8, generator=g), torch.randn(4, 8, generator=g) / 3, torch.randn(4, generator=g) / 3
    lava = hal.device("loihi2:0?backend=lava&steps=64").linear(x, w, b, activation="relu")
    engine = hal.device("loihi2:0?steps=64").linear(x, w, b, activation="relu")
    assert torch.equal(lava, engine)


def test_a_converted_model_and_a_claimed_chain_through_lava_match_the_engine(lava_python) -> None:
    import hal.nn
    from hal.subgraph import Subgraph

    torch.manual_seed(16)
    model = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3), torch.nn.ReLU())
    x = torch.rand(2, 8, generator=torch.Generator().manual_seed(17))
    lava = hal.nn.convert(model, "loihi2:0?backend=lava&steps=32", calibration=x)
    engine = hal.nn.convert(model, "loihi2:0?steps=32", calibration=x)
    assert torch.equal(lava(x), engine(x))
    assert lava.module.last_run.synaptic_ops == engine.module.last_run.synaptic_ops
    layers = [m for m in model if isinstance(m, torch.nn.Linear)]
    ops = [OpSpec("linear", [torch.empty(2, m.in_features)], {"weight": m.weight, "bias": m.bias}, {"activation": "relu"}) for m in layers]
    params = [{"weight": m.weight.detach(), "bias": m.bias.detach()} for m in layers]
    chains = [hal.device(uri).prepare_subgraph(Subgraph.chain(ops), params) for uri in ("loihi2:0?backend=lava&steps=32", "loihi2:0?steps=32")]
    assert torch.equal(chains[0](x), chains[1](x))
