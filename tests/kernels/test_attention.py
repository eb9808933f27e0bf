"""Tests of hal.kernels.attention: every pattern and score mod vs a float64 reference from the explicit mask.

On a CPU the kernels run in Triton's interpreter at small sizes (S <= 128, D = 16/32/64); that needs
TRITON_INTERPRET=1 before triton is first imported, which this module sets when it is imported first (otherwise the
kernel tests skip and say so). Tests marked ``gpu`` run the same checks at full sizes on a CUDA GPU (pytest -m gpu).
"""

import os

import pytest
import torch

CUDA = torch.cuda.is_available()  # without one, conftest.py has switched Triton's interpreter on

from hal.kernels.attention import PatternError, attention_reference, compile_attention, dense_mask, patterns
from hal.kernels.attention.blockmap import EMPTY, FULL, PARTIAL, build_block_map
from hal.kernels.attention.expr import d_dscore, evaluate

needs_kernel = pytest.mark.skipif(
    not (CUDA or os.environ.get("TRITON_INTERPRET") == "1"),
    reason="no CUDA GPU, and triton was imported before this module could set TRITON_INTERPRET=1 "
           "(run: TRITON_INTERPRET=1 pytest tests/kernels/test_attention.py)")
DEVICE = "cuda" if CUDA else "cpu"
BF16_TOL = 1e-2


def rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def check_against_reference(pattern, score_mod=None, *, b=1, h=2, h_kv=1, s=96, s_kv=None, d=32,
                            dtype=torch.bfloat16, seed=0, mask_mod=None, use_lse=False):
    """Forward, lse and gradients of the kernel vs the float64 reference; returns the kernel output."""
    s_kv = s if s_kv is None else s_kv
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    q = torch.randn(b, h, s, d, generator=g, device=DEVICE).to(dtype).requires_grad_()
    k = torch.randn(b, h_kv, s_kv, d, generator=g, device=DEVICE).to(dtype).requires_grad_()
    v = torch.randn(b, h_kv, s_kv, d, generator=g, device=DEVICE).to(dtype).requires_grad_()
    do = torch.randn(b, h, s, d, generator=g, device=DEVICE).to(dtype)
    dl = torch.randn(b, h, s, generator=g, device=DEVICE)
    # one tile config (no autotuning): correctness does not depend on the choice, and it saves compilations
    attn = compile_attention(pattern, mask_mod=mask_mod, score_mod=score_mod, head_dim=d, dtype=dtype, autotune=False)
    out, lse = attn(q, k, v, return_lse=True)
    ref, ref_lse = attention_reference(q, k, v, mask_mod if mask_mod is not None else pattern, score_mod)
    assert out.shape == q.shape and out.dtype == dtype
    assert not torch.isnan(out).any() and not torch.isnan(lse).any()
    assert rel(out, ref) < BF16_TOL
    finite = torch.isfinite(ref_lse)
    assert torch.equal(torch.isfinite(lse), finite)
    assert (lse[finite].double() - ref_lse[finite]).abs().max() < 2e-2
    loss, ref_loss = (out * do).sum(), (ref * do.double()).sum()
    if use_lse:
        loss = loss + (torch.where(finite, lse, 0.0) * dl).sum()
        ref_loss = ref_loss + (torch.where(finite, ref_lse, 0.0) * dl.double()).sum()
    grads = torch.autograd.grad(loss, (q, k, v))
    ref_grads = torch.autograd.grad(ref_loss, (q, k, v))
    for name, gr, rg in zip("qkv", grads, ref_grads):
        assert not torch.isnan(gr).any(), f"NaN in d{name}"
        assert rel(gr, rg) < BF16_TOL, f"d{name}: {rel(gr, rg)}"
    return out


def layout(nq, nk, seed=3):
    g = torch.Generator().manual_seed(seed)
    lay = torch.rand(nq, nk, generator=g) < 0.4
    lay |= torch.eye(nq, nk, dtype=torch.bool)
    return lay


PATTERNS = {
    "full": lambda: patterns.full(),
    "causal": lambda: patterns.causal(),
    "sliding_window": lambda: patterns.sliding_window(20),
    "causal_window": lambda: patterns.sliding_window(24, causal=True),
    "window_and_causal": lambda: patterns.sliding_window(24) & patterns.causal(),
    "dilated": lambda: patterns.dilated(3),
    "dilated_causal": lambda: patterns.dilated(2) & patterns.causal(),
    "global_local": lambda: patterns.global_local(8, 16),
    "prefix_lm": lambda: patterns.prefix_lm(40),
    "document": lambda: patterns.document([10, 50, 36]),
    "document_causal": lambda: patterns.document([33, 31, 32]) & patterns.causal(),
    "block_sparse": lambda: patterns.block_sparse(layout(6, 6), 16),
    "block_sparse_per_head": lambda: patterns.block_sparse(torch.stack([layout(6, 6, 1), layout(6, 6, 2)]), 16),
    "union": lambda: patterns.causal() | patterns.dilated(4),
}


# ------------------------------------------------------------------------------------------- patterns in torch

def test_patterns_match_hand_written_masks():
    s = 96
    q = torch.arange(s)[:, None]
    kv = torch.arange(s)[None, :]
    doc = torch.tensor([0] * 10 + [1] * 50 + [2] * 36)
    expected = {
        "full": torch.ones(s, s, dtype=torch.bool),
        "causal": q >= kv,
        "sliding_window": (q - kv).abs() < 20,
        "causal_window": (q - kv >= 0) & (q - kv < 24),
        "window_and_causal": (q - kv >= 0) & (q - kv < 24),
        "dilated": (q - kv) % 3 == 0,
        "global_local": ((q - kv).abs() < 16) | (q < 8) | (kv < 8),
        "prefix_lm": (kv < 40) | (q >= kv),
        "document": doc[:, None] == doc[None, :],
        "block_sparse": layout(6, 6).repeat_interleave(16, 0).repeat_interleave(16, 1),
        "union": (q >= kv) | ((q - kv) % 4 == 0),
    }
    for name, mask in expected.items():
        got = dense_mask(PATTERNS[name](), 1, 1, s, s)[0, 0]
        assert torch.equal(got, mask), name
    per_head = dense_mask(PATTERNS["block_sparse_per_head"](), 1, 2, s, s)[0]
    assert torch.equal(per_head[1], layout(6, 6, 2).repeat_interleave(16, 0).repeat_interleave(16, 1))


def test_patterns_are_cached_by_structure_not_identity():
    assert compile_attention(patterns.causal(), head_dim=32, dtype=torch.float16) is \
        compile_attention(patterns.causal(), head_dim=32, dtype=torch.float16)
    a = compile_attention(mask_mod=lambda b, h, q, kv: q - kv < 7, head_dim=32, dtype=torch.float16)
    b = compile_attention(mask_mod=lambda b, h, q, kv: q - kv < 7, head_dim=32, dtype=torch.float16)
    c = compile_attention(mask_mod=lambda b, h, q, kv: q - kv < 8, head_dim=32, dtype=torch.float16)
    assert a is b and a is not c
    assert patterns.document([3, 4]).key() != patterns.document([4, 3]).key()
    assert (patterns.causal() & patterns.dilated(2)).key() == (patterns.causal() & patterns.dilated(2)).key()


def test_unsupported_mask_mod_operation_is_named():
    with pytest.raises(PatternError, match="sin"):
        compile_attention(mask_mod=lambda b, h, q, kv: torch.sin(q) > 0, head_dim=32, dtype=torch.bfloat16)
    with pytest.raises(PatternError, match="control flow"):
        compile_attention(mask_mod=lambda b, h, q, kv: max(kv, q), head_dim=32, dtype=torch.bfloat16)
    with pytest.raises(PatternError, match="boolean"):
        patterns.Pattern(patterns.Q + 1)


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(PatternError, match="positive"):
        patterns.sliding_window(0)
    with pytest.raises(ValueError, match="head_dim"):
        compile_attention(patterns.causal(), head_dim=96, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="dtype"):
        compile_attention(patterns.causal(), head_dim=64, dtype=torch.float32)
    with pytest.raises(PatternError, match="table"):
        patterns.relative_bias(torch.zeros(2, 5), max_distance=3)


def test_score_mod_derivatives_match_autograd():
    s = torch.linspace(-6, 6, 41, dtype=torch.float64, requires_grad=True)
    env = {"score": s, "b": torch.tensor(0), "h": torch.tensor(1), "q_idx": torch.arange(41), "kv_idx": torch.tensor(3)}
    mods = [patterns.softcap(2.5), patterns.temperature(0.7), patterns.alibi(4),
            patterns.softcap(4.0) >> patterns.temperature(2.0),
            patterns.from_score_mod(lambda x, b, h, q, kv: torch.where(q > kv, torch.exp(x / 8), x * x))]
    for mod in mods:
        value = evaluate(mod.score, env, [t.double() for t in mod.tensors])
        (grad,) = torch.autograd.grad(value.sum(), s)
        ours = torch.as_tensor(evaluate(d_dscore(mod.score), env, mod.tensors), dtype=torch.float64).expand(41)
        assert torch.allclose(ours, grad, atol=1e-9), mod.name


# ------------------------------------------------------------------------------------------- block maps

def test_block_map_states_match_brute_force():
    pattern = patterns.sliding_window(40) & patterns.causal()
    s, bm_, bn_ = 200, 32, 16
    bm = build_block_map(pattern, 1, 1, s, s, bm_, bn_, torch.device("cpu"))
    mask = torch.zeros(7 * bm_, 13 * bn_, dtype=torch.bool)
    mask[:s, :s] = dense_mask(pattern, 1, 1, s, s)[0, 0]
    tiles = mask.view(7, bm_, 13, bn_).permute(0, 2, 1, 3).reshape(7, 13, -1)
    expected = torch.where(tiles.all(-1), FULL, torch.where(tiles.any(-1), PARTIAL, EMPTY))
    assert torch.equal(bm.states[0, 0].long(), expected)
    lists = bm.by_query
    for r in range(7):
        n = int(lists.partial_count[0, 0, r])
        assert sorted(lists.partial_index[0, 0, r, :n].tolist()) == (expected[r] == PARTIAL).nonzero().flatten().tolist()
        n = int(lists.full_count[0, 0, r])
        assert sorted(lists.full_index[0, 0, r, :n].tolist()) == (expected[r] == FULL).nonzero().flatten().tolist()


def test_sliding_window_cost_is_linear_in_sequence_length():
    pattern = patterns.sliding_window(64) & patterns.causal()
    visited = []
    for s in (1024, 2048, 4096):
        bm = build_block_map(pattern, 1, 1, s, s, 64, 64, torch.device("cpu"))
        visited.append(int((bm.states != EMPTY).sum()))
    # window 64 with 64-wide tiles: each query tile visits its diagonal tile and the one before it
    assert visited == [2 * (s // 64) - 1 for s in (1024, 2048, 4096)]


def test_document_pattern_rejects_wrong_sequence_length():
    pattern = patterns.document([10, 20])
    with pytest.raises(PatternError, match="does not fit"):
        build_block_map(pattern, 1, 1, 64, 64, 32, 32, torch.device("cpu"))


# ------------------------------------------------------------------------------------------- kernels (interpreter)

@needs_kernel
@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_pattern_forward_and_gradients(name):
    dtype = torch.bfloat16 if len(name) % 2 else torch.float16
    check_against_reference(PATTERNS[name](), dtype=dtype, seed=len(name))


@needs_kernel
@pytest.mark.parametrize("mod", ["alibi", "relative_bias", "softcap", "temperature", "chain"])
def test_score_mods_forward_and_gradients(mod):
    table = torch.randn(2, 2 * 12 + 1, generator=torch.Generator().manual_seed(5))
    score_mod = {"alibi": patterns.alibi(2), "relative_bias": patterns.relative_bias(table, 12),
                 "softcap": patterns.softcap(3.0), "temperature": patterns.temperature(0.5),
                 "chain": patterns.alibi(2) >> patterns.softcap(5.0)}[mod]
    check_against_reference(patterns.causal(), score_mod, seed=11)


@needs_kernel
def test_flex_style_callables_with_captured_tensor():
    doc = torch.tensor([0] * 30 + [1] * 34 + [2] * 32)
    bias = torch.randn(2, generator=torch.Generator().manual_seed(2))

    def mask_mod(b, h, q_idx, kv_idx):
        return (doc[q_idx] == doc[kv_idx]) & (q_idx >= kv_idx)

    def score_mod(score, b, h, q_idx, kv_idx):
        return torch.tanh(score / 4) * 4 + bias[h] - torch.abs(q_idx - kv_idx) / 32

    check_against_reference(None, score_mod, mask_mod=mask_mod, seed=4)


@needs_kernel
def test_batch_and_head_dependent_mask():
    # batch 1 is dense, batch 0 causal; head 1 additionally sees only even distances
    pattern = patterns.from_mask_mod(lambda b, h, q, kv: ((q >= kv) | (b == 1)) & (((q - kv) % 2 == 0) | (h == 0)))
    check_against_reference(pattern, b=2, h=2, h_kv=2, s=64, d=16, dtype=torch.float16, seed=17)


@needs_kernel
@pytest.mark.parametrize("h,h_kv", [(4, 1), (4, 2), (2, 2)])
def test_gqa_mqa(h, h_kv):
    check_against_reference(patterns.causal(), h=h, h_kv=h_kv, b=2, s=64, d=16, seed=h * 10 + h_kv)


@needs_kernel
def test_rows_with_every_key_masked_give_zeros_and_no_nan():
    # queries 0..39 see nothing; the others see a causal window
    pattern = patterns.from_mask_mod(lambda b, h, q, kv: (q >= 40) & (q >= kv) & (q - kv < 30))
    out = check_against_reference(pattern, s=80, d=32, dtype=torch.float16, seed=9, use_lse=True)
    assert torch.count_nonzero(out[:, :, :40]) == 0
    assert torch.count_nonzero(out[:, :, 40:]) > 0


@needs_kernel
def test_lse_gradient_and_uneven_lengths():
    check_against_reference(patterns.prefix_lm(20), s=72, s_kv=100, d=64, seed=13, use_lse=True)


@needs_kernel
@pytest.mark.parametrize("use_tma,warp_specialize,single_loop", [(True, False, False), (True, True, False),
                                                                 (False, False, True)])
def test_forward_variants(use_tma, warp_specialize, single_loop):
    # the Hopper TMA variant reads K/V of all heads as one (B*H_kv*S, D) matrix: S = 80 makes tiles cross heads
    from hal.kernels.attention.configs import TileConfig
    pattern = patterns.sliding_window(20) & patterns.causal()
    attn = compile_attention(pattern, head_dim=32, dtype=torch.float16, autotune=False)
    g = torch.Generator(device=DEVICE).manual_seed(21)
    q = torch.randn(2, 2, 80, 32, generator=g, device=DEVICE).half()
    k = torch.randn(2, 1, 80, 32, generator=g, device=DEVICE).half()
    v = torch.randn(2, 1, 80, 32, generator=g, device=DEVICE).half()
    out, _ = attn.forward(q, k, v, 32 ** -0.5, TileConfig(32, 16, 4, 1, use_tma, warp_specialize, single_loop))
    ref, _ = attention_reference(q, k, v, pattern)
    assert rel(out, ref) < BF16_TOL


@needs_kernel
def test_wrong_inputs_are_refused():
    attn = compile_attention(patterns.causal(), head_dim=32, dtype=torch.float16)
    q = torch.randn(1, 3, 32, 32, dtype=torch.float16)
    k = torch.randn(1, 2, 32, 32, dtype=torch.float16)
    with pytest.raises(ValueError, match="divide"):
        attn(q, k, k)
    with pytest.raises(ValueError, match="compiled for"):
        attn(q.float(), k, k)


# ------------------------------------------------------------------------------------------- GPU, full sizes

@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("name,d,dtype", [("causal", 128, torch.bfloat16), ("window_and_causal", 64, torch.float16),
                                          ("document_causal", 128, torch.bfloat16), ("dilated_causal", 256, torch.bfloat16),
                                          ("prefix_lm", 128, torch.float16), ("global_local", 128, torch.bfloat16)])
def test_gpu_full_size(name, d, dtype):
    s = 2048
    pattern = {"causal": patterns.causal(),
               "window_and_causal": patterns.sliding_window(256) & patterns.causal(),
               "document_causal": patterns.document([300, 1000, 748]) & patterns.causal(),
               "dilated_causal": patterns.dilated(2) & patterns.causal(),
               "prefix_lm": patterns.prefix_lm(512),
               "global_local": patterns.global_local(64, 128)}[name]
    check_against_reference(pattern, b=2, h=4, h_kv=2, s=s, d=d, dtype=dtype, seed=d)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_gpu_score_mods_full_size():
    table = torch.randn(4, 2 * 64 + 1)
    check_against_reference(patterns.causal(), patterns.relative_bias(table, 64) >> patterns.softcap(20.0),
                            b=1, h=4, h_kv=1, s=1024, d=128, seed=1)
    check_against_reference(patterns.sliding_window(200), patterns.alibi(4), b=1, h=4, h_kv=4, s=1536, d=128,
                            seed=2, use_lse=True)


# ------------------------------------------------------------------------------------------- GPU, Gluon forward

HOPPER = CUDA and torch.cuda.get_device_capability()[0] == 9
GLUON_CONFIGS = {"128x128 2 stages": (128, 128, 8, 2), "128x128 3 stages": (128, 128, 8, 3),
                 "128x64 3 stages": (128, 64, 8, 3), "64x64 4 warps": (64, 64, 4, 2),
                 "ping-pong 128x128 2 stages": (128, 128, 4, 2, False, True),
                 "ping-pong 128x128 3 stages": (128, 128, 4, 3, False, True)}


def gluon_forward_error(pattern, config, *, score_mod=None, b=2, h=4, h_kv=2, s=1000, s_kv=None, d=128,
                        dtype=torch.bfloat16, seed=0):
    """Relative error of the Gluon forward (out, lse) vs the float64 reference; the output is poisoned first."""
    from hal.kernels.attention.configs import TileConfig
    s_kv = s if s_kv is None else s_kv
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    q = torch.randn(b, h, s, d, generator=g, device=DEVICE).to(dtype)
    k = torch.randn(b, h_kv, s_kv, d, generator=g, device=DEVICE).to(dtype)
    v = torch.randn(b, h_kv, s_kv, d, generator=g, device=DEVICE).to(dtype)
    attn = compile_attention(pattern, score_mod=score_mod, head_dim=d, dtype=dtype, autotune=False)
    poison = torch.full_like(q, float("nan"))  # freed: the kernel's output allocation reuses this block
    del poison
    out, lse = attn.forward(q, k, v, d ** -0.5, TileConfig(*config, gluon=True))
    ref, ref_lse = attention_reference(q, k, v, pattern, score_mod)
    assert not torch.isnan(out).any() and not torch.isnan(lse).any()
    finite = torch.isfinite(ref_lse)
    assert torch.equal(torch.isfinite(lse), finite)
    assert torch.count_nonzero(out[~finite]) == 0
    return rel(out, ref), float((lse[finite].double() - ref_lse[finite]).abs().max())


@pytest.mark.gpu
@pytest.mark.skipif(not HOPPER, reason="the Gluon forward kernel needs a Hopper (sm_90) GPU")
@pytest.mark.parametrize("config", sorted(GLUON_CONFIGS))
@pytest.mark.parametrize("name", ["causal", "window_and_causal", "document_causal", "prefix_lm", "empty_rows"])
def test_gpu_gluon_forward(name, config):
    # S = 1000 and S_kv = 1100: partial last tiles, and TMA tiles that cross into the next head's rows
    pattern = {"causal": patterns.causal(),
               "window_and_causal": patterns.sliding_window(256) & patterns.causal(),
               "document_causal": patterns.document([300, 700, 100]) & patterns.causal(),
               "prefix_lm": patterns.prefix_lm(300),
               "empty_rows": patterns.from_mask_mod(lambda b, h, q, kv: (q >= 200) & (q >= kv) & (q - kv < 300))}[name]
    err, lse_err = gluon_forward_error(pattern, GLUON_CONFIGS[config], s=1000,
                                       s_kv=1100 if name in ("causal", "prefix_lm") else 1000, seed=len(name))
    assert err < BF16_TOL and lse_err < 2e-2


@pytest.mark.gpu
@pytest.mark.skipif(not HOPPER, reason="the Gluon forward kernel needs a Hopper (sm_90) GPU")
def test_gpu_gluon_forward_dims_dtypes_score_mods_gqa():
    table = torch.randn(4, 2 * 64 + 1)
    bf16, fp16 = torch.bfloat16, torch.float16
    cases = [  # pattern, score mod, head dim, dtype, query heads, kv heads
        (patterns.causal(), None, 64, fp16, 4, 1),
        (patterns.dilated(2) & patterns.causal(), None, 128, fp16, 4, 4),
        (patterns.global_local(64, 128), None, 64, bf16, 4, 2),
        (patterns.block_sparse(layout(8, 8), 128), None, 128, bf16, 4, 2),
        (patterns.causal(), patterns.relative_bias(table, 64) >> patterns.softcap(20.0), 128, bf16, 4, 1),
        (patterns.sliding_window(200), patterns.alibi(4), 128, bf16, 4, 4)]
    for i, (pattern, score_mod, d, dtype, h, h_kv) in enumerate(cases):
        for config in ((128, 128, 8, 2), (128, 128, 4, 2, False, True)):
            err, lse_err = gluon_forward_error(pattern, config, score_mod=score_mod, d=d, dtype=dtype, h=h, h_kv=h_kv,
                                               s=1024, seed=100 + i)
            assert err < BF16_TOL and lse_err < 2e-2, (i, config, err, lse_err)
