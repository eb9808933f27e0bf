"""CUDA graphs in hal's NVIDIA execution path, PyGraph style: captured per input layout, parameters read in place,
kept only where they pay.

The ideas are those of Ghosh et al., 2025, "PyGraph: Robust compiler support for CUDA Graphs in PyTorch": deploy
graphs widely (any callable of CUDA tensors, one graph per bucket of input layouts, a bucket that cannot be captured
runs eager instead of failing the call), copy no parameters (static inputs are read in place at their capture-time
address, so an optimiser step or ``w.copy_()`` is seen by the next replay with no copy and no re-capture), and
deploy by cost-benefit (each bucket times eager calls against replays and weighs the memory the graph holds; the
loser runs eager, and the measured numbers are the stated reason).

How to build one, call it and read it::

    pool = GraphPool(torch.device("cuda", 0))      # one per plan: its graphs share one torch graph memory pool
    step = GraphedCallable(decode_step, device=pool.device, pool=pool, static_argnums=(1,), written_argnums=(2,))
    y = step(x, weight, kv_cache)    # a new bucket: the real call runs eager, then warm-up, capture, decision
    y = step(x, weight, kv_cache)    # a known bucket: replay (or eager, if that was decided)
    step.last_decision.reason        # "graphed: replay 0.12 ms vs eager 1.15 ms per call, 3.1 MiB"
    step.buckets()                   # [(bucket description, GraphDecision), ...], least recently used first
    step.stats                       # calls, replays, eager calls, buckets made, input copies and skips, evictions
    step.clear()                     # drop every bucket and the memory its graph held

Buckets. A call's key is the grad and inference modes and, for every input, its dtype, shape, stride and device;
an input read in place adds its address (``data_ptr``). With ``layouts_guarded=True`` the caller promises that
every call's inputs have the example's dtypes, shapes, strides and devices (Dynamo's guards check exactly that
before they call a compiled graph) and that only the static and written inputs are read in place: the key is then
the modes and the static inputs' addresses alone (a list of ``data_ptr`` calls: about 16 us for 180 parameters on a
CPU core, against 120 us for the full key). A bucket keeps the tensors its graph reads, so no address
in a key can be reused by another tensor while the bucket lives: a static input replaced by another tensor has
another address, so it makes another bucket and never replays the old address. At most ``max_buckets`` buckets
are kept (least recently used evicted, each eviction counted and explained in ``stats.evictions``); after
``max_buckets_made`` buckets the callable stops capturing new keys and runs them eager, with the reason.

Inputs. Read in place (never copied): the ``static_argnums`` and ``written_argnums`` inputs, those ``is_static``
accepts (e.g. ``lambda t: isinstance(t, torch.nn.Parameter)``). Every other input is copied into
the bucket's own buffer before a replay, unless it is already at that buffer's address (``static_inputs()`` gives
the buffers, to write the next inputs into in place, as torch's own CUDA-graph recipe does). Tensors ``fn``
closes over (the driver's weights) are read at their capture-time address too: update them in place, never
rebind them.

Writes. ``fn`` may write inputs in place if they are listed in ``written_argnums`` (a KV cache): the graph writes
the caller's tensor. A bucket's first call runs ``fn`` more than once (the real call, warm-up, timing): the
written inputs are saved after the real call and restored after the measurement, so the caller sees one call's
effect. A write to any other input is refused for that bucket (it runs eager, with the reason): detected through
the tensor's version counter, or, for inference tensors (which have none), by comparing the contents of inputs
that would be copied. State ``fn`` writes that is not an input (a module buffer it closes over) is written by every
warm-up and timing call: pass such state as a written input.

Outputs. ``__call__`` returns fresh tensors (copies of the static outputs, the caller may keep them), except an
output that is a view of an input read in place (the caller's own tensor, a KV cache): that view is returned as it
is, as eager returns it. The static outputs themselves are never handed out: graphs of one pool share its memory,
so a graph captured later may hold its outputs where an earlier one keeps intermediates, and that one's next replay
would overwrite them.

Threads. Graphs of one pool share its memory for their intermediates and each graph its buffers, so every replay
(input copies, launch, output copies), capture and release of a pool's graphs holds the pool's lock, and each
replay's stream first waits for the event the previous replay recorded: calls from several threads, on one stream
or several, are serialised on the GPU and never see each other's buffers (the runtime runs one plan from several
threads at once). Captures use ``capture_error_mode="thread_local"``, so CUDA calls other threads make meanwhile
stay legal. Replays, copies and timing run on the caller's current stream; warm-up and capture run on a side stream that waits for
the caller's stream and that the caller's stream then waits for.

Inference only: a call in grad mode with an input that requires grad, or a bucket whose outputs require grad,
runs eager. RNG (dropout) draws new numbers on every replay: torch registers its default CUDA generator with the
graph at capture, and each replay advances its offset.

The CUDA-touching primitives (side stream, capture, replay, events, memory counters, copies) sit behind a
``GraphBackend``: ``CudaGraphBackend`` here, a fake in the tests, so bucketing, copy skipping, the decision,
eviction and the fallbacks are tested without a GPU.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from hal.capability import Figure
from hal.errors import InvalidInput

MIB = 2**20

MAX_BUCKETS = Figure.assumed(8, "buckets", "Dynamo's default recompile_limit: as many input layouts per callable as torch.compile keeps")
MAX_BUCKETS_MADE = Figure.assumed(32, "buckets", "4 x MAX_BUCKETS: past that the layouts churn and every new one costs a warm-up, capture and timing")
WARMUP_CALLS = Figure.assumed(3, "calls", "torch.cuda.make_graphed_callables' num_warmup_iters default: lazy cuBLAS/cuDNN/Triton setup happens before capture")
TIMING_CALLS = Figure.assumed(10, "calls", "per side of the comparison: enough CUDA-event timed calls to average out launch jitter, few enough to cost milliseconds")
MIN_SPEEDUP = Figure.assumed(1.1, "x", "replay must beat eager by 10%: more than run-to-run timing noise, and a margin for the memory the graph holds")
MEMORY_BUDGET = Figure.assumed(1024 * MIB, "B", "per bucket: graphs pay on launch-bound (small) work; 1 GiB is under 1% of an H100/H200's memory")

MODES = ("auto", "always", "never")


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3g} ms"


def _mib(nbytes: float) -> str:
    return f"{nbytes / MIB:.1f} MiB"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else 'no message'}"[:300]


@dataclass(frozen=True)
class GraphPolicy:
    """When a bucket is graphed: ``mode`` auto (replay measured ``min_speedup`` times faster than eager and the graph's
    memory within ``memory_budget_bytes``), always (wherever capture is legal, untimed, whatever its memory) or never.
    The defaults and why they are what they are: the ``Figure.assumed`` constants above."""

    mode: str = "auto"
    max_buckets: int = int(MAX_BUCKETS.value)
    max_buckets_made: int = int(MAX_BUCKETS_MADE.value)
    warmup_calls: int = int(WARMUP_CALLS.value)
    timing_calls: int = int(TIMING_CALLS.value)
    min_speedup: float = MIN_SPEEDUP.value
    memory_budget_bytes: int = int(MEMORY_BUDGET.value)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InvalidInput(f"graph mode {self.mode!r} is not one of {', '.join(MODES)}")
        counts = {"max_buckets": self.max_buckets, "max_buckets_made": self.max_buckets_made, "warmup_calls": self.warmup_calls, "timing_calls": self.timing_calls}
        for name, value in counts.items():
            if not isinstance(value, int) or value < 1:
                raise InvalidInput(f"GraphPolicy.{name} must be an integer >= 1, got {value!r}")
        if self.max_buckets_made < self.max_buckets:
            raise InvalidInput(f"GraphPolicy.max_buckets_made ({self.max_buckets_made}) must be at least max_buckets ({self.max_buckets})")
        if not self.min_speedup >= 1.0:
            raise InvalidInput(f"GraphPolicy.min_speedup must be >= 1 (replay at least as fast as eager), got {self.min_speedup!r}")
        if not self.memory_budget_bytes >= 0:
            raise InvalidInput(f"GraphPolicy.memory_budget_bytes must be >= 0, got {self.memory_budget_bytes!r}")


@dataclass(frozen=True)
class GraphDecision:
    """Whether a bucket replays a graph, why (``reason``, for a person), and the measured numbers behind it."""

    graphed: bool
    reason: str
    eager_s_per_call: Figure | None = None
    replay_s_per_call: Figure | None = None
    memory_bytes: Figure | None = None

    @classmethod
    def eager(cls, why: str) -> GraphDecision:
        return cls(False, f"eager: {why}")


#: The decision of a callable before its first call.
PENDING = GraphDecision(False, "not called yet: the first call of each input layout decides")


@dataclass
class GraphStats:
    """Counters of one GraphedCallable; ``evictions`` has one line per evicted bucket saying which and why."""

    calls: int = 0
    replays: int = 0
    eager_calls: int = 0
    buckets_made: int = 0
    input_copies: int = 0
    copies_skipped: int = 0
    evictions: list[str] = field(default_factory=list)


class GraphBackend(Protocol):
    """The CUDA-touching primitives a GraphedCallable uses (``CudaGraphBackend``; a fake in the tests)."""

    device: torch.device
    #: What ``per_call_s`` measures with, for the figures' provenance.
    clock: str

    def new_pool(self) -> Any:
        """A new graph memory pool handle."""
        ...

    def warm_up(self, fn: Callable[..., Any], args: Sequence[torch.Tensor], calls: int) -> None:
        """Run ``fn(*args)`` ``calls`` times on the capture stream."""
        ...

    def capture(self, fn: Callable[..., Any], args: Sequence[torch.Tensor], pool: Any) -> tuple[Any, Any]:
        """Capture ``fn(*args)`` into a graph allocating from ``pool``: (graph, its static outputs). On failure, leave
        no capture open and the pool as it was, then raise."""
        ...

    def replay(self, graph: Any) -> None:
        """Launch ``graph`` on the caller's current stream."""
        ...

    def release(self, graph: Any) -> None:
        """Free ``graph`` (its intermediates return to the pool)."""
        ...

    def per_call_s(self, call: Callable[[], Any], calls: int) -> float:
        """Seconds per call of ``call``, timed over ``calls`` calls from an idle device (launches included)."""
        ...

    def reserved_bytes(self) -> int:
        """Bytes the allocator holds on the device now."""
        ...

    def copy_(self, dst: torch.Tensor, src: torch.Tensor) -> None:
        """Copy ``src`` into ``dst`` on the caller's current stream."""
        ...

    def fresh(self, t: torch.Tensor) -> torch.Tensor:
        """A new tensor equal to ``t`` (a static output handed to the caller)."""
        ...

    def fence(self) -> Any:
        """A marker of the work enqueued so far on the caller's current stream (a recorded CUDA event)."""
        ...

    def wait(self, fence: Any) -> None:
        """Make the caller's current stream wait for ``fence`` before the work enqueued next."""
        ...


class CudaGraphBackend:
    """GraphBackend of one CUDA device: a side stream for warm-up and capture, CUDA events, torch's allocator counters."""

    clock = "CUDA events"

    def __init__(self, device: torch.device):
        index = device.index if device.index is not None else torch.cuda.current_device()
        self.device = torch.device("cuda", index)
        self._side: torch.cuda.Stream | None = None

    def _side_stream(self) -> torch.cuda.Stream:
        if self._side is None:
            self._side = torch.cuda.Stream(self.device)
        return self._side

    def new_pool(self) -> Any:
        with torch.cuda.device(self.device):
            return torch.cuda.graph_pool_handle()

    def warm_up(self, fn: Callable[..., Any], args: Sequence[torch.Tensor], calls: int) -> None:
        current, side = torch.cuda.current_stream(self.device), self._side_stream()
        side.wait_stream(current)
        with torch.cuda.device(self.device), torch.cuda.stream(side):
            for _ in range(calls):
                fn(*args)
        current.wait_stream(side)

    def capture(self, fn: Callable[..., Any], args: Sequence[torch.Tensor], pool: Any) -> tuple[Any, Any]:
        current, side = torch.cuda.current_stream(self.device), self._side_stream()
        side.wait_stream(current)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.device(self.device), torch.cuda.stream(side):
            graph.capture_begin(pool=pool, capture_error_mode="thread_local")  # other threads' CUDA calls stay legal
            try:
                outputs = fn(*args)
            except Exception:
                self._abandon(graph, pool, open_capture=True)
                self._side = None  # an invalidated capture can leave its stream unusable for the next one
                raise
            try:
                graph.capture_end()
            except Exception:
                self._abandon(graph, pool, open_capture=False)
                self._side = None
                raise
        current.wait_stream(side)
        return graph, outputs

    def _abandon(self, graph: torch.cuda.CUDAGraph, pool: Any, open_capture: bool) -> None:
        """End a failed capture and give its hold on the pool back.

        An error raised by Python code leaves the capture intact: it ends and resets normally. An illegal CUDA call
        (a host sync, a pageable copy) invalidates it, and torch's ``capture_end`` then raises at
        ``cudaStreamEndCapture``, before it stops routing allocations to the pool and without marking the capture
        ended, so ``reset`` would not release the pool either; both are done here. If the allocator had already
        stopped (``capture_end`` failed later), ending again raises and the pool is left held rather than released
        twice (a second release could free memory another graph of the pool still uses).
        """
        if open_capture:
            try:
                graph.capture_end()
            except RuntimeError:
                pass
            else:
                graph.reset()
                return
        try:
            torch._C._cuda_endAllocateToPool(self.device.index, pool)
        except RuntimeError:
            graph.reset()
            return
        torch._C._cuda_releasePool(self.device.index, pool)
        graph.reset()

    def replay(self, graph: Any) -> None:
        graph.replay()

    def release(self, graph: Any) -> None:
        graph.reset()

    def per_call_s(self, call: Callable[[], Any], calls: int) -> float:
        torch.cuda.synchronize(self.device)  # an idle queue, so the events time the launches as well as the kernels
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            call()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) * 1e-3 / calls

    def reserved_bytes(self) -> int:
        return torch.cuda.memory_reserved(self.device)

    def copy_(self, dst: torch.Tensor, src: torch.Tensor) -> None:
        dst.copy_(src)

    def fresh(self, t: torch.Tensor) -> torch.Tensor:
        return t.clone()

    def fence(self) -> Any:
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(self.device))
        return event

    def wait(self, fence: Any) -> None:
        torch.cuda.current_stream(self.device).wait_event(fence)


def backend_for(device: torch.device) -> tuple[GraphBackend | None, str | None]:
    """The graph backend of ``device``, or None and why graphs cannot run there."""
    if device.type != "cuda":
        return None, f"CUDA graphs need a CUDA device; this callable runs on {device}"
    if not torch.cuda.is_available():
        return None, "CUDA graphs need torch's CUDA runtime, which is unavailable here (torch.cuda.is_available() is False)"
    return CudaGraphBackend(device), None


class GraphPool:
    """One graph memory pool shared by every graph of one plan (or one Composition), and the lock they replay under.

    Sharing the pool lets graphs reuse each other's intermediate memory, which is safe because graphs of one pool
    never replay concurrently (the lock and the fence) and their outputs are copied out under the lock.
    """

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self._handle: Any = None
        #: Held around every replay (input copies, launch, output copies) and release of the pool's graphs, from any
        #: thread: they share buffers and intermediate memory. ``fence`` marks the last replay's work, which the
        #: next one's stream waits for, so callers on different streams are ordered on the GPU too.
        self.lock = threading.Lock()
        self.fence: Any = None

    def handle(self, backend: GraphBackend) -> Any:
        """The pool's handle, made by ``backend`` on first use."""
        if self._handle is None:
            self._handle = backend.new_pool()
        return self._handle

    def renew(self) -> None:
        """Make the next capture take a new handle: after a failed capture the old one may still be held by it.
        Graphs captured before keep the memory of the handle they were captured with."""
        self._handle = None


@dataclass
class _Bucket:
    """One input layout: its decision and, when graphed, the graph, what it reads and what it writes."""

    description: str
    decision: GraphDecision
    graph: Any = None  # None once released (under the pool's lock): a replay that finds it so runs eager
    reads: tuple[torch.Tensor, ...] = ()  # the graph's inputs in argument order: buffers and tensors read in place
    copies: tuple[tuple[int, torch.Tensor, int], ...] = ()  # (argument, its buffer, the buffer's address)
    outputs: tuple[torch.Tensor, ...] = ()
    single: bool = True
    #: Per output: a view of a tensor read in place (the caller's own, e.g. a KV cache), handed back as it is, as eager
    #: hands back the view; every other output lives in graph memory and is copied for the caller.
    callers: tuple[bool, ...] = ()


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))


def _as_tuple(outputs: Any) -> tuple[Any, ...]:
    return (outputs,) if isinstance(outputs, torch.Tensor) else outputs


class GraphedCallable:
    """``fn(*tensors) -> tensor | tuple of tensors`` on one CUDA device, replayed as a CUDA graph per input bucket
    where the policy says it pays (see the module docstring)."""

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        device: torch.device,
        policy: GraphPolicy | None = None,
        pool: GraphPool | None = None,
        static_argnums: Iterable[int] = (),
        written_argnums: Iterable[int] = (),
        is_static: Callable[[torch.Tensor], bool] | None = None,
        backend: GraphBackend | None = None,
        layouts_guarded: bool = False,
    ):
        device = torch.device(device)
        written = frozenset(written_argnums)
        static = frozenset(static_argnums) | written
        bad = sorted(str(i) for i in static if not isinstance(i, int) or isinstance(i, bool) or i < 0)
        if bad:
            raise InvalidInput(f"static_argnums/written_argnums must be argument positions (integers >= 0), got {', '.join(bad)}")
        off = None
        if backend is None:
            backend, why = backend_for(device)
            off = None if why is None else GraphDecision.eager(why)
        self.policy = policy or GraphPolicy()
        if self.policy.mode == "never":
            off = GraphDecision.eager("graph mode never")
        self.device = backend.device if backend is not None else device
        if pool is not None and pool.device != device:
            raise InvalidInput(f"the graph pool belongs to {pool.device} but this callable runs on {self.device}; use one pool per device")
        self._fn = fn
        self._backend = backend
        self._pool = pool or GraphPool(self.device)
        self._static = static
        self._written = written
        self._is_static = is_static
        self._off = off
        self._guarded = sorted(static) if layouts_guarded else None
        self._buckets: OrderedDict[tuple, _Bucket] = OrderedDict()
        self._lock = threading.Lock()
        self.stats = GraphStats()
        self.last_decision: GraphDecision = off or PENDING

    # ---- calling
    def __call__(self, *inputs: torch.Tensor) -> Any:
        """``fn(*inputs)``, replayed where graphed; outputs are fresh tensors (or views of the caller's own)."""
        return self._run(inputs)

    def static_inputs(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The tensors the graph of ``inputs``' bucket reads, in argument order: write the next call's inputs into
        these buffers in place and pass them, and the replay copies nothing."""
        bucket = self._buckets.get(self._key(inputs))
        if bucket is None or bucket.graph is None:
            why = "no bucket has been made for them (call it first)" if bucket is None else bucket.decision.reason
            raise InvalidInput(f"no graph reads these inputs: {why}")
        return bucket.reads

    def _run(self, inputs: tuple[torch.Tensor, ...]) -> Any:
        stats = self.stats
        stats.calls += 1
        if self._off is not None:
            return self._eager(inputs, self._off)
        if torch.is_grad_enabled():
            grads = [i for i, t in enumerate(inputs) if isinstance(t, torch.Tensor) and t.requires_grad]
            if grads:
                return self._eager(inputs, GraphDecision.eager(f"autograd: grad mode is on and input {grads[0]} requires grad (graphs replay inference only: call under torch.inference_mode() or torch.no_grad())"))
        key = self._key(inputs)
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is not None:
                self._buckets.move_to_end(key)
        if bucket is None:
            return self._first_call(key, inputs)
        self.last_decision = bucket.decision
        if bucket.graph is not None:
            out = self._serialised_replay(bucket, inputs, stats)
            if out is not None:
                stats.replays += 1
                return out[0]
        stats.eager_calls += 1
        return self._fn(*inputs)

    def _serialised_replay(self, bucket: _Bucket, inputs: Sequence[torch.Tensor], stats: GraphStats) -> tuple[Any] | None:
        """``(outputs,)`` of a replay made under the pool's lock after the previous replay's fence, or None when the
        bucket was released meanwhile (another thread evicted it): the caller then runs eager."""
        pool, backend = self._pool, self._backend
        with pool.lock:
            if bucket.graph is None:
                return None
            if pool.fence is not None:
                backend.wait(pool.fence)
            out = self._replay(bucket, inputs, stats)
            pool.fence = backend.fence()
        return (out,)

    def _eager(self, inputs: tuple[torch.Tensor, ...], decision: GraphDecision) -> Any:
        self.stats.eager_calls += 1
        self.last_decision = decision
        return self._fn(*inputs)

    def _replay(self, bucket: _Bucket, inputs: Sequence[torch.Tensor], stats: GraphStats) -> Any:
        copy = self._backend.copy_
        for i, buffer, address in bucket.copies:
            t = inputs[i]
            if t.data_ptr() == address:
                stats.copies_skipped += 1
            else:
                copy(buffer, t)
                stats.input_copies += 1
        self._backend.replay(bucket.graph)
        out = tuple([o if theirs else self._backend.fresh(o) for o, theirs in zip(bucket.outputs, bucket.callers)])
        return out[0] if bucket.single else out

    # ---- keys
    def _declared_static(self, i: int, t: torch.Tensor) -> bool:
        return i in self._static or (self._is_static is not None and self._is_static(t))

    def _in_place(self, i: int, t: torch.Tensor) -> bool:
        """Whether input ``i`` is read where it lies (declared static or written) rather than copied. Under guarded
        layouts only the positions in the key are (a predicate's choice could differ from call to call)."""
        if self._guarded is not None:
            return i in self._static
        return self._declared_static(i, t)

    def _key(self, inputs: Sequence[torch.Tensor]) -> tuple:
        """The bucket key of a call (the replay path's one dict lookup): modes, each input's layout, addresses of
        the inputs read in place."""
        if self._guarded is not None:  # the caller's guards fix every layout: only the static addresses can change
            return (torch.is_grad_enabled(), torch.is_inference_mode_enabled(), *[inputs[i].data_ptr() for i in self._guarded])
        parts: list[Any] = [torch.is_grad_enabled(), torch.is_inference_mode_enabled()]
        in_place = self._in_place
        for i, t in enumerate(inputs):
            if not isinstance(t, torch.Tensor):
                raise InvalidInput(f"a graphed callable takes tensors only; input {i} is {type(t).__name__}")
            layout = (t.dtype, t.shape, t.stride(), t.device)
            parts.append((layout, t.data_ptr()) if in_place(i, t) else layout)
        return tuple(parts)

    # ---- a new bucket
    def _first_call(self, key: tuple, inputs: tuple[torch.Tensor, ...]) -> Any:
        declared = self._static | self._written
        if declared and max(declared) >= len(inputs):
            raise InvalidInput(f"static_argnums/written_argnums name input {max(declared)} but this call has {len(inputs)} input(s)")
        with self._lock:
            stats = self.stats
            if stats.buckets_made >= self.policy.max_buckets_made:
                return self._eager(inputs, GraphDecision.eager(
                    f"{stats.buckets_made} buckets made already, the limit (input layouts or static tensors keep changing, and each new "
                    "bucket costs a warm-up, a capture and timing): keep them fixed, or raise max_buckets_made"))
            stats.buckets_made += 1
            watch = self._watch(inputs)
            outputs = self._fn(*inputs)  # the real call: what the caller gets, whatever is decided
            stats.eager_calls += 1
            bucket = self._bucket_for(inputs, outputs, watch)
            self._insert(key, bucket)
            self.last_decision = bucket.decision
            return outputs

    def _watch(self, inputs: Sequence[torch.Tensor]) -> list[tuple[int, int | None, torch.Tensor | None]]:
        """How to tell after the real call which undeclared inputs it wrote: (input, version before, contents before).

        Inference tensors have no version counter; those that would be copied are compared by contents instead
        (declared static ones, often large weights, are not cloned)."""
        watched = []
        for i, t in enumerate(inputs):
            if i in self._written:
                continue
            if not t.is_inference():
                watched.append((i, t._version, None))
            elif not self._declared_static(i, t):
                watched.append((i, None, t.clone()))
        return watched

    def _refusal(self, inputs: Sequence[torch.Tensor], outputs: Any, watch: list[tuple[int, int | None, torch.Tensor | None]]) -> str | None:
        """Why this bucket cannot be graphed, judged from the real call; None when it can be tried."""
        outs = _as_tuple(outputs)
        if not isinstance(outs, tuple) or not all(isinstance(o, torch.Tensor) for o in outs):
            return f"the callable returned {type(outputs).__name__}, not a tensor or a tuple of tensors"
        for what, tensors in (("input", inputs), ("output", outs)):
            for i, t in enumerate(tensors):
                if t.device != self.device:
                    return f"host tensor: {what} {i} is on {t.device}, not {self.device} (a graph reads and writes device memory only)"
        grads = [j for j, o in enumerate(outs) if o.requires_grad]
        if grads:
            return f"autograd: output {grads[0]} requires grad (graphs replay inference only: call under torch.inference_mode() or torch.no_grad())"
        for i, version, before in watch:
            t = inputs[i]
            if (version is not None and t._version != version) or (before is not None and not _same_bits(t, before)):
                return f"input {i} is written in place by the callable: declare it (written_argnums) so that the graph writes the caller's tensor"
        return None

    def _bucket_for(self, inputs: Sequence[torch.Tensor], outputs: Any, watch: list[tuple[int, int | None, torch.Tensor | None]]) -> _Bucket:
        in_place = [self._in_place(i, t) for i, t in enumerate(inputs)]
        description = ", ".join(f"{str(t.dtype).removeprefix('torch.')}{list(t.shape)}{' in place' if p else ''}" for t, p in zip(inputs, in_place)) or "no inputs"
        why = self._refusal(inputs, outputs, watch)
        if why is not None:
            return _Bucket(description, GraphDecision.eager(why))
        saved = [(inputs[i], inputs[i].clone()) for i in sorted(self._written)]  # the real call's effect, restored below
        try:
            return self._capture(description, inputs, in_place)
        finally:
            for live, state in saved:
                self._backend.copy_(live, state)

    def _capture(self, description: str, inputs: Sequence[torch.Tensor], in_place: list[bool]) -> _Bucket:
        backend = self._backend
        reads, copies = [], []
        for i, (t, here) in enumerate(zip(inputs, in_place)):
            if here:
                reads.append(t)
                continue
            buffer = torch.empty_like(t)  # the input's strides where dense, contiguous otherwise
            backend.copy_(buffer, t)
            reads.append(buffer)
            copies.append((i, buffer, buffer.data_ptr()))
        try:
            backend.warm_up(self._fn, reads, self.policy.warmup_calls - 1)
        except Exception as exc:  # noqa: BLE001 (the real call succeeded: this bucket runs eager, with the error as the reason)
            return _Bucket(description, GraphDecision.eager(f"warm-up on the capture stream failed: {_first_line(exc)}"))
        before = backend.reserved_bytes()
        try:
            with self._pool.lock:  # the pool's memory is not handed out while one of its graphs replays
                graph, static = backend.capture(self._fn, reads, self._pool.handle(backend))
        except Exception as exc:  # noqa: BLE001 (whatever capture refuses, a host sync or a host tensor, makes the bucket eager)
            self._pool.renew()  # later captures of the pool start from a fresh handle, not the one the failure held
            return _Bucket(description, GraphDecision.eager(f"capture illegal: {_first_line(exc)}"))
        memory = max(0, backend.reserved_bytes() - before) + sum(b.untyped_storage().nbytes() for _, b, _ in copies)
        outputs = _as_tuple(static)
        theirs = {t.untyped_storage().data_ptr() for t, here in zip(reads, in_place) if here}
        callers = tuple(o.untyped_storage().data_ptr() in theirs for o in outputs)
        bucket = _Bucket(description, PENDING, graph, tuple(reads), tuple(copies), tuple(outputs), isinstance(static, torch.Tensor), callers)
        try:
            bucket.decision = self._decide(bucket, inputs, memory)
        except Exception as exc:  # noqa: BLE001 (a graph that does not replay is not kept: eager, with the error)
            bucket.decision = GraphDecision.eager(f"replay failed: {_first_line(exc)}")
        if not bucket.decision.graphed:
            with self._pool.lock:
                backend.release(graph)
            return _Bucket(description, bucket.decision)
        return bucket

    def _decide(self, bucket: _Bucket, inputs: Sequence[torch.Tensor], memory: int) -> GraphDecision:
        """Graph when replay (with its copies) beats eager by ``min_speedup`` within the memory budget."""
        backend, policy = self._backend, self.policy
        held = Figure.measured(memory, "B", "allocator reserved-bytes growth during capture + the bucket's input buffers")
        with self._pool.lock:
            backend.replay(bucket.graph)  # the first launch uploads the graph: untimed, and proves it replays
        if policy.mode == "always":
            return GraphDecision(True, f"graphed: mode always (not timed), {_mib(memory)}", memory_bytes=held)
        how = f"{backend.clock}, mean of {policy.timing_calls} calls after {policy.warmup_calls} warm-up calls"
        eager_s = backend.per_call_s(lambda: self._fn(*inputs), policy.timing_calls)
        replay_s = backend.per_call_s(lambda: self._serialised_replay(bucket, inputs, GraphStats()), policy.timing_calls)
        eager = Figure.measured(eager_s, "s", how)
        replay = Figure.measured(replay_s, "s", f"{how}; replay with its input and output copies")
        timed = f"replay {_ms(replay_s)} vs eager {_ms(eager_s)} per call"
        if replay_s * policy.min_speedup > eager_s:
            return GraphDecision(False, f"eager: {timed}, not {policy.min_speedup:g}x faster: not worth {_mib(memory)}", eager, replay, held)
        if memory > policy.memory_budget_bytes:
            return GraphDecision(False, f"eager: {timed}, but the graph holds {_mib(memory)}, over the {_mib(policy.memory_budget_bytes)} budget", eager, replay, held)
        return GraphDecision(True, f"graphed: {timed}, {_mib(memory)}", eager, replay, held)

    # ---- the bucket cache
    def _insert(self, key: tuple, bucket: _Bucket) -> None:
        same = self._buckets.pop(key, None)  # another thread made this bucket while this one waited for the lock
        if same is not None:
            self._release(same)
        self._buckets[key] = bucket
        limit = self.policy.max_buckets
        while len(self._buckets) > limit:
            _, old = self._buckets.popitem(last=False)
            kind = "graphed" if old.graph is not None else "eager"
            self._release(old)
            self.stats.evictions.append(f"{old.description} ({kind}): the least recently used of {limit + 1} buckets, over max_buckets={limit}")

    def _release(self, bucket: _Bucket) -> None:
        with self._pool.lock:  # never while another thread replays a graph of the pool
            if bucket.graph is not None:
                self._backend.release(bucket.graph)
                bucket.graph = None

    def buckets(self) -> list[tuple[str, GraphDecision]]:
        """Each live bucket's description and decision, least recently used first."""
        return [(b.description, b.decision) for b in self._buckets.values()]

    def clear(self) -> None:
        """Drop every bucket, freeing its graph and buffers (the next call of each layout decides again)."""
        with self._lock:
            for bucket in self._buckets.values():
                self._release(bucket)
            self._buckets.clear()
