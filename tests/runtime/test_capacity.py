"""hal.runtime.capacity: declared capacities (weight bytes, crossbar tiles) constrain placement."""

from __future__ import annotations

import math

import pytest
import torch
from runtime_fakes import fake
from torch import nn

import hal
from hal.device import OpSpec, TensorSpec
from hal.errors import CapacityExceeded
from hal.runtime import plan
from hal.runtime.capacity import capacities, tiles_needed


def stack(layers: int, width: int = 16) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(*[nn.Linear(width, width) for _ in range(layers)])


def test_a_crossbar_holds_no_more_layers_than_its_tiles_and_later_runs_reprogram_nothing():
    crossbar = hal.device("memristor:0?tiles=4&tile=16&ideal=1&seed=14")
    model, x = stack(6), torch.randn(2, 16)
    p = plan(model, x, policy="energy", devices=[crossbar])
    on_crossbar = [n for n in p.graph.node_names() if p.device_of(n) == str(crossbar)]
    assert len(on_crossbar) == 4  # one 16x16 weight per tile: 4 fit, 2 go elsewhere
    assert any("crossbar tiles of 16x16" in note and "exceeds its 4" in note for note in p.placement.notes)
    p.run(x)
    (claim,) = [c for c in p.claims() if c is not None and c.claimed]  # the crossbar runs its 4 layers as one chain
    program = p.stage_program(claim, crossbar)
    out = p.run(x)
    assert p.stage_program(claim, crossbar) is program and program.valid and len(program.tiles) == 4
    torch.testing.assert_close(out, model(x).detach(), rtol=0.1, atol=0.05)


def test_pinning_more_layers_than_a_crossbar_has_tiles_is_refused_before_anything_runs():
    crossbar = hal.device("memristor:0?tiles=2&tile=16&ideal=1&seed=15")
    with pytest.raises(CapacityExceeded, match=r"holds 2 crossbar tiles of 16x16 .* need 3"):
        plan(stack(3), torch.randn(2, 16), devices=[crossbar], pins={str(i): str(crossbar) for i in range(3)})


def test_the_crossbar_capacity_is_read_from_the_analog_section():
    (tiles,) = [c for c in capacities(hal.device("memristor:0?tiles=5&tile=64&ideal=1")) if "tiles" in c.what]
    assert tiles.available == 5 and tiles.what == "crossbar tiles of 64x64" and "sections['analog']" in tiles.source


def test_tiles_needed_per_op():
    linear = OpSpec("linear", [TensorSpec((8, 300))], {"weight": TensorSpec((100, 300))})
    assert tiles_needed(linear, 256, 256) == 2  # K = 300 spans two row blocks
    conv = OpSpec("conv2d", [TensorSpec((1, 8, 5, 5))], {"weight": TensorSpec((12, 4, 3, 3))}, {"groups": 2})
    assert tiles_needed(conv, 16, 16) == 2 * math.ceil(36 / 16)  # per group K = 4 * 9, N = 6, stacked by groups
    matmul = OpSpec("matmul", [TensorSpec((3, 1, 5, 8)), TensorSpec((4, 8, 6))])
    assert tiles_needed(matmul, 256, 256) == 12  # b is stored per broadcast batch (3 x 4)
    assert tiles_needed(OpSpec("relu", [TensorSpec((2, 3))]), 256, 256) == 0
    assert tiles_needed(OpSpec("matmul", [TensorSpec((None, 5, 8)), TensorSpec((None, 8, 6))]), 256, 256) == math.inf


def test_a_pinned_large_layer_stays_and_the_unpinned_small_ones_move_off():
    weights = [64 * 64 * 4 + 64 * 4, 16 * 64 * 4 + 16 * 4]
    small = fake("tight", s_per_flop=1e-14, memory_bytes=weights[0] + weights[1])
    big = fake("roomy", s_per_flop=1e-11)
    model = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 16), nn.Linear(16, 64))
    p = plan(model, torch.randn(2, 64), devices=[small, big], pins={"0": "tight:0"})
    assert [p.device_of(n) for n in ("0", "1", "2")] == ["tight:0", "tight:0", "roomy:0"]
