"""hal.nn.mamba: MambaBlock and Mamba2Block against sequential float64 references of the papers' blocks, inits,
causality, decode (token by token and prefill + steps) equal to the full forward, gradients, bad input."""

import math

import pytest
import torch
import torch.nn.functional as F

from hal.errors import DTypeError, InvalidInput, ShapeError
from hal.nn.mamba import GatedRMSNorm, Mamba2Block, MambaBlock

D_MODEL, BATCH, SEQLEN = 12, 2, 13


def _causal_depthwise_conv(u, conv):
    """u (batch, seqlen, channels) -> SiLU(depthwise causal conv), summed tap by tap."""
    w, width = conv.weight[:, 0], conv.weight.shape[-1]
    padded = F.pad(u.transpose(1, 2), (width - 1, 0))
    out = sum(w[:, j, None] * padded[:, :, j:j + u.shape[1]] for j in range(width))
    if conv.bias is not None:
        out = out + conv.bias[:, None]
    return F.silu(out).transpose(1, 2)


def mamba_reference(block, x):
    """Gu & Dao 2023, written out step by step in float64 from the block's parameters."""
    d, n, r = block.d_inner, block.d_state, block.dt_rank
    xz = F.linear(x, block.in_proj.weight, block.in_proj.bias)
    u, z = xz[..., :d], xz[..., d:]
    u = _causal_depthwise_conv(u, block.conv1d)
    dt, B, C = torch.split(u @ block.x_proj.weight.T, [r, n, n], dim=-1)
    if block.inner_norms:
        dt, B, C = block.dt_norm(dt), block.B_norm(B), block.C_norm(C)
    delta = F.softplus(dt @ block.dt_proj.weight.T + block.dt_proj.bias)
    A = -torch.exp(block.A_log)
    h = torch.zeros(x.shape[0], d, n, dtype=x.dtype)
    ys = []
    for t in range(x.shape[1]):
        h = torch.exp(delta[:, t, :, None] * A) * h + (delta[:, t] * u[:, t])[..., None] * B[:, t, None, :]
        ys.append((h * C[:, t, None, :]).sum(-1) + block.D * u[:, t])
    y = torch.stack(ys, 1) * F.silu(z)
    return F.linear(y, block.out_proj.weight, block.out_proj.bias)


def mamba2_reference(block, x):
    """Dao & Gu 2024, written out step by step in float64 from the block's parameters."""
    d, H, P, G, N = block.d_inner, block.heads, block.head_dim, block.groups, block.d_state
    z, xbc, dt = torch.split(x @ block.in_proj.weight.T, [d, d + 2 * G * N, H], dim=-1)
    xbc = _causal_depthwise_conv(xbc, block.conv1d)
    xs, B, C = torch.split(xbc, [d, G * N, G * N], dim=-1)
    xs = xs.unflatten(-1, (H, P))
    B = B.unflatten(-1, (G, N)).repeat_interleave(H // G, dim=2)               # (batch, seqlen, H, N)
    C = C.unflatten(-1, (G, N)).repeat_interleave(H // G, dim=2)
    dt = F.softplus(dt + block.dt_bias).clamp(*block.dt_limit)
    A = -torch.exp(block.A_log)
    h = torch.zeros(x.shape[0], H, P, N, dtype=x.dtype)
    ys = []
    for t in range(x.shape[1]):
        h = torch.exp(dt[:, t] * A)[..., None, None] * h + (dt[:, t, :, None] * xs[:, t])[..., None] * B[:, t, :, None]
        ys.append((h * C[:, t, :, None, :]).sum(-1) + block.D[:, None] * xs[:, t])
    y = torch.stack(ys, 1).flatten(-2)
    g = (y * F.silu(z)).unflatten(-1, (G, d // G))
    g = (g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + block.norm.eps)).flatten(-2) * block.norm.weight
    return g @ block.out_proj.weight.T


def _blocks(dtype=torch.float64):
    torch.manual_seed(0)
    return {
        "mamba": MambaBlock(D_MODEL, d_state=5, dtype=dtype),
        "mamba_inner_norms": MambaBlock(D_MODEL, d_state=4, dt_rank=3, inner_norms=True, bias=True, dtype=dtype),
        "mamba2": Mamba2Block(D_MODEL, d_state=6, head_dim=6, chunk_size=4, dtype=dtype),
        "mamba2_groups": Mamba2Block(D_MODEL, d_state=4, head_dim=4, groups=2, chunk_size=5,
                                     dt_limit=(0.002, 0.5), dtype=dtype),
    }


BLOCKS = list(_blocks())


def _randomise_states(block):
    """Move A, D and the norms off their inits so the references check them (ones would hide a missing D or weight)."""
    with torch.no_grad():
        for name, p in block.named_parameters():
            if name in ("D", "norm.weight") or name.endswith("_norm.weight"):
                p.uniform_(0.5, 1.5)


def _block(name):
    block = _blocks()[name].double()
    _randomise_states(block)
    return block


@pytest.mark.parametrize("name", BLOCKS)
def test_forward_equals_the_sequential_reference_of_the_paper(name):
    block = _block(name)
    x = torch.randn(BATCH, SEQLEN, D_MODEL, dtype=torch.float64)
    reference = mamba2_reference if isinstance(block, Mamba2Block) else mamba_reference
    torch.testing.assert_close(block(x), reference(block, x), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", BLOCKS)
def test_decoding_token_by_token_reproduces_the_full_forward(name):
    block = _block(name)
    x = torch.randn(BATCH, SEQLEN, D_MODEL, dtype=torch.float64)
    with torch.no_grad():
        full = block(x)
        cache = block.allocate_cache(BATCH)
        steps = torch.stack([block.step(x[:, t], cache) for t in range(SEQLEN)], 1)
    assert cache.seqlen == SEQLEN
    torch.testing.assert_close(steps, full, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", BLOCKS)
@pytest.mark.parametrize("prompt", [1, 2, 9])
def test_prefill_then_steps_reproduces_the_full_forward(name, prompt):
    """Prompts shorter than, equal to and longer than the conv width (4): the conv state is padded or cut."""
    block = _block(name)
    x = torch.randn(BATCH, SEQLEN, D_MODEL, dtype=torch.float64)
    with torch.no_grad():
        full = block(x)
        cache = block.allocate_cache(BATCH)
        head = block(x[:, :prompt], cache)
        tail = torch.stack([block.step(x[:, t], cache) for t in range(prompt, SEQLEN)], 1)
    torch.testing.assert_close(torch.cat([head, tail], 1), full, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cls", [MambaBlock, Mamba2Block])
def test_float32_decode_matches_forward_and_keeps_float32_states(cls):
    torch.manual_seed(1)
    block = cls(16, d_state=8, head_dim=8) if cls is Mamba2Block else cls(16, d_state=8)
    x = torch.randn(2, 20, 16)
    with torch.no_grad():
        full = block(x)
        cache = block.allocate_cache(2)
        steps = torch.stack([block.step(x[:, t], cache) for t in range(20)], 1)
    assert cache.ssm_state.dtype == torch.float32 and cache.conv_state.dtype == torch.float32
    torch.testing.assert_close(steps, full, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", BLOCKS)
def test_output_at_t_does_not_depend_on_later_inputs(name):
    block = _block(name)
    x = torch.randn(BATCH, SEQLEN, D_MODEL, dtype=torch.float64)
    cut = 6
    changed = x.clone()
    changed[:, cut:] = torch.randn_like(changed[:, cut:]) * 3
    y, y2 = block(x), block(changed)
    torch.testing.assert_close(y[:, :cut], y2[:, :cut], rtol=0, atol=0)
    assert not torch.allclose(y[:, cut:], y2[:, cut:])


@pytest.mark.parametrize("name", BLOCKS)
def test_gradients_are_finite_and_nonzero_on_every_parameter(name):
    block = _blocks(torch.float32)[name]
    x = torch.randn(BATCH, SEQLEN, D_MODEL, requires_grad=True)
    (block(x) ** 2).sum().backward()
    for pname, p in list(block.named_parameters()) + [("input", x)]:
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


def test_mamba_inits_follow_the_paper():
    torch.manual_seed(0)
    block = MambaBlock(64, d_state=16, dt_min=0.001, dt_max=0.1)
    assert block.d_inner == 128 and block.dt_rank == 4                      # expand 2, ceil(64 / 16)
    torch.testing.assert_close(-torch.exp(block.A_log), -torch.arange(1, 17.0).repeat(128, 1))  # S4D-real
    torch.testing.assert_close(block.D, torch.ones(128))
    dt = F.softplus(block.dt_proj.bias)
    assert dt.min() >= 0.001 * (1 - 1e-5) and dt.max() <= 0.1 * (1 + 1e-5)
    # log-uniform: the log of dt spreads over the whole [log dt_min, log dt_max] range
    assert torch.log(dt).min() < math.log(0.003) and torch.log(dt).max() > math.log(0.03)
    assert block.dt_proj.weight.abs().max() <= 4 ** -0.5
    assert block.A_log.dtype == torch.float32 and block.D.dtype == torch.float32


def test_mamba2_inits_follow_the_paper():
    torch.manual_seed(0)
    block = Mamba2Block(64, d_state=16, head_dim=16, A_init_range=(1, 16))
    assert block.heads == 8 and block.conv_channels == 128 + 2 * 16
    A = -torch.exp(block.A_log)
    assert A.shape == (8,) and (A <= -1).all() and (A >= -16).all()
    dt = F.softplus(block.dt_bias)
    assert dt.min() >= 0.001 * (1 - 1e-5) and dt.max() <= 0.1 * (1 + 1e-5)
    torch.testing.assert_close(block.D, torch.ones(8))
    assert block.in_proj.weight.shape == (128 + 160 + 8, 64)                 # z, xBC, dt


def test_gated_rmsnorm_normalises_each_group_after_the_gate():
    norm = GatedRMSNorm(8, group_size=4, eps=0.0).double()
    y, z = torch.randn(3, 8, dtype=torch.float64), torch.randn(3, 8, dtype=torch.float64)
    out = norm(y, z)
    g = y * F.silu(z)
    for s in (slice(0, 4), slice(4, 8)):
        torch.testing.assert_close(out[:, s], g[:, s] / g[:, s].pow(2).mean(-1, keepdim=True).sqrt())


def test_meta_device_builds_without_memory():
    block = Mamba2Block(1024, d_state=128, device="meta")
    assert block.in_proj.weight.is_meta and block.A_log.is_meta
    assert MambaBlock(1024, device="meta").dt_proj.bias.is_meta


@pytest.mark.parametrize("cls", [MambaBlock, Mamba2Block])
def test_bad_inputs_raise_named_errors(cls):
    block = cls(8, d_state=4, head_dim=4) if cls is Mamba2Block else cls(8, d_state=4)
    with pytest.raises(ShapeError, match="d_model=8"):
        block(torch.randn(2, 5, 6))
    with pytest.raises(ShapeError, match="batch, seqlen"):
        block(torch.randn(5, 8))
    with pytest.raises(DTypeError):
        block(torch.ones(2, 5, 8, dtype=torch.int64))
    cache = block.allocate_cache(2)
    with pytest.raises(ShapeError, match="one token per row"):
        block.step(torch.randn(2, 1, 8), cache)
    with pytest.raises(ShapeError, match="allocate_cache"):
        block.step(torch.randn(3, 8), cache)
    with torch.no_grad():
        block(torch.randn(2, 3, 8), cache)
        with pytest.raises(InvalidInput, match="step"):
            block(torch.randn(2, 3, 8), cache)
    with pytest.raises(ShapeError, match="allocate_cache"):
        block(torch.randn(3, 3, 8), block.allocate_cache(2))


def test_bad_configurations_raise_named_errors():
    with pytest.raises(InvalidInput, match="head_dim=5 must divide"):
        Mamba2Block(8, head_dim=5)
    with pytest.raises(InvalidInput, match="groups=3 must divide"):
        Mamba2Block(8, head_dim=4, groups=3)
    with pytest.raises(InvalidInput, match="d_state"):
        MambaBlock(8, d_state=0)
    with pytest.raises(InvalidInput, match="dt_min"):
        MambaBlock(8, dt_min=0.1, dt_max=0.01)
    with pytest.raises(InvalidInput, match="A_init_range"):
        Mamba2Block(8, head_dim=4, A_init_range=(0, 4))
    with pytest.raises(InvalidInput, match="dt_rank"):
        MambaBlock(8, dt_rank="big")
