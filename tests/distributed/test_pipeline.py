"""Tests of hal.distributed.pipeline: a model cut into stages over 2 and 3 gloo processes vs single-process model(x).

The multi-process checks fork one group of processes per world size (module-scoped fixture, the spawning helper of
test_context_parallel): every rank builds the same float64 models and batch, builds pipelines with 1, 2 and 4
micro-batches, runs them, and writes what it got (errors against model(x), the stages, the explanation, the errors
bad inputs raised) as JSON; each check is then its own test. Single-process tests cover the pure parts: the cut
points of a residual graph, the linear partition against brute force, the bubble formula.
"""

import datetime
import itertools
import json
import random
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn
from test_context_parallel import expect_error, free_port, launch, set_torchrun_env

from hal import distributed as hd
from hal.errors import InvalidInput
from hal.runtime import capture

BATCH = 8
MICRO_BATCHES = (1, 2, 4)


def mlp() -> nn.Module:
    """10 nodes (the first relu fuses into its linear), 9 cut points: enough for 8 ranks."""
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.GELU(), nn.Linear(16, 16), nn.Tanh(),
                         nn.Linear(16, 16), nn.SiLU(), nn.Linear(16, 12), nn.GELU(), nn.Linear(12, 3))


class Block(nn.Module):
    """A residual block: the skip connection ``x`` is read after both convolutions, so no cut may fall inside."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return torch.relu(x + self.conv2(torch.relu(self.conv1(x))))


class ResidualCNN(nn.Module):
    def __init__(self, channels: int = 4, blocks: int = 3):
        super().__init__()
        self.stem = nn.Conv2d(2, channels, 3, padding=1)
        self.blocks = nn.Sequential(*[Block(channels) for _ in range(blocks)])
        self.head = nn.Linear(channels * 6 * 6, 5)

    def forward(self, x):
        return self.head(torch.flatten(self.blocks(torch.relu(self.stem(x))), 1))


class Skip(nn.Module):
    """``x`` is read by the last node, so every cut would send two tensors: it cannot be cut."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x))) + x


class Pooled(nn.Module):
    """An output pooled over the batch (its mean): micro-batches' outputs cannot be concatenated."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x))).mean(0, keepdim=True)


class Gram(Pooled):
    """Features x features (4 x 4): with micro-batches of 4 its dim 0 looks like the batch, but does not grow with it."""

    def forward(self, x):
        h = self.fc2(torch.tanh(self.fc1(x)))
        return h.t() @ h


class Counter(nn.Module):
    """Counts its calls in a buffer: micro-batches would count each batch several times."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 4), nn.Linear(4, 4)
        self.register_buffer("calls", torch.zeros((), dtype=torch.float64))

    def forward(self, x):
        self.calls.add_(1)
        return self.fc2(torch.tanh(self.fc1(x)))


MODELS = {"mlp": (mlp, (BATCH, 6)), "residual_cnn": (ResidualCNN, (BATCH, 2, 6, 6))}


def build(name: str, dtype: torch.dtype = torch.float64) -> tuple[nn.Module, torch.Tensor]:
    make, shape = MODELS[name]
    torch.manual_seed(0)
    model = make().to(dtype).eval()
    return model, torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=dtype)


def run_case(mesh, name: str, micro_batches: int, dtype: torch.dtype = torch.float64) -> dict:
    model, x = build(name, dtype)
    pipe = hd.pipeline(model, x, mesh=mesh, micro_batches=micro_batches)
    out = pipe.run(x)
    with torch.no_grad():
        want = model(x)
    return {"max_abs_error": float((out - want).abs().max()), "scale": float(want.abs().max()),
            "shape": list(out.shape), "dtype": str(out.dtype),
            "stages": [list(s.nodes) for s in pipe.stages], "ranks": [s.global_rank for s in pipe.stages],
            "devices": [s.device for s in pipe.stages],
            "boundaries": [[b.value, list(b.spec.shape), b.nbytes.value] for b in pipe.boundaries],
            "bubble": pipe.bubble.value, "explain": pipe.explain(),
            "graph": [n.name for n in pipe.graph.nodes]}


def error_cases(mesh, n: int) -> dict[str, dict]:
    model, x = build("mlp")
    pipe = hd.pipeline(model, x, mesh=mesh, micro_batches=2)
    batch_norm = nn.Sequential(nn.Linear(6, 6), nn.BatchNorm1d(6), nn.Linear(6, 6)).double()
    return {
        "micro_batches_zero": expect_error(lambda: hd.pipeline(model, x, mesh=mesh, micro_batches=0)),
        "micro_batches_not_dividing": expect_error(lambda: hd.pipeline(model, x, mesh=mesh, micro_batches=3)),
        "devices_for_other_world": expect_error(lambda: hd.pipeline(model, x, mesh=mesh, micro_batches=1,
                                                                    devices=["cpu"] * (n + 1))),
        "fewer_nodes_than_ranks": expect_error(lambda: hd.pipeline(nn.Linear(6, 3).double(), x, mesh=mesh,
                                                                   micro_batches=1)),
        "skip_across_every_cut": expect_error(lambda: hd.pipeline(Skip().double(), torch.zeros(BATCH, 4, dtype=torch.float64),
                                                                  mesh=mesh, micro_batches=1)),
        "output_pooled": expect_error(lambda: hd.pipeline(Pooled().double(), torch.zeros(BATCH, 4, dtype=torch.float64),
                                                          mesh=mesh, micro_batches=2)),
        "output_not_batch_major": expect_error(lambda: hd.pipeline(Gram().double(), torch.zeros(BATCH, 4, dtype=torch.float64),
                                                                   mesh=mesh, micro_batches=2)),
        "batch_norm_training": expect_error(lambda: hd.pipeline(batch_norm, x, mesh=mesh, micro_batches=2)),
        "buffer_written_per_call": expect_error(lambda: hd.pipeline(Counter().double(), torch.zeros(BATCH, 4, dtype=torch.float64),
                                                                    mesh=mesh, micro_batches=2)),
        "ranks_trace_different_models": expect_error(lambda: hd.pipeline(
            nn.Sequential(nn.Linear(6, 8 + dist.get_rank()), nn.Tanh(), nn.Linear(8 + dist.get_rank(), 3)).double(), x,
            mesh=mesh, micro_batches=1)),
        "run_other_batch": expect_error(lambda: pipe.run(x[:4])),
        "rank_fails_to_plan": expect_error(lambda: hd.pipeline(model, x, mesh=mesh, micro_batches=1,
                                                               devices=["cpu"] * (n - 1) + ["nodevice:0"])),
    }


def worker(rank: int, n: int, store: str, folder: str) -> None:
    torch.set_num_threads(1)  # the CPU cores are shared; one thread per rank, no oversubscription
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=n,
                            timeout=datetime.timedelta(seconds=60))  # a hang fails the test instead of stalling it
    try:
        mesh = hd.mesh("cpu", n)
        results = {"cases": {}, "errors": error_cases(mesh, n)}
        for name, m in itertools.product(MODELS, MICRO_BATCHES):
            try:
                results["cases"][f"{name}-m{m}"] = run_case(mesh, name, m)
            except Exception:  # noqa: BLE001 (reported per case; the ranks stay in step since all raise alike)
                results["cases"][f"{name}-m{m}"] = {"exception": traceback.format_exc()}
        with open(f"{folder}/rank{rank}.json", "w") as f:
            json.dump(results, f)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module", params=[2, 3])
def world(request, tmp_path_factory):
    n = request.param
    folder = tmp_path_factory.mktemp(f"pp{n}")
    launch(worker, n, str(folder / "store"), str(folder))
    return n, [json.loads((folder / f"rank{r}.json").read_text()) for r in range(n)]


CASES = [f"{name}-m{m}" for name, m in itertools.product(MODELS, MICRO_BATCHES)]


@pytest.mark.parametrize("case", CASES)
def test_every_rank_returns_the_single_process_output(world, case):
    n, ranks = world
    for rank, results in enumerate(ranks):
        got = results["cases"][case]
        assert "exception" not in got, got.get("exception")
        assert got["dtype"] == "torch.float64" and got["shape"][0] == BATCH
        assert got["max_abs_error"] <= 1e-12 * got["scale"], f"{case} on rank {rank} of {n}: {got['max_abs_error']:.2e}"


@pytest.mark.parametrize("case", CASES)
def test_stages_cover_the_graph_in_order_one_per_rank(world, case):
    n, ranks = world
    got = ranks[0]["cases"][case]
    assert len(got["stages"]) == n and all(got["stages"])
    assert [name for stage in got["stages"] for name in stage] == got["graph"]
    assert got["ranks"] == list(range(n))
    assert all(r["cases"][case]["stages"] == got["stages"] for r in ranks)  # every rank cut the same way
    assert len(got["boundaries"]) == n - 1


@pytest.mark.parametrize("m", MICRO_BATCHES)
def test_residual_cuts_fall_between_blocks(world, m):
    n, ranks = world
    got = ranks[0]["cases"][f"residual_cnn-m{m}"]
    between_blocks = {"stem", "relu", "add", "relu_2", "add_1", "relu_4", "add_2", "relu_6", "flatten"}
    for value, shape, nbytes in got["boundaries"]:
        assert value in between_blocks
        assert shape[0] == BATCH // m
        assert nbytes == 8 * torch.Size(shape).numel()  # float64


@pytest.mark.parametrize("m", MICRO_BATCHES)
def test_explain_lists_stages_bubble_and_bytes(world, m):
    n, ranks = world
    got = ranks[0]["cases"][f"mlp-m{m}"]
    assert got["bubble"] == pytest.approx((n - 1) / (m + n - 1), abs=0, rel=1e-15)
    text = got["explain"]
    assert f"{n} stage(s)" in text and f"{m} micro-batch(es)" in text
    assert "(n - 1) / (m + n - 1)" in text and f"bubble: {got['bubble']:.3f}" in text
    for k in range(n):
        assert f"stage {k}  rank {k}  cpu:0" in text
    for value, _, nbytes in got["boundaries"]:
        assert f"sends {value!r}" in text and f"{nbytes:.0f} B per micro-batch" in text


ERRORS = {
    "micro_batches_zero": ("InvalidInput", "micro_batches must be a whole number >= 1"),
    "micro_batches_not_dividing": ("ShapeError", "does not divide the batch of 8: pick one of [1, 2, 4, 8]"),
    "devices_for_other_world": ("InvalidInput", "give one per rank"),
    "fewer_nodes_than_ranks": ("InvalidInput", "cannot be cut into"),
    "skip_across_every_cut": ("InvalidInput", "0 cut point(s)"),
    "output_pooled": ("ShapeError", "dim 0 is the batch (micro-batch of 4 traced)"),
    "output_not_batch_major": ("ShapeError", "do not grow with the batch"),
    "batch_norm_training": ("InvalidInput", "call model.eval()"),
    "buffer_written_per_call": ("InvalidInput", "writes calls in place on every call"),
    "ranks_trace_different_models": ("InvalidInput", "the ranks traced different graphs"),
    "run_other_batch": ("ShapeError", "build a new pipeline"),
}


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_bad_inputs_raise_named_errors_on_every_rank(world, name):
    n, ranks = world
    kind, text = ERRORS[name]
    for results in ranks:
        got = results["errors"][name]
        assert got["type"] == kind, got
        assert text in got["message"], got["message"]


def test_a_rank_that_cannot_plan_stops_every_rank(world):
    n, ranks = world
    assert ranks[-1]["errors"]["rank_fails_to_plan"]["type"] == "UnknownDevice"
    for results in ranks[:-1]:
        got = results["errors"]["rank_fails_to_plan"]
        assert got["type"] == "HalError" and f"pipeline rank {n - 1} could not plan" in got["message"], got


# ------------------------------------------------------------------------------------------ single process

def test_cut_points_are_where_exactly_one_tensor_crosses():
    model, x = build("residual_cnn")
    graph = capture(model, (x[:2],))
    names = [node.name for node in graph.nodes]
    points = hd.cut_points(graph)
    assert {names[p] for p in points} == {"relu", "blocks.0.conv1", "relu_2", "blocks.1.conv1", "relu_4",
                                          "blocks.2.conv1", "relu_6", "flatten", "head"}  # the node after each cut
    assert points[names.index("blocks.1.conv1")] == "relu_2"  # the value that crosses: the block's input


def brute_force(latency_s, cuts, bytes_at):
    """Every choice of cuts, ranked by (largest stage latency, bytes sent, cut positions)."""
    count = len(latency_s[0])
    options = []
    for chosen in itertools.combinations(sorted(cuts), len(latency_s) - 1):
        bounds = [0, *chosen, count]
        slowest = max(sum(latency_s[k][a:b]) for k, (a, b) in enumerate(zip(bounds, bounds[1:])))
        options.append((slowest, sum(bytes_at.get(p, 0) for p in chosen), chosen))
    return min(options)[2]


def test_linear_partition_minimises_the_largest_stage_then_the_bytes():
    rng = random.Random(0)
    for _ in range(300):
        count, stages = rng.randint(2, 9), rng.randint(1, 4)
        cuts = sorted(rng.sample(range(1, count), rng.randint(0, count - 1)))
        if count < stages or len(cuts) < stages - 1:
            continue
        row = [float(rng.randint(0, 4)) for _ in range(count)]  # small integers: many exact ties
        latency = [[v * rng.choice((1, 2)) for v in row] for _ in range(stages)]  # heterogeneous devices too
        bytes_at = {p: rng.randint(1, 5) * 8 for p in cuts}
        assert hd.linear_partition(latency, cuts, bytes_at) == brute_force(latency, cuts, bytes_at), (latency, cuts, bytes_at)


def test_linear_partition_examples():
    assert hd.linear_partition([[1.0] * 6] * 3, range(1, 6)) == (2, 4)
    assert hd.linear_partition([[5.0, 1, 1, 1, 1, 1]] * 2, range(1, 6)) == (1,)
    assert hd.linear_partition([[1.0] * 6, [2.0] * 6], range(1, 6)) == (4,)  # stage 1's device is twice as slow
    # equal largest stage at every cut: the fewest bytes decide, not the latency of the other stage
    assert hd.linear_partition([[3.0, 0, 0, 3]] * 2, [1, 2, 3], {1: 50, 2: 10, 3: 30}) == (2,)
    # latency first: the only balanced cut wins even though it sends the most
    assert hd.linear_partition([[1.0] * 4] * 2, [1, 2, 3], {1: 8, 2: 800, 3: 8}) == (2,)
    # sums of 0.1 differ by rounding where the integers tie exactly: they count as ties (TIE_TOLERANCE)
    assert hd.linear_partition([[0.1] * 10] * 3, range(1, 10)) == hd.linear_partition([[1.0] * 10] * 3, range(1, 10))


@pytest.mark.parametrize("latency, cuts", [([[1.0]] * 2, [1]), ([[1.0] * 4] * 3, [2])])
def test_linear_partition_refuses_too_few_nodes_or_cuts(latency, cuts):
    with pytest.raises(InvalidInput, match="cannot make"):
        hd.linear_partition(latency, cuts)


@pytest.mark.parametrize("n, m, want", [(1, 1, 0.0), (1, 8, 0.0), (2, 1, 0.5), (3, 4, 2 / 6), (4, 4, 3 / 7), (8, 32, 7 / 39)])
def test_bubble_fraction_is_idle_over_total_of_gpipe(n, m, want):
    assert hd.bubble_fraction(n, m) == pytest.approx(want, rel=1e-15)
    # the formula from the schedule: (m + n - 1) steps of which each rank computes m
    assert hd.bubble_fraction(n, m) == pytest.approx(1 - m / (m + n - 1), rel=1e-15)


@pytest.mark.parametrize("n, m", [(0, 1), (2, 0)])
def test_bubble_fraction_refuses_empty_schedules(n, m):
    with pytest.raises(InvalidInput):
        hd.bubble_fraction(n, m)


# ------------------------------------------------------------------------------------------- GPUs (NCCL)

def nccl_worker(rank: int, n: int, port: int, out_path: str) -> None:
    """One GPU per rank, NCCL, the group initialised by mesh() from torchrun's variables; float32 (cuDNN may use
    TF32 for convolutions, hence the looser tolerance of the test)."""
    set_torchrun_env(rank, n, port)
    mesh = hd.mesh("cuda", n)
    results = {}
    for name, m in itertools.product(MODELS, MICRO_BATCHES):
        try:
            results[f"{name}-m{m}"] = run_case(mesh, name, m, torch.float32)
        except Exception:  # noqa: BLE001 (reported per case)
            results[f"{name}-m{m}"] = {"exception": traceback.format_exc()}
    with open(f"{out_path}.{rank}", "w") as f:
        json.dump(results, f)
    dist.destroy_process_group()


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 or more CUDA GPUs")
@pytest.mark.parametrize("n", [2, 4, 8])
def test_nccl_pipeline_matches_single_process_model(n, tmp_path):
    if torch.cuda.device_count() < n:
        pytest.skip(f"needs {n} CUDA GPUs, this host has {torch.cuda.device_count()}")
    port = free_port()
    launch(nccl_worker, n, port, str(tmp_path / "nccl.json"))
    for rank in range(n):
        for case, got in json.loads((tmp_path / f"nccl.json.{rank}").read_text()).items():
            assert "exception" not in got, got.get("exception")
            assert [d.rsplit(":", 1)[-1] for d in got["devices"]] == [str(r) for r in range(n)], got["devices"]
            assert got["max_abs_error"] <= 2e-3 * got["scale"], f"{case} on rank {rank} of {n}: {got['max_abs_error']:.2e}"
