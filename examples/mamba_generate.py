"""Generate text one token at a time with a small Jamba-style model (Mamba layers around an attention layer).

The model (hal.nn.Jamba: 4 layers, d_model 64, one attention layer, MoE MLPs every other layer) first learns a toy
language for a few seconds: sequences that count upwards modulo 10 from a random start ("3 4 5 6 ..."). Then it
continues a prompt greedily: the prompt is prefilled in one forward pass, which fills every layer's cache (the
Mamba conv and SSM states, the attention KV cache), and each new token costs one ``step`` against those caches.
The script checks that the cached decoding gives the logits a full forward pass over the whole text gives.

    python examples/mamba_generate.py [--ssm mamba2] [--steps 200] [--device cuda]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from hal.nn.jamba import Jamba

VOCAB = 10


def counting_batch(batch: int, length: int, generator: torch.Generator) -> torch.Tensor:
    """Sequences start, start+1, ... modulo VOCAB from random starts: (batch, length) int64."""
    start = torch.randint(0, VOCAB, (batch, 1), generator=generator)
    return (start + torch.arange(length)) % VOCAB


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ssm", choices=("mamba", "mamba2"), default="mamba")
    ap.add_argument("--steps", type=int, default=60, help="training steps on the toy language")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    device = torch.device(args.device)
    model = Jamba(vocab_size=VOCAB, d_model=64, layers=4, attention_every=4, moe_every=2, experts=4, top_k=2,
                  heads=4, kv_heads=2, d_state=16, ssm=args.ssm, ssm_head_dim=16, chunk_size=16).to(device)
    print(f"Jamba: {model.num_parameters():,} parameters ({model.num_parameters(active=True):,} active per token); "
          f"layers: {[m for m, _ in model.config.layer_plan()]}")

    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(args.steps):
        tokens = counting_batch(8, 24, gen).to(device)
        out = model(tokens[:, :-1])
        loss = F.cross_entropy(out.logits.flatten(0, 1), tokens[:, 1:].flatten()) + 0.01 * out.aux_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step:4d}  loss {loss.item():.3f}")

    model.eval()
    prompt = torch.tensor([[7, 8, 9, 0]], device=device)
    start = time.perf_counter()
    text = model.generate(prompt, max_new_tokens=24)
    elapsed = time.perf_counter() - start
    print("prompt:   ", " ".join(map(str, prompt[0].tolist())))
    print("generated:", " ".join(map(str, text[0, prompt.shape[1]:].tolist())))
    print(f"{24 / elapsed:.0f} tokens/s on {device} (measured: prefill + 23 steps, one row, this run)")

    with torch.no_grad():
        full = model(text).logits
        cache = model.allocate_cache(1, text.shape[1])
        stepped = torch.cat([model(text[:, :4], cache).logits] +
                            [model.step(text[:, t], cache)[:, None] for t in range(4, text.shape[1])], dim=1)
    print(f"cached decoding vs full forward: max |logit difference| = {(stepped - full).abs().max().item():.2e}")


if __name__ == "__main__":
    main()
