"""A tiny Jamba-style hybrid (Mamba selective-scan blocks around one attention block), placed by policy.

Jamba (Lieber et al., 2024) interleaves state-space (Mamba) layers with attention layers. This toy has
the same structure at toy sizes (d_model 32, 4 heads, state 8, sequence 16), random weights (seeded),
and shows how hal.runtime splits it: attention and selective_scan go wherever a device declares them
(the CPU reference here, a GPU when present), projections may go to the memristor or photonic
emulators (named below: a plan takes emulators only when asked) under the energy policy, reshapes stay
on the host. For each policy it prints the plan and the relative error of the placed run against the
float64 model.

    python examples/hybrid_jamba.py [--policy energy] [--plot jamba.png]
    hal plan examples/hybrid_jamba.py --policy energy
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import hal
import hal.runtime
from hal.kernels.selective_scan import selective_scan_reference

SEED = 0
D_MODEL, D_INNER, D_STATE, HEADS, LENGTH, BATCH = 32, 64, 8, 4, 16, 2
#: The emulators planned on beside the real hardware, when available here.
EMULATORS = ("memristor:0", "photonic:0")


class MambaBlock(nn.Module):
    """Pre-norm Mamba block: h = silu(in_proj(x)); y = selective_scan(h, softplus(dt_proj(h)), A, B(h), C(h), D)."""

    def __init__(self):
        super().__init__()
        self.norm = nn.RMSNorm(D_MODEL)
        self.in_proj = nn.Linear(D_MODEL, D_INNER)
        self.dt_proj = nn.Linear(D_INNER, D_INNER)
        self.bc_proj = nn.Linear(D_INNER, 2 * D_STATE)
        self.A = nn.Parameter(-torch.exp(torch.randn(D_INNER, D_STATE) * 0.5))  # negative: a decaying state
        self.D = nn.Parameter(torch.ones(D_INNER))
        self.out_proj = nn.Linear(D_INNER, D_MODEL)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.in_proj(self.norm(x)))
        delta = F.softplus(self.dt_proj(h)).transpose(1, 2)
        bc = self.bc_proj(h).transpose(1, 2)
        y = selective_scan_reference(h.transpose(1, 2), delta, self.A, bc[:, :D_STATE], bc[:, D_STATE:], self.D)
        return x + self.out_proj(y.transpose(1, 2))


class AttentionBlock(nn.Module):
    """Pre-norm causal multi-head attention and a GELU MLP, each with a residual."""

    def __init__(self):
        super().__init__()
        self.norm1 = nn.LayerNorm(D_MODEL)
        self.qkv = nn.Linear(D_MODEL, 3 * D_MODEL)
        self.out = nn.Linear(D_MODEL, D_MODEL)
        self.norm2 = nn.LayerNorm(D_MODEL)
        self.up = nn.Linear(D_MODEL, 2 * D_MODEL)
        self.down = nn.Linear(2 * D_MODEL, D_MODEL)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = self.qkv(self.norm1(x))
        heads = [qkv[..., i * D_MODEL:(i + 1) * D_MODEL].unflatten(-1, (HEADS, -1)).transpose(1, 2) for i in range(3)]
        a = F.scaled_dot_product_attention(heads[0], heads[1], heads[2], is_causal=True)
        x = x + self.out(a.transpose(1, 2).flatten(2))
        return x + self.down(F.gelu(self.up(self.norm2(x))))


def build() -> tuple[nn.Module, tuple[torch.Tensor]]:
    """Mamba, Mamba, attention, Mamba (Jamba's 1:7 attention ratio shrunk to four layers), and an input."""
    torch.manual_seed(SEED)
    model = nn.Sequential(MambaBlock(), MambaBlock(), AttentionBlock(), MambaBlock()).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, (torch.randn(BATCH, LENGTH, D_MODEL),)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", choices=hal.runtime.POLICIES)
    parser.add_argument("--plot")
    args = parser.parse_args(argv)
    model, (x,) = build()
    reference = model.double()(x.double())
    model.float()
    available = {info.uri for info in hal.devices()}
    real, _ = hal.runtime.available_devices()
    devices = [*real, *(uri for uri in EMULATORS if uri in available)]
    for policy in [args.policy] if args.policy else list(hal.runtime.POLICIES):
        plan = hal.runtime.plan(model, (x,), policy=policy, devices=devices)
        print(plan)
        y = plan.run(x)
        error = float((y.double() - reference).norm() / reference.norm())
        ops = {plan.graph.nodes[i].op.name: plan.placement.label(a) for i, a in enumerate(plan.placement.assignment) if plan.graph.nodes[i].op is not None}
        print(f"policy {policy}: relative error vs float64 {error:.2e} (estimated bound {plan.totals().error:.2e}); "
              f"attention on {ops.get('attention')}, selective_scan on {ops.get('selective_scan')}\n")
        if args.plot:
            plan.save_plot(str(Path(args.plot).with_name(f"{Path(args.plot).stem}_{policy}{Path(args.plot).suffix or '.png'}")))


if __name__ == "__main__":
    main()
