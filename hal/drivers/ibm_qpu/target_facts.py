"""Read a backend's ``Target`` (and configuration) into the hal ``quantum`` capability section.

Every figure is read off the backend, never assumed: T1/T2 from ``Target.qubit_properties``, gate error
and duration from the instruction properties of each qubit tuple, readout from the ``measure``
instruction. Real and fake backends carry a calibration snapshot, so their figures are
``measured:calibration <timestamp>``; the ideal simulator reports no error figures at all. The qubit count
and the job limits are ``measured:`` (what the backend reports), except the ideal simulator's width, which
qiskit-aer derives from the host's memory; degrees and broken couplers are ``derived:`` (counted).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from typing import Any

from hal.capability import Figure
from hal.capability.quantum import Connectivity, QuantumSection, Spread

#: Instructions a Target lists that are not gates of the circuit model (control flow, timing, bookkeeping).
NON_GATES = frozenset({"measure", "delay", "reset", "barrier", "for_loop", "while_loop", "if_else", "switch_case", "box", "store", "break_loop", "continue_loop"})


def calibration_time(backend: Any) -> str | None:
    """The ISO timestamp of the calibration snapshot a backend's figures come from, or None (simulators)."""
    properties = getattr(backend, "properties", None)
    if not callable(properties):
        return None
    try:
        props = properties()
    except Exception:  # noqa: BLE001 - a backend without stored properties (simulator, fresh device) has no calibration
        return None
    stamp = getattr(props, "last_update_date", None) if props is not None else None
    return stamp.isoformat() if stamp is not None else None


def _finite(values: Iterable[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(v)]


def _spread(values: list[float], unit: str, source: str, worst_is_max: bool, what: str) -> Spread | None:
    if not values:
        return None
    worst = max(values) if worst_is_max else min(values)
    how = f"{'largest' if worst_is_max else 'smallest'} of {len(values)} {what}"
    return Spread(
        median=Figure(statistics.median(values), unit, source, f"median of {len(values)} {what}"),
        worst=Figure(worst, unit, source, how),
        count=len(values),
    )


def _instruction_figures(target: Any, arity: int) -> tuple[list[float], list[float]]:
    """Errors and durations (s) of every gate of ``arity`` qubits over all the qubit tuples it is calibrated on.

    Virtual gates (zero duration and zero error, such as IBM's frame-change ``rz``) are left out: they are not
    pulses, and counting their zeros would pull the medians down.
    """
    errors: list[float] = []
    durations: list[float] = []
    for name in target.operation_names:
        if name in NON_GATES:
            continue
        operation = target.operation_from_name(name)
        if not hasattr(operation, "num_qubits") or operation.num_qubits != arity:
            continue
        for qargs, props in (target[name] or {}).items():
            if props is None or qargs is None or len(qargs) != arity:
                continue
            if props.duration == 0 and not props.error:
                continue
            errors.extend(_finite([props.error]))
            durations.extend(_finite([props.duration]))
    return errors, durations


def connectivity(target: Any) -> Connectivity:
    """Coupling-map edges and the distinct-neighbour degree of each qubit."""
    coupling = target.build_coupling_map()
    if coupling is None:
        return Connectivity(all_to_all=True)
    edges = sorted([int(a), int(b)] for a, b in coupling.get_edges())
    neighbours: dict[int, set[int]] = {q: set() for q in range(target.num_qubits)}
    for a, b in edges:
        neighbours[a].add(b)
        neighbours[b].add(a)
    degrees = [len(n) for n in neighbours.values()]
    return Connectivity(
        all_to_all=False,
        edges=edges,
        degree_max=Figure.derived(max(degrees, default=0), "qubits", "largest number of distinct coupling-map neighbours of a qubit"),
        degree_mean=Figure.derived(round(sum(degrees) / max(len(degrees), 1), 4), "qubits", f"distinct coupling-map neighbours summed over the {len(degrees)} qubits / {len(degrees)}"),
    )


def broken_pairs(target: Any) -> int:
    """Qubit pairs with a two-qubit gate calibrated with error 1 (a broken coupler), each pair counted once."""
    pairs: set[frozenset[int]] = set()
    for name in target.operation_names:
        if name in NON_GATES or getattr(target.operation_from_name(name), "num_qubits", 0) != 2:
            continue
        for qargs, props in (target[name] or {}).items():
            if qargs is not None and props is not None and props.error is not None and props.error >= 1.0:
                pairs.add(frozenset(int(q) for q in qargs))
    return len(pairs)


def qubit_count(target: Any, ideal: bool) -> Figure:
    """The backend's width: reported by a processor's Target, derived from host memory by the ideal simulator."""
    n = int(target.num_qubits)
    if ideal:
        return Figure.derived(n, "qubits", "floor(log2(host memory bytes / 16 B per complex128 amplitude)), qiskit-aer's MAX_QUBITS_STATEVECTOR")
    return Figure.measured(n, "qubits", "backend Target num_qubits")


def _limit(value: int | None, unit: str, how: str) -> Figure | None:
    return None if value is None else Figure.measured(value, unit, how)


def two_qubit_gates(target: Any) -> list[str]:
    """Names of the native two-qubit gates (the entanglers: cx, ecr, cz...)."""
    names = []
    for name in target.operation_names:
        if name in NON_GATES:
            continue
        operation = target.operation_from_name(name)
        if getattr(operation, "num_qubits", 0) == 2:
            names.append(name)
    return sorted(names)


def quantum_section(backend: Any, name: str, max_shots: int | None, max_circuits: int | None, noise_model: bool, ideal: bool) -> QuantumSection:
    """Everything ``hal query`` shows about one backend, read from its Target and calibration snapshot.

    ``ideal`` marks the noiseless simulator, whose width is derived from host memory rather than reported hardware.
    """
    target = backend.target
    stamp = calibration_time(backend)
    source = f"measured:calibration {stamp}" if stamp else "measured:backend target"
    qubit_props = [p for p in (target.qubit_properties or []) if p is not None]
    t1 = _finite(p.t1 for p in qubit_props)
    t2 = _finite(p.t2 for p in qubit_props)
    err_1q, dur_1q = _instruction_figures(target, 1)
    err_2q, dur_2q = _instruction_figures(target, 2)
    readout_err: list[float] = []
    readout_dur: list[float] = []
    if "measure" in target.operation_names:
        for props in (target["measure"] or {}).values():
            if props is not None:
                readout_err.extend(_finite([props.error]))
                readout_dur.extend(_finite([props.duration]))
    basis = sorted(n for n in target.operation_names if n not in NON_GATES)
    processor = None
    configuration = getattr(backend, "configuration", None)
    if callable(configuration):
        try:
            processor_type = getattr(configuration(), "processor_type", None) or {}
            processor = " ".join(str(processor_type[k]) for k in ("family", "revision", "segment") if processor_type.get(k)) or None
        except Exception:  # noqa: BLE001 - a backend without a configuration object (a simulator) has no processor type
            processor = None
    return QuantumSection(
        backend=name,
        num_qubits=qubit_count(target, ideal),
        basis_gates=basis,
        two_qubit_gates=two_qubit_gates(target),
        connectivity=connectivity(target),
        noise_model=noise_model,
        calibration_time=stamp,
        t1_s=_spread(t1, "s", source, False, "qubit T1 times"),
        t2_s=_spread(t2, "s", source, False, "qubit T2 times"),
        gate_error_1q=_spread(err_1q, "probability", source, True, "1-qubit gate errors"),
        gate_error_2q=_spread(err_2q, "probability", source, True, "2-qubit gate errors"),
        gate_duration_1q_s=_spread(dur_1q, "s", source, True, "1-qubit gate durations"),
        gate_duration_2q_s=_spread(dur_2q, "s", source, True, "2-qubit gate durations"),
        readout_error=_spread(readout_err, "probability", source, True, "readout errors"),
        readout_duration_s=_spread(readout_dur, "s", source, True, "readout durations"),
        unusable_2q_pairs=Figure.derived(broken_pairs(target), "qubit pairs", f"pairs with a 2-qubit gate error >= 1 in {source.split(':', 1)[1]}") if err_2q else None,
        max_shots=_limit(max_shots, "shots", "backend configuration max_shots"),
        max_circuits=_limit(max_circuits, "circuits", "backend max_circuits"),
        processor=processor,
    )
