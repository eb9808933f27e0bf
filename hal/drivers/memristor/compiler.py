"""The compiler: an OpSpec and its weights -> a MemristorProgram owning programmed tiles.

``weight_grid`` says which (stack, inputs, outputs) matrix an op stores: a linear layer's ``weight.T``, a conv2d's
im2col weight per group (groups are stacked tiles), matmul's ``b``. ``CrossbarCompiler`` takes tiles from the
allocator, programs the conductances (``tile.Crossbar``) and builds the Program's run function: the streamed
operand through DACs, conductances and ADCs, plus the digital bias and ReLU. matmul's ``b`` is an input, so it is
programmed on every call. A product with an empty dimension (no inputs, outputs, stacked matrices or vectors)
touches no tile and returns what the CPU returns: zeros, plus the bias.
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
    """Programmed conductances on some of the device's tiles, with their programming report and read counters."""

    def __init__(self, op: OpSpec, device: MemristorDevice, cost: Cost, run: Callable[..., Any], params: dict[str, torch.Tensor]):
        super().__init__(op, device, cost, run, params)
        self.tiles: list[int] = []
        self.programmed_at_s = device.clock_s
        self.programming = ProgrammingReport()
        self.stats = ReadCounters()

    @property
    def age_s(self) -> float:
        """Seconds after the drift reference time t0 at which this program's conductances are read now."""
        device: MemristorDevice = self.device  # type: ignore[assignment]
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
    def _new_program(self, op: OpSpec, grid: TileGrid, run: Callable[..., Any], params: dict[str, torch.Tensor]) -> MemristorProgram:
        program = MemristorProgram(op, self.device, self.costs.estimate(op, grid), run, params)
        if not _empty(grid):
            program.tiles = self.allocator.allocate(program, grid.tiles, op.name)
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
        state = crossbar.state(program.age_s)
        pair_us = float(state.g_sum_rows.sum() / (grid.stack * grid.inputs * grid.outputs)) * 1e6
        program.cost = self.costs.programmed(op, grid, pair_us)

    def _read(self, program: MemristorProgram, crossbar: Crossbar, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        out, counters = crossbar.read(x, program.age_s, self.device.generator, bias)
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

        program = self._new_program(op, grid, run, params)
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

        program = self._new_program(op, grid, run, params)
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

        program = self._new_program(op, grid, run, params)  # its cost (the estimate) includes reprogramming b
        return program


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
