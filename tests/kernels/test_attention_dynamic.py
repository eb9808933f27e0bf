"""Dynamic sparse attention (patterns.topk_blocks): the selection, and the attention given a selection.

The selection is checked against a float64 reference of the same rule (pooled means, eligibility from the dense
static mask, own block first, ties to the lower index); the attention is checked against float64 attention with
the mask the selection implies (forward, lse, gradients). On a CPU the kernels run in Triton's interpreter at small
sizes (this module sets TRITON_INTERPRET=1 when it is imported before triton).
"""

import os

import pytest
import torch

CUDA = torch.cuda.is_available()  # without one, conftest.py has switched Triton's interpreter on

from hal.kernels.attention import (
    DynamicSparseAttention,
    PatternError,
    attention_reference,
    compile_attention,
    dense_mask,
    patterns,
    select_blocks_reference,
)
from hal.kernels.attention.dynamic import BlockSelection

needs_kernel = pytest.mark.skipif(
    not (CUDA or os.environ.get("TRITON_INTERPRET") == "1"),
    reason="no CUDA GPU, and triton was imported before this module could set TRITON_INTERPRET=1 "
           "(run: TRITON_INTERPRET=1 pytest tests/kernels/test_attention_dynamic.py)")
DEVICE = "cuda" if CUDA else "cpu"
TOL = 1e-2


def rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def qkv(b=1, h=2, h_kv=1, s=96, s_kv=None, d=32, dtype=torch.float16, seed=0):
    s_kv = s if s_kv is None else s_kv
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    q = torch.randn(b, h, s, d, generator=g, device=DEVICE).to(dtype)
    k = torch.randn(b, h_kv, s_kv, d, generator=g, device=DEVICE).to(dtype)
    v = torch.randn(b, h_kv, s_kv, d, generator=g, device=DEVICE).to(dtype)
    return q, k, v


def sparse(k=2, block=32, base=patterns.causal(), d=32, dtype=torch.float16):
    spec = patterns.topk_blocks(k=k, block=block)
    return compile_attention(spec & base if base is not None else spec, head_dim=d, dtype=dtype, autotune=False)


# ------------------------------------------------------------------------------------------- the pattern object

def test_topk_blocks_combines_with_static_patterns_by_and_only():
    a = patterns.topk_blocks(k=4, block=32) & patterns.causal()
    b = patterns.causal() & patterns.topk_blocks(k=4, block=32)
    assert isinstance(a, patterns.TopKBlocks) and a.key() == b.key()
    assert a.static.key() == patterns.causal().key()
    c = a & patterns.sliding_window(64)
    assert c.static.key() == (patterns.causal() & patterns.sliding_window(64)).key()
    assert patterns.topk_blocks(4, 32).key() != patterns.topk_blocks(4, 64).key() != a.key()
    with pytest.raises(PatternError, match="& only"):
        patterns.causal() | patterns.topk_blocks()
    with pytest.raises(PatternError, match="& only"):
        patterns.topk_blocks() | patterns.causal()
    with pytest.raises(PatternError, match="combined"):
        patterns.topk_blocks() & patterns.topk_blocks()
    with pytest.raises(PatternError, match="power of two"):
        patterns.topk_blocks(k=4, block=48)
    with pytest.raises(PatternError, match="positive"):
        patterns.topk_blocks(k=0)
    kernel = compile_attention(a, head_dim=32, dtype=torch.float16)
    assert isinstance(kernel, DynamicSparseAttention)
    assert compile_attention(patterns.causal() & patterns.topk_blocks(k=4, block=32), head_dim=32,
                             dtype=torch.float16) is kernel


# ------------------------------------------------------------------------------------------- the selection

@needs_kernel
@pytest.mark.parametrize("case", [
    dict(k=2, block=32, base=patterns.causal()),
    dict(k=3, block=32, base=None, s=130),                                   # bidirectional, ragged last block
    dict(k=2, block=64, base=patterns.causal(), h=4, h_kv=2, s=200),          # GQA, blocks of two tiles
    dict(k=2, block=32, base=patterns.document([40, 56, 64]) & patterns.causal(), s=160),
    dict(k=3, block=32, base=patterns.causal(), s=64, s_kv=160, b=2),        # S_q != S_kv
])
def test_selection_matches_the_float64_reference(case):
    case = dict(case)
    spec_args = {name: case.pop(name) for name in ("k", "block", "base")}
    q, k, _ = qkv(**case, seed=len(str(case)))
    attn = sparse(**spec_args)
    selection = attn.select(q, k)
    expected = select_blocks_reference(q, k, attn.spec)
    assert torch.equal(selection.selected(), expected)
    assert torch.equal(selection.count, expected.sum(-1).to(torch.int32))
    # the own block comes first wherever it is eligible
    own = expected.diagonal(dim1=2, dim2=3)
    first = selection.index[:, :, : own.shape[-1], 0]
    assert torch.equal(first[own], torch.arange(own.shape[-1], device=q.device).expand_as(own)[own].to(torch.int32))


@needs_kernel
def test_selection_is_deterministic_and_breaks_ties_by_lower_index():
    q, k, _ = qkv(s=192, seed=3)
    k = k[:, :, :32].repeat(1, 1, 6, 1)  # six identical key blocks: every score ties
    attn = sparse(k=3)
    first, second = attn.select(q, k), attn.select(q, k)
    assert torch.equal(first.index, second.index) and torch.equal(first.count, second.count)
    for i in range(6):
        chosen = first.index[0, 0, i, : first.count[0, 0, i]].tolist()
        # the own block, then the lowest indices among the (equal-scored) earlier blocks
        assert chosen == [i] + list(range(i))[:2], (i, chosen)


@needs_kernel
def test_own_block_is_kept_even_when_it_scores_lowest():
    q, k, _ = qkv(s=128, seed=4)
    k = k.clone()
    q[:, :, 96:] = 1.0
    k[:, :, 96:] = -1.0      # block 3's own keys score far below every earlier block for its queries
    selection = sparse(k=2).select(q, k)
    assert selection.index[0, 0, 3, 0] == 3 and selection.count[0, 0, 3] == 2


@needs_kernel
def test_nan_scores_rank_last_and_indices_stay_valid():
    q, k, _ = qkv(s=128, seed=5)
    k = k.clone()
    k[:, :, 32:64] = float("nan")
    selection = sparse(k=3).select(q, k)  # block 1's keys are NaN: every score against it is NaN
    assert int(selection.index.min()) >= 0 and int(selection.index.max()) < 4
    chosen = selection.index[0, 0, 3].tolist()
    assert chosen[0] == 3 and set(chosen) == {0, 2, 3}     # two finite blocks beat the NaN one
    assert selection.index[0, 0, 2].tolist() == [2, 0, 1]  # the NaN block last, when it is needed


# ------------------------------------------------------------------------------------------- attention given a selection

def reference_given(selection: BlockSelection, q, k, v, base):
    batch, heads, seq_q, _ = q.shape
    allowed = selection.mask()
    if base is not None:
        allowed = allowed & dense_mask(base, batch, heads, seq_q, k.shape[2], q.device)
    return attention_reference(q, k, v, lambda b, h, qi, ki: allowed)


@needs_kernel
@pytest.mark.parametrize("case", [
    dict(k=2, block=32, base=patterns.causal(), dtype=torch.float16),
    dict(k=2, block=64, base=patterns.causal(), dtype=torch.bfloat16, h=4, h_kv=2, s=200),
    dict(k=3, block=32, base=None, dtype=torch.float16, s=130, d=16),
])
def test_attention_given_the_selection_matches_float64_forward_lse_and_gradients(case):
    case = dict(case)
    spec_args = {name: case.pop(name) for name in ("k", "block", "base")}
    dtype = case.pop("dtype")
    d = case.get("d", 32)
    q, k, v = (t.requires_grad_() for t in qkv(**case, dtype=dtype, seed=7))
    attn = sparse(**spec_args, d=d, dtype=dtype)
    selection = attn.select(q, k)
    out, lse = attn.attend(q, k, v, selection, return_lse=True)
    ref, ref_lse = reference_given(selection, q, k, v, spec_args["base"])
    assert rel(out, ref) < TOL and float((lse.detach().double() - ref_lse.detach()).abs().max()) < 2e-2
    g = torch.Generator(device=DEVICE).manual_seed(8)
    d_out = torch.randn(out.shape, generator=g, device=DEVICE).to(dtype)
    grads = torch.autograd.grad(out, (q, k, v), d_out)
    ref_grads = torch.autograd.grad(ref, (q, k, v), d_out.double())
    for name, ours, theirs in zip("qkv", grads, ref_grads):
        assert rel(ours, theirs) < TOL, f"d{name}: {rel(ours, theirs)}"


@needs_kernel
def test_selecting_every_block_is_the_static_pattern():
    q, k, v = qkv(s=96, seed=9)
    out = sparse(k=8)(q, k, v)  # 3 blocks, k = 8: every eligible block
    ref, _ = attention_reference(q, k, v, patterns.causal())
    assert rel(out, ref) < TOL


@needs_kernel
def test_key_major_lists_are_the_transpose_of_the_query_major_ones():
    q, k, _ = qkv(b=2, h=2, h_kv=2, s=200, seed=10)
    attn = sparse(k=2, block=64)
    selection = attn.select(q, k)

    def dense(lists, rows, cols):
        out = torch.zeros(2, 2, rows, cols, dtype=torch.int8)
        for kind, count, index in ((1, lists.partial_count, lists.partial_index), (2, lists.full_count, lists.full_index)):
            for b in range(2):
                for h in range(2):
                    for r in range(rows):
                        for c in index[b, h, r, : count[b, h, r]].tolist():
                            assert out[b, h, r, c] == 0  # each tile listed once
                            out[b, h, r, c] = kind
        return out

    by_query = dense(attn.tile_lists(selection, 32, 32, by_key=False), 7, 7)
    by_key = dense(attn.tile_lists(selection, 32, 32, by_key=True), 7, 7)
    assert torch.equal(by_query, by_key.transpose(-1, -2))
    assert (by_query == 1).any() and (by_query == 2).any()


@needs_kernel
def test_a_selection_for_other_inputs_is_refused():
    q, k, v = qkv(s=96)
    attn = sparse()
    selection = attn.select(q, k)
    q2, k2, v2 = qkv(s=64)
    with pytest.raises(PatternError, match="select on these inputs first"):
        attn.attend(q2, k2, v2, selection)


# ------------------------------------------------------------------------------------------- GPU, full sizes

@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_gpu_dynamic_sparse_full_size():
    q, k, v = (t.requires_grad_() for t in qkv(b=1, h=4, h_kv=2, s=4096, d=128, dtype=torch.bfloat16, seed=11))
    attn = compile_attention(patterns.topk_blocks(k=16, block=64) & patterns.causal(), head_dim=128)
    selection = attn.select(q, k)
    assert torch.equal(selection.selected(), select_blocks_reference(q, k, attn.spec))
    out = attn.attend(q, k, v, selection)
    ref, _ = reference_given(selection, q, k, v, patterns.causal())
    assert rel(out, ref) < TOL
    d_out = torch.randn_like(out)
    for ours, theirs in zip(torch.autograd.grad(out, (q, k, v), d_out),
                            torch.autograd.grad(ref, (q, k, v), d_out.double())):
        assert rel(ours, theirs) < TOL
