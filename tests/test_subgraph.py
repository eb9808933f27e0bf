"""Subgraph claims: wiring validation, the reference composition, and the contract's prepare_subgraph."""

import pytest
import torch

from hal.device import OpSpec, Program, Support
from hal.drivers.cpu import CpuDevice
from hal.errors import InvalidInput, ShapeError, UnsupportedOp
from hal.subgraph import Subgraph, run_wired


def _linear(n_in, n_out):
    return OpSpec("linear", [torch.empty(4, n_in)], {"weight": torch.empty(n_out, n_in)})


class _ClaimingCpu(CpuDevice):
    """A CPU device that claims chains of linear ops and runs them with one call."""

    calls = 0

    def claim(self, sub):
        if sub.is_chain and all(op.name == "linear" for op in sub.ops):
            return Support.yes()
        return Support.no("claims only chains of linear ops")

    def _compile_subgraph(self, sub, params):
        steps = [self._compile(op, p).run for op, p in zip(sub.ops, params)]

        def run(*inputs):
            type(self).calls += 1
            return run_wired(sub, steps, inputs)

        return Program(sub.as_opspec(), self, self.estimate_subgraph(sub), run)


def test_chain_wiring_and_input_specs():
    sub = Subgraph.chain([_linear(16, 8), OpSpec("relu", [torch.empty(4, 8)]), _linear(8, 2)])
    assert sub.is_chain and sub.outputs == (2,)
    assert sub.input_specs[0].shape == (4, 16)
    assert str(sub) == "linear -> relu -> linear"
    assert sub.as_opspec().name == "subgraph"


@pytest.mark.parametrize(
    "sources, outputs, problem",
    [(((-1,), (1,)), (1,), "come before"), (((-1,), (0,)), (2,), "outputs"), (((-2,), (0,)), (1,), "without gaps"), (((-1,),), (0,), "one source tuple")],
)
def test_bad_wiring_is_refused_with_a_reason(sources, outputs, problem):
    ops = (_linear(16, 16), _linear(16, 16))
    with pytest.raises(ShapeError, match=problem):
        Subgraph(ops, sources, outputs)


def test_dag_wiring_runs_in_topological_order():
    a, b = torch.randn(3, 5), torch.randn(3, 5)
    add = OpSpec("add", [a, b])
    sub = Subgraph((add, OpSpec("relu", [a]), OpSpec("mul", [a, a])), ((-1, -2), (0,), (1, -1)), (2, 0))
    out_mul, out_add = run_wired(sub, [torch.add, torch.relu, torch.mul], [a, b])
    assert torch.equal(out_add, a + b) and torch.equal(out_mul, torch.relu(a + b) * a)


def test_default_device_declines_claims():
    sub = Subgraph.chain([_linear(16, 8)])
    d = CpuDevice("cpu:0")
    assert not d.claim(sub)
    with pytest.raises(UnsupportedOp, match="claims no subgraphs|one at a time"):
        d.prepare_subgraph(sub, [{"weight": torch.randn(8, 16)}])


def test_claimed_chain_is_one_program_equal_to_the_ops_one_by_one():
    w1, w2, x = torch.randn(8, 16), torch.randn(2, 8), torch.randn(4, 16)
    d = _ClaimingCpu("cpu:0")
    sub = Subgraph.chain([_linear(16, 8), _linear(8, 2)])
    program = d.prepare_subgraph(sub, [{"weight": w1}, {"weight": w2}])
    before = _ClaimingCpu.calls
    assert torch.allclose(program(x), (x @ w1.T) @ w2.T, atol=1e-5)
    assert _ClaimingCpu.calls == before + 1
    assert program.cost.latency_s > 0
    with pytest.raises(UnsupportedOp, match="only chains of linear"):
        d.prepare_subgraph(Subgraph.chain([OpSpec("relu", [x])]), [{}])


def test_bound_parameters_must_match_each_ops_declared_params():
    d = _ClaimingCpu("cpu:0")
    sub = Subgraph.chain([_linear(16, 8), _linear(8, 2)])
    with pytest.raises(ShapeError, match="where its OpSpec says"):
        d.prepare_subgraph(sub, [{"weight": torch.randn(8, 15)}, {"weight": torch.randn(2, 8)}])
    with pytest.raises(InvalidInput, match="declares a 'weight'"):
        d.prepare_subgraph(sub, [{}, {"weight": torch.randn(2, 8)}])
    with pytest.raises(InvalidInput, match="does not declare"):
        d.prepare_subgraph(sub, [{"weight": torch.randn(8, 16), "bias": torch.randn(8)}, {"weight": torch.randn(2, 8)}])
