"""Costs the planner adds to the devices' own estimates: the host, the links to it, and paradigm conversions.

Data moves hub-and-spoke: a tensor leaving a device goes to the host, then to the next device
(every vocabulary op returns a tensor, and graph inputs, constants and host steps live on the host).
Crossing from location a to location b therefore costs ``bytes * (egress[a] + ingress[b])``:

* the link: bytes / link bandwidth and bytes * link energy, for devices whose torch device is not
  the host (a GPU); devices computing in host memory (emulators, the CPU) have no link;
* the conversion: decoding out of a non-digital paradigm and encoding into one, as host memory
  traffic (``hal.runtime.convert.CODINGS``) at the host's bandwidth and energy per byte, unless the device
  declares that its own estimates include that conversion (``converts_in_estimates``: Loihi 2 prices its rate
  encode and decode in ``estimate``), so that it is counted once.

Conversions add no error here: each driver's ``estimate(op).error`` already covers its own edge
(spike-count quantisation, DAC/ADC, shot noise), and counting it twice would bias against those devices.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hal import ops as vocabulary
from hal.capability import Figure, Paradigm
from hal.device import Cost, Device, OpSpec
from hal.runtime.convert import traffic_per_byte

#: The planner's name for the CPU reference that runs host steps and ops no device supports.
HOST = "host"

#: PCIe link of a discrete accelerator when its driver declares none (capabilities.peak["host_link_b_per_s"]).
DEFAULT_LINK = Figure.datasheet(64e9, "B/s", "PCI-SIG PCIe 5.0 x16: 32 GT/s * 16 lanes * 128/130 / 8, one direction")


@dataclass(frozen=True)
class HostModel:
    """The host CPU and memory: runs host steps, and every conversion and hub transfer passes through it.

    Built from the cpu device's measured capabilities when it is available (``from_device``), else from
    the ``default`` figures with their sources.
    """

    flop_per_s: Figure
    bandwidth_b_per_s: Figure
    energy_j_per_flop: Figure
    energy_j_per_byte: Figure

    @classmethod
    def default(cls) -> HostModel:
        return cls(
            Figure.datasheet(9.92e10, "flop/s", "one x86 core at 3.1 GHz with two 256-bit FMA units: 3.1e9 * 2 * 8 * 2"),
            Figure.datasheet(38.4e9, "B/s", "JEDEC JESD79-5 DDR5-4800, one 64-bit channel: 4800 MT/s * 8 B"),
            Figure.paper(2.3e-12, "J/flop", "Horowitz, ISSCC 2014, fp32 mult 3.7 pJ + add 0.9 pJ per 2 flops (45 nm)"),
            Figure.paper(160e-12, "J/B", "Horowitz, ISSCC 2014, 640 pJ per 32-bit DRAM access (45 nm)"),
        )

    @classmethod
    def from_device(cls, device: Device | None) -> HostModel:
        """Use the measured peak rates and energies a CPU device declares; fall back to defaults per figure."""
        base = cls.default()
        if device is None:
            return base
        caps = device.capabilities
        return cls(
            caps.peak.get("float32_flop_per_s", base.flop_per_s),
            caps.peak.get("memory_bandwidth_b_per_s", base.bandwidth_b_per_s),
            caps.energy.get("j_per_flop", base.energy_j_per_flop),
            caps.energy.get("j_per_dram_byte", base.energy_j_per_byte),
        )

    def estimate(self, op: OpSpec | None, input_bytes: int, output_bytes: int) -> Cost:
        """Roofline cost of one host step: a vocabulary op through torch, or a layout step (bytes only)."""
        flops = vocabulary.flops(op) if op is not None else 0
        traffic = (vocabulary.bytes_moved(op) if op is not None else input_bytes + output_bytes)
        latency = max(flops / self.flop_per_s.value, traffic / self.bandwidth_b_per_s.value)
        energy = flops * self.energy_j_per_flop.value + traffic * self.energy_j_per_byte.value
        error = 0.0
        if op is not None and op.inputs:
            error = vocabulary.reduction_length(op) ** 0.5 * torch.finfo(op.inputs[0].dtype).eps / 2
        return Cost(latency, energy, error, "host roofline: max(flops / host flop rate, bytes / host bandwidth); energy flops * J/flop + bytes * J/B; error sqrt(K) * unit roundoff")


@dataclass(frozen=True)
class Edge:
    """Per-byte cost of leaving (``egress``) and entering (``ingress``) one location: (seconds, joules) per byte.

    ``conversion`` says where the paradigm conversion is priced: ``"none"`` (digital), ``"host traffic"`` (here)
    or ``"in the device's estimates"`` (the driver's, so the edge holds the link only).
    """

    egress_s: float
    egress_j: float
    ingress_s: float
    ingress_j: float
    link: str
    paradigm: str
    conversion: str


def converts_in_estimates(device: Device) -> bool:
    """True when ``device`` declares that its estimates already price its paradigm conversion at the edge."""
    return device.capabilities.estimates_include_edge_conversion


def link_figure(device: Device) -> Figure | None:
    """The device's host link, or None when it computes in host memory."""
    declared = device.capabilities.peak.get("host_link_b_per_s")
    if declared is not None:
        return declared
    if device.torch_device.type == "cpu":
        return None
    return DEFAULT_LINK


def edge_rates(device: Device | None, host: HostModel) -> Edge:
    """Per-byte egress/ingress costs of a location (None is the host: free)."""
    if device is None:
        return Edge(0.0, 0.0, 0.0, 0.0, "host memory", Paradigm.DIGITAL.value, "none")
    paradigm = Paradigm(device.capabilities.paradigm)
    link = link_figure(device)
    link_s = 1 / link.value if link else 0.0
    link_j = 2 * host.energy_j_per_byte.value if link else 0.0  # derived: a DRAM read at one end, a write at the other
    if paradigm is Paradigm.DIGITAL:
        out_traffic, in_traffic, conversion = 0.0, 0.0, "none"
    elif converts_in_estimates(device):
        out_traffic, in_traffic, conversion = 0.0, 0.0, "in the device's estimates"
    else:
        out_traffic, in_traffic, conversion = traffic_per_byte(paradigm, "out"), traffic_per_byte(paradigm, "in"), "host traffic"
    bw, e_byte = host.bandwidth_b_per_s.value, host.energy_j_per_byte.value
    return Edge(
        link_s + out_traffic / bw,
        link_j + out_traffic * e_byte,
        link_s + in_traffic / bw,
        link_j + in_traffic * e_byte,
        f"{link} ({link.source})" if link else "host memory",
        paradigm.value,
        conversion,
    )


def transfer_cost(nbytes: int, src: Edge, dst: Edge) -> Cost:
    """Cost of moving ``nbytes`` from one location to another through the host (0 when they are the same)."""
    if src is dst:
        return Cost(0.0, 0.0, 0.0, "same location")
    return Cost(
        nbytes * (src.egress_s + dst.ingress_s),
        nbytes * (src.egress_j + dst.ingress_j),
        0.0,
        f"{nbytes} B: {src.paradigm} -> {dst.paradigm}; link(s) {src.link} / {dst.link}; "
        f"conversion out: {src.conversion}, in: {dst.conversion}",
    )
