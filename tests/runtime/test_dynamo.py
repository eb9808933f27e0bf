"""hal.runtime.dynamo: torch.compile(model, backend="hal") places Dynamo's graphs, trains where devices train."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points

import pytest
import torch
from runtime_fakes import fake
from torch import fx, nn

import hal
from hal.capability import Paradigm
from hal.errors import InvalidInput, UnknownDevice, UnsupportedOp
from hal.runtime import dynamo

PLACE = {"delegate": None, "devices": ["cpu:0"]}  # every graph placed by hal.runtime, even with only the CPU selected


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


class Recorder:
    """A backend that compiles through hal and keeps what it made of each graph (and the graph)."""

    def __init__(self):
        self.compiled: list[dynamo.Compiled] = []
        self.graphs: list[fx.GraphModule] = []

    def __call__(self, gm, example_inputs, **kwargs):
        result = dynamo.compile_graph(gm, example_inputs, **kwargs)
        self.compiled.append(result)
        self.graphs.append(gm)
        return result.fn


def inner(excinfo) -> BaseException:
    """The exception the backend raised (Dynamo wraps it in BackendCompilerFailed)."""
    error = excinfo.value
    return getattr(error, "inner_exception", error)


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 4)

    def forward(self, x):
        y = torch.relu(self.fc1(x))
        if y.sum() > 0:  # data-dependent: a graph break, not an error
            return self.fc2(y).softmax(-1)
        return -self.fc2(y)


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.norm, self.head = nn.Linear(8, 8), nn.Linear(8, 8), nn.LayerNorm(8), nn.Linear(8, 3)

    def forward(self, x):
        h = self.fc2(torch.relu(self.fc1(x))) + x
        return self.head(self.norm(h) * x)


def seeded(cls, *args):
    torch.manual_seed(0)
    return cls(*args)


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out - ref).norm() / ref.norm())


# --------------------------------------------------------------------------- graphs, breaks, shapes


def test_graph_breaks_run_as_python_and_each_graph_is_placed():
    model, backend = seeded(Branchy), Recorder()
    compiled = torch.compile(model, backend=backend, options=PLACE)
    x = torch.randn(4, 8)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x))
        model.fc1.bias.fill_(-50.0)  # relu(...) is now all zero: the other branch
        torch.testing.assert_close(compiled(x), model(x))
    assert len(backend.compiled) == 3  # the code before the break, then one graph per branch taken
    assert {c.route for c in backend.compiled} == {"placed"}
    first = next(iter(backend.compiled[0].placed.plans.values())).plan
    assert [n.label for n in first.graph.nodes if n.op is not None] == ["linear+relu"]  # fc1's weights bound as constants


def test_dynamic_batch_recompiles_once_then_plans_per_signature():
    model, backend = seeded(Residual), Recorder()
    compiled = torch.compile(model, backend=backend, options=PLACE)
    with torch.no_grad():
        for batch in (2, 3, 5):
            x = torch.randn(batch, 8)
            torch.testing.assert_close(compiled(x), model(x))
    assert [c.compile_id for c in backend.compiled] == ["0/0", "0/1"]  # static, then Dynamo's automatic dynamic
    assert len(backend.compiled[1].placed.plans) == 2  # the dynamic graph placed for batch 3 and batch 5


def test_recompiles_beyond_the_bound_are_refused_with_the_reason():
    model = seeded(Residual)
    compiled = torch.compile(model, backend=Recorder(), options={**PLACE, "max_recompiles": 1}, dynamic=False)
    with torch.no_grad():
        compiled(torch.randn(2, 8))
        compiled(torch.randn(3, 8))
        with pytest.raises(Exception) as excinfo:
            compiled(torch.randn(4, 8))
    error = inner(excinfo)
    assert isinstance(error, dynamo.RecompileLimit)
    assert "max_recompiles']=1" in str(error) and "mark_dynamic" in str(error)


def test_signatures_beyond_the_bound_are_refused():
    model = seeded(Residual)
    compiled = torch.compile(model, backend=Recorder(), options={**PLACE, "max_recompiles": 1})
    with torch.no_grad():
        for batch in (2, 3, 4):
            compiled(torch.randn(batch, 8))
        with pytest.raises(dynamo.RecompileLimit, match="call signatures"):
            compiled(torch.randn(5, 8))


# --------------------------------------------------------------------------- semantics


class WritesItsInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        x.mul_(2)
        return self.fc(x).relu_() + x


def test_in_place_writes_reach_the_caller_as_in_eager():
    model = seeded(WritesItsInput)
    compiled = torch.compile(model, backend=Recorder(), options=PLACE)
    x = torch.randn(3, 4)
    mine, theirs = x.clone(), x.clone()
    with torch.no_grad():
        out, ref = compiled(mine), model(theirs)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(mine, theirs)  # the caller's tensor doubled, once


class AugmentedWrites(nn.Module):
    """Writes two inputs the way Dynamo records as operator.iadd and operator.setitem."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x, total, cache):
        total += 1
        cache[:, 0] = self.fc(x)
        return self.fc(x) * 2


def test_augmented_and_item_assignments_to_inputs_reach_the_caller_as_in_eager():
    model = seeded(AugmentedWrites)
    compiled = torch.compile(model, backend=Recorder(), options=PLACE)
    x = torch.randn(3, 4)
    mine, theirs = (torch.zeros(1), torch.zeros(3, 2, 4)), (torch.zeros(1), torch.zeros(3, 2, 4))
    with torch.no_grad():
        out, ref = compiled(x, *mine), model(x, *theirs)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(mine[0], theirs[0])  # total += 1 once, in the caller's tensor
    torch.testing.assert_close(mine[1], theirs[1])


def test_batch_norm_statistics_update_once_per_call():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU())
    twin = seeded(lambda: nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU()))
    compiled = torch.compile(model, backend=Recorder(), options=PLACE)
    with torch.no_grad():
        for _ in range(2):
            x = torch.randn(5, 4)
            torch.testing.assert_close(compiled(x), twin(x))
    torch.testing.assert_close(model[1].running_mean, twin[1].running_mean)
    assert int(model[1].num_batches_tracked) == int(twin[1].num_batches_tracked) == 2


def test_residual_dag_across_a_device_matches_eager():
    model, backend = seeded(Residual), Recorder()
    analog = fake("dynamo_analog", ops=("linear",), paradigm=Paradigm.ANALOG, s_per_flop=1e-15)
    compiled = torch.compile(model, backend=backend, options={"devices": ["cpu:0", analog], "pins": {"fc2": analog}})
    x = torch.randn(6, 8)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x))
    plan = next(iter(backend.compiled[0].placed.plans.values())).plan
    assert plan.device_of("linear_1") == "dynamo_analog:0"  # fc2 is Dynamo's second linear
    assert analog.calls >= 1


def test_weights_written_in_place_are_bound_again():
    model, backend = seeded(Residual), Recorder()
    analog = fake("dynamo_rebind", ops=("linear",), paradigm=Paradigm.ANALOG)
    compiled = torch.compile(model, backend=backend, options={"pins": {"fc1": analog}})  # default devices: the real ones
    x = torch.randn(2, 8)
    with torch.no_grad():
        compiled(x)
        prepared = analog.prepared
        compiled(x)
        assert analog.prepared == prepared  # bound once, reused
        model.fc1.weight.mul_(3)  # an optimiser step does this
        torch.testing.assert_close(compiled(x), model(x))
    assert analog.prepared == prepared + 1


def test_results_equal_eager_within_the_declared_tolerance():
    model, x = seeded(Residual), torch.randn(16, 8)
    cpu, memristor = hal.device("cpu:0"), hal.device("memristor:0")
    with torch.no_grad():
        ref = model(x)
        on_cpu = torch.compile(model, backend=Recorder(), options=PLACE)(x)
        torch._dynamo.reset()
        analog = torch.compile(model, backend=Recorder(), options={"pins": {"head": "memristor:0"}})(x)
    assert relative_error(on_cpu, ref) <= cpu.capabilities.ops["linear"].tolerance["float32"]
    assert relative_error(analog, ref) <= memristor.capabilities.ops["linear"].tolerance["float32"]


# --------------------------------------------------------------------------- training


def test_training_on_the_cpu_gives_eager_gradients():
    for options in (PLACE, {"delegate": "aot_eager"}):
        torch._dynamo.reset()
        model, twin = seeded(Residual), seeded(Residual)
        compiled = torch.compile(model, backend=Recorder(), options=options)
        x, target = torch.randn(4, 8), torch.randn(4, 3)
        nn.functional.mse_loss(compiled(x), target).backward()
        nn.functional.mse_loss(twin(x), target).backward()
        for (name, p), q in zip(model.named_parameters(), twin.parameters()):
            torch.testing.assert_close(p.grad, q.grad, msg=f"{options}: gradient of {name}")


def test_backward_through_a_device_that_cannot_train_names_it_and_the_op():
    model = seeded(Residual)
    analog = fake("dynamo_frozen", ops=("linear",), paradigm=Paradigm.ANALOG, fixed_s=1.0)  # slow: only the pinned node goes there
    compiled = torch.compile(model, backend=Recorder(), options={"devices": ["cpu:0"], "pins": {"fc1": analog}})
    x = torch.randn(4, 8)
    out = compiled(x)
    torch.testing.assert_close(out.detach(), model(x).detach())  # the forward runs on the device
    assert analog.calls == 1
    with pytest.raises(UnsupportedOp, match=r"dynamo_frozen:0 cannot train.*'linear' \(module 'fc1', linear\+relu"):
        out.sum().backward()


def test_a_frozen_node_on_such_a_device_lets_the_rest_train():
    model, twin = seeded(Residual), seeded(Residual)
    for m in (model, twin):
        m.fc1.requires_grad_(False)
    analog = fake("dynamo_inference", ops=("linear",), paradigm=Paradigm.ANALOG, fixed_s=1.0)
    compiled = torch.compile(model, backend=Recorder(), options={"devices": ["cpu:0"], "pins": {"fc1": analog}})
    x = torch.randn(4, 8)
    compiled(x).sum().backward()  # no gradient has to pass through fc1: nothing is refused
    twin(x).sum().backward()
    assert analog.calls == 1
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        if p.requires_grad:
            torch.testing.assert_close(p.grad, q.grad, msg=f"gradient of {name}")


# --------------------------------------------------------------------------- refusals


def test_a_compile_mode_for_a_placed_graph_is_refused():
    gm = fx.symbolic_trace(seeded(Residual))  # any fx graph will do: torch.compile refuses mode and options together
    with pytest.raises(InvalidInput, match="leave mode unset"):
        dynamo.compile_graph(gm, [torch.randn(2, 8)], options=PLACE, mode="max-autotune")
    result = dynamo.compile_graph(gm, [torch.randn(2, 8)], options=PLACE)
    x = torch.randn(3, 8)
    torch.testing.assert_close(result.fn(x), gm(x))


def test_an_option_typo_names_the_options_that_exist():
    compiled = torch.compile(seeded(Residual), backend=Recorder(), options={"polcy": "energy"})
    with pytest.raises(Exception) as excinfo:
        compiled(torch.randn(2, 8))
    error = inner(excinfo)
    assert isinstance(error, InvalidInput) and "did you mean 'policy'" in str(error)
    assert all(name in str(error) for name in dynamo.OPTIONS)


@pytest.mark.parametrize(
    "options, problem",
    [
        ({"policy": "fastest"}, "not a policy"),
        ({"devices": "cpu:0"}, "non-empty list"),
        ({"pins": ["fc1"]}, "takes a dict"),
        ({"delegate": "hal"}, "not a torch backend"),
        ({"max_recompiles": -1}, "whole number"),
    ],
)
def test_bad_option_values_are_refused(options, problem):
    with pytest.raises(InvalidInput, match=problem):
        dynamo.Options.parse(options)


def test_a_device_that_does_not_exist_is_named_at_compile_time():
    compiled = torch.compile(seeded(Residual), backend=Recorder(), options={"devices": ["cpu:0", "memristr:0"]})
    with pytest.raises(Exception) as excinfo:
        compiled(torch.randn(2, 8))
    error = inner(excinfo)
    assert isinstance(error, UnknownDevice) and "'memristr'" in str(error) and "did you mean 'memristor'" in str(error)


def test_a_pin_naming_no_module_is_refused_with_close_matches():
    compiled = torch.compile(seeded(Residual), backend=Recorder(), options={"devices": ["cpu:0"], "pins": {"fc3": "cpu:0"}})
    with pytest.raises(Exception) as excinfo:
        compiled(torch.randn(2, 8))
    error = inner(excinfo)
    assert isinstance(error, InvalidInput) and "'fc3'" in str(error) and "did you mean" in str(error)


def test_an_op_no_selected_device_runs_is_refused_naming_op_and_devices():
    model = nn.Sequential(nn.Linear(8, 4), nn.GELU())
    analog = fake("dynamo_linear_only", ops=("linear",), paradigm=Paradigm.ANALOG)
    compiled = torch.compile(model, backend=Recorder(), options={"devices": [analog]})
    with pytest.raises(Exception) as excinfo:
        compiled(torch.randn(2, 8))
    error = inner(excinfo)
    assert isinstance(error, UnsupportedOp)
    assert "gelu" in str(error) and "dynamo_linear_only:0" in str(error) and "cpu:0" in str(error)


# --------------------------------------------------------------------------- routing and registration


def test_only_cpu_selected_delegates_the_whole_graph():
    backend = Recorder()
    model = seeded(Residual)
    compiled = torch.compile(model, backend=backend, options={"devices": ["cpu:0"], "delegate": "eager"})
    x = torch.randn(2, 8)
    torch.testing.assert_close(compiled(x), model(x))
    (result,), (gm,) = backend.compiled, backend.graphs
    assert result.route == "delegate" and result.placed is None
    assert getattr(result.fn, "__self__", None) is gm  # the eager delegate's own callable (gm's forward): nothing added per call


def test_a_device_that_compiles_the_graph_itself_gets_it_around_the_delegate(monkeypatch):
    from hal.device import TorchGraph
    from hal.drivers.cpu import CpuDevice

    seen = []

    def own(self, gm, example_inputs, delegate):
        inner = delegate(gm, example_inputs)
        seen.append(gm)
        return TorchGraph(lambda *args: inner(*args), lambda: "rewritten by the test device")

    monkeypatch.setattr(CpuDevice, "compile_torch_graph", own)
    backend = Recorder()
    model = seeded(Residual)
    x = torch.randn(2, 8)
    torch.testing.assert_close(torch.compile(model, backend=backend, options={"devices": ["cpu:0"], "delegate": "eager"})(x), model(x))
    (result,) = backend.compiled
    assert result.route == "device" and seen == backend.graphs
    assert "rewritten by the test device" in result.describe() and "cpu:0 compiles it around eager" in result.reason


def test_a_compile_mode_skips_the_devices_own_compilation(monkeypatch):
    from hal.drivers.cpu import CpuDevice

    monkeypatch.setattr(CpuDevice, "compile_torch_graph", lambda *a: pytest.fail("a mode asks for the delegate's own compile"))
    asked = []
    monkeypatch.setattr(dynamo, "_delegate", lambda gm, xs, name, mode: asked.append((name, mode)) or gm)
    gm = fx.symbolic_trace(seeded(Residual))
    result = dynamo.compile_graph(gm, [torch.randn(2, 8)], options={"devices": ["cpu:0"]}, mode="max-autotune-no-cudagraphs")
    assert result.route == "delegate" and asked == [("inductor", "max-autotune-no-cudagraphs")]


@pytest.mark.slow
def test_default_options_delegate_to_inductor():
    model, backend = seeded(Residual), Recorder()
    x = torch.randn(2, 8)
    torch.testing.assert_close(torch.compile(model, backend=backend)(x), model(x))
    assert [c.route for c in backend.compiled] == ["delegate"]


def test_module_paths_from_dynamo_names():
    graph = fx.Graph()
    node = graph.placeholder("x")
    for path, want in [("L['self'].blocks.0.fc", "blocks.0.fc"), ("L['self']._modules['enc']._modules['1']", "enc.1"), ("G['model'].layers[2]", "layers.2")]:
        node.meta["nn_module_stack"] = {"k": (path, nn.Linear)}
        assert dynamo.module_path(node) == want


def test_the_backend_is_found_by_name_in_a_fresh_process():
    if not any(ep.name == "hal" for ep in entry_points(group="torch_dynamo_backends")):
        pytest.skip("the torch_dynamo_backends entry point 'hal' is not installed yet (pip install -e . after pyproject lists it)")
    script = (
        "import torch\n"
        "assert 'hal' in torch._dynamo.list_backends()\n"
        "m = torch.nn.Linear(4, 4)\n"
        "x = torch.randn(2, 4)\n"
        "out = torch.compile(m, backend='hal', options={'delegate': None, 'devices': ['cpu:0']})(x)\n"
        "torch.testing.assert_close(out, m(x))\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


class ConvSoftmax(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1, stride=2)
        self.softmax = nn.Softmax(dim=1)

    def forward(self, x):
        return self.softmax(self.conv(x))


def test_dynamo_forms_of_conv2d_and_softmax_become_device_ops():
    model, backend = seeded(ConvSoftmax), Recorder()
    compiled = torch.compile(model, backend=backend, options=PLACE)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x))
    plan = next(iter(backend.compiled[0].placed.plans.values())).plan
    assert [n.op.name for n in plan.graph.nodes if n.op is not None] == ["conv2d", "softmax"]


def test_explain_shows_every_graph_and_the_plans_of_placed_ones():
    model = seeded(Branchy)
    x = torch.randn(4, 8)
    explanation = hal.explain(torch.compile(model, backend="hal"), x, options=PLACE)
    assert len(explanation.graphs) == 2  # the code before the data-dependent branch, then the branch taken
    assert all(c.route == "placed" for c in explanation.graphs)
    text = str(explanation)
    assert "2 graph(s) captured" in text and "cpu:0" in text and "linear+relu" in text
    delegated = hal.explain(model, x, options={"devices": ["cpu:0"], "delegate": "eager"})
    assert [c.route for c in delegated.graphs] == ["delegate", "delegate"]


def test_explain_of_a_plan_is_the_plan_and_takes_nothing_else():
    from hal.runtime import plan

    model, x = seeded(Residual), torch.randn(2, 8)
    p = plan(model, x, devices=["cpu:0"])
    assert hal.explain(p) is p and "stage" in str(hal.explain(p))
    with pytest.raises(InvalidInput, match="takes the plan alone"):
        hal.explain(p, x)
