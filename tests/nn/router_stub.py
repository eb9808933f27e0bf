"""A router stub for the MoE and mixture-of-architectures tests: it returns a given routing, whatever the tokens."""

from __future__ import annotations

import torch


class FixedRouter(torch.nn.Module):
    """A router stub that returns a given routing, whatever the tokens."""

    def __init__(self, routing):
        super().__init__()
        self.routing, self.top_k = routing, routing.indices.shape[1]

    def forward(self, x):
        return self.routing
