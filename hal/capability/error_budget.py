"""An analog device's expected error as a sum of relative variances, one term per effect (pure data and arithmetic):
the memristor and photonic accuracy models both report theirs this way."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class ErrorBudget:
    """The relative variance each effect adds to one product, and their total (the expected relative error).
    ``inputs`` is the reduction length K the budget was computed for, where the model depends on it."""

    terms: dict[str, float]
    inputs: int | None = None

    @property
    def error(self) -> float:
        """Expected relative Frobenius error: the root of the summed relative variances."""
        return math.sqrt(sum(self.terms.values()))

    def largest(self) -> str:
        """The term that contributes most."""
        return max(self.terms, key=self.terms.__getitem__)
