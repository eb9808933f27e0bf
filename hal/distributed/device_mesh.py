"""Device meshes over the hal devices of this host: torch.distributed's ``DeviceMesh``, one process per device.

Under ``torchrun --nproc-per-node N`` every process calls ``mesh(kind, N)``; the mesh's ranks are the processes, and
rank ``r`` drives hal device ``kind:LOCAL_RANK`` (the host CPU for ``cpu``, one GPU per process otherwise). The
transport is torch.distributed's: gloo for CPU tensors, NCCL for CUDA ones; hal adds no transport of its own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from hal import registry
from hal.errors import DeviceUnavailable, InvalidInput

#: Environment variables torchrun sets in every process it starts; with all present, ``mesh`` initialises the group.
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class MeshKind:
    """How one hal device kind joins a mesh: the torch device type its tensors live on and the collective backend."""

    device_type: str
    backend: str


#: The hal device kinds a mesh can span. Other kinds (Loihi 2, QPUs, analog emulators) do not run torch.distributed.
MESH_KINDS: dict[str, MeshKind] = {
    "cpu": MeshKind("cpu", "gloo"),
    "cuda": MeshKind("cuda", "nccl"),
    "hopper": MeshKind("cuda", "nccl"),
    "blackwell": MeshKind("cuda", "nccl"),
}


def mesh(kind: str, n: int) -> DeviceMesh:
    """A one-dimensional ``DeviceMesh`` of ``n`` ranks over hal devices of kind ``kind`` (this process is one rank).

    Initialises the default process group from torchrun's environment when it is not initialised yet, checks that
    the job has exactly ``n`` processes and that this process's device (``kind:LOCAL_RANK``) is available, and
    makes that GPU the current CUDA device. The mesh dimension is named ``"cp"`` (context parallel).
    """
    if kind not in MESH_KINDS:
        raise InvalidInput(f"hal.distributed.mesh spans {', '.join(sorted(MESH_KINDS))} devices, not {kind!r}: "
                           "only these run torch.distributed collectives")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InvalidInput(f"a mesh needs a positive whole number of ranks, got n={n!r}")
    spec = MESH_KINDS[kind]
    label = f"{kind} mesh of {n}"
    if not dist.is_available():
        raise DeviceUnavailable(label, "this torch build has no torch.distributed", "install a torch wheel built with "
                                "distributed support (the official Linux wheels are)")
    local_rank = _local_rank()
    if not dist.is_initialized():
        _initialise(spec, label, n, local_rank)
    world = dist.get_world_size()
    if world != n:
        raise DeviceUnavailable(label, f"this job runs {world} process(es) but the mesh asks for {n} ranks",
                                f"launch with `torchrun --nproc-per-node {n} ...`, or ask for mesh({kind!r}, {world})")
    backend = _backend_for(str(dist.get_backend()), spec.device_type)
    if backend != spec.backend:
        raise DeviceUnavailable(label, f"the process group moves {spec.device_type} tensors with "
                                f"{backend or 'no backend'!r}, and a {kind} mesh needs {spec.backend!r}",
                                f"initialise it with torch.distributed.init_process_group({spec.backend!r})")
    uri = "cpu" if spec.device_type == "cpu" else f"{kind}:{local_rank}"
    registry.open_device(uri)  # raises DeviceUnavailable, with the driver's reason, when this rank's device is absent
    if spec.device_type == "cuda":
        torch.cuda.set_device(local_rank)
    return init_device_mesh(spec.device_type, (n,), mesh_dim_names=("cp",))


def _local_rank() -> int:
    text = os.environ.get("LOCAL_RANK")
    if text is None:
        return dist.get_rank() if dist.is_initialized() else 0
    if not text.isdigit():
        raise InvalidInput(f"LOCAL_RANK={text!r} is not a whole number; torchrun sets it, do not override it")
    return int(text)


def _initialise(spec: MeshKind, label: str, n: int, local_rank: int) -> None:
    """Initialise the default process group from torchrun's variables, or say how to launch."""
    missing = [name for name in TORCHRUN_VARIABLES if name not in os.environ]
    if missing:
        raise DeviceUnavailable(label, f"torch.distributed is not initialised and {', '.join(missing)} "
                                "(set by torchrun) are not in the environment",
                                f"launch with `torchrun --nproc-per-node {n} your_script.py`, or call "
                                f"torch.distributed.init_process_group({spec.backend!r}) before hal.distributed.mesh")
    if spec.device_type == "cuda":
        if not torch.cuda.is_available() or local_rank >= torch.cuda.device_count():
            found = torch.cuda.device_count() if torch.cuda.is_available() else 0
            raise DeviceUnavailable(label, f"process LOCAL_RANK={local_rank} needs GPU {local_rank} but this host "
                                    f"shows {found} CUDA GPU(s)",
                                    f"start at most {found} process(es) per host: torchrun --nproc-per-node {found}")
        torch.cuda.set_device(local_rank)
        dist.init_process_group(spec.backend, device_id=torch.device("cuda", local_rank))
    else:
        dist.init_process_group(spec.backend)


def _backend_for(backend: str, device_type: str) -> str:
    """The backend a process group uses for ``device_type`` tensors (``cpu:gloo,cuda:nccl`` names one per type)."""
    if ":" not in backend:
        return backend
    return dict(part.split(":", 1) for part in backend.split(",")).get(device_type, "")
