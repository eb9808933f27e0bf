"""Fusion passes on the FX graphs Dynamo hands hal: linear regions -> ``hal.kernels.gemm`` kernel calls.

Small-batch inference on a GPU is launch-bound: each ``nn.Linear`` is a cuBLAS launch and each norm, activation
and residual add around it another kernel. These passes rewrite torch-level FX graphs (what a ``torch.compile``
backend receives: ``F.linear``, ``F.layer_norm``, ``F.gelu``, ``x.pow(2)`` ... with parameters as placeholders or
``get_attr`` nodes) so that such a region is one call of ``norm_linear`` or ``gated_linear``; Inductor then
compiles the rest of the graph around those calls::

    from hal.drivers.nvidia.passes import apply_passes
    def backend(gm, example_inputs):
        report = apply_passes(gm, example_inputs)          # rewrites gm in place; str(report) says what and why
        return compile_fx(gm, example_inputs)              # torch._inductor.compile_fx
    model = torch.compile(model, backend=backend)

Passes, run by ``apply_passes`` in this order (``ORDER``); each is also a function ``(gm, example_inputs, *,
max_rows=64) -> PassResult`` of its own:

1. ``gated`` (``fuse_gated``): ``act(linear(x, Wg)) * linear(x, Wu)`` -> ``gated_linear`` (SwiGLU, GeGLU);
2. ``horizontal`` (``fuse_horizontal``): up to three linears reading one input (Q/K/V) -> one ``norm_linear``
   whose output the linears' readers see through slices;
3. ``epilogue`` (``fuse_epilogue``): ``linear -> activation`` and ``linear (-> activation) -> + residual``;
4. ``norm`` (``fuse_norm``): LayerNorm / RMSNorm (``F.layer_norm``, ``F.rms_norm``, the RMSNorm Hugging Face
   models write out) whose every reader is a linear -> the norm in those linears' prologue.

Why this order: ``gated`` and ``horizontal`` group *plain* linears, so they run before anything turns a linear
into a kernel call (``gated`` first, or ``horizontal`` would take the gate and up projections as a pair of
slices); ``epilogue`` then folds what follows a single-output GEMM; ``norm`` last, since the norm can go into any
of those calls (a Llama layer: the input RMSNorm into the Q/K/V call, the post-attention one into the gated MLP).

A pass fires only where the kernel computes the same function with the same rounding points up to the kernels'
declared tolerance (statistics and accumulation in float32, the normalised value rounded to the input dtype as
eager rounds it; the epilogue applies bias, activation and residual to the float32 accumulator and rounds once,
where eager rounds after each op): every operand a parameter read in place (not a transposed or derived weight),
contiguous, of the input's dtype (no autocast), no value the region makes read outside it, no gradient recorded
(the kernels have no backward), and only for at most ``max_rows`` rows of the activation (the product of its
leading sizes, from the example inputs' shapes; a dynamic size never fires): the kernels are built for small,
launch-bound batches and cuBLAS stays for large ones. Each candidate that does not fire is in the result's
``skipped`` with the reason.

The passes are for graphs that run on an NVIDIA GPU, where the calls run the Triton kernels; on other devices the
calls run the kernels' torch reference: the same values, not faster.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any

from torch import fx

from hal.drivers.nvidia.passes.epilogue import fuse_epilogue
from hal.drivers.nvidia.passes.gated import fuse_gated
from hal.drivers.nvidia.passes.horizontal import fuse_horizontal
from hal.drivers.nvidia.passes.norm import fuse_norm
from hal.drivers.nvidia.passes.report import DEFAULT_MAX_ROWS, FusionReport, PassResult
from hal.errors import InvalidInput

Pass = Callable[..., PassResult]

#: Every pass by name, in the order ``apply_passes`` runs them.
PASSES: dict[str, Pass] = {"gated": fuse_gated, "horizontal": fuse_horizontal, "epilogue": fuse_epilogue, "norm": fuse_norm}
ORDER: tuple[str, ...] = tuple(PASSES)


def apply_passes(gm: fx.GraphModule, example_inputs: Sequence[Any], enabled: Collection[str] = ORDER, *, max_rows: int = DEFAULT_MAX_ROWS) -> FusionReport:
    """Run the ``enabled`` passes over ``gm`` in place, in ``ORDER`` whatever order ``enabled`` lists them in;
    return what each did. ``max_rows``: the most activation rows at which a pass fuses."""
    if isinstance(enabled, str) or not all(isinstance(name, str) for name in enabled):
        raise InvalidInput(f"enabled takes a collection of pass names such as ('norm', 'epilogue'), got {enabled!r}; the passes are {', '.join(ORDER)}")
    unknown = sorted(set(enabled) - set(ORDER))
    if unknown:
        raise InvalidInput(f"no fusion pass {unknown[0]!r}; the passes are {', '.join(ORDER)}")
    return FusionReport(tuple(PASSES[name](gm, example_inputs, max_rows=max_rows) for name in ORDER if name in enabled))


__all__ = ["DEFAULT_MAX_ROWS", "ORDER", "PASSES", "FusionReport", "PassResult", "apply_passes", "fuse_epilogue", "fuse_gated", "fuse_horizontal", "fuse_norm"]
