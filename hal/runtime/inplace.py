"""In-place writes in a traced model: which steps write, which values may share storage, and the order that keeps
eager semantics when stages run on several devices at once.

torch.fx records ``x.mul_(2)`` or ``nn.ReLU(inplace=True)`` as ordinary nodes; what they do to the other values
sharing the written storage (the input itself, its views) is not in the data flow. Capture asks three things:

* ``written_operand(module, node)``: the value a node writes in place, or None. It writes its first operand when
  it is a ``*_`` method or function (``x.mul_(2)``, ``torch.relu_(x)``), an item assignment or an augmented
  assignment (``x[i] = v``, ``x += 1``: ``operator.setitem`` / ``operator.iadd`` ... in Dynamo's graphs), is called
  with ``inplace=True``, or is a module whose ``inplace`` attribute is true; it writes its ``out=`` tensor when given
  one;
* ``Aliases``: which values may share storage, by a rule that needs no shapes and errs towards sharing: a
  vocabulary op returns a fresh tensor; any other step (a host step, an in-place op) may return a view of any
  tensor it reads; constants that are one tensor share. ``observable(node, written)`` then says whether doing
  an in-place op out of place would change what a later step (or the output) reads; when it would not, capture
  maps the op onto the vocabulary like its out-of-place form (``Linear, ReLU(inplace=True)`` is still placed and
  fused), otherwise the node stays a host step that writes in place, as in eager torch;
* ``order_writes(nodes, storage_of)``: ``Node.after`` for those host steps: a write waits for every earlier
  reader and writer of its storage (so a device stage still reading the old values finishes first), and every
  later reader of that storage waits for the write.

A module kept whole (a pinned untraceable module) is opaque: writes inside it are not seen. The executor still
never lets one reach a caller's tensor (it copies inputs that host steps read).
"""

from __future__ import annotations

import inspect
import operator
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import fx

if TYPE_CHECKING:
    from hal.runtime.capture import Node


def referenced(*structures: Any) -> list[fx.Node]:
    """The fx nodes referenced anywhere in nested args, each once, in order of first appearance."""
    found: dict[fx.Node, None] = {}
    fx.node.map_arg(structures, lambda r: found.setdefault(r))
    return list(found)


#: Functions that write their first operand whatever their name: ``x[i] = v`` and the augmented assignments, which
#: Dynamo records as ``operator.setitem`` / ``operator.iadd`` ... and which are in place on tensors.
_WRITING_FUNCTIONS = frozenset({
    operator.setitem, operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.ifloordiv, operator.imod,
    operator.ipow, operator.iand, operator.ior, operator.ixor, operator.ilshift, operator.irshift, operator.imatmul,
})


def _in_place_name(name: Any) -> bool:
    return isinstance(name, str) and name.endswith("_") and not name.endswith("__")


def _inplace_flag(node: fx.Node) -> bool:
    """Whether a call passes ``inplace=True``, by keyword or by position (``F.relu(x, True)``)."""
    if node.kwargs.get("inplace") is True:
        return True
    if len(node.args) < 2 or not inspect.isfunction(node.target):
        return False
    try:
        bound = inspect.signature(node.target).bind(*node.args, **node.kwargs)
    except TypeError:
        return False
    return bound.arguments.get("inplace") is True


def written_operand(module: fx.GraphModule, node: fx.Node) -> fx.Node | None:
    """The value ``node`` writes in place (see the module docstring), or None when it writes nothing."""
    out = node.kwargs.get("out")
    if isinstance(out, fx.Node):
        return out
    first = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
    if first is None:
        return None
    if node.op == "call_module":
        writes = getattr(module.get_submodule(node.target), "inplace", False) is True
    elif node.op == "call_method":
        writes = _in_place_name(node.target)
    elif node.op == "call_function":
        writes = node.target in _WRITING_FUNCTIONS or _in_place_name(getattr(node.target, "__name__", None)) or _inplace_flag(node)
    else:
        writes = False
    return first if writes else None


class Aliases:
    """Values of a traced graph that may share storage (union-find), and where each is defined and last read.

    ``constants`` holds the value of every ``get_attr`` node; ``fresh(node)`` says whether a node's output is a
    new tensor (a vocabulary op done out of place).
    """

    def __init__(self, module: fx.GraphModule, constants: Mapping[fx.Node, Any], fresh: Callable[[fx.Node], bool]):
        self._parent: dict[fx.Node, fx.Node] = {}
        self._position: dict[fx.Node, int] = {}
        self._last_read: dict[fx.Node, float] = {}
        by_storage: dict[int, fx.Node] = {}
        for index, node in enumerate(module.graph.nodes):
            if node.op == "output":
                for ref in referenced(node.args):
                    self._last_read[ref] = float("inf")
                continue
            self._parent[node] = node
            for ref in referenced(node.args, node.kwargs):
                self._last_read[ref] = index
            if node.op in ("placeholder", "get_attr"):
                self._position[node] = -1  # they exist before every step
                value = constants.get(node)
                if isinstance(value, torch.Tensor) and value.numel():
                    self._union(by_storage.setdefault(value.untyped_storage().data_ptr(), node), node)
                continue
            self._position[node] = index
            if not fresh(node):
                for ref in referenced(node.args, node.kwargs):
                    self._union(ref, node)
        self._members: dict[fx.Node, list[fx.Node]] = {}
        for node in self._parent:
            self._members.setdefault(self.group(node), []).append(node)

    def group(self, node: fx.Node) -> fx.Node:
        """The representative of the values that may share ``node``'s storage."""
        root = node
        while self._parent[root] is not root:
            root = self._parent[root]
        while self._parent[node] is not root:
            self._parent[node], node = root, self._parent[node]
        return root

    def _union(self, a: fx.Node, b: fx.Node) -> None:
        ra, rb = self.group(a), self.group(b)
        if ra is not rb:
            self._parent[rb] = ra

    def observable(self, node: fx.Node, written: fx.Node) -> bool:
        """Whether a step after ``node``, or the output, reads a value that existed before ``node`` and may share
        ``written``'s storage: doing ``node``'s write out of place would then change what that step reads."""
        here = self._position[node]
        return any(self._position[v] < here < self._last_read.get(v, -1) for v in self._members[self.group(written)])

    def constants_in(self, groups: Iterable[fx.Node]) -> set[str]:
        """Targets of the ``get_attr`` nodes whose storage may be one of ``groups`` (writes would reach them)."""
        roots = {self.group(g) for g in groups}
        return {v.target for root in roots for v in self._members[root] if v.op == "get_attr"}


def order_writes(nodes: list[Node], storage_of: Mapping[str, Hashable]) -> None:
    """Set ``Node.after`` so that each in-place write (``Node.writes``) keeps its eager order with the readers and
    writers of its storage: it waits for every earlier one, and every later reader waits for it.

    ``storage_of`` maps every value name (graph inputs, constants, node outputs) to its storage group."""
    written_storages = {storage_of[n.writes] for n in nodes if n.writes is not None}
    if not written_storages:
        return
    since_write: dict[Hashable, list[str]] = {}  # per written storage: its last writer and the readers after it
    writer: dict[Hashable, str] = {}
    for node in nodes:
        reads = [s for s in dict.fromkeys(storage_of[r] for r in node.inputs) if s in written_storages]
        written = storage_of[node.writes] if node.writes is not None else None
        waits = [writer[s] for s in reads if s in writer]
        if written is not None:
            waits += since_write.get(written, [])
        waits = [w for w in dict.fromkeys(waits) if w != node.name]
        if waits:
            node.after = tuple(waits)
        for s in reads:
            since_write.setdefault(s, []).append(node.name)
        if written is not None:
            writer[written] = node.name
            since_write[written] = [node.name]
