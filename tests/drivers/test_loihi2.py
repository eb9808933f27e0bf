"""Tests of hal/drivers/loihi2: the engine's arithmetic, quantisation, mapper, driver ops, conversion, conformance.

The comparisons against lava itself live in test_loihi2_lava.py (marked ``lava``); the converted module
(``hal.nn.convert``) in test_loihi2_module.py, subgraph claims in test_loihi2_subgraph.py.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import hal
import hal.nn
from hal import cache as hal_cache
from hal.device import OpSpec
from hal.drivers.loihi2.engine import ConvSynapse, DenseSynapse, LifLayer, LifNetwork, LifParams
from hal.drivers.loihi2.mapper import LayerShape, Loihi2Spec, map_layers
from hal.drivers.loihi2.quantize import SignMode, hardware_weights, quantize_bias, quantize_weights
from hal.errors import CapacityExceeded, InvalidInput, UnsupportedOp
from hal.testing.conformance import DeviceConformance, Sample


def reference_lif(weights: torch.Tensor, weight_exp: int, lif: LifParams, spikes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A plain per-step integer transcription of the Loihi LIF equations (Python ints), for one sample."""
    w = hardware_weights(weights).weights.tolist()
    bias = lif.effective_bias().tolist()
    n = lif.size
    u, v = [0] * n, [0] * n
    buffer = [0] * n
    out_s, out_v = [], []

    def trunc_decay(x: int, keep: int) -> int:
        product = x * keep
        return -((-product) >> 12) if product < 0 else product >> 12

    for t in range(spikes.shape[0]):
        a_in = buffer
        s = [int(x != 0) for x in spikes[t].tolist()]
        acc = [sum(w[i][j] * s[j] for j in range(len(s))) for i in range(n)]
        buffer = [x << weight_exp if weight_exp >= 0 else x >> -weight_exp for x in acc]
        fired = []
        for i in range(n):
            x = trunc_decay(u[i], 4096 - (lif.du + 1)) + (a_in[i] << 6)
            u[i] = x - 2**24 if x > 2**23 else (x + 2**24 if x <= -(2**23) else x)
            y = trunc_decay(v[i], 4096 - lif.dv) + u[i] + bias[i]
            y = max(-(2**23) + 1, min(2**23 - 1, y))
            spike = y > lif.threshold
            v[i] = 0 if spike else y
            fired.append(int(spike))
        out_s.append(fired)
        out_v.append(list(v))
    return torch.tensor(out_s), torch.tensor(out_v)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_engine_matches_the_integer_equations(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    n_in, n = 12, 7
    weights = torch.randint(-300, 300, (n, n_in), generator=g)
    lif = LifParams(n, du=int(torch.randint(0, 4096, (1,), generator=g)), dv=int(torch.randint(0, 4096, (1,), generator=g)),
                    vth=int(torch.randint(1, 400, (1,), generator=g)), bias_mant=torch.randint(-300, 300, (n,), generator=g), bias_exp=2)
    exp = int(torch.randint(-2, 4, (1,), generator=g))
    spikes = (torch.rand(60, 2, n_in, generator=g) < 0.4).to(torch.uint8)
    result = LifNetwork([LifLayer(DenseSynapse(weights, exp), lif)]).run(spikes, record_state=True)
    for b in range(2):
        ref_s, ref_v = reference_lif(weights, exp, lif, spikes[:, b])
        assert torch.equal(result.spikes[0][:, b].long(), ref_s)
        assert torch.equal(result.voltages[0][:, b], ref_v)


def test_engine_batches_are_independent_and_match_single_runs() -> None:
    g = torch.Generator().manual_seed(3)
    layers = [LifLayer(DenseSynapse(torch.randint(-256, 256, (20, 30), generator=g), 1), LifParams(20, du=300, dv=100, vth=300)),
              LifLayer(DenseSynapse(torch.randint(-256, 256, (5, 20), generator=g)), LifParams(5, du=4095, dv=0, vth=200))]
    net = LifNetwork(layers)
    spikes = (torch.rand(80, 4, 30, generator=g) < 0.3).to(torch.uint8)
    batched = net.run(spikes, chunk_steps=17)
    for b in range(4):
        single = net.run(spikes[:, b : b + 1])
        assert torch.equal(batched.spikes[1][:, b], single.spikes[1][:, 0])
    assert batched.spike_total > 0 and batched.synaptic_ops > 0


def test_conv_synapse_equals_its_dense_unrolling() -> None:
    g = torch.Generator().manual_seed(4)
    conv = ConvSynapse(torch.randint(-256, 256, (3, 2, 3, 3), generator=g), (2, 6, 6), padding=(1, 1), stride=(2, 1))
    dense_w = torch.zeros(conv.n_out, conv.n_in, dtype=torch.int64)
    for j in range(conv.n_in):
        basis = torch.zeros(1, conv.n_in)
        basis[0, j] = 1
        col = torch.nn.functional.conv2d(basis.reshape(1, 2, 6, 6).double(), conv.hardware.weights.double(), stride=(2, 1), padding=(1, 1))
        dense_w[:, j] = col.flatten().long()
    lif = LifParams(conv.n_out, du=1000, dv=50, vth=500)
    spikes = (torch.rand(50, 2, conv.n_in, generator=g) < 0.3).to(torch.uint8)
    a = LifNetwork([LifLayer(conv, lif)]).run(spikes)
    b = LifNetwork([LifLayer(DenseSynapse(dense_w), lif)]).run(spikes)
    assert torch.equal(a.spikes[0], b.spikes[0])


def test_graded_spikes_and_payload_limits() -> None:
    g = torch.Generator().manual_seed(5)
    layer = LifLayer(DenseSynapse(torch.randint(-256, 256, (6, 10), generator=g), 0, num_message_bits=8), LifParams(6, vth=1000))
    net = LifNetwork([layer])
    payload = torch.randint(-128, 128, (30, 1, 10), generator=g)
    assert net.run(payload).spike_total >= 0
    with pytest.raises(InvalidInput, match="message bits"):
        net.run(payload * 4)
    with pytest.raises(InvalidInput, match="integers"):
        net.run(payload.float() + 0.5)


def test_hardware_weights_follow_the_sign_modes() -> None:
    mixed = hardware_weights(torch.tensor([[-300, -3, 3, 300]]))
    assert mixed.sign_mode is SignMode.MIXED
    assert mixed.weights.tolist() == [[-256, -4, 2, 254]]
    assert mixed.clipped == 2 and mixed.truncated == 3
    excit = hardware_weights(torch.tensor([[0, 3, 255, 400]]))
    assert excit.weights.tolist() == [[0, 3, 255, 255]] and excit.clipped == 1
    inhib = hardware_weights(torch.tensor([[0, -3, -400]]))
    assert inhib.weights.tolist() == [[0, -3, -255]]


def test_quantisation_reports_its_error() -> None:
    w = torch.randn(16, 16, generator=torch.Generator().manual_seed(6))
    q = quantize_weights(w, float(w.abs().max()) / 254)
    assert 0 < q.rel_error < 0.02 and q.weight_exp == 0
    assert torch.equal(hardware_weights(q.mantissa).weights, q.mantissa)  # already a valid hardware pattern
    with pytest.raises(InvalidInput, match="strict"):
        quantize_weights(w, float(w.abs().max()), max_rel_error=0.01)
    b = quantize_bias(torch.tensor([1.0e5, -3.0, 0.0]))
    assert b.exponent > 0 and b.rel_error < 1e-3


def test_parameter_ranges_are_refused_with_the_range() -> None:
    with pytest.raises(InvalidInput, match="0..4095"):
        LifParams(3, du=5000)
    with pytest.raises(InvalidInput, match="13-bit"):
        LifParams(2, bias_mant=torch.tensor([5000, 0]))


def test_mapper_places_layers_and_names_the_limit() -> None:
    spec = Loihi2Spec()
    placed = map_layers([LayerShape(10_000, 1000), LayerShape(10, 10_000)], spec, chips=1)
    assert placed.layers[0].neurons_per_core <= spec.synapses_per_core // 1000
    assert placed.cores == sum(p.cores for p in placed.layers)
    with pytest.raises(CapacityExceeded, match="neuro cores") as caught:
        map_layers([LayerShape(1_000_000, 1000)], spec, chips=1)
    assert caught.value.needed > caught.value.available
    assert map_layers([LayerShape(1_000_000, 1000)], spec, chips=64).chips <= 64
    with pytest.raises(CapacityExceeded, match="synaptic memory"):
        map_layers([LayerShape(1, 200_000)], spec, chips=1)


def test_lif_layer_op_counts_events_and_costs_them() -> None:
    device = hal.device("loihi2:0")
    spikes = (torch.rand(40, 2, 16) < 0.3).to(torch.uint8)
    weight = torch.randint(-100, 100, (8, 16))
    program = device.prepare(OpSpec("lif_layer", [spikes], {"weight": weight}, {"vth": 50, "du": 100}), {"weight": weight})
    out = program(spikes)
    assert out.shape == (40, 2, 8) and out.dtype == torch.uint8
    stored = hardware_weights(weight).weights  # what the core stores: mixed-sign weights lose their LSB
    expected_synops = int((spikes != 0).sum(dim=(0, 1)).double() @ (stored != 0).sum(0).double())
    assert program.report["synaptic_ops"] == expected_synops
    assert program.cost.energy_j == pytest.approx(expected_synops * 23.6e-12 + 40 * 2 * 8 * 52e-12)
    assert "counted" in program.cost.formula


def test_lif_layer_strict_mode_refuses_clipped_weights() -> None:
    device = hal.device("loihi2:0?strict=1")
    spikes = torch.zeros(5, 1, 4, dtype=torch.uint8)
    weight = torch.tensor([[300, 0, 0, 0]])
    with pytest.raises(InvalidInput, match="8-bit"):
        device.prepare(OpSpec("lif_layer", [spikes], {"weight": weight}), {"weight": weight})


def test_linear_relu_is_rate_coded_and_none_is_refused() -> None:
    device = hal.device("loihi2:0?steps=512")
    g = torch.Generator().manual_seed(7)
    x, w, b = torch.randn(6, 20, generator=g), torch.randn(10, 20, generator=g) / 4, torch.randn(10, generator=g) / 2
    y = device.linear(x, w, b, activation="relu")
    ref = torch.relu(x @ w.t() + b)
    assert float((y - ref).norm() / ref.norm()) < device.capabilities.ops["linear"].tolerance["float32"]
    support = device.supports(OpSpec("linear", [x], {"weight": w, "bias": b}))
    assert not support and "relu" in support.reason
    with pytest.raises(UnsupportedOp):
        device.linear(x, w, b)
    with pytest.raises(InvalidInput, match="NaN"):
        device.linear(torch.full((2, 20), float("nan")), w, b, activation="relu")


def test_capacity_is_checked_at_prepare() -> None:
    device = hal.device("loihi2:0")
    spikes = torch.zeros(2, 1, 200_000, dtype=torch.uint8)
    weight = torch.zeros(1, 200_000)
    op = OpSpec("lif_layer", [spikes], {"weight": weight})
    support = device.supports(op)
    assert not support and "synaptic memory" in support.reason
    with pytest.raises(CapacityExceeded, match="synaptic memory") as estimated:
        device.estimate(op)
    # prepare() raised the generic UnsupportedOp; it must say what does not fit, with the numbers, as estimate() does
    for given in (op, OpSpec("lif_layer", [spikes])):  # the weight in the OpSpec, or only in params
        with pytest.raises(CapacityExceeded, match="synaptic memory") as prepared:
            device.prepare(given, {"weight": weight})
        assert (prepared.value.needed, prepared.value.available) == (estimated.value.needed, estimated.value.available) == (200_000, 131_072)
    many = torch.zeros(1_100_000, 1, dtype=torch.int8)  # 1.1M neurons at 8192 per core: 135 cores, one chip has 128
    with pytest.raises(CapacityExceeded, match="neuro cores") as cores:
        device.prepare(OpSpec("lif_layer", [torch.zeros(2, 1, 1, dtype=torch.uint8)], {"weight": many}), {"weight": many})
    assert (cores.value.needed, cores.value.available) == (135, 128)


def test_capabilities_source_every_figure_and_cite_loihi_1_energies() -> None:
    device = hal.device("loihi2:0?chips=4")
    caps = device.capabilities
    section = caps.sections["neuromorphic"]
    assert section.chips.value == 4 and section.chips.kind == "assumed"
    assert section.core.synaptic_memory_bytes.kind == "assumed"  # Loihi 2 partitions core memory flexibly: no published size
    assert section.chip.neuro_cores.kind == "datasheet" and section.system.neuro_cores.value == 4 * 128
    edge = {"j_per_edge_byte", "edge_bytes_per_s"}  # the host side of the rate encode/decode
    for name, figure in (*caps.energy.items(), *caps.peak.items()):
        if name not in edge:
            assert "Davies et al." in figure.source and "first-generation Loihi" in figure.note
    assert "Horowitz" in caps.energy["j_per_edge_byte"].source and "JESD79-5" in caps.peak["edge_bytes_per_s"].source
    cost = device.estimate(OpSpec("lif_layer", [torch.zeros(4, 1, 8, dtype=torch.uint8)], {"weight": torch.zeros(2, 8)}))
    assert "Loihi 1" in cost.formula


def test_lava_backend_is_unavailable_with_a_reason_when_no_interpreter(monkeypatch, tmp_path) -> None:
    from hal.drivers.loihi2 import lava_client

    monkeypatch.setattr(lava_client, "_verdicts", {})
    monkeypatch.setattr(lava_client, "_candidates", lambda option: [(option, "the ?python= option")] if option else [])
    missing = tmp_path / "python3.10"
    with pytest.raises(hal.DeviceUnavailable, match="Python 3.10") as caught:
        hal.device(f"loihi2:0?backend=lava&python={missing}")
    assert "setup_lava.sh" in caught.value.fix
    assert hal.device("loihi2:0").linear(torch.ones(1, 2), torch.ones(1, 2), activation="relu").shape == (1, 1)


def test_conversion_names_layers_it_cannot_convert() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.BatchNorm1d(4), nn.Linear(4, 2), nn.Sigmoid())
    with pytest.raises(InvalidInput, match=r"layer 2 \(BatchNorm1d\).*layer 4 \(Sigmoid\)"):
        hal.nn.convert(model, "loihi2:0", calibration=torch.rand(8, 4))


def test_conversion_of_a_small_mlp_keeps_its_accuracy() -> None:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32) / 16
    y = torch.tensor(y)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[:1200]), y[:1200]).backward()
        opt.step()
    test_x, test_y = x[1200:1500], y[1200:1500]
    ann = float((model(test_x).argmax(1) == test_y).float().mean())
    snn = hal.nn.convert(model, "loihi2:0", calibration=x[:300], steps=128)
    acc = float((snn(test_x).argmax(1) == test_y).float().mean())
    assert ann > 0.9
    assert acc >= ann - 0.03, f"SNN {acc:.3f} vs ANN {ann:.3f}"
    assert snn.module.last_run.synaptic_ops > 0


class TestConformance(DeviceConformance):
    uri = "loihi2:0"

    def sample(self, op_name: str, dtype: torch.dtype, generator: torch.Generator) -> Sample:
        if op_name == "linear":
            x = torch.randn(4, 16, generator=generator, dtype=torch.float64).to(dtype)
            w = (torch.randn(8, 16, generator=generator, dtype=torch.float64) / 4).to(dtype)
            return Sample([x], {"weight": w, "bias": torch.randn(8, generator=generator, dtype=torch.float64).to(dtype)}, {"activation": "relu"})
        if op_name == "lif_layer":
            spikes = (torch.rand(30, 2, 12, generator=generator) < 0.4).to(dtype)
            weight = torch.randint(-200, 200, (6, 12), generator=generator)
            return Sample([spikes], {"weight": weight}, {"du": 300, "dv": 100, "vth": 40})
        return super().sample(op_name, dtype, generator)

    def reference(self, op_name: str, sample: Sample) -> torch.Tensor | None:
        if op_name == "lif_layer":  # the per-step integer transcription above, sample by sample
            lif = LifParams(sample.params["weight"].shape[0], du=sample.attrs["du"], dv=sample.attrs["dv"], vth=sample.attrs["vth"])
            spikes = sample.inputs[0]
            trains = [reference_lif(sample.params["weight"], 0, lif, spikes[:, b])[0] for b in range(spikes.shape[1])]
            return torch.stack(trains, dim=1).to(torch.uint8)
        return super().reference(op_name, sample)


def _fake_python(tmp_path, body: str) -> str:
    script = tmp_path / "fake-python"
    script.write_text("#!/bin/sh\n" + body + "\n")
    script.chmod(0o755)
    return str(script)


def test_a_worker_that_dies_is_reported_with_its_stderr(tmp_path) -> None:
    from hal.drivers.loihi2.lava_client import LavaWorker
    from hal.errors import DeviceFailure

    worker = LavaWorker(_fake_python(tmp_path, "echo 'lava import failed: no module lava' >&2; exit 3"), timeout_s=30)
    with pytest.raises(DeviceFailure, match="no module lava"):
        worker.request({"op": "ping"})
    worker.close()


def test_a_worker_that_hangs_is_killed_and_reported(tmp_path) -> None:
    from hal.drivers.loihi2.lava_client import LavaWorker
    from hal.errors import DeviceFailure

    worker = LavaWorker(_fake_python(tmp_path, "echo 'compiling...' >&2; exec sleep 60"), timeout_s=30)
    with pytest.raises(DeviceFailure, match=r"did not answer(.|\n)*compiling"):
        worker.request({"op": "ping"}, timeout_s=1.0)
    assert not worker.alive
    worker.close()


def _counting_python(tmp_path, site, comment: str = "") -> tuple[str, object]:
    """A stand-in interpreter: this test's Python with ``site`` on its sys.path; also returns how often it was started."""
    import sys

    runs = tmp_path / "runs"
    body = f'echo run >> "{runs}"; PYTHONPATH="{site}" exec "{sys.executable}" "$@"{comment}'
    return _fake_python(tmp_path, body), lambda: len(runs.read_text().split()) if runs.exists() else 0


def test_a_lava_verdict_is_kept_until_the_interpreter_or_its_packages_change(tmp_path, monkeypatch) -> None:
    from hal.drivers.loihi2 import lava_client

    monkeypatch.setenv(hal_cache.CACHE_DIR_VARIABLE, str(tmp_path / "cache"))
    monkeypatch.setattr(lava_client, "_verdicts", {})
    site = tmp_path / "site"
    site.mkdir()
    python, runs = _counting_python(tmp_path, site)
    ok, reason = lava_client.verify(python)
    assert not ok and ("not 3.10" in reason or "lava" in reason) and runs() == 1  # this test's Python has no lava-nc 0.10
    assert lava_client.verify(python) == (ok, reason) and runs() == 1  # kept in this process
    monkeypatch.setattr(lava_client, "_verdicts", {})  # a new process: the verdict comes from the cache file
    assert lava_client.verify(python) == (ok, reason) and runs() == 1
    (site / "lava").mkdir()  # a package appears on the interpreter's sys.path: verified again, then kept
    lava_client.verify(python)
    lava_client.verify(python)
    assert runs() == 2
    lava_client.verify(python, fresh=True)  # hal doctor always checks afresh
    assert runs() == 3
    monkeypatch.setenv("PYTHONWARNINGS", "ignore::ResourceWarning")  # a PYTHON* variable changes how the interpreter starts
    lava_client.verify(python)
    assert runs() == 4
    _counting_python(tmp_path, site, comment="  # rewritten")  # the interpreter file itself changed
    lava_client.verify(python)
    assert runs() == 5


def test_probing_loihi2_reuses_the_kept_lava_verdict_and_doctor_checks_afresh(tmp_path, monkeypatch) -> None:
    from hal.drivers.loihi2 import lava_client
    from hal.drivers.loihi2.driver import Loihi2Device

    monkeypatch.setenv(hal_cache.CACHE_DIR_VARIABLE, str(tmp_path / "cache"))
    monkeypatch.setattr(lava_client, "_verdicts", {})
    site = tmp_path / "site"
    site.mkdir()
    python, runs = _counting_python(tmp_path, site)
    monkeypatch.setattr(lava_client, "_candidates", lambda option: [(python, "a test interpreter")])
    first = Loihi2Device.probe()[0].summary["lava"]
    assert first.startswith("unavailable") and python in first and runs() == 1
    assert Loihi2Device.probe()[0].summary["lava"] == first and runs() == 1  # no interpreter started
    check = next(c for c in Loihi2Device.diagnose() if c.name.startswith("lava-nc"))
    assert not check.ok and python in check.detail and runs() == 2


def test_a_converted_model_is_placed_on_cores() -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(64, 3))
    snn = hal.nn.convert(model, "loihi2:0", calibration=torch.rand(16, 1, 8, 8), steps=32)
    placed = snn.module.placement
    assert [p.neurons for p in placed.layers] == [256, 3] and placed.chips == 1
    assert placed.synapses == 256 * 9 + 3 * 256
    with pytest.raises(CapacityExceeded, match="synaptic memory"):  # refused at conversion, with the limit
        hal.nn.convert(nn.Sequential(nn.Linear(200_000, 2)), "loihi2:0", calibration=torch.rand(2, 200_000), steps=8)


def test_pooling_folds_exactly_into_the_next_layer() -> None:
    from hal.drivers.loihi2.conversion import _flatten_modules, _stage_apply, _stages

    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Conv2d(4, 3, 3, padding=1), nn.ReLU(),
                          nn.AvgPool2d(2), nn.Flatten(), nn.Linear(18, 5)).double()
    x = torch.rand(6, 2, 8, 12, dtype=torch.float64)
    a = x.reshape(6, -1)
    for stage in _stages(_flatten_modules(model), (2, 8, 12)):
        a = _stage_apply(stage, a)
        a = a.clamp(min=0) if stage.relu else a
    assert torch.allclose(a, model(x), atol=1e-12)
    twice = nn.Sequential(nn.Conv2d(1, 1, 1), nn.AvgPool2d(1), nn.AvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(InvalidInput, match=r"layer 4 \(Linear\) follows AvgPool2d -> AvgPool2d -> Flatten"):
        _stages(_flatten_modules(twice), (1, 2, 2))
