"""2:4 structured sparsity as a model transform: prune, fine-tune with the zeros kept, then keep sparse only the
layers a measurement says are faster.

    from hal import sparsity
    report = sparsity.prune_2_4(model, method="magnitude")   # masks kept through fine-tuning (a parametrization)
    plan = sparsity.accelerate(model, example_inputs)        # per layer: measured dense vs 2:4, keeps the faster
    print(plan)                                              # which layers went sparse, measured speedup each

Details and what was measured where: docs/sparsity.md. Imports torch only; no driver, not the runtime.
"""

from hal.sparsity.accelerate import LayerPlan, SparsityPlan, accelerate, cpu_timer, cuda_timer, decide
from hal.sparsity.kernels import SemiStructuredLinear, semi_structured_linear, unavailable_reason
from hal.sparsity.pattern import is_2_4, magnitude_mask
from hal.sparsity.prune import PruneReport, TwoFourMask, mask_of, prune_2_4, remove_masks

__all__ = [
    "LayerPlan", "PruneReport", "SemiStructuredLinear", "SparsityPlan", "TwoFourMask", "accelerate", "cpu_timer",
    "cuda_timer", "decide", "is_2_4", "magnitude_mask", "mask_of", "prune_2_4", "remove_masks",
    "semi_structured_linear", "unavailable_reason",
]
