"""FP8 forms of a weight, kept between steps in which the weight did not change.

The key is what identifies the weight's current values without reading them: the address of its data, its
autograd version counter (bumped by every in-place op on the parameter, e.g. an optimizer step under
``torch.no_grad()``), its shape, strides, dtype and device. ``param.data = other`` moves the data (a new address);
the cache also holds a reference to the storage it was keyed on, so that memory cannot be freed and handed to a
new tensor at the same address while the entry lives (which would make a stale entry look current). Never keyed
on ``id()``.

Not seen by the key: writes through ``param.data`` (``param.data.mul_(2)``), which bypass the parameter's version
counter. Code that updates weights that way must call ``clear()`` (or build the module with cache_weights=False).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from hal.precision.scaling import Fp8Tensor


def weight_key(weight: torch.Tensor) -> tuple:
    """What identifies ``weight``'s current values: data address, version counter, shape, strides, dtype, device."""
    return (weight.data_ptr(), weight._version, tuple(weight.shape), weight.stride(), weight.dtype, weight.device)


class WeightCache:
    """Named FP8 forms of one weight ("forward", "backward"), dropped together when the weight changes."""

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._storage: torch.UntypedStorage | None = None
        self._forms: dict[str, Fp8Tensor] = {}
        self.hits = 0
        self.misses = 0

    def get(self, weight: torch.Tensor, form: str, make: Callable[[], dict[str, Fp8Tensor]]) -> Fp8Tensor:
        """The cached ``form`` of ``weight``; ``make()`` builds missing forms (it may return several at once)."""
        key = weight_key(weight)
        if key != self._key:
            self._key, self._storage, self._forms = key, weight.untyped_storage(), {}
        if form in self._forms:
            self.hits += 1
        else:
            self.misses += 1
            self._forms.update(make())
        return self._forms[form]

    def clear(self) -> None:
        """Forget every form (call after writing the weight through ``.data``)."""
        self._key, self._storage, self._forms = None, None, {}
