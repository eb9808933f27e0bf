"""hal.nn.moa: routing is respected (a forced router against the experts run directly), top-1 and top-k, decode ==
full forward, causality, the load-balancing loss and gradients, bad input."""

import pytest
import torch
from router_stub import FixedRouter

from hal.errors import InvalidInput, ShapeError
from hal.nn.jamba import CausalSelfAttention
from hal.nn.mamba import MambaBlock
from hal.nn.moa import MixtureOfArchitectures
from hal.nn.moe import Routing

D_MODEL = 16




def _moa(top_k=1, ssm="mamba"):
    torch.manual_seed(0)
    kwargs = {"d_state": 4} if ssm == "mamba" else {"d_state": 4, "head_dim": 8, "chunk_size": 4}
    return MixtureOfArchitectures.attention_and_ssm(D_MODEL, heads=2, ssm=ssm, top_k=top_k, **kwargs).double()


def test_a_forced_router_gives_each_token_its_chosen_architecture():
    moa = _moa()
    x = torch.randn(2, 7, D_MODEL, dtype=torch.float64)
    choice = torch.randint(0, 2, (14, 1))
    weight = torch.rand(14, 1, dtype=torch.float64)
    moa.router = FixedRouter(Routing(weight, choice, torch.full((14, 2), 0.5, dtype=torch.float64)))
    y, _ = moa(x)
    attention, mamba = moa.experts[0](x), moa.experts[1](x)
    pick = choice.reshape(2, 7, 1)
    expected = weight.reshape(2, 7, 1) * torch.where(pick == 0, attention, mamba)
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)
    assert isinstance(moa.experts[0], CausalSelfAttention) and isinstance(moa.experts[1], MambaBlock)


def test_top_k_combines_the_chosen_experts_with_the_router_weights():
    moa = _moa(top_k=2)
    x = torch.randn(1, 5, D_MODEL, dtype=torch.float64)
    y, _ = moa(x)
    routing = moa.router(x.reshape(-1, D_MODEL))
    torch.testing.assert_close(routing.weights.sum(-1), torch.ones(5, dtype=torch.float64))
    outs = torch.stack([e(x)[0] for e in moa.experts], 1)                 # (5, experts, d_model)
    expected = (routing.combine()[..., None] * outs).sum(1)
    torch.testing.assert_close(y[0], expected, rtol=1e-12, atol=1e-12)


def test_the_learned_top_1_router_picks_the_argmax_expert():
    moa = _moa(top_k=1)
    x = torch.randn(2, 6, D_MODEL, dtype=torch.float64)
    y, _ = moa(x)
    probs = moa.router(x.reshape(-1, D_MODEL)).probs.reshape(2, 6, 2)
    outs = torch.stack([e(x) for e in moa.experts], -1)                   # (2, 6, d_model, experts)
    best = probs.argmax(-1)
    expected = probs.max(-1).values[..., None] * torch.gather(outs, -1, best[..., None, None].expand(2, 6, D_MODEL, 1))[..., 0]
    torch.testing.assert_close(y, expected.to(y.dtype), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("ssm", ["mamba", "mamba2"])
def test_decode_equals_forward_and_outputs_are_causal(ssm):
    moa = _moa(top_k=1, ssm=ssm)
    x = torch.randn(2, 9, D_MODEL, dtype=torch.float64)
    with torch.no_grad():
        full, _ = moa(x)
        cache = moa.allocate_cache(2, max_seqlen=9)
        head, _ = moa(x[:, :3], cache)
        tail = torch.stack([moa.step(x[:, t], cache) for t in range(3, 9)], 1)
        changed = x.clone()
        changed[:, 5:] += 1.0
        early, _ = moa(changed)
    torch.testing.assert_close(torch.cat([head, tail], 1), full, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(early[:, :5], full[:, :5], rtol=0, atol=0)
    assert cache.seqlen == 9


def test_load_balancing_loss_and_gradients_reach_every_parameter():
    torch.manual_seed(0)
    moa = MixtureOfArchitectures.attention_and_ssm(D_MODEL, heads=2, top_k=2, d_state=4)
    x = torch.randn(2, 12, D_MODEL)
    y, aux = moa(x)
    assert aux.dim() == 0 and aux.item() >= 1.0 - 1e-6
    (y.pow(2).sum() + aux).backward()
    for name, p in moa.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_bad_inputs_raise_named_errors():
    with pytest.raises(InvalidInput, match="top_k"):
        MixtureOfArchitectures.attention_and_ssm(D_MODEL, heads=2, top_k=3)
    with pytest.raises(InvalidInput, match="at least 2"):
        MixtureOfArchitectures(D_MODEL, [MambaBlock(D_MODEL)])
    with pytest.raises(InvalidInput, match="d_model=8"):
        MixtureOfArchitectures(D_MODEL, [MambaBlock(D_MODEL), MambaBlock(8)])
    with pytest.raises(InvalidInput, match="decode protocol"):
        MixtureOfArchitectures(D_MODEL, [MambaBlock(D_MODEL), torch.nn.Linear(D_MODEL, D_MODEL)])
    with pytest.raises(InvalidInput, match="ssm"):
        MixtureOfArchitectures.attention_and_ssm(D_MODEL, heads=2, ssm="s4")
    moa = _moa()
    with pytest.raises(ShapeError, match="d_model=16"):
        moa(torch.randn(1, 3, 8, dtype=torch.float64))
    with pytest.raises(InvalidInput, match="max_seqlen"):
        moa.allocate_cache(1)
