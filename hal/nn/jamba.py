"""A Jamba-style hybrid language model (Lieber et al. 2024): Mamba layers, an attention layer every few, MoE MLPs.

    model = Jamba(vocab_size=32000, d_model=512, layers=8, attention_every=8, moe_every=2, experts=8, top_k=2)
    out = model(tokens)                      # tokens (batch, seqlen) int64 -> out.logits (batch, seqlen, vocab)
    loss = F.cross_entropy(out.logits.flatten(0, 1), targets.flatten()) + 0.001 * out.aux_loss
    text = model.generate(prompt, max_new_tokens=32)           # prefill, then one token at a time from the caches
    big = Jamba(JAMBA_1B, device="meta"); big.num_parameters()   # the 1B configuration, no memory

Each layer is pre-norm residual: x += mixer(RMSNorm(x)); x += mlp(RMSNorm(x)). The mixer is attention in layers
i with i % attention_every == attention_offset and a Mamba (or Mamba-2) block elsewhere; the MLP is a top-k MoE in
layers with i % moe_every == moe_offset and a dense SwiGLU elsewhere. A ``JambaBlock`` is attention_every
consecutive layers (the paper's block: one attention layer among them). Jamba-v0.1's own numbers (the defaults
here): 8 layers per block with attention at offset 4, MoE every 2 layers at offset 1, 16 experts, top-2, no
positional encoding, RMSNorm inside the Mamba layers (AI21's Jamba-v0.1 configuration and paper section 6.4); it
also uses grouped-query attention (8 KV heads of 32), which ``kv_heads`` sets.

Attention runs ``hal.kernels.attention`` (the fused causal kernel) for 16-bit CUDA tensors of head dim 64/128/256
on sm_90 and later, and torch's scaled_dot_product_attention everywhere else (the CPU, float32, decode steps);
``attention_backend`` forces one.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hal.errors import CapacityExceeded, DTypeError, InvalidInput, ShapeError
from hal.nn.mamba import Mamba2Block, MambaBlock, MambaCache, check_sequence_input, check_token_input
from hal.nn.moe import MoE, SwiGLU

ATTENTION_BACKENDS = ("auto", "hal", "sdpa")
SSM_KINDS = ("mamba", "mamba2")
#: head dims and dtypes of hal.kernels.attention's GPU kernels (docs/attention.md, "Limits")
HAL_KERNEL_HEAD_DIMS = (64, 128, 256)
HAL_KERNEL_DTYPES = (torch.float16, torch.bfloat16)


@dataclass
class KVCache:
    """The decode state of one attention layer: keys and values of the tokens so far, preallocated.

    k, v: (batch, kv_heads, max_seqlen, head_dim) in the layer's dtype; positions [0, seqlen) are filled.
    """

    k: torch.Tensor
    v: torch.Tensor
    seqlen: int = 0

    @property
    def max_seqlen(self) -> int:
        return self.k.shape[2]


def apply_rotary(x: torch.Tensor, start: int, base: float) -> torch.Tensor:
    """Rotary position embedding (Su et al. 2021, RoFormer) of x (batch, heads, seqlen, head_dim) at positions
    start, start+1, ...: channel pairs (i, i + head_dim/2) rotate by position * base^(-2i/head_dim)."""
    half = x.shape[-1] // 2
    cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
    inv_freq = base ** (-torch.arange(half, device=x.device, dtype=cdt) / half)
    positions = torch.arange(start, start + x.shape[2], device=x.device, dtype=cdt)
    angle = positions[:, None] * inv_freq[None, :]
    cos, sin = angle.cos(), angle.sin()
    x1, x2 = x[..., :half].to(cdt), x[..., half:].to(cdt)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with optional grouped-query heads (Ainslie et al. 2023) and rotary positions.

    q, k, v, o projections without biases by default; kv_heads < heads shares each key/value head among
    heads / kv_heads query heads (kv_heads = 1: multi-query). The scale is head_dim^-0.5.
    """

    def __init__(self, d_model: int, heads: int, kv_heads: int | None = None, rotary: bool = False,
                 rope_base: float = 10000.0, bias: bool = False, backend: str = "auto",
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        kv_heads = heads if kv_heads is None else kv_heads
        if not isinstance(heads, int) or heads < 1 or d_model % heads:
            raise InvalidInput(f"CausalSelfAttention: heads must be a positive integer dividing d_model={d_model}, "
                               f"got {heads!r}")
        if not isinstance(kv_heads, int) or kv_heads < 1 or heads % kv_heads:
            raise InvalidInput(f"CausalSelfAttention: kv_heads must divide heads={heads} (GQA groups), got {kv_heads!r}")
        if backend not in ATTENTION_BACKENDS:
            raise InvalidInput(f"attention backend must be one of {ATTENTION_BACKENDS}, got {backend!r}")
        self.head_dim = d_model // heads
        if rotary and self.head_dim % 2:
            raise InvalidInput(f"rotary positions rotate channel pairs: head_dim={self.head_dim} must be even")
        factory = {"device": device, "dtype": dtype}
        self.d_model, self.heads, self.kv_heads = d_model, heads, kv_heads
        self.rotary, self.rope_base, self.backend = rotary, rope_base, backend
        self.q_proj = nn.Linear(d_model, heads * self.head_dim, bias=bias, **factory)
        self.k_proj = nn.Linear(d_model, kv_heads * self.head_dim, bias=bias, **factory)
        self.v_proj = nn.Linear(d_model, kv_heads * self.head_dim, bias=bias, **factory)
        self.out_proj = nn.Linear(heads * self.head_dim, d_model, bias=bias, **factory)

    def _qkv(self, x: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (batch, seqlen, d_model) at positions start.. -> q (batch, heads, seqlen, hd), k, v (batch, kv_heads, ...)."""
        q = self.q_proj(x).unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)
        k = self.k_proj(x).unflatten(-1, (self.kv_heads, self.head_dim)).transpose(1, 2)
        v = self.v_proj(x).unflatten(-1, (self.kv_heads, self.head_dim)).transpose(1, 2)
        if self.rotary:
            q, k = apply_rotary(q, start, self.rope_base), apply_rotary(k, start, self.rope_base)
        return q, k, v

    def _uses_hal_kernel(self, q: torch.Tensor, k: torch.Tensor) -> bool:
        if self.backend != "auto":
            return self.backend == "hal"
        return (q.device.type == "cuda" and q.dtype in HAL_KERNEL_DTYPES and self.head_dim in HAL_KERNEL_HEAD_DIMS
                and q.shape[2] == k.shape[2] and torch.cuda.get_device_capability(q.device)[0] >= 9)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
        """Softmax attention; causal masks q_idx < kv_idx (q and k of one length), else every key is visible."""
        if self._uses_hal_kernel(q, k):
            from hal.kernels.attention import compile_attention, patterns

            kernel = compile_attention(patterns.causal() if causal else None, head_dim=self.head_dim, dtype=q.dtype)
            return kernel(q, k, v)
        groups = self.heads // self.kv_heads
        if groups > 1:
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """x (batch, seqlen, d_model) -> (batch, seqlen, d_model); with an empty ``cache``, also fill it (prefill)."""
        check_sequence_input(x, self.d_model, "CausalSelfAttention")
        batch, seqlen, _ = x.shape
        q, k, v = self._qkv(x, 0)
        if cache is not None:
            if cache.seqlen != 0:
                raise InvalidInput(f"CausalSelfAttention(x, cache) prefills an empty cache, but this one holds "
                                   f"{cache.seqlen} tokens; feed further tokens with step()")
            self._check_cache(cache, batch, seqlen)
            cache.k[:, :, :seqlen].copy_(k)
            cache.v[:, :, :seqlen].copy_(v)
            cache.seqlen = seqlen
        y = self._attend(q, k, v, causal=True)
        return self.out_proj(y.transpose(1, 2).flatten(2))

    def allocate_cache(self, batch: int, max_seqlen: int | None = None,
                       device: torch.device | str | None = None) -> KVCache:
        """An empty KV cache for ``batch`` rows of up to ``max_seqlen`` tokens, on ``device`` (default: the layer's)."""
        if not isinstance(max_seqlen, int) or max_seqlen < 1:
            raise InvalidInput(f"attention preallocates its KV cache: max_seqlen must be a positive integer, got "
                               f"{max_seqlen!r}")
        w = self.k_proj.weight
        shape = (batch, self.kv_heads, max_seqlen, self.head_dim)
        device = w.device if device is None else device
        return KVCache(torch.zeros(shape, device=device, dtype=w.dtype), torch.zeros(shape, device=device, dtype=w.dtype))

    def _check_cache(self, cache: KVCache, batch: int, new_tokens: int) -> None:
        expected = (batch, self.kv_heads, cache.max_seqlen, self.head_dim)
        if tuple(cache.k.shape) != expected or cache.v.shape != cache.k.shape:
            raise ShapeError(f"the KV cache must be {expected}, got {tuple(cache.k.shape)}; use this layer's "
                             f"allocate_cache({batch}, max_seqlen)")
        if cache.seqlen + new_tokens > cache.max_seqlen:
            raise CapacityExceeded(f"the KV cache holds {cache.max_seqlen} tokens and {cache.seqlen} are used; "
                                   f"{new_tokens} more do not fit. allocate_cache(batch, max_seqlen="
                                   f"{cache.seqlen + new_tokens}) or more", needed=cache.seqlen + new_tokens,
                                   available=cache.max_seqlen)

    def step(self, x: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """One token per row: x (batch, d_model) -> (batch, d_model); its key and value are appended to the cache."""
        check_token_input(x, self.d_model, "CausalSelfAttention")
        self._check_cache(cache, x.shape[0], 1)
        t = cache.seqlen
        q, k, v = self._qkv(x[:, None], t)
        cache.k[:, :, t:t + 1].copy_(k)
        cache.v[:, :, t:t + 1].copy_(v)
        cache.seqlen = t + 1
        y = self._attend(q, cache.k[:, :, :t + 1], cache.v[:, :, :t + 1], causal=False)
        return self.out_proj(y[:, :, 0].flatten(1))


@dataclass
class JambaConfig:
    """Every hyperparameter of a Jamba stack; ``Jamba(**fields)`` builds one from keyword arguments.

    Layer pattern: attention where i % attention_every == attention_offset (attention_every None: no attention,
    1: every layer; attention_offset None: attention_every // 2, Jamba-v0.1's 4 of 8), MoE MLP where
    i % moe_every == moe_offset (moe_every None: all dense), no MLP at all with mlp=False. layers must be a multiple
    of attention_every (whole Jamba blocks). d_ffn None: 3.5 * d_model (Jamba-v0.1: 14336 for 4096). heads None:
    d_model // 128 (Jamba-v0.1's head dim 128), at least 1; kv_heads None: heads (no GQA). ssm: "mamba" (S6) or
    "mamba2" (SSD); d_state None: 16 for Mamba, 128 for Mamba-2 (the blocks' defaults); mamba_inner_norms: Jamba's
    RMSNorm of dt, B, C (Mamba only). initializer_range: std of the embedding (0.02, Jamba-v0.1 and GPT-2).
    """

    vocab_size: int
    d_model: int
    layers: int
    attention_every: int | None = 8
    attention_offset: int | None = None
    moe_every: int | None = 2
    moe_offset: int = 1
    experts: int = 16
    top_k: int = 2
    mlp: bool = True
    d_ffn: int | None = None
    heads: int | None = None
    kv_heads: int | None = None
    rotary: bool = False
    rope_base: float = 10000.0
    ssm: str = "mamba"
    d_state: int | None = None
    d_conv: int = 4
    expand: int = 2
    ssm_head_dim: int = 64
    ssm_groups: int = 1
    chunk_size: int = 256
    mamba_inner_norms: bool = True
    norm_eps: float = 1e-6
    tie_embeddings: bool = False
    initializer_range: float = 0.02
    backend: str = "auto"
    attention_backend: str = "auto"

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "layers", "experts", "top_k", "d_conv", "expand"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise InvalidInput(f"JambaConfig: {name} must be a positive integer, got {value!r}")
        if self.attention_every is not None:
            if not isinstance(self.attention_every, int) or self.attention_every < 1:
                raise InvalidInput(f"JambaConfig: attention_every must be a positive integer or None, got "
                                   f"{self.attention_every!r}")
            if self.layers % self.attention_every:
                raise InvalidInput(f"JambaConfig: layers={self.layers} must be a multiple of attention_every="
                                   f"{self.attention_every} (whole Jamba blocks)")
            if self.attention_offset is None:
                self.attention_offset = self.attention_every // 2
            if not 0 <= self.attention_offset < self.attention_every:
                raise InvalidInput(f"JambaConfig: attention_offset must be in [0, attention_every), got "
                                   f"{self.attention_offset}")
        if self.moe_every is not None:
            if not isinstance(self.moe_every, int) or self.moe_every < 1 or not 0 <= self.moe_offset < self.moe_every:
                raise InvalidInput(f"JambaConfig: moe_every must be a positive integer (or None) and moe_offset in "
                                   f"[0, moe_every), got {self.moe_every!r}, {self.moe_offset!r}")
        if self.top_k > self.experts:
            raise InvalidInput(f"JambaConfig: top_k={self.top_k} exceeds experts={self.experts}")
        if self.ssm not in SSM_KINDS:
            raise InvalidInput(f"JambaConfig: ssm must be one of {SSM_KINDS}, got {self.ssm!r}")
        if self.d_ffn is None:
            self.d_ffn = round(3.5 * self.d_model)
        if self.heads is None:
            self.heads = max(1, self.d_model // 128)
        if self.d_state is None:
            self.d_state = 16 if self.ssm == "mamba" else 128

    def layer_plan(self) -> list[tuple[str, str]]:
        """(mixer, mlp) per layer: mixer "attention"/"mamba"/"mamba2", mlp "moe"/"dense"/"none"."""
        plan = []
        for i in range(self.layers):
            attention = self.attention_every is not None and i % self.attention_every == self.attention_offset
            moe = self.moe_every is not None and i % self.moe_every == self.moe_offset
            plan.append(("attention" if attention else self.ssm, "none" if not self.mlp else "moe" if moe else "dense"))
        return plan

    @property
    def block_layers(self) -> int:
        """Layers per JambaBlock: attention_every, or the whole stack when there is no attention."""
        return self.layers if self.attention_every is None else self.attention_every


#: A 1B-parameter Jamba (assumed: an engineering choice, not a published model): Jamba-v0.1's layer pattern at
#: d_model 2048 and 16 layers, 8 experts of d_ffn 1024 (fine-grained experts as OLMoE-1B-7B, Muennighoff et al.
#: 2024, which also has d_model 2048, 16 layers, d_ffn 1024), 16 heads of 128 with 4 KV heads, Jamba's vocabulary
#: of 65,536 with tied embeddings. 978,530,496 parameters, 676,540,608 active per token (derived: the per-layer
#: formula in tests/nn/test_jamba.py, which checks num_parameters() against it on the meta device).
JAMBA_1B = JambaConfig(vocab_size=65536, d_model=2048, layers=16, attention_every=8, moe_every=2, experts=8, top_k=2,
                       d_ffn=1024, heads=16, kv_heads=4, tie_embeddings=True)


@dataclass
class JambaCache:
    """Per-layer decode state of a Jamba stack (MambaCache or KVCache per layer) and the tokens consumed."""

    layers: list
    seqlen: int = 0


@dataclass
class JambaOutput:
    """logits (batch, seqlen, vocab); aux_loss: the mean load-balancing loss of the MoE layers (0 without MoE)."""

    logits: torch.Tensor
    aux_loss: torch.Tensor


class JambaLayer(nn.Module):
    """One pre-norm residual layer: x + mixer(RMSNorm(x)), then x + mlp(RMSNorm(x)) (mlp may be absent)."""

    def __init__(self, mixer: nn.Module, mlp: nn.Module | None, d_model: int, norm_eps: float = 1e-6,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        self.mixer_norm = nn.RMSNorm(d_model, eps=norm_eps, device=device, dtype=dtype)
        self.mixer = mixer
        self.mlp_norm = None if mlp is None else nn.RMSNorm(d_model, eps=norm_eps, device=device, dtype=dtype)
        self.mlp = mlp

    def forward(self, x: torch.Tensor, cache: MambaCache | KVCache | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (batch, seqlen, d_model) -> (x after the layer, this layer's MoE aux loss or None)."""
        x = x + self.mixer(self.mixer_norm(x), cache)
        return self._mlp(x)

    def step(self, x: torch.Tensor, cache: MambaCache | KVCache) -> torch.Tensor:
        """One token per row, x (batch, d_model), against the layer's cache."""
        x = x + self.mixer.step(self.mixer_norm(x), cache)
        return self._mlp(x)[0]

    def _mlp(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.mlp is None:
            return x, None
        h = self.mlp_norm(x)
        if isinstance(self.mlp, MoE):
            y, aux = self.mlp(h)
            return x + y, aux
        return x + self.mlp(h), None


class JambaBlock(nn.Module):
    """A run of JambaLayers (the paper's Jamba block: attention_every layers, one of them attention)."""

    def __init__(self, layers: list[JambaLayer]):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor, caches: list | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """x -> (x after every layer, the MoE aux losses of its MoE layers)."""
        aux = []
        for i, layer in enumerate(self.layers):
            x, a = layer(x, None if caches is None else caches[i])
            if a is not None:
                aux.append(a)
        return x, aux

    def step(self, x: torch.Tensor, caches: list) -> torch.Tensor:
        for layer, cache in zip(self.layers, caches):
            x = layer.step(x, cache)
        return x


def _build_layer(config: JambaConfig, mixer_kind: str, mlp_kind: str, factory: dict) -> JambaLayer:
    c = config
    if mixer_kind == "attention":
        mixer: nn.Module = CausalSelfAttention(c.d_model, c.heads, c.kv_heads, rotary=c.rotary, rope_base=c.rope_base,
                                               backend=c.attention_backend, **factory)
    elif mixer_kind == "mamba":
        mixer = MambaBlock(c.d_model, d_state=c.d_state, d_conv=c.d_conv, expand=c.expand,
                           inner_norms=c.mamba_inner_norms, norm_eps=c.norm_eps, backend=c.backend, **factory)
    else:
        mixer = Mamba2Block(c.d_model, d_state=c.d_state, d_conv=c.d_conv, expand=c.expand, head_dim=c.ssm_head_dim,
                            groups=c.ssm_groups, chunk_size=c.chunk_size, backend=c.backend, **factory)
    mlp: nn.Module | None = None
    if mlp_kind == "moe":
        mlp = MoE(c.d_model, c.d_ffn, c.experts, c.top_k, **factory)
    elif mlp_kind == "dense":
        mlp = SwiGLU(c.d_model, c.d_ffn, **factory)
    return JambaLayer(mixer, mlp, c.d_model, c.norm_eps, **factory)


class Jamba(nn.Module):
    """A Jamba-style language model: embedding, JambaBlocks, final RMSNorm, LM head (see the module docstring).

    Inits beyond the blocks' own: embedding N(0, initializer_range^2); the projections that write into the residual
    stream (mixer out_proj, SwiGLU down) divided by sqrt(residual branches), the GPT-2 scheme mamba_ssm uses
    (Radford et al. 2019; mamba_ssm's ``_init_weights(rescale_prenorm_residual=True)``).
    """

    def __init__(self, config: JambaConfig | None = None, *, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None, **fields):
        super().__init__()
        if config is None:
            config = JambaConfig(**fields)
        elif fields:
            raise InvalidInput(f"pass either a JambaConfig or keyword fields, not both (got {sorted(fields)}); "
                               "use dataclasses.replace(config, ...) to change a config")
        self.config = config
        factory = {"device": device, "dtype": dtype}
        self.embed = nn.Embedding(config.vocab_size, config.d_model, **factory)
        plan = config.layer_plan()
        per_block = config.block_layers
        self.blocks = nn.ModuleList(
            JambaBlock([_build_layer(config, *plan[i], factory) for i in range(start, start + per_block)])
            for start in range(0, config.layers, per_block))
        self.norm = nn.RMSNorm(config.d_model, eps=config.norm_eps, **factory)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False, **factory)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        self._init_weights()

    def _init_weights(self) -> None:
        with torch.no_grad():
            nn.init.normal_(self.embed.weight, std=self.config.initializer_range)
            branches = self.config.layers * (2 if self.config.mlp else 1)
            for layer in self.layers:
                layer.mixer.out_proj.weight.div_(math.sqrt(branches))
                mlps = [] if layer.mlp is None else layer.mlp.experts if isinstance(layer.mlp, MoE) else [layer.mlp]
                for mlp in mlps:
                    mlp.down.weight.div_(math.sqrt(branches))

    @property
    def layers(self) -> list[JambaLayer]:
        """Every layer, in order, across the blocks."""
        return [layer for block in self.blocks for layer in block.layers]

    def num_parameters(self, active: bool = False) -> int:
        """Parameters (tied weights counted once); ``active``: those one token uses (top_k of each MoE's experts)."""
        total = sum(p.numel() for p in self.parameters())
        if active:
            for layer in self.layers:
                if isinstance(layer.mlp, MoE):
                    per_expert = sum(p.numel() for p in layer.mlp.experts[0].parameters())
                    total -= per_expert * (len(layer.mlp.experts) - layer.mlp.top_k)
        return total

    def _check_tokens(self, tokens: torch.Tensor, dims: int) -> None:
        what = "(batch, seqlen)" if dims == 2 else "(batch,)"
        if not isinstance(tokens, torch.Tensor) or tokens.dtype not in (torch.int64, torch.int32):
            raise DTypeError(f"Jamba takes int64/int32 token ids {what}, got {getattr(tokens, 'dtype', type(tokens))}")
        if tokens.dim() != dims or tokens.numel() == 0:
            raise ShapeError(f"Jamba takes token ids {what}, got shape {tuple(tokens.shape)}")
        low, high = int(tokens.min()), int(tokens.max())
        if low < 0 or high >= self.config.vocab_size:
            raise InvalidInput(f"token ids must be in [0, vocab_size={self.config.vocab_size}), got values in "
                               f"[{low}, {high}]")

    def hidden_states(self, tokens: torch.Tensor, cache: JambaCache | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens (batch, seqlen) -> (final-normed hidden states (batch, seqlen, d_model), mean MoE aux loss).

        With an empty ``cache`` this is the prefill: every layer's cache is filled.
        """
        self._check_tokens(tokens, 2)
        if cache is not None and cache.seqlen != 0:
            raise InvalidInput(f"Jamba(tokens, cache) prefills an empty cache, but this one holds {cache.seqlen} "
                               "tokens; feed further tokens with step()")
        x = self.embed(tokens)
        aux: list[torch.Tensor] = []
        start = 0
        for block in self.blocks:
            n = len(block.layers)
            x, a = block(x, None if cache is None else cache.layers[start:start + n])
            aux += a
            start += n
        if cache is not None:
            cache.seqlen = tokens.shape[1]
        aux_loss = torch.stack(aux).mean() if aux else torch.zeros((), device=x.device)
        return self.norm(x), aux_loss

    def forward(self, tokens: torch.Tensor, cache: JambaCache | None = None) -> JambaOutput:
        """tokens (batch, seqlen) -> JambaOutput(logits (batch, seqlen, vocab), aux_loss)."""
        h, aux = self.hidden_states(tokens, cache)
        return JambaOutput(self.lm_head(h), aux)

    def allocate_cache(self, batch: int, max_seqlen: int, device: torch.device | str | None = None) -> JambaCache:
        """An empty cache for ``batch`` rows of up to ``max_seqlen`` tokens (attention layers preallocate that)."""
        return JambaCache([layer.mixer.allocate_cache(batch, max_seqlen, device) for layer in self.layers])

    def step(self, tokens: torch.Tensor, cache: JambaCache) -> torch.Tensor:
        """One token per row: tokens (batch,) -> logits (batch, vocab); every layer's state advances."""
        self._check_tokens(tokens, 1)
        x = self.embed(tokens)
        start = 0
        for block in self.blocks:
            n = len(block.layers)
            x = block.step(x, cache.layers[start:start + n])
            start += n
        cache.seqlen += 1
        return self.lm_head(self.norm(x))

    @torch.no_grad()
    def generate(self, prompt: torch.Tensor, max_new_tokens: int, temperature: float = 0.0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Continue ``prompt`` (batch, seqlen) by ``max_new_tokens``: a prefill, then one step per token.

        temperature 0: greedy (argmax); above 0: sampled from softmax(logits / temperature) with ``generator``.
        Returns (batch, seqlen + max_new_tokens).
        """
        if max_new_tokens < 0 or temperature < 0:
            raise InvalidInput(f"max_new_tokens and temperature must be >= 0, got {max_new_tokens}, {temperature}")
        self._check_tokens(prompt, 2)
        cache = self.allocate_cache(prompt.shape[0], prompt.shape[1] + max_new_tokens, prompt.device)
        logits = self(prompt, cache).logits[:, -1]
        out = [prompt]
        for i in range(max_new_tokens):
            if temperature == 0:
                token = logits.argmax(-1)
            else:
                token = torch.multinomial(F.softmax(logits.float() / temperature, -1), 1, generator=generator)[:, 0]
            out.append(token[:, None].to(prompt.dtype))
            if i + 1 < max_new_tokens:
                logits = self.step(token, cache)
        return torch.cat(out, dim=1)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in asdict(self.config).items())
