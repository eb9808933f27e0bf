"""hal.runtime: one model across the devices present: capture, place, chain, fall back.

    plan = hal.runtime.plan(model, example_inputs, policy="energy", pins={"fc2": "memristor:0"})
    print(plan)                          # stage, device, ops, program (claimed?), est. latency/energy/error, conversions
    plan.to_json(); plan.save_plot("plan.png")
    out = plan.run(x)                    # chained across devices
    out, report = plan.run(x, profile=True)
    hal.runtime.plan(model, x, devices=["cpu", "memristor:0"])   # emulators only when named (or allow_simulated=True)

Modules: ``capture`` (torch.fx -> graph of OpSpecs), ``inplace`` (in-place writes and their order),
``placement`` (dynamic programming over the topological order), ``claims`` (stages offered to their device as
one subgraph), ``capacity`` (what a device holds resident),
``costs`` (host, links, conversions), ``convert`` (tensor <-> spikes, optical amplitudes, qubit angles),
``executor`` (chained Programs, overlap, fallback), ``explain`` (table, JSON, PNG), ``command`` (the model
file and pins ``hal plan`` reads). A Plan may be run from several threads at once.
"""

from hal.runtime.capture import Graph, Node, UntraceableModel, capture
from hal.runtime.executor import Report
from hal.runtime.placement import POLICIES, Placement
from hal.runtime.planner import Plan, available_devices, plan

__all__ = ["POLICIES", "Graph", "Node", "Placement", "Plan", "Report", "UntraceableModel", "available_devices", "capture", "plan"]
