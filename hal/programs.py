"""Resident weights: what a device's programmed state was written from, and when to write it again.

A crossbar holds its weight as conductances, a photonic mesh as heater phases: once written, the device no longer
reads the host tensor. Two host-side events then make the device compute with the wrong weight:

- the tensor changes after programming: an optimiser step writes it in place (its ``_version`` goes up) or
  ``w.data = other`` swaps its storage (its ``data_ptr()`` changes, its ``_version`` may not);
- the tensor is freed and CPython gives its ``id()`` (or the allocator its address) to a new tensor, so a record
  keyed on identity mistakes the new tensor for the programmed one.

``ResidentWeight`` holds the programmed tensor (so its ``id()`` cannot be reused while the record lives), a view of
the storage it had (so that address cannot be reused either) and its version counter at programming;
``matches(t)`` is true for that tensor or any view of the same storage with the same layout (``w.detach()`` taken
anew at every forward), as long as nothing wrote the storage since: a tensor at the recorded address is the
recorded storage, because the record keeps it alive. ``ResidentProgram`` is a Program that keeps the
records of the parameters it was programmed from (so a cache that finds Programs by their parameters' identity,
like the eager ops', can never hand out a Program for a dead tensor's reused ``id()``), and ``Reprogrammer``
keeps one Program for a layer and prepares it again when the parameters no longer match or the device
invalidated it (tiles overwritten, device closed).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from hal.device import Cost, Device, OpSpec, Program
from hal.errors import UnsupportedOp


class ResidentWeight:
    """One tensor as it was when the device was programmed from it."""

    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor
        self._storage = tensor.detach()  # shares the storage: keeps it, and so its address, alive
        self.version = tensor._version

    def matches(self, tensor: torch.Tensor) -> bool:
        """Whether ``tensor`` shows the programmed data: the recorded storage (same address, dtype, shape, strides), with
        neither ``tensor``'s nor the storage's version counter moved since programming (no in-place write)."""
        return (
            tensor.data_ptr() == self._storage.data_ptr()
            and tensor._version == self.version
            and self._storage._version == self.version
            and tensor.dtype == self._storage.dtype
            and tensor.shape == self._storage.shape
            and tensor.stride() == self._storage.stride()
        )


class ResidentWeights:
    """The named parameters (``weight``, ``bias``, ...) a Program was programmed from."""

    def __init__(self, params: Mapping[str, torch.Tensor | None]):
        self._weights = {name: ResidentWeight(tensor) for name, tensor in params.items() if tensor is not None}

    def matches(self, params: Mapping[str, torch.Tensor | None]) -> bool:
        """Whether ``params`` are exactly the programmed parameters, each unchanged (None means absent)."""
        given = {name: tensor for name, tensor in params.items() if tensor is not None}
        return given.keys() == self._weights.keys() and all(self._weights[name].matches(t) for name, t in given.items())


class ResidentProgram(Program):
    """A Program whose device holds its bound parameters physically; it keeps their records (and so the tensors).

    Holding the tensors is what makes a Program safe to find again by the tensors' identity: while the Program
    lives, no other tensor can take their ``id()`` or storage address.
    """

    def __init__(self, op: OpSpec, device: Device, cost: Cost, run: Callable[..., Any], params: Mapping[str, torch.Tensor | None]):
        super().__init__(op, device, cost, run)
        self.resident = ResidentWeights(params)


class Reprogrammer:
    """Keeps one Program for a layer's parameters and programs them again only when needed.

    ``program(params, prepare)`` returns the current Program if it is still valid and ``params`` are the very
    tensors it was prepared from, unchanged; else it calls ``prepare(params)`` (a device's ``prepare`` for the
    layer's op) and keeps the new Program with the records of ``params``. Works with any device's Programs. A copy
    (``copy.deepcopy`` of a model) starts empty: its parameters are new tensors, which it programs itself.
    """

    def __init__(self) -> None:
        self._program: Program | None = None
        self._weights: ResidentWeights | None = None

    def program(self, params: Mapping[str, torch.Tensor | None], prepare: Callable[[Mapping[str, torch.Tensor | None]], Program]) -> Program:
        current, weights = self._program, self._weights
        if current is not None and weights is not None and current.valid and weights.matches(params):
            return current
        self._program = prepare(params)
        self._weights = ResidentWeights(params)
        return self._program

    def forget(self) -> Program | None:
        """Drop the held Program (the next ``program`` call prepares a new one); returns the dropped Program."""
        dropped, self._program, self._weights = self._program, None, None
        return dropped

    def __deepcopy__(self, memo: dict) -> Reprogrammer:
        return Reprogrammer()


class _DeviceComputed(torch.autograd.Function):
    """Identity forward; a backward that names the device layer which computed the value."""

    @staticmethod
    def forward(ctx: Any, out: torch.Tensor, what: str, *sources: torch.Tensor) -> torch.Tensor:
        ctx.what = what
        return out.view_as(out)

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> Any:
        raise UnsupportedOp(f"{ctx.what} ran on the device in eval() mode and has no gradient; call model.train() to train it, then eval() to run it on the device")


def without_gradient(out: torch.Tensor, sources: Sequence[torch.Tensor], what: str) -> torch.Tensor:
    """``out``, computed by a device Program from ``sources`` (inputs, weights): a backward through it raises
    UnsupportedOp naming ``what`` instead of returning the gradient of the emulator's arithmetic (rounding, noise),
    which is not the layer's gradient. Unchanged when no source requires a gradient or autograd is off."""
    if torch.is_grad_enabled() and any(s.requires_grad for s in sources):
        return _DeviceComputed.apply(out, what, *sources)
    return out
