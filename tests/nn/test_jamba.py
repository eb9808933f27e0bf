"""hal.nn.moe and hal.nn.jamba: MoE routing and its load-balancing loss, attention (GQA, rotary, KV cache), the
Jamba stack's layer pattern, causality, decode == full forward, gradients, parameter counts (the 1B configuration
on the meta device against a per-layer formula), bad input."""

import dataclasses
import os

import pytest
import torch
import torch.nn.functional as F
from router_stub import FixedRouter

from hal.errors import CapacityExceeded, DTypeError, InvalidInput, ShapeError
from hal.nn.jamba import JAMBA_1B, CausalSelfAttention, Jamba, JambaConfig
from hal.nn.moe import MoE, Routing, TopKRouter, load_balancing_loss


# ------------------------------------------------------------------------------------------------------------ MoE
def test_moe_computes_each_token_with_exactly_its_routed_experts():
    torch.manual_seed(0)
    moe = MoE(8, 16, experts=4, top_k=2).double()
    x = torch.randn(6, 8, dtype=torch.float64)
    indices = torch.tensor([[0, 1], [3, 2], [2, 0], [1, 3], [0, 3], [2, 1]])
    weights = torch.rand(6, 2, dtype=torch.float64)
    moe.router = FixedRouter(Routing(weights, indices, torch.full((6, 4), 0.25, dtype=torch.float64)))
    y, _ = moe(x)
    expected = torch.stack([sum(weights[t, j] * moe.experts[int(indices[t, j])](x[t]) for j in range(2))
                            for t in range(6)])
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)


def test_router_weights_renormalise_for_top_k_and_stay_raw_for_top_1():
    torch.manual_seed(0)
    x = torch.randn(10, 8)
    top2 = TopKRouter(8, 4, top_k=2)
    r = top2(x)
    torch.testing.assert_close(r.weights.sum(-1), torch.ones(10))
    torch.testing.assert_close(r.indices, r.probs.topk(2, dim=-1).indices)
    top1 = TopKRouter(8, 4, top_k=1)
    r1 = top1(x)
    torch.testing.assert_close(r1.weights[:, 0], r1.probs.max(-1).values)      # Switch: the raw probability
    assert r1.probs.dtype == torch.float32


def test_load_balancing_loss_is_one_when_balanced_and_e_when_collapsed():
    uniform = torch.full((8, 4), 0.25)
    balanced = Routing(torch.ones(8, 1), torch.arange(8)[:, None] % 4, uniform)
    assert load_balancing_loss(balanced).item() == pytest.approx(1.0)
    collapsed = Routing(torch.ones(8, 1), torch.zeros(8, 1, dtype=torch.long),
                        torch.tensor([[1.0, 0, 0, 0]]).repeat(8, 1))
    assert load_balancing_loss(collapsed).item() == pytest.approx(4.0)      # E * f_0 * P_0 = 4 * 1 * 1


def test_moe_aux_loss_reaches_the_router_and_the_experts_get_gradients():
    torch.manual_seed(0)
    moe = MoE(8, 16, experts=4, top_k=2)
    y, aux = moe(torch.randn(2, 32, 8))
    assert y.shape == (2, 32, 8) and aux.dim() == 0 and aux.item() >= 1.0 - 1e-6
    (y.pow(2).sum() + aux).backward()
    for name, p in moe.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_moe_is_dropless_a_collapsed_router_still_computes_every_token():
    torch.manual_seed(0)
    moe = MoE(8, 16, experts=4, top_k=1).double()
    x = torch.randn(20, 8, dtype=torch.float64)
    probs = torch.tensor([[0.7, 0.1, 0.1, 0.1]], dtype=torch.float64).repeat(20, 1)
    moe.router = FixedRouter(Routing(probs[:, :1], torch.zeros(20, 1, dtype=torch.long), probs))
    y, aux = moe(x)
    torch.testing.assert_close(y, 0.7 * moe.experts[0](x))
    assert aux.item() == pytest.approx(4 * 0.7)


def test_moe_bad_inputs():
    with pytest.raises(InvalidInput, match="top_k"):
        MoE(8, 16, experts=2, top_k=3)
    with pytest.raises(InvalidInput, match="experts"):
        MoE(8, 16, experts=0, top_k=1)
    with pytest.raises(ShapeError, match="d_model=8"):
        MoE(8, 16, experts=2, top_k=1)(torch.randn(3, 7))


# ------------------------------------------------------------------------------------------------------ attention
def test_gqa_equals_multi_head_attention_with_repeated_kv_heads():
    torch.manual_seed(0)
    gqa = CausalSelfAttention(16, heads=4, kv_heads=2).double()
    mha = CausalSelfAttention(16, heads=4).double()
    with torch.no_grad():
        mha.q_proj.weight.copy_(gqa.q_proj.weight)
        mha.out_proj.weight.copy_(gqa.out_proj.weight)
        for name in ("k_proj", "v_proj"):
            w = getattr(gqa, name).weight.unflatten(0, (2, 4)).repeat_interleave(2, dim=0).flatten(0, 1)
            getattr(mha, name).weight.copy_(w)
    x = torch.randn(2, 9, 16, dtype=torch.float64)
    torch.testing.assert_close(gqa(x), mha(x))


def test_attention_matches_a_dense_masked_softmax():
    torch.manual_seed(0)
    attn = CausalSelfAttention(8, heads=2).double()
    x = torch.randn(1, 6, 8, dtype=torch.float64)
    q, k, v = (getattr(attn, f"{n}_proj")(x).unflatten(-1, (2, 4)).transpose(1, 2) for n in "qkv")
    scores = q @ k.transpose(-1, -2) / 2.0
    scores = scores.masked_fill(torch.ones(6, 6, dtype=torch.bool).triu(1), float("-inf"))
    expected = attn.out_proj((scores.softmax(-1) @ v).transpose(1, 2).flatten(2))
    torch.testing.assert_close(attn(x), expected)


@pytest.mark.parametrize("rotary", [False, True])
def test_attention_decode_equals_forward_and_rotary_is_relative(rotary):
    torch.manual_seed(0)
    attn = CausalSelfAttention(16, heads=4, kv_heads=1, rotary=rotary).double()
    x = torch.randn(2, 10, 16, dtype=torch.float64)
    with torch.no_grad():
        full = attn(x)
        cache = attn.allocate_cache(2, max_seqlen=10)
        head = attn(x[:, :3], cache)
        tail = torch.stack([attn.step(x[:, t], cache) for t in range(3, 10)], 1)
    torch.testing.assert_close(torch.cat([head, tail], 1), full)
    if rotary:  # scores depend on q_idx - kv_idx only: one query against one key gives the same score at any offset
        q = attn.q_proj(x[:, :1]).unflatten(-1, (4, 4)).transpose(1, 2)
        k = attn.k_proj(x[:, 1:2]).unflatten(-1, (1, 4)).transpose(1, 2)
        from hal.nn.jamba import apply_rotary
        s0 = (apply_rotary(q, 5, 1e4) * apply_rotary(k, 2, 1e4)).sum(-1)
        s1 = (apply_rotary(q, 11, 1e4) * apply_rotary(k, 8, 1e4)).sum(-1)
        torch.testing.assert_close(s0, s1)


def test_kv_cache_overflow_and_bad_heads_raise():
    attn = CausalSelfAttention(8, heads=2)
    cache = attn.allocate_cache(1, max_seqlen=2)
    with torch.no_grad():
        attn(torch.randn(1, 2, 8), cache)
        with pytest.raises(CapacityExceeded, match="max_seqlen=3"):
            attn.step(torch.randn(1, 8), cache)
    with pytest.raises(InvalidInput, match="kv_heads"):
        CausalSelfAttention(8, heads=4, kv_heads=3)
    with pytest.raises(InvalidInput, match="heads"):
        CausalSelfAttention(8, heads=3)
    with pytest.raises(InvalidInput, match="max_seqlen"):
        attn.allocate_cache(1)


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="the hal attention kernel runs on a CPU only "
                    "in Triton's interpreter (set TRITON_INTERPRET=1)")
def test_hal_attention_kernel_agrees_with_sdpa():
    pytest.importorskip("triton")
    torch.manual_seed(0)
    hal_attn = CausalSelfAttention(64, heads=2, kv_heads=1, backend="hal", dtype=torch.bfloat16)
    sdpa = CausalSelfAttention(64, heads=2, kv_heads=1, backend="sdpa", dtype=torch.bfloat16)
    sdpa.load_state_dict(hal_attn.state_dict())
    x = torch.randn(1, 40, 64, dtype=torch.bfloat16)
    torch.testing.assert_close(hal_attn(x).float(), sdpa(x).float(), rtol=2e-2, atol=2e-2)


# ---------------------------------------------------------------------------------------------------------- Jamba
def _small(**overrides):
    torch.manual_seed(0)
    fields = dict(vocab_size=50, d_model=16, layers=4, attention_every=4, attention_offset=2, moe_every=2,
                  experts=4, top_k=2, d_ffn=24, heads=2, kv_heads=1, d_state=4)
    fields.update(overrides)
    return Jamba(**fields)


def test_default_layer_pattern_is_jamba_v0_1():
    plan = JambaConfig(vocab_size=10, d_model=16, layers=16).layer_plan()
    assert [i for i, (m, _) in enumerate(plan) if m == "attention"] == [4, 12]
    assert [i for i, (_, mlp) in enumerate(plan) if mlp == "moe"] == list(range(1, 16, 2))
    model = _small()
    assert len(model.blocks) == 1 and len(model.layers) == 4
    assert [type(layer.mixer).__name__ for layer in model.layers] == ["MambaBlock", "MambaBlock",
                                                                       "CausalSelfAttention", "MambaBlock"]
    assert [type(layer.mlp).__name__ for layer in model.layers] == ["SwiGLU", "MoE", "SwiGLU", "MoE"]


@pytest.mark.parametrize("ssm", ["mamba", "mamba2"])
def test_jamba_logits_are_causal_and_decode_equals_the_full_forward(ssm):
    model = _small(ssm=ssm, ssm_head_dim=8, chunk_size=4, rotary=True).double()
    tokens = torch.randint(0, 50, (2, 11))
    with torch.no_grad():
        out = model(tokens)
        assert out.logits.shape == (2, 11, 50) and out.aux_loss.dim() == 0
        changed = tokens.clone()
        changed[:, 6:] = (changed[:, 6:] + 7) % 50
        torch.testing.assert_close(model(changed).logits[:, :6], out.logits[:, :6], rtol=0, atol=0)
        cache = model.allocate_cache(2, max_seqlen=11)
        head = model(tokens[:, :4], cache).logits
        tail = torch.stack([model.step(tokens[:, t], cache) for t in range(4, 11)], 1)
    assert cache.seqlen == 11
    torch.testing.assert_close(torch.cat([head, tail], 1), out.logits, rtol=1e-9, atol=1e-10)


def test_generate_greedy_equals_repeated_full_forward_argmax():
    model = _small().double()
    prompt = torch.randint(0, 50, (2, 3))
    generated = model.generate(prompt, max_new_tokens=5)
    assert generated.shape == (2, 8) and torch.equal(generated[:, :3], prompt)
    seq = prompt
    with torch.no_grad():
        for _ in range(5):
            seq = torch.cat([seq, model(seq).logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(generated, seq)


def test_jamba_gradients_reach_every_parameter():
    model = _small()
    tokens = torch.randint(0, 50, (4, 16))
    out = model(tokens)
    loss = F.cross_entropy(out.logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten()) + 0.01 * out.aux_loss
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_no_attention_no_moe_and_no_mlp_stacks():
    mamba_only = _small(attention_every=None, moe_every=None)
    assert {type(layer.mixer).__name__ for layer in mamba_only.layers} == {"MambaBlock"}
    assert float(mamba_only(torch.randint(0, 50, (1, 5))).aux_loss) == 0.0
    attention_only = _small(attention_every=1, attention_offset=None, mlp=False)
    assert all(layer.mlp is None for layer in attention_only.layers)
    assert {type(layer.mixer).__name__ for layer in attention_only.layers} == {"CausalSelfAttention"}


def _expected_parameters(c: JambaConfig) -> tuple[int, int]:
    """Total and active parameters of a Jamba config, counted per layer from the block definitions."""
    d, di, n = c.d_model, c.expand * c.d_model, c.d_state
    r = -(-d // 16)
    mamba = (d * 2 * di + di * c.d_conv + di + di * (r + 2 * n) + r * di + di + di * n + di + di * d
             + (r + 2 * n if c.mamba_inner_norms else 0))
    hd = d // c.heads
    kv = c.heads if c.kv_heads is None else c.kv_heads
    attention = 2 * d * c.heads * hd + 2 * d * kv * hd
    swiglu = 3 * d * c.d_ffn
    total = active = 0
    for mixer, mlp in c.layer_plan():
        layer = (attention if mixer == "attention" else mamba) + 2 * d
        total += layer + (swiglu if mlp == "dense" else c.experts * swiglu + d * c.experts)
        active += layer + (swiglu if mlp == "dense" else c.top_k * swiglu + d * c.experts)
    embeddings = c.vocab_size * d * (1 if c.tie_embeddings else 2) + d
    return total + embeddings, active + embeddings


def test_the_1b_configuration_builds_on_the_meta_device_with_the_expected_count():
    model = Jamba(JAMBA_1B, device="meta")
    assert all(p.is_meta for p in model.parameters())
    total, active = _expected_parameters(JAMBA_1B)
    assert model.num_parameters() == total == 978_530_496
    assert model.num_parameters(active=True) == active == 676_540_608
    assert 0.95e9 < total < 1.05e9


def test_small_config_parameter_count_matches_the_formula_untied():
    config = dataclasses.replace(_small().config, tie_embeddings=False, mamba_inner_norms=False)
    assert Jamba(config).num_parameters() == _expected_parameters(config)[0]


def test_jamba_bad_inputs_and_configs_raise_named_errors():
    model = _small()
    with pytest.raises(InvalidInput, match="vocab_size=50"):
        model(torch.tensor([[1, 50]]))
    with pytest.raises(DTypeError):
        model(torch.rand(1, 4))
    with pytest.raises(ShapeError):
        model(torch.tensor([1, 2]))
    with pytest.raises(InvalidInput, match="top_k=3 exceeds experts=2"):
        JambaConfig(vocab_size=10, d_model=16, layers=8, experts=2, top_k=3)
    with pytest.raises(InvalidInput, match="multiple of attention_every"):
        JambaConfig(vocab_size=10, d_model=16, layers=6, attention_every=4)
    with pytest.raises(InvalidInput, match="ssm"):
        JambaConfig(vocab_size=10, d_model=16, layers=8, ssm="s4")
    with pytest.raises(InvalidInput, match="heads"):
        _small(heads=3)
    with pytest.raises(InvalidInput, match="either a JambaConfig"):
        Jamba(JAMBA_1B, layers=2)
    cache = model.allocate_cache(1, 4)
    with torch.no_grad():
        model(torch.tensor([[1, 2]]), cache)
        with pytest.raises(InvalidInput, match="step"):
            model(torch.tensor([[1, 2]]), cache)
