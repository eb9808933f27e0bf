"""NVIDIA GPUs: Hopper (cc 9.x), Blackwell (cc 10.x, 12.x) and any other CUDA GPU.

Facts come from the driver (NVML through nvidia-ml-py, device attributes through cuda-python); torch CUDA is the
compute path. Read top-down: ``driver.py`` (the Devices), ``detect.py`` (NVML + CUDA joined), ``nvml.py``,
``cuda_attrs.py``, ``architectures.py`` (per-architecture table with sources), ``capabilities.py``, ``matmul.py``
(tensor-core precision policy), ``fusion.py`` (a claimed subgraph's one Program), ``graphs.py`` (PyGraph-style CUDA
graphs with a measured cost-benefit decision), ``passes/`` (FX rewrites into ``hal.kernels.gemm``) and
``torch_graph.py`` (what ``torch.compile(backend="hal")`` graphs become on this GPU).
"""

from hal.drivers.nvidia.driver import BlackwellDevice, CudaDevice, HopperDevice

__all__ = ["BlackwellDevice", "CudaDevice", "HopperDevice"]
