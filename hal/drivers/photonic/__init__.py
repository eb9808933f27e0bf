"""The photonic mesh emulator: MZI meshes (Clements/Reck) that compute matrix products with light, with their imperfections.

``hal.device("photonic:0")`` is the device; ``hal.nn.convert(model, "photonic:0")`` swaps a model's ``nn.Linear``
layers for ``PhotonicLinear`` layers that run on it. The physics lives in ``decompose`` (unitary <-> phases),
``mesh`` (programmed meshes, column-vectorised simulation), ``imperfections`` (parameters and sources),
``processor`` (SVD onto meshes and attenuators, tiling), ``readout`` (detection, noise, ADC), ``energy`` (costs
and the loss-limited mesh size) and ``accuracy`` (the expected error derived from the configuration);
``capabilities`` says what the device declares, ``chain`` how a claimed chain of layers keeps light optical
between processors.
"""

from hal.drivers.photonic.driver import PhotonicDevice, PhotonicProgram
from hal.drivers.photonic.layers import PhotonicLinear

__all__ = ["PhotonicDevice", "PhotonicLinear", "PhotonicProgram"]
