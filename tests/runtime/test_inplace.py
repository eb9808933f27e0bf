"""hal.runtime.inplace: which steps write in place, and the order a write keeps with its storage's readers."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import fx, nn

from hal.runtime.capture import Node
from hal.runtime.inplace import order_writes, written_operand


class Writers(nn.Module):
    def __init__(self):
        super().__init__()
        self.act, self.plain = nn.ReLU(inplace=True), nn.ReLU()

    def forward(self, x, y):
        a = x.mul_(2)
        b = torch.relu_(y)
        c = self.act(a)
        d = self.plain(b)
        e = F.relu(c, True)
        f = torch.add(a, b, out=d)
        return a.__add__(b), e, f


def test_written_operand_recognises_every_in_place_form():
    gm = fx.symbolic_trace(Writers())
    writes = {n.name: (w.name if w is not None else None) for n in gm.graph.nodes if n.op.startswith("call") for w in [written_operand(gm, n)]}
    assert writes == {"mul_": "x", "relu_": "y", "act": "mul_", "plain": None, "relu": "act", "add": "plain", "add_1": None}


def node(name, inputs, writes=None):
    return Node(name, None, tuple(inputs), {}, None, "test", writes=writes)


def test_a_write_waits_for_earlier_readers_and_later_readers_wait_for_it():
    nodes = [node("read1", ["x"]), node("view", ["x"]), node("read2", ["view"]), node("write", ["view"], writes="view"),
             node("read3", ["x"]), node("other", ["y"]), node("write2", ["x"], writes="x")]
    order_writes(nodes, {"x": "s", "view": "s", "read1": "a", "read2": "b", "write": "s", "read3": "c", "y": "t", "other": "d", "write2": "s"})
    after = {n.name: n.after for n in nodes}
    assert after == {"read1": (), "view": (), "read2": (), "write": ("read1", "view", "read2"), "read3": ("write",), "other": (),
                     "write2": ("write", "read3")}
