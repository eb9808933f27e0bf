"""Error bounds of FP8 products, from the formats' unit roundoff and the reduction length.

For random operands (independent, zero-mean) the relative Frobenius error of ``C = A @ B`` computed from rounded
operands is ``sqrt(E[da^2] + E[db^2])``, with ``da``, ``db`` the operands' relative rounding errors. Round-to-nearest
leaves a relative error of at most ``u`` (the unit roundoff); a uniform spread on ``[-u, u]`` has mean square
``u^2 / 3``, an upper estimate (errors shrink towards the top of each binade), so

    bound = sqrt((u_a^2 + u_b^2) / 3)  +  sqrt(K / 3) * u_acc  +  u_out / sqrt(3)

where the second term is float32 accumulation over the reduction length K and the third the rounding of the
result to the output dtype. Dynamic scaling puts the tensor's amax at the top of the range, so for Gaussian data
a fraction of about 1e-4 of an E4M3 tensor underflows into subnormals, which the bound ignores. The tests check
measured errors against it; they sit at 0.6 to 0.8 of it.
"""

from __future__ import annotations

import math

import torch

from hal.precision.formats import FloatFormat

#: Unit roundoff of the accumulation and output dtypes (IEEE 754 / bfloat16 definitions: 2^-(mantissa bits + 1)).
DTYPE_UNIT_ROUNDOFF = {torch.float32: 2.0**-24, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11,
                       torch.float64: 2.0**-53}


def product_error_bound(fmt_a: FloatFormat, fmt_b: FloatFormat, reduction_length: int,
                        out_dtype: torch.dtype = torch.float32) -> float:
    """Relative Frobenius error bound of an FP8 product (see the module docstring for the derivation)."""
    operands = math.sqrt((fmt_a.unit_roundoff**2 + fmt_b.unit_roundoff**2) / 3)
    accumulation = math.sqrt(reduction_length / 3) * DTYPE_UNIT_ROUNDOFF[torch.float32]
    return operands + accumulation + DTYPE_UNIT_ROUNDOFF[out_dtype] / math.sqrt(3)
