"""Claimed chains on the photonic processor: linear layers whose light stays optical from processor to processor.

The runtime offers a device a chain of ops (``hal.subgraph``); the processor claims a chain of ``linear`` ops, each
with activation ``none`` or ``relu`` (the runtime's capture fuses a ReLU into the linear before it), every layer's
output the next layer's input. Op by op, every layer modulates its input and detects its output.

Physics of a claimed chain. The per-op model gives every resident Program its own processor (it never charges
rewriting one processor between layers); every processor carries the chip's coupler errors of ``?seed``. A chain
connects those processors by on-chip waveguides, all n output ports of one feeding the n input ports of the next:

* where no ReLU intervenes, the light passes on coherently, mesh to mesh. The composed transfer matrix
  ``T_L ... T_1`` (each processor's quantised phases, crosstalk, coupler errors, losses and dispersion) is detected
  once, at the end, after one calibration per wavelength as for a single processor. The readout applies the product
  ``W_L ... W_1`` scaled by its own largest singular value; the passive attenuators only pass
  ``kappa = s_max(W_L ... W_1) / prod_l s_max(W_l)`` of it, which the lasers make up together with the mesh losses;
* a ReLU needs detection, the electronic ReLU and re-modulation (O-E-O): the chain is cut there into optical
  segments, each detected once (its noise, its ADC) and the next one's inputs modulated again (x / max|x|);
* it is cut as well where the light would no longer reach the detector with the power the SNR needs: a segment's
  loss, its processors' mesh losses plus ``-20 log10(kappa)``, must stay within ``energy.loss_budget_db`` (an input
  waveguide carries at most ``max_input_power_w``). At the defaults (N = 32, 19.5 dB per processor, a 31.4 dB
  budget) no two processors fit, so the default device claims no chain; N = 16 (9.9 dB each) chains two;
* a layer larger than N x N has its tiles' partial products summed after detection: it is a segment of its own;
* the biases of a segment fold into its one electronic bias after detection, ``sum_k W_L ... W_{k+1} b_k``
  (float64, at programming).

The device claims a chain when at least one boundary between its layers keeps the light optical (for Gaussian
weights of the chain's shapes); otherwise every boundary converts anyway, and it declines, saying why for each.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch

from hal.drivers.photonic.energy import loss_budget_db, mesh_loss_db
from hal.drivers.photonic.imperfections import PhotonicConfig
from hal.drivers.photonic.processor import Tile, calibrate
from hal.subgraph import Subgraph, linear_chain_problem

if TYPE_CHECKING:
    from hal.drivers.photonic.driver import PhotonicDevice

#: Seed of the Gaussian weights a chain's segments and estimate are planned with before its weights are known.
REFERENCE_SEED = 1234
class ComposedTile:
    """Processors in series (one programmed ``Tile`` each), read once: the tile-like block ``PhotonicMatrix`` runs.

    ``weight`` is the product the chain applies (rows x cols); ``scale`` its largest singular value, by which the
    readout multiplies the detected ``W / scale`` back; ``kappa`` the share of it the attenuators pass.
    """

    def __init__(self, stages: list[Tile], weights: list[np.ndarray], config: PhotonicConfig, dtype: torch.dtype):
        self.stages = stages
        self.weight = product(weights)
        self.rows, self.cols = self.weight.shape
        self.scale = largest_singular_value(self.weight) or 1.0
        self.kappa = self.scale / math.prod(t.scale for t in stages)
        self.normalised = torch.as_tensor(self.weight / self.scale, dtype=torch.float64)
        actual = stages[0].actual
        for stage in stages[1:]:
            actual = stage.actual @ actual
        self.gain, self.transmission, self.transfer, self.full_scale, self.matrix_error = calibrate(actual, self.normalised, config, dtype)

    @property
    def depth(self) -> int:
        """Optical depth in columns: every stage's V* mesh, attenuator column and U mesh."""
        return sum(t.depth for t in self.stages)

    def heater_phase_sum(self) -> float:
        """Every stage's programmed heater phases (radians): all stages hold their phases at once."""
        return sum(t.heater_phase_sum() for t in self.stages)


def product(weights: list[np.ndarray]) -> np.ndarray:
    """``W_L ... W_1`` of layers listed first to last."""
    out = weights[0]
    for w in weights[1:]:
        out = w @ out
    return out


def largest_singular_value(weight: np.ndarray) -> float:
    return float(np.linalg.norm(weight, 2)) if weight.size else 0.0


def kappa_db(weights: list[np.ndarray]) -> float:
    """The power the attenuators of processors in series lose beyond the product's own scale: -20 log10(kappa)."""
    scales = [largest_singular_value(w) for w in weights]
    composed = largest_singular_value(product(weights))
    if composed == 0 or min(scales) == 0:
        return 0.0
    return 20 * math.log10(math.prod(scales) / composed)


def fits_one_tile(weight_shape: tuple[int, ...], n: int) -> bool:
    return weight_shape[0] <= n and weight_shape[1] <= n


def plan_segments(device: PhotonicDevice, weights: list[np.ndarray], relus: list[bool]) -> tuple[list[list[int]], list[str]]:
    """Greedy optical segments of a chain (lists of layer indices) and, per boundary that converts, why."""
    n, config = device.ports, device.config
    budget = loss_budget_db(device.receiver.signal_power_w, device.energy)
    per_processor = mesh_loss_db(n, device.layout, config)
    segments: list[list[int]] = [[0]]
    reasons: list[str] = []
    for j in range(1, len(weights)):
        current = segments[-1]
        before = current[-1]
        why = ""
        if relus[before]:
            why = f"op {before} -> {j}: a relu (detection, electronic relu, re-modulation)"
        elif not (fits_one_tile(weights[before].shape, n) and fits_one_tile(weights[j].shape, n)):
            why = f"op {before} -> {j}: a layer larger than {n}x{n} is tiled, its partial products summed after detection"
        else:
            loss = per_processor * (len(current) + 1) + kappa_db([weights[k] for k in (*current, j)])
            if loss > budget:
                why = (
                    f"op {before} -> {j}: {len(current) + 1} {n}-port processors in series lose {loss:.1f} dB (mesh losses and attenuation), "
                    f"beyond the {budget:.1f} dB the detector's required power leaves (a smaller ?N= or a lower ?snr_db= loses less)"
                )
        if why:
            reasons.append(why)
            segments.append([j])
        else:
            current.append(j)
    return segments, reasons


def reference_weights(sub: Subgraph) -> list[np.ndarray]:
    """Gaussian weights of the chain's shapes (fixed seed): what a chain is planned and estimated with."""
    rng = np.random.default_rng(REFERENCE_SEED)
    return [rng.standard_normal(tuple(op.param("weight").shape)) for op in sub.ops]


def relus_of(sub: Subgraph) -> list[bool]:
    return [op.attr("activation") == "relu" for op in sub.ops]


def chain_problem(device: PhotonicDevice, sub: Subgraph) -> str | None:
    """Why ``device`` does not run ``sub`` as one chain keeping light optical somewhere, or None when it does."""
    problem = linear_chain_problem(device, sub)
    if problem:
        return problem
    for j, op in enumerate(sub.ops):
        if 0 in op.param("weight").shape:
            return f"op {j} (linear) has an empty weight {op.param('weight').shape}: nothing to chain, run it op by op"
    segments, reasons = plan_segments(device, reference_weights(sub), relus_of(sub))
    if all(len(segment) == 1 for segment in segments):
        return f"every layer boundary of {sub} needs detection and re-modulation ({'; '.join(reasons) or 'a single layer'}), so it costs what op by op does; run it op by op"
    return None


def folded_bias(weights: list[np.ndarray], biases: list[np.ndarray | None]) -> np.ndarray | None:
    """The one bias of an optical segment after detection: ``sum_k W_L ... W_{k+1} b_k`` (None when no layer has one)."""
    total = None
    for k, bias in enumerate(biases):
        if bias is None:
            continue
        carried = bias
        for w in weights[k + 1 :]:
            carried = w @ carried
        total = carried if total is None else total + carried
    return total
