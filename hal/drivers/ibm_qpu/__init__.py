"""IBM quantum driver: IBM Quantum processors, their fake snapshots and the ideal Aer simulator.

    import hal
    d = hal.device("ibm_qpu:fake_manila")
    program = d.prepare_circuit(circuit, observables)      # expectation: rows of parameter values in, one job out
    values, std_errors = program(torch.tensor(parameter_rows))

qiskit is never imported by ``import hal`` or by probing; a local device imports it when it first transpiles or runs a
circuit (or describes a backend whose capability section is not cached yet, see ``section_cache``), a real processor
when it is opened.
"""

from hal.drivers.ibm_qpu.driver import IbmQpuDevice
from hal.drivers.ibm_qpu.layer import QuantumLayer, angle_encoding_circuit
from hal.drivers.ibm_qpu.primitives import Circuit, counts
from hal.drivers.ibm_qpu.solvers import QaoaResult, VqeResult, maxcut_qubo, qaoa_maxcut, qubo_minimize, vqe

__all__ = ["Circuit", "IbmQpuDevice", "QaoaResult", "QuantumLayer", "VqeResult", "angle_encoding_circuit", "counts", "maxcut_qubo", "qaoa_maxcut", "qubo_minimize", "vqe"]
