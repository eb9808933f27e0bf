"""CpuDevice: the host CPU through torch, every vocabulary op, and the float64 ground truth.

``cpu:0`` computes in the inputs' dtype. ``cpu:0?precision=float64`` is the reference mode: inputs and
parameters are upcast to float64 and the result is float64; the conformance kit compares every device
against it. NaN/inf propagate as IEEE arithmetic does (as in torch), they are not refused.
"""

from __future__ import annotations

import math

import torch

from hal import ops as vocabulary
from hal.capability import Capabilities, Figure, OpSupport, Paradigm
from hal.device import Cost, Device, DeviceInfo, OpSpec, Option, Program, choice
from hal.drivers.cpu import host
from hal.errors import DeviceUnavailable
from hal.kernels.torch_ops import TORCH_OPS

#: Unit roundoff per dtype (half the machine epsilon): the relative error of one rounding.
UNIT_ROUNDOFF = {dtype: torch.finfo(dtype).eps / 2 for dtype in (torch.float64, torch.float32, torch.bfloat16, torch.float16)}

#: Energy per fp32 flop: Horowitz, "Computing's energy problem", ISSCC 2014, 45 nm: 3.7 pJ multiply + 0.9 pJ add
#: per multiply-add, i.e. 2.3 pJ per flop. Arithmetic only: a whole CPU spends several times more per flop.
ENERGY_PER_FLOP = Figure.paper(2.3e-12, "J/flop", "Horowitz, ISSCC 2014, fp32 mult 3.7 pJ + add 0.9 pJ per 2 flops (45 nm)", "arithmetic only; lower bound")
#: DRAM access energy: Horowitz ISSCC 2014: 640 pJ per 32-bit DRAM read, i.e. 160 pJ per byte.
ENERGY_PER_DRAM_BYTE = Figure.paper(160e-12, "J/B", "Horowitz, ISSCC 2014, 640 pJ per 32-bit DRAM access (45 nm)")

DTYPES = ("float32", "float64", "bfloat16", "float16")
TOLERANCE = {"float64": 1e-10, "float32": 1e-4, "bfloat16": 3e-2, "float16": 5e-3}


class CpuDevice(Device):
    """The host CPU. Always available; one device (``cpu:0``) using torch's intra-op threads."""

    kind = "cpu"
    OPTIONS = {
        "precision": Option(choice({"native": None, "float64": torch.float64}), None, "'native' (compute in the inputs' dtype) or 'float64' (reference mode)"),
    }

    def __init__(self, uri):
        super().__init__(uri)
        if self.index != 0:
            raise DeviceUnavailable(str(self.uri), "hal exposes the host CPU as one device, cpu:0", "use 'cpu' or 'cpu:0'")
        self.reference_dtype: torch.dtype | None = self.options["precision"]

    @classmethod
    def probe(cls) -> list[DeviceInfo]:
        """``cpu:0`` (named by ``cls.kind``, so a subclass lists its own kind); the peak rate only if already measured,
        since a probe runs beside other drivers' probe threads and would measure a loaded machine."""
        memory = host.memory_total()
        peak = host.measured_matmul_flops(torch.float32)
        rate = {"peak_flop_per_s": peak.value, "peak_dtype": "float32"} if peak else {"peak": "not measured yet: hal query cpu"}
        return [
            DeviceInfo(
                uri=f"{cls.kind}:0",
                kind=cls.kind,
                available=True,
                paradigm=Paradigm.DIGITAL.value,
                summary={"name": host.cpu_model(), "memory_bytes": memory.value if memory else None, **rate},
            )
        ]

    def _build_capabilities(self) -> Capabilities:
        return Capabilities(
            uri=str(self.uri),
            kind=self.kind,
            paradigm=Paradigm.DIGITAL,
            simulated=False,
            identity={"name": host.cpu_model(), "threads": str(torch.get_num_threads()), "torch": torch.__version__},
            ops={name: OpSupport(DTYPES, TOLERANCE) for name in vocabulary.VOCABULARY},
            memory_bytes=host.memory_total(),
            peak={
                "float32_flop_per_s": host.peak_matmul_flops(torch.float32),
                "float64_flop_per_s": host.peak_matmul_flops(torch.float64),
                "memory_bandwidth_b_per_s": host.copy_bandwidth(),
            },
            energy={"j_per_flop": ENERGY_PER_FLOP, "j_per_dram_byte": ENERGY_PER_DRAM_BYTE},
            notes=["NaN/inf inputs propagate as IEEE arithmetic does (like torch); they are not refused."],
        )

    def estimate(self, op: OpSpec) -> Cost:
        """Roofline latency from the measured matmul rate and copy bandwidth; energy from cited per-flop/per-byte
        figures; error from the rounding bound sqrt(K) * u of a length-K sum in the compute dtype."""
        n_flops = vocabulary.flops(op)
        n_bytes = vocabulary.bytes_moved(op)
        caps = self.capabilities
        dtype = self.reference_dtype or (op.inputs[0].dtype if op.inputs else torch.float32)
        rate = caps.peak["float64_flop_per_s" if dtype == torch.float64 else "float32_flop_per_s"].value
        bandwidth = caps.peak["memory_bandwidth_b_per_s"].value
        latency = max(n_flops / rate, n_bytes / bandwidth)
        energy = n_flops * ENERGY_PER_FLOP.value + n_bytes * ENERGY_PER_DRAM_BYTE.value
        error = math.sqrt(vocabulary.reduction_length(op)) * UNIT_ROUNDOFF.get(dtype, UNIT_ROUNDOFF[torch.float32])
        return Cost(latency, energy, error, "latency = max(flops / measured matmul rate, bytes / measured copy bandwidth); energy = flops * 2.3 pJ + bytes * 160 pJ (Horowitz 2014); error = sqrt(K) * unit roundoff")

    def _compile(self, op: OpSpec, params: dict[str, torch.Tensor]) -> Program:
        fn = TORCH_OPS[op.name]
        attrs = dict(op.attrs)
        upcast = self.reference_dtype
        if upcast is not None:
            params = {k: v.to(upcast) for k, v in params.items()}

            def run(*inputs: torch.Tensor) -> torch.Tensor:
                return fn([t.to(upcast) for t in inputs], params, attrs)

        else:

            def run(*inputs: torch.Tensor) -> torch.Tensor:
                return fn(inputs, params, attrs)

        return Program(op, self, self.estimate(op), run)
