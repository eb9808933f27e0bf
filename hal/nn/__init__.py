"""Torch modules for hal devices: ``convert(model, uri)`` for every device, the generic device layers, and the
modules drivers provide by name (``QuantumLayer``, through the ``hal.modules`` entry-point group).

    analog = hal.nn.convert(model, "memristor:0?tile=256")   # layers become device layers
    analog.eval(); analog(x); analog.program_weights()
    qlayer = hal.nn.QuantumLayer(n_qubits=4, device="ibm_qpu:aer")
    model = hal.nn.Jamba(vocab_size=256, d_model=256, layers=8, attention_every=8, moe_every=2, experts=8, top_k=2)

It sits beside the runtime: both reach devices only through ``hal.registry``.
"""

from typing import Any

from hal import registry
from hal.nn.convert import DeviceModel, convert
from hal.nn.jamba import JAMBA_1B, CausalSelfAttention, Jamba, JambaBlock, JambaCache, JambaConfig, JambaLayer, JambaOutput, KVCache
from hal.nn.layers import DeviceConv2d, DeviceLinear
from hal.nn.mamba import Mamba2Block, MambaBlock, MambaCache
from hal.nn.moa import MixtureOfArchitectures, MoACache
from hal.nn.moe import MoE, SwiGLU, TopKRouter

__all__ = [
    "JAMBA_1B", "CausalSelfAttention", "DeviceConv2d", "DeviceLinear", "DeviceModel", "Jamba", "JambaBlock", "JambaCache",
    "JambaConfig", "JambaLayer", "JambaOutput", "KVCache", "Mamba2Block", "MambaBlock", "MambaCache", "MixtureOfArchitectures",
    "MoACache", "MoE", "SwiGLU", "TopKRouter", "convert", *registry.module_names(),
]


def __getattr__(name: str) -> Any:
    """A module class a driver provides (``QuantumLayer`` from the IBM quantum driver), loaded on first use."""
    if name in registry.module_names():
        return registry.load_module(name)
    raise AttributeError(f"module 'hal.nn' has no attribute {name!r}")
