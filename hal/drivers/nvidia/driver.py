"""HopperDevice, BlackwellDevice, CudaDevice: NVIDIA GPUs found through NVML + the CUDA driver, computing through torch.

``hopper:N`` / ``blackwell:N`` / ``cuda:N`` is CUDA device N (``torch.device("cuda", N)``, numbered as the CUDA
driver numbers the GPUs that ``CUDA_VISIBLE_DEVICES`` leaves visible). Which family a GPU belongs to comes from its
compute capability (``architectures.kind_for``): ``hopper:N`` and ``blackwell:N`` open only their family (an H100
opened as ``blackwell:0`` is refused with the right name), while ``cuda:N`` opens any NVIDIA GPU, with the same
capabilities, Programs and kernels as its family's device (``cuda:0`` on an H100 is ``hopper:0`` under another
name). The ``cuda`` probe lists every GPU (what it lists is what opens); a Hopper or Blackwell GPU's entry carries
``summary["alias_of"] = "hopper:N"`` so that a planner or a listing counts one GPU once. Options:

- ``?matmul_precision=native|tf32|bf16|fp16|fp8`` (default native): the tensor-core policy of matmul, linear and
  conv2d (see ``matmul.py``); results keep the inputs' dtype.
- ``?attention=sdpa|hal`` (default sdpa): the vocabulary's full/causal attention through torch's
  scaled_dot_product_attention (cuDNN/flash back ends: measured faster than hal's kernel for these two dense masks
  on an H100, see docs/nvidia.md), or through hal's Triton kernel (``hal.kernels.attention``) where it supports the
  call (bf16/fp16, a head dim it has tiles for: 64/128/256, equal q/k lengths when causal, Hopper or datacenter
  Blackwell), SDPA otherwise. Masked patterns (sliding window, documents, prefix-LM...) use
  ``hal.kernels.attention.compile_attention`` directly.
- ``?fuse=inductor|none`` (default none): how a claimed subgraph's one Program runs (``fusion.py``): the ops'
  own implementations composed along the wiring and compiled by ``torch.compile`` (Inductor), or composed as they are.
- ``?graphs=auto|always|never`` (default auto): CUDA graphs for a claimed subgraph's Program (``graphs.py``, PyGraph
  style): each input layout is captured after warm-up, and under ``auto`` replayed only where replay (with its input
  and output copies) measured at least 1.1x faster than eager and the graph holds at most ``?graph_memory_mib``
  (default 1024); ``always`` replays wherever capture is legal; ``never`` runs eager. ``?graph_buckets=`` (default 8)
  bounds the input layouts kept per Program. The Program's ``path`` ends with the decision ("graphed: replay 0.12 ms
  vs eager 1.15 ms per call, 3.1 MiB", "eager: capture illegal: ..."), and its ``decision`` attribute holds it with
  the measured figures. Graphs replay inference only (grad mode with inputs or weights requiring grad runs eager);
  every graph of the device (its Programs' and its compiled torch graphs') shares one memory pool, ``graph_pool``.

- ``?fuse_passes=on|off`` (default on): whether ``torch.compile(model, backend="hal")`` rewrites the graphs it hands
  this GPU with hal's fusion passes before Inductor compiles them (``torch_graph.py``, ``passes/``); such graphs are
  then replayed as CUDA graphs under ``?graphs=``.

Subgraph claims: any chain or DAG of declared vocabulary ops is claimed (``claim``) and runs as one Program whose
intermediates stay on the GPU; a subgraph with an op the device does not declare is refused with the reason.
``hal.nn.convert`` needs no twin of the driver's own: the generic ``DeviceLinear`` / ``DeviceConv2d`` prepare this
device's ``linear`` / ``conv2d``, whose Programs apply ``?matmul_precision`` (an fp8 weight is quantised once, at
prepare).

Inputs may be on the host or on this GPU: host tensors are copied to the GPU on every call (weights once, at
prepare) and results stay on the GPU. Tensors on another GPU are refused with DeviceMismatch. Running out of GPU
memory raises CapacityExceeded with the bytes asked for and the bytes free.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch

from hal import ops as vocabulary
from hal.capability import Capabilities, OpSupport, Paradigm
from hal.device import (
    Check,
    Cost,
    Device,
    DeviceInfo,
    OpSpec,
    Option,
    Program,
    Support,
    TorchGraph,
    bounded_float,
    bounded_int,
    choice,
    dtype_name,
)
from hal.drivers.nvidia import fusion, graphs, matmul
from hal.drivers.nvidia.architectures import BY_MAJOR, GENERIC_KIND, architecture_for
from hal.drivers.nvidia.capabilities import build_capabilities
from hal.drivers.nvidia.detect import DetectedGpu, Detection, current_backends, detect
from hal.drivers.nvidia.nvml import NvmlQueryError, NvmlSession, NvmlUnavailable
from hal.errors import CapacityExceeded, DeviceFailure, DeviceUnavailable, InvalidInput, UnsupportedOp
from hal.kernels.torch_ops import TORCH_OPS
from hal.subgraph import Subgraph, run_wired

DTYPES = ("float32", "float64", "bfloat16", "float16")
#: Relative Frobenius error vs float64 each dtype meets when computed in that dtype (CUDA kernels accumulate
#: reductions in float32 for half types): a few times the expected output rounding.
TOLERANCE = {"float64": 1e-10, "float32": 1e-4, "bfloat16": 3e-2, "float16": 5e-3}
#: Tolerance when the tensor cores read a narrower format than the inputs (see matmul.expected_error).
COMPUTE_TOLERANCE = {"tfloat32": 2e-3, "bfloat16": 3e-2, "float16": 5e-3, "float8_e4m3fn": 1.2e-1}
GEMM_OPS = ("matmul", "linear", "conv2d")
#: Architectures hal's Triton attention kernel has tuned tiles for (cc 12.x has 100 KB of shared memory, not 228).
ATTENTION_KERNEL_MAJORS = (9, 10)

_ALLOCATION = re.compile(r"Tried to allocate ([0-9.]+) (B|KiB|MiB|GiB|TiB)")
_UNITS = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}


class GpuProgram(Program):
    """A Program that also says which implementation it runs (``path``), e.g. ``torch._scaled_mm fp8``."""

    def __init__(self, op: OpSpec, device: Device, cost: Cost, run: Callable[..., Any], path: str):
        super().__init__(op, device, cost, run)
        self.path = path


def _tolerances(op_name: str, precision: str) -> dict[str, float]:
    if op_name not in GEMM_OPS:
        return dict(TOLERANCE)
    tol = {}
    for name in DTYPES:
        fmt = matmul.compute_format(precision, getattr(torch, name), op_name)
        tol[name] = max(TOLERANCE[name], COMPUTE_TOLERANCE.get(fmt, 0.0)) if fmt != name else TOLERANCE[name]
    return tol


def declared_ops(precision: str, attention_choice: str) -> dict[str, OpSupport]:
    """Every vocabulary op in float32/64 and bf16/fp16, with tolerances that follow the matmul policy."""
    notes = {
        "matmul": f"matmul_precision={precision}; fp8 uses torch._scaled_mm with per-tensor scales" if precision == "fp8" else f"matmul_precision={precision}",
        "linear": f"matmul_precision={precision}; weights converted once at prepare",
        "conv2d": "cuDNN; matmul_precision applies (fp8 runs as bf16)",
        "attention": "hal.kernels.attention (Triton; Gluon on Hopper) for bf16/fp16 where supported, torch SDPA otherwise" if attention_choice == "hal" else "torch scaled_dot_product_attention",
        "selective_scan": "hal.kernels.ssm (the fused chunked Triton scan on the GPU; docs/ssm.md)",
    }
    return {name: OpSupport(DTYPES, _tolerances(name, precision), notes=notes.get(name, "")) for name in vocabulary.VOCABULARY}


def _peak_name(fmt: str, gemm: bool) -> str:
    if not gemm or fmt == "float32":
        return "float32_flop_per_s"
    if fmt == "float64":
        return "float64_tensor_flop_per_s"
    if fmt == "float8_e4m3fn":
        return "float8_tensor_flop_per_s"
    return f"{fmt}_tensor_flop_per_s"


class NvidiaDevice(Device):
    """One NVIDIA GPU (CUDA device ``index``) of this class's kind; see the module docstring."""

    OPTIONS: ClassVar = {
        "matmul_precision": Option(choice({p: p for p in matmul.PRECISIONS}), "native", "the tensor-core policy of matmul/linear/conv2d: native, tf32, bf16, fp16 or fp8"),
        "attention": Option(choice({"hal": "hal", "sdpa": "sdpa"}), "sdpa", "'sdpa' (torch's fused attention; the faster for dense full/causal masks) or 'hal' (hal's Triton attention kernel where it fits, else SDPA)"),
        "fuse": Option(choice({"inductor": "inductor", "none": "none"}), "none", "how a claimed subgraph runs: 'none' (its ops composed as they are; measured faster in wall time on small blocks, docs/nvidia.md) or 'inductor' (torch.compile fuses its ops, compiling at the first call)"),
        "graphs": Option(choice({m: m for m in graphs.MODES}), "auto", "CUDA graphs for a claimed subgraph: 'auto' (each input layout captured, kept where replay measured faster than eager within ?graph_memory_mib), 'always' (wherever capture is legal) or 'never'"),
        "fuse_passes": Option(choice({"on": "on", "off": "off"}), "on", "torch.compile(backend='hal') graphs on this GPU: 'on' rewrites small-batch linear regions into hal's fused GEMM kernels before Inductor (torch_graph.py), 'off' leaves them to Inductor"),
        "graph_buckets": Option(bounded_int(1), int(graphs.MAX_BUCKETS.value), "input layouts a claimed subgraph keeps a graph (or an eager decision) for, an integer >= 1; the least recently used is evicted"),
        "graph_memory_mib": Option(bounded_float(0.0), graphs.MEMORY_BUDGET.value / graphs.MIB, "the memory one graph may hold under ?graphs=auto (pool growth at capture + input buffers), MiB >= 0"),
    }
    #: Human description of the GPUs this kind runs, for messages.
    family: ClassVar[str] = ""

    def __init__(self, uri):
        super().__init__(uri)
        here = str(self.uri)
        if not isinstance(self.index, int):
            raise DeviceUnavailable(here, f"{self.kind} devices are numbered by CUDA ordinal (e.g. {self.kind}:0), not named", f"use {self.kind}:0")
        self.detection: Detection = detect()
        gpu = self.detection.find(self.index)
        if gpu is None:
            reason = self.detection.reason or f"there is no CUDA device {self.index} (this machine has {len(self.detection.gpus)})"
            raise DeviceUnavailable(here, reason, self.detection.fix or "run `hal devices` to list the GPUs")
        if self.kind not in (gpu.kind, GENERIC_KIND):
            raise DeviceUnavailable(
                here,
                f"CUDA device {self.index} is {gpu.name} (compute capability {gpu.cuda.cc_major}.{gpu.cuda.cc_minor}), which hal runs as {gpu.kind}:{self.index}",
                f"open it as {gpu.kind}:{self.index} (or {GENERIC_KIND}:{self.index}, which opens any NVIDIA GPU)",
            )
        if gpu.problem:
            raise DeviceUnavailable(here, gpu.problem, gpu.fix)
        self.gpu: DetectedGpu = gpu
        self.precision: str = self.options["matmul_precision"]
        why = matmul.unsupported_reason(self.precision, gpu.cuda.compute_capability)
        if why:
            raise InvalidInput(f"{here}: {why}; use matmul_precision=native or bf16")
        self.torch_device = torch.device("cuda", gpu.ordinal)
        self._nvml: NvmlSession | None = None
        self._graph_pool: graphs.GraphPool | None = None

    # ---- discovery
    @classmethod
    def probe(cls) -> list[DeviceInfo]:
        detection = detect()
        mine = cls._opens(detection)
        if not mine:
            reason, fix = cls._absent(detection)
            return [DeviceInfo(uri=f"{cls.kind}:0", kind=cls.kind, available=False, reason=reason, fix=fix, paradigm=Paradigm.DIGITAL.value)]
        return [cls._info(gpu) for gpu in mine]

    @classmethod
    def _opens(cls, detection: Detection) -> list[DetectedGpu]:
        """The GPUs this kind opens: its family's, or every GPU for ``cuda``."""
        return list(detection.gpus) if cls.kind == GENERIC_KIND else detection.of_kind(cls.kind)

    @classmethod
    def _absent(cls, detection: Detection) -> tuple[str, str]:
        if detection.reason:
            return detection.reason, detection.fix
        others = ", ".join(g.describe() for g in detection.gpus)
        return f"no {cls.family} here; this machine has {others}", f"use {detection.gpus[0].uri}"

    @classmethod
    def _info(cls, gpu: DetectedGpu) -> DeviceInfo:
        arch = architecture_for(gpu.cuda.cc_major)
        summary: dict[str, Any] = {
            "name": gpu.name,
            "compute_capability": f"{gpu.cuda.cc_major}.{gpu.cuda.cc_minor}",
            "sm_count": gpu.cuda.sm_count,
            "memory_bytes": gpu.nvml.memory_total_bytes if gpu.nvml else gpu.cuda.total_memory_bytes,
        }
        rate = arch.dense_flops_per_sm_per_clock.get("bfloat16_tensor_flop_per_s") if arch else None
        if rate and gpu.nvml and gpu.nvml.max_sm_clock_mhz:
            summary["peak_flop_per_s"] = gpu.cuda.sm_count * gpu.nvml.max_sm_clock_mhz * 1e6 * rate
            summary["peak_dtype"] = "bfloat16"
        if gpu.kind != cls.kind:
            summary["alias_of"] = gpu.uri  # the same GPU under its family's name: count it once
        uri = f"{cls.kind}:{gpu.ordinal}"
        return DeviceInfo(uri=uri, kind=cls.kind, available=not gpu.problem, reason=gpu.problem, fix=gpu.fix, paradigm=Paradigm.DIGITAL.value, summary=summary)

    @classmethod
    def diagnose(cls) -> list[Check]:
        """The chain `hal doctor` walks: NVML library and driver, GPU count, CUDA driver API, torch, this kind's GPUs."""
        detection = detect()
        if detection.reason:
            return [Check("NVIDIA GPUs", False, detection.reason, detection.fix)]
        checks = [Check("NVIDIA driver", True, f"driver {detection.driver_version} (CUDA {detection.cuda_driver_version}); {len(detection.gpus)} GPU(s) through NVML and the CUDA driver API")]
        checks += [Check(f"NVML GPU {index}", False, reason, "check `nvidia-smi -q` and `dmesg | grep -i xid`") for index, reason in detection.nvml_errors.items()]
        mine = cls._opens(detection)
        for gpu in mine:
            detail = gpu.problem or f"{gpu.name}, compute capability {gpu.cuda.cc_major}.{gpu.cuda.cc_minor}, {gpu.cuda.sm_count} SMs"
            detail += f" (the same GPU as {gpu.uri})" if gpu.kind != cls.kind else ""
            checks.append(Check(f"{cls.kind}:{gpu.ordinal}", not gpu.problem, detail, gpu.fix))
        if not mine:
            reason, fix = cls._absent(detection)
            checks.append(Check(f"{cls.kind} GPUs", False, reason, fix))
        return checks

    # ---- capabilities and estimates
    def _build_capabilities(self) -> Capabilities:
        notes = [
            "Inputs on the host are copied to the GPU on every call; results stay on the GPU.",
            "NaN/inf propagate as IEEE arithmetic does (like torch); they are not refused.",
        ]
        return build_capabilities(str(self.uri), self.kind, self.gpu, self.detection, declared_ops(self.precision, self.options["attention"]), notes)

    def _check(self, op: OpSpec) -> Support | None:
        memory = self.capabilities.memory_bytes
        needed = vocabulary.bytes_moved(op)
        if memory is not None and needed > memory.value:
            return Support.no(f"{op.name} needs {needed / 2**30:.1f} GiB of operands and result but {self.uri} holds {memory.value / 2**30:.1f} GiB; split the op")
        return None

    def estimate(self, op: OpSpec) -> Cost:
        """Roofline on the derived peaks: latency = max(flops / peak of the compute format, bytes / bandwidth);
        energy = latency * power limit (an upper bound); error from matmul.expected_error or sqrt(K) * u."""
        caps = self.capabilities
        dtype = op.inputs[0].dtype if op.inputs else torch.float32
        gemm = op.name in (*GEMM_OPS, "attention")
        fmt = matmul.compute_format(self.precision, dtype, op.name) if op.name in GEMM_OPS else dtype_name(dtype)
        rate = caps.peak.get(_peak_name(fmt, gemm)) or caps.peak.get("float32_flop_per_s")
        bandwidth = caps.peak.get("memory_bandwidth_b_per_s")
        compute_s = vocabulary.flops(op) / rate.value if rate else 0.0
        memory_s = vocabulary.bytes_moved(op) / bandwidth.value if bandwidth else 0.0
        latency = max(compute_s, memory_s)
        power = caps.sections["gpu"].power_limit_w
        energy = latency * power.value if power else 0.0
        k = vocabulary.reduction_length(op)
        if op.name in GEMM_OPS:
            error = matmul.expected_error(self.precision, dtype, k, op.name)
        else:
            error = math.sqrt(k) * matmul.UNIT_ROUNDOFF.get(dtype_name(dtype), matmul.UNIT_ROUNDOFF["float32"])
        formula = f"latency = max(flops / {_peak_name(fmt, gemm) if rate else 'unknown rate'}, bytes / memory_bandwidth); energy = latency * power limit (upper bound); error: {fmt} rounding model"
        return Cost(latency, energy, error, formula)

    # ---- compile-then-run
    def _compile(self, op: OpSpec, params: dict[str, torch.Tensor]) -> Program:
        fn, path = self._op_fn(op, params)
        return GpuProgram(op, self, self.estimate(op), self._guarded(op, fn), path)

    def _op_fn(self, op: OpSpec, params: dict[str, torch.Tensor], set_float32_mode: bool = True) -> tuple[Callable[..., torch.Tensor], str]:
        """The function computing ``op`` on GPU tensors, with its parameters moved to the GPU, and its path.

        ``set_float32_mode=False``: the GEMMs leave the TF32/IEEE mode to the caller (one switch around a subgraph).
        """
        dev = self.torch_device
        params = {k: v.to(dev) for k, v in params.items()}
        attrs = dict(op.attrs)
        dtype = op.inputs[0].dtype
        if op.name == "matmul":
            return matmul.matmul_fn(self.precision, dtype, set_float32_mode=set_float32_mode), f"torch matmul ({matmul.compute_format(self.precision, dtype)})"
        if op.name == "linear":
            fn = matmul.linear_fn(self.precision, dtype, params["weight"], params.get("bias"), attrs["activation"], set_float32_mode=set_float32_mode)
            return fn, f"torch linear ({matmul.compute_format(self.precision, dtype, 'linear')})"
        if op.name == "conv2d":
            fn = matmul.conv2d_fn(self.precision, dtype, params["weight"], params.get("bias"), attrs, set_float32_mode=set_float32_mode)
            return fn, f"cuDNN conv2d ({matmul.compute_format(self.precision, dtype, 'conv2d')})"
        if op.name == "attention":
            return self._attention(op, attrs)
        torch_op = TORCH_OPS[op.name]

        def fn(*inputs: torch.Tensor) -> torch.Tensor:
            return torch_op(inputs, params, attrs)

        return fn, "torch CUDA"

    # ---- subgraph claims
    def claim(self, sub: Subgraph) -> Support:
        """Any chain or DAG of ops this GPU declares and supports (the vocabulary, within memory)."""
        for j, op in enumerate(sub.ops):
            support = self.supports(op)
            if not support:
                return Support.no(f"op {j} ({op.name}) does not run on {self.uri}: {support.reason}")
        return Support.yes()

    def _compile_subgraph(self, sub: Subgraph, params: list[dict[str, torch.Tensor]]) -> Program:
        """The ops' own functions composed along the wiring, fused by Inductor where it compiles, replayed as a CUDA
        graph per input layout where ``?graphs=`` says so (``fusion.py``, ``graphs.py``)."""
        steps = [self._op_fn(op, p, set_float32_mode=False)[0] for op, p in zip(sub.ops, params)]

        def composed(*inputs: torch.Tensor) -> Any:
            return run_wired(sub, steps, inputs)

        why_not = "?fuse=none" if self.options["fuse"] == "none" else fusion.inductor_unavailable(self.torch_device)
        composition = fusion.Composition(composed, why_not, graph_policy=self._graph_policy(), device=self.torch_device, pool=self.graph_pool)
        tf32 = self.precision == "tf32"
        op = sub.as_opspec()
        program: GpuProgram

        def run(*inputs: torch.Tensor) -> Any:
            with matmul.float32_mode(tf32):  # one switch for every float32 GEMM of the subgraph, captured with it
                out = composition(*inputs)
            program.path = composition.path
            program.decision = composition.decision
            return out

        program = GpuProgram(op, self, self.estimate_subgraph(sub), self._guarded(op, run), composition.path)
        program.decision = composition.decision  # graphs.GraphDecision of the last call's input layout
        return program

    @property
    def graph_pool(self) -> graphs.GraphPool:
        """The one graph memory pool of every CUDA graph this device's Programs and compiled graphs capture: they
        reuse each other's intermediate memory and replay one at a time under its lock (graphs.py)."""
        with self._lock:
            if self._graph_pool is None:
                self._graph_pool = graphs.GraphPool(self.torch_device)
            return self._graph_pool

    def _graph_policy(self) -> graphs.GraphPolicy:
        """The CUDA-graph policy the ``?graphs=`` / ``?graph_buckets=`` / ``?graph_memory_mib=`` options set."""
        return graphs.GraphPolicy(
            mode=self.options["graphs"],
            max_buckets=self.options["graph_buckets"],
            max_buckets_made=max(self.options["graph_buckets"], int(graphs.MAX_BUCKETS_MADE.value)),
            memory_budget_bytes=int(self.options["graph_memory_mib"] * graphs.MIB),
        )

    # ---- whole torch graphs (torch.compile(backend="hal"))
    def compile_torch_graph(self, gm: torch.fx.GraphModule, example_inputs: Sequence[Any], delegate: Callable[[torch.fx.GraphModule, Sequence[Any]], Callable[..., Any]]) -> TorchGraph | None:
        """hal's fusion passes, then ``delegate`` (Inductor), then a CUDA graph where it pays (``torch_graph.py``)."""
        from hal.drivers.nvidia import torch_graph

        return torch_graph.compile_torch_graph(gm, example_inputs, delegate, device=self.torch_device, policy=self._graph_policy(),
                                               fuse=self.options["fuse_passes"] == "on", pool=self.graph_pool)

    def _attention(self, op: OpSpec, attrs: dict[str, Any]) -> tuple[Callable[..., torch.Tensor], str]:
        q, k, v = op.inputs
        causal, scale = attrs["causal"], attrs["scale"]
        arch = BY_MAJOR[self.gpu.cuda.cc_major].name if self.gpu.cuda.cc_major in ATTENTION_KERNEL_MAJORS else None
        fits = (
            self.options["attention"] == "hal"
            and arch is not None
            and q.dtype in (torch.bfloat16, torch.float16)
            and k.shape == v.shape
            and (not causal or q.shape[2] == k.shape[2])
        )
        if fits:
            try:
                from hal.kernels.attention import compile_attention, configs, patterns
            except ImportError:
                fits = False
        # the head dims the kernel has tuned tiles for on this architecture (64, 128, 256 on Hopper)
        if fits and q.shape[3] in configs.ARCHITECTURES[arch].forward:
            kernel = compile_attention(patterns.causal() if causal else patterns.full(), head_dim=q.shape[3], dtype=q.dtype, arch=arch)
            return (lambda q_, k_, v_: kernel(q_, k_, v_, scale=scale)), "hal.kernels.attention (Triton/Gluon)"
        sdpa = TORCH_OPS["attention"]
        if q.dtype == torch.float32:

            def sdpa_fp32(*inputs: torch.Tensor) -> torch.Tensor:
                with matmul.float32_mode(False):
                    return sdpa(inputs, {}, attrs)

            return sdpa_fp32, "torch SDPA (IEEE float32)"
        return (lambda *inputs: sdpa(inputs, {}, attrs)), "torch SDPA"

    def _guarded(self, op: OpSpec, fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        """Move host inputs to the GPU and turn CUDA out-of-memory into CapacityExceeded."""
        dev = self.torch_device

        def run(*inputs: torch.Tensor) -> torch.Tensor:
            try:
                return fn(*[t if t.device == dev else t.to(dev, non_blocking=True) for t in inputs])
            except torch.cuda.OutOfMemoryError as exc:
                raise self._out_of_memory(op, exc) from None

        return run

    def _out_of_memory(self, op: OpSpec, exc: Exception) -> CapacityExceeded:
        found = _ALLOCATION.search(str(exc))
        needed = float(found.group(1)) * _UNITS[found.group(2)] if found else float(vocabulary.bytes_moved(op))
        try:
            free = float(self.telemetry()["memory_free_bytes"])
            free_text = f"{free / 2**30:.2f} GiB free"
        except (DeviceFailure, UnsupportedOp):
            free, free_text = None, "free memory unknown (NVML did not answer)"
        total = self.capabilities.memory_bytes
        return CapacityExceeded(
            f"{op.name} on {self.uri} ran out of GPU memory: it asked for {needed / 2**30:.2f} GiB with {free_text} of {total.value / 2**30:.1f} GiB; "
            "use smaller batches, free tensors you no longer need, or a narrower dtype",
            needed=needed,
            available=free,
        )

    # ---- live state
    def telemetry(self) -> dict[str, Any]:
        """Power W, temperature C, utilisation %, memory used/free bytes and SM clock from NVML."""
        if self.gpu.nvml is None:
            raise UnsupportedOp(f"{self.uri}: NVML does not report this GPU, so there is no telemetry")
        try:
            if self._nvml is None:
                self._nvml = current_backends().nvml_session()
            return self._nvml.telemetry(self.gpu.nvml.index)
        except NvmlUnavailable as exc:
            raise DeviceFailure(f"{self.uri}: {exc.reason}. Fix: {exc.fix}") from None
        except NvmlQueryError as exc:
            raise DeviceFailure(f"{self.uri}: {exc.reason}. Fix: {exc.fix}") from None

    def synchronize(self) -> None:
        torch.cuda.synchronize(self.torch_device)

    def close(self) -> None:
        if self._nvml is not None:
            self._nvml.close()
            self._nvml = None
        super().close()


class HopperDevice(NvidiaDevice):
    """An NVIDIA Hopper GPU (compute capability 9.x: H100, H200, GH200)."""

    kind = "hopper"
    family = "Hopper GPU (compute capability 9.x)"


class BlackwellDevice(NvidiaDevice):
    """An NVIDIA Blackwell GPU (compute capability 10.x: B200, GB200, B300; 12.x: RTX 50 series, RTX PRO)."""

    kind = "blackwell"
    family = "Blackwell GPU (compute capability 10.x or 12.x)"


class CudaDevice(NvidiaDevice):
    """Any NVIDIA GPU by CUDA ordinal. A Hopper or Blackwell GPU gets its family's capabilities and kernels (the same
    device as ``hopper:N`` / ``blackwell:N`` under another name, listed with ``summary["alias_of"]``); any other
    (Ampere, Ada, ...) generic ones."""

    kind = GENERIC_KIND
    family = "NVIDIA GPU outside the Hopper/Blackwell families"
