"""Skipping optimizer steps whose gradients are not finite, and saying so.

FP8 casts never turn inf or NaN into finite numbers (hal.precision.scaling), so a non-finite value anywhere in a
step reaches the gradients. ``GradGuard.step()`` checks every gradient the optimizer would apply (one fused
reduction, one host sync), and either steps or drops the gradients and records which parameters were not finite.
Like torch.amp.GradScaler without the loss scaling, which dynamic FP8 scaling does not need.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class SkippedStep:
    """A step that was not applied: its index (0-based count of step() calls) and the non-finite parameters."""

    step: int
    nonfinite: tuple[str, ...]


@dataclass
class GradGuard:
    """Wraps ``optimizer``: ``guard.step()`` instead of ``optimizer.step()``; returns whether the step was applied.

    ``names`` maps parameters to names for the report (pass ``dict(model.named_parameters())``); unnamed ones are
    reported by their position in the optimizer's parameter groups.
    """

    optimizer: torch.optim.Optimizer
    names: dict[str, torch.nn.Parameter] | None = None
    steps: int = 0
    skipped: list[SkippedStep] = field(default_factory=list)

    def _grads(self) -> list[tuple[str, torch.Tensor]]:
        by_param = {p: n for n, p in (self.names or {}).items()}
        out = []
        for gi, group in enumerate(self.optimizer.param_groups):
            for pi, p in enumerate(group["params"]):
                if p.grad is not None:
                    out.append((by_param.get(p, f"group{gi}.param{pi}"), p.grad))
        return out

    def step(self) -> bool:
        """Apply the optimizer step if every gradient is finite; else zero the gradients and record the step."""
        grads = self._grads()
        index = self.steps
        self.steps += 1
        if not grads:
            self.optimizer.step()
            return True
        finite = torch.stack([torch.isfinite(g).all() for _, g in grads]).all()
        if bool(finite):
            self.optimizer.step()
            return True
        bad = tuple(name for name, g in grads if not bool(torch.isfinite(g).all()))
        self.skipped.append(SkippedStep(index, bad))
        self.optimizer.zero_grad(set_to_none=True)
        return False
