"""The compiler: an OpSpec and its weights -> a MemristorProgram owning programmed tiles.

``weight_grid`` says which (stack, inputs, outputs) matrix an op stores: a linear layer's ``weight.T``, a conv2d's
im2col weight per group (groups are stacked tiles), matmul's ``b``. ``CrossbarCompiler`` takes tiles from the
allocator, programs the conductances (``tile.Crossbar``) and builds the Program's run function: the streamed
operand through DACs, conductances and ADCs, plus the digital bias and ReLU. matmul's ``b`` is an input, so it is
programmed on every call (and so always read at the device's ``?t``, however much time ``elapse`` let pass). A
product with an empty dimension (no inputs, outputs, stacked matrices or vectors) touches no tile and returns what
the CPU returns: zeros, plus the bias. ``compile_chain`` builds the one Program of a claimed chain of linear layers
(``chain.py``): every layer on its own tiles, DAC rounding at the first layer only, ADC rounding at the last only.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from hal.device import Cost, OpSpec, Program
from hal.drivers.memristor.allocator import TileAllocator
from hal.drivers.memristor.config import CrossbarConfig
from hal.drivers.memristor.cost import CostModel, conv_out
from hal.drivers.memristor.energy import ProgrammingReport, ReadCounters
from hal.drivers.memristor.tile import Crossbar, TileGrid
from hal.errors import InvalidInput
from hal.programs import ResidentProgram

if TYPE_CHECKING:
    from hal.drivers.memristor.driver import MemristorDevice
    from hal.subgraph import Subgraph


def weight_grid(op: OpSpec, config: CrossbarConfig, uri: str) -> TileGrid:
    """The (stack, inputs, outputs) matrix ``op`` stores in the crossbar, cut into the configuration's tiles."""
    tile = config.tile
    if op.name == "linear":
        out_features, in_features = op.param("weight").shape
        return TileGrid(1, in_features, out_features, tile.rows, tile.cols)
    if op.name == "conv2d":
        out_channels, per_group, kh, kw = op.param("weight").shape
        groups = op.attr("groups")
        return TileGrid(groups, per_group * kh * kw, out_channels // groups, tile.rows, tile.cols)
    a, b = op.inputs[0].shape, op.inputs[1].shape
    if any(s is None for s in b) or any(s is None for s in a[:-2]):
        raise InvalidInput(f"{uri} programs matmul's b into its tiles and needs its full shape; got a={a}, b={b}")
    stack = math.prod(torch.broadcast_shapes(tuple(a[:-2]), tuple(b[:-2])))
    return TileGrid(stack, b[-2], b[-1], tile.rows, tile.cols)


def _empty(grid: TileGrid) -> bool:
    return grid.stack == 0 or grid.inputs == 0 or grid.outputs == 0


class MemristorProgram(ResidentProgram):
    """Programmed conductances on some of the device's tiles, with their programming report and read counters.

    ``shapes`` lists the (inputs, outputs) of each product a call reads in sequence (one for an op, one per layer
    for a chain; none for an empty product), ``read_cost`` the latency and energy of a call, from which the device
    derives ``cost`` at the program's read age. ``reprograms_each_call``: matmul writes ``b`` at every call.
    """

    def __init__(self, op: OpSpec, device: MemristorDevice, cost: Cost, run: Callable[..., Any], params: dict[str, torch.Tensor], reprograms_each_call: bool = False):
        super().__init__(op, device, cost, run, params)
        self.tiles: list[int] = []
        self.programmed_at_s = device.clock_s
        self.reprograms_each_call = reprograms_each_call
        self.shapes: list[tuple[int, int]] = []
        self.read_cost = cost
        self.programming = ProgrammingReport()
        self.stats = ReadCounters()

    @property
    def age_s(self) -> float:
        """Seconds after the drift reference time t0 at which this program's conductances are read now: the device's
        ``?t`` plus the time ``elapse`` let pass since programming (``?t`` alone when ``b`` is written at every call)."""
        device: MemristorDevice = self.device  # type: ignore[assignment]
        if self.reprograms_each_call:
            return device.options["t"]
        return device.options["t"] + device.clock_s - self.programmed_at_s

    def release(self) -> None:
        """Give the tiles back to the device; the program can no longer run."""
        device: MemristorDevice = self.device  # type: ignore[assignment]
        device.allocator.free(self, f"it was released (its tiles {self.tiles} went back to {device.uri})")


class CrossbarCompiler:
    """Builds MemristorPrograms on one device and accounts for what their programming and reads cost."""

    def __init__(self, device: MemristorDevice, allocator: TileAllocator, costs: CostModel):
        self.device = device
        self.allocator = allocator
        self.costs = costs
        self.counters = ReadCounters()
        self.programming_totals = ProgrammingReport()
        self._lock = threading.Lock()  # guards the counters (programs may run on threads)

    def compile(self, op: OpSpec, params: dict[str, torch.Tensor]) -> Program:
        grid = weight_grid(op, self.device.config, str(self.device.uri))
        builder = {"linear": self._linear, "conv2d": self._conv2d, "matmul": self._matmul}[op.name]
        return builder(op, params, grid)

    # ------------------------------------------------------------------ programming and reading
    def _new_program(
        self, op: OpSpec, grids: list[TileGrid], cost: Cost, run: Callable[..., Any], params: dict[str, torch.Tensor], reprograms_each_call: bool = False
    ) -> MemristorProgram:
        """A program owning the tiles of ``grids``, created and given its tiles at one clock reading (``elapse`` waits)."""
        with self.device.clock_lock:
            program = MemristorProgram(op, self.device, cost, run, params, reprograms_each_call)
            program.shapes = [(g.inputs, g.outputs) for g in grids if not _empty(g)]
            tiles = sum(g.tiles for g in grids if not _empty(g))
            if tiles:
                program.tiles = self.allocator.allocate(program, tiles, op.name)
        return program

    def _program_weights(self, weights: torch.Tensor) -> Crossbar:
        device = self.device
        seed = int(torch.randint(0, 2**62, (1,), generator=device.generator, device=device.torch_device))
        crossbar = Crossbar(weights.detach().to(device.torch_device, torch.float32), device.config, seed)
        with self._lock:
            self.programming_totals = add_reports(self.programming_totals, crossbar.report)
        return crossbar

    def _programmed(self, program: MemristorProgram, op: OpSpec, grid: TileGrid, crossbar: Crossbar) -> None:
        """Record the programming report and the cost at the conductances actually written."""
        program.programming = crossbar.report
        program.read_cost = self.costs.programmed(op, grid, _mean_pair_us(crossbar, grid, program.age_s))
        program.cost = self.device.program_cost(program)

    def _read(
        self, program: MemristorProgram, crossbar: Crossbar, x: torch.Tensor, bias: torch.Tensor | None = None, dac_rounding: bool = True, adc_rounding: bool = True
    ) -> torch.Tensor:
        out, counters = crossbar.read(x, program.age_s, self.device.generator, bias, dac_rounding, adc_rounding)
        with self._lock:
            program.stats.add(counters)
            self.counters.add(counters)
        return out

    def _bias(self, bias: torch.Tensor | None) -> torch.Tensor | None:
        return None if bias is None else bias.detach().to(self.device.torch_device, torch.float32)

    # ------------------------------------------------------------------ ops
    def _linear(self, op: OpSpec, params: dict[str, torch.Tensor], grid: TileGrid) -> Program:
        weight = params["weight"]
        bias = self._bias(params.get("bias"))
        relu = op.attr("activation") == "relu"
        crossbar: Crossbar | None = None
        torch_device = self.device.torch_device

        def run(x: torch.Tensor) -> torch.Tensor:
            flat = x.to(torch_device).reshape(1, math.prod(x.shape[:-1]), grid.inputs)
            if crossbar is None or flat.shape[1] == 0:
                y = torch.zeros(flat.shape[1], grid.outputs, device=torch_device) + (bias if bias is not None else 0.0)
            else:
                y = self._read(program, crossbar, flat, bias)[0]
            if relu:
                y = y.relu_()
            return y.reshape(*x.shape[:-1], grid.outputs).to(x.device, x.dtype)

        program = self._new_program(op, [grid], self.costs.estimate(op, grid), run, params)
        if not _empty(grid):
            crossbar = self._program_weights(weight.t().unsqueeze(0))
            self._programmed(program, op, grid, crossbar)
        return program

    def _conv2d(self, op: OpSpec, params: dict[str, torch.Tensor], grid: TileGrid) -> Program:
        weight = params["weight"]
        bias = self._bias(params.get("bias"))
        groups = op.attr("groups")
        out_channels, _, kh, kw = weight.shape
        stride, padding, dilation = op.attr("stride"), op.attr("padding"), op.attr("dilation")
        bias_map = bias.view(1, -1, 1, 1) if bias is not None else None
        crossbar: Crossbar | None = None
        torch_device = self.device.torch_device

        def run(x: torch.Tensor) -> torch.Tensor:
            n, _, h, w = x.shape
            ho, wo = conv_out((h, w), (kh, kw), op)
            if crossbar is None or n * ho * wo == 0:
                y = torch.zeros(n, out_channels, ho, wo, device=torch_device)
            else:
                patches = F.unfold(x.to(torch_device, torch.float32), (kh, kw), dilation=dilation, padding=padding, stride=stride)
                words = patches.view(n, groups, grid.inputs, ho * wo).permute(1, 0, 3, 2).reshape(groups, n * ho * wo, grid.inputs)
                y = self._read(program, crossbar, words)  # (groups, n*L, O/g)
                y = y.view(groups, n, ho * wo, grid.outputs).permute(1, 0, 3, 2).reshape(n, out_channels, ho, wo)
            if bias_map is not None:
                y = y + bias_map
            return y.to(x.device, x.dtype)

        program = self._new_program(op, [grid], self.costs.estimate(op, grid), run, params)
        if not _empty(grid):
            crossbar = self._program_weights(weight.reshape(groups, out_channels // groups, grid.inputs).transpose(1, 2))
            self._programmed(program, op, grid, crossbar)
        return program

    def _matmul(self, op: OpSpec, params: dict[str, torch.Tensor], grid: TileGrid) -> Program:
        a_shape, b_shape = op.inputs[0].shape, op.inputs[1].shape
        batch = torch.broadcast_shapes(tuple(a_shape[:-2]), tuple(b_shape[:-2]))
        torch_device = self.device.torch_device

        def run(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            m = a.shape[-2]
            if _empty(grid) or m == 0:
                return torch.zeros(*batch, m, grid.outputs, device=a.device, dtype=a.dtype)
            stored = b.to(torch_device).expand(*batch, grid.inputs, grid.outputs).reshape(grid.stack, grid.inputs, grid.outputs)
            streamed = a.to(torch_device).expand(*batch, m, grid.inputs).reshape(grid.stack, m, grid.inputs)
            crossbar = self._program_weights(stored)
            program.programming = add_reports(program.programming, crossbar.report)
            y = self._read(program, crossbar, streamed)
            return y.reshape(*batch, m, grid.outputs).to(a.device, a.dtype)

        # its cost (the estimate) includes reprogramming b; b is written at each call, so it is always read at ?t
        program = self._new_program(op, [grid], self.costs.estimate(op, grid), run, params, reprograms_each_call=True)
        return program

    def compile_chain(self, sub: Subgraph, params: list[dict[str, torch.Tensor]]) -> Program:
        """One program for a claimed chain of linear ops: each layer's weight on its own tiles (all given and taken
        back together), the activations passed on in analog form (``chain.py``)."""
        config, uri = self.device.config, str(self.device.uri)
        grids = [weight_grid(op, config, uri) for op in sub.ops]
        biases = [self._bias(p.get("bias")) for p in params]
        relus = [op.attr("activation") == "relu" for op in sub.ops]
        crossbars: list[Crossbar | None] = []
        torch_device = self.device.torch_device
        last = len(grids) - 1

        def run(x: torch.Tensor) -> torch.Tensor:
            vectors = math.prod(x.shape[:-1])
            y = x.to(torch_device).reshape(vectors, grids[0].inputs)
            for j, (crossbar, grid, bias, relu) in enumerate(zip(crossbars, grids, biases, relus)):
                if crossbar is None or vectors == 0:
                    y = torch.zeros(vectors, grid.outputs, device=torch_device) + (bias if bias is not None else 0.0)
                else:
                    y = self._read(program, crossbar, y.unsqueeze(0), bias, dac_rounding=j == 0, adc_rounding=j == last)[0]
                if relu:
                    y = y.relu_()
            return y.reshape(*x.shape[:-1], grids[-1].outputs).to(x.device, x.dtype)

        flat_params = {f"{name}{j}": tensor for j, p in enumerate(params) for name, tensor in p.items()}
        program = self._new_program(sub.as_opspec(), grids, self.costs.chain(sub.ops, grids), run, flat_params)
        pairs = []
        for grid, p in zip(grids, params):
            crossbar = None if _empty(grid) else self._program_weights(p["weight"].t().unsqueeze(0))
            crossbars.append(crossbar)
            pairs.append(self.costs.typical_pair_us() if crossbar is None else _mean_pair_us(crossbar, grid, program.age_s))
            if crossbar is not None:
                program.programming = add_reports(program.programming, crossbar.report)
        program.read_cost = self.costs.chain_read(sub.ops, grids, pairs)
        program.cost = self.device.program_cost(program)
        return program


def _mean_pair_us(crossbar: Crossbar, grid: TileGrid, age_s: float) -> float:
    """G+ + G- of the device pairs actually written, on average (uS), as read at ``age_s``."""
    state = crossbar.state(age_s)
    return float(state.g_sum_rows.sum() / (grid.stack * grid.inputs * grid.outputs)) * 1e6


def add_reports(total: ProgrammingReport, new: ProgrammingReport) -> ProgrammingReport:
    """Sum two programming reports (counts and costs add; residual error is the latest programming's)."""
    return ProgrammingReport(
        devices=total.devices + new.devices,
        pulses=total.pulses + new.pulses,
        verify_reads=total.verify_reads + new.verify_reads,
        stuck_at_gmin=total.stuck_at_gmin + new.stuck_at_gmin,
        stuck_at_gmax=total.stuck_at_gmax + new.stuck_at_gmax,
        residual_rms_us=new.residual_rms_us,
        residual_relative=new.residual_relative,
        energy_j=total.energy_j + new.energy_j,
        time_s=total.time_s + new.time_s,
    )
