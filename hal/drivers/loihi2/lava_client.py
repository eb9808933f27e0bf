"""Finding a Python 3.10 with lava-nc, and talking to the lava worker process that runs in it.

lava-nc 0.10 imports only on Python 3.10, so hal (any Python) runs it in a separate process:
``LavaWorker`` starts ``<python3.10> lava_worker.py`` and exchanges JSON-header + npz frames over its
stdin/stdout. A worker that dies is restarted on the next request; one that dies or hangs during a request is
killed and reported with the tail of its stderr (DeviceFailure).

Interpreter discovery, first hit wins: the ``?python=`` device option, ``$HAL_LAVA_PYTHON``, the environment
named by ``$HAL_LAVA_ENV``, a ``.venv-lava`` in the working directory or one of its parents or in the hal
checkout, ``python3.10`` on PATH, then pyenv's ``versions/3.10*``. Every candidate is verified by running it.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hal.errors import DeviceFailure

WORKER_SCRIPT = Path(__file__).with_name("lava_worker.py")
#: Seconds a candidate interpreter gets to import lava when verified.
VERIFY_TIMEOUT_S = 60.0
SETUP_HINT = "run scripts/setup_lava.sh (creates .venv-lava with lava-nc 0.10 on Python 3.10), or set HAL_LAVA_PYTHON to such an interpreter"


@dataclass(frozen=True)
class LavaPython:
    """The outcome of discovery: an interpreter that imports lava, or why none was found."""

    path: str | None
    found_by: str
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.path is not None


def _env_python(env_dir: Path) -> Path:
    return env_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _candidates(option: str | None) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    if option:
        found.append((option, "the ?python= option"))
    if os.environ.get("HAL_LAVA_PYTHON"):
        found.append((os.environ["HAL_LAVA_PYTHON"], "$HAL_LAVA_PYTHON"))
    if os.environ.get("HAL_LAVA_ENV"):
        found.append((str(_env_python(Path(os.environ["HAL_LAVA_ENV"]))), "$HAL_LAVA_ENV"))
    roots = [Path.cwd(), *Path.cwd().parents, Path(__file__).resolve().parents[3]]
    for root in roots:
        env_python = _env_python(root / ".venv-lava")
        if env_python.exists():
            found.append((str(env_python), f".venv-lava in {root}"))
    on_path = shutil.which("python3.10")
    if on_path:
        found.append((on_path, "python3.10 on PATH"))
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    for version_dir in sorted((pyenv_root / "versions").glob("3.10*")):
        found.append((str(version_dir / "bin" / "python3.10"), f"pyenv {version_dir.name}"))
    return found


_VERIFY = "import sys; assert sys.version_info[:2] == (3, 10), sys.version; import lava.magma.core.run_configs"
_cache: dict[str | None, LavaPython] = {}


def find_lava_python(option: str | None = None) -> LavaPython:
    """The first candidate interpreter that is Python 3.10 and imports lava (cached per option)."""
    if option in _cache:
        return _cache[option]
    tried: list[str] = []
    result = None
    for path, how in _candidates(option):
        try:
            proc = subprocess.run([path, "-c", _VERIFY], capture_output=True, text=True, timeout=VERIFY_TIMEOUT_S, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            tried.append(f"{path} ({how}): {type(exc).__name__}")
            continue
        if proc.returncode == 0:
            result = LavaPython(path, how)
            break
        last = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        tried.append(f"{path} ({how}): {last}")
    if result is None:
        detail = "; ".join(tried) if tried else "no python3.10 interpreter was found"
        result = LavaPython(None, "", f"no Python 3.10 with lava-nc: {detail}")
    _cache[option] = result
    return result


def _pack(header: dict, arrays: dict[str, np.ndarray] | None) -> bytes:
    payload = b""
    if arrays:
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        payload = buffer.getvalue()
    return (json.dumps(dict(header, npz_bytes=len(payload))) + "\n").encode() + payload


class LavaWorker:
    """One lava worker process; ``request`` sends a frame and waits (bounded) for the reply."""

    def __init__(self, python: str, timeout_s: float = 300.0):
        self.python = python
        self.timeout_s = timeout_s
        self._proc: subprocess.Popen | None = None
        self._stderr: tempfile._TemporaryFileWrapper | None = None
        self.restarts = 0

    def _start(self) -> None:
        if self._proc is not None:
            self.restarts += 1
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the worker; closed in close()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.pop("PYTHONPATH", None)  # the worker needs nothing of hal's environment
        self._proc = subprocess.Popen(
            [self.python, str(WORKER_SCRIPT)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, env=env
        )

    def stderr_tail(self, chars: int = 2000) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")[-chars:]

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def request(self, header: dict, arrays: dict[str, np.ndarray] | None = None, timeout_s: float | None = None) -> tuple[dict, dict[str, np.ndarray]]:
        """Send one request; return the reply header and arrays. Raises DeviceFailure with the worker's stderr."""
        if not self.alive:
            self._start()
        proc = self._proc
        assert proc is not None and proc.stdin is not None and proc.stdout is not None
        box: dict = {}

        def exchange() -> None:
            try:
                proc.stdin.write(_pack(header, arrays))
                proc.stdin.flush()
                line = proc.stdout.readline()
                if not line:
                    box["error"] = "the worker exited"
                    return
                reply = json.loads(line)
                size = int(reply.get("npz_bytes", 0))
                out: dict[str, np.ndarray] = {}
                if size:
                    with np.load(io.BytesIO(proc.stdout.read(size))) as archive:
                        out = {name: archive[name] for name in archive.files}
                box["reply"] = (reply, out)
            except (OSError, ValueError) as exc:
                box["error"] = f"{type(exc).__name__}: {exc}"

        thread = threading.Thread(target=exchange, daemon=True)
        thread.start()
        thread.join(timeout_s or self.timeout_s)
        if thread.is_alive():
            self.kill()
            raise DeviceFailure(f"the lava worker ({self.python}) did not answer {header.get('op')!r} within {timeout_s or self.timeout_s:.0f} s and was killed; its stderr ends:\n{self.stderr_tail()}")
        if "error" in box:
            self.kill()
            raise DeviceFailure(f"the lava worker ({self.python}) failed during {header.get('op')!r} ({box['error']}); it will be restarted on the next call. Its stderr ends:\n{self.stderr_tail()}")
        reply, out = box["reply"]
        if not reply.get("ok"):
            raise DeviceFailure(f"lava refused the request: {reply.get('error')}\n{reply.get('traceback', '')[-2000:]}")
        return reply, out

    def kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(timeout=10)

    def close(self) -> None:
        """Ask the worker to exit, and kill it if it does not."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            try:
                assert proc.stdin is not None
                proc.stdin.write(_pack({"op": "exit"}, None))
                proc.stdin.flush()
                proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                self.kill()
        self._proc = None
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None


def network_request(layers, spikes: np.ndarray, record_state: bool, hardware: bool = False, record_spikes: bool = True) -> tuple[dict, dict[str, np.ndarray]]:
    """The run request for a list of engine ``LifLayer``s and one sample's (T, n_in) integer spikes.

    ``record_spikes=False`` with ``record_state=False`` attaches no monitor (for timing lava alone).
    """
    from hal.drivers.loihi2.engine import ConvSynapse

    specs = []
    arrays: dict[str, np.ndarray] = {"input": np.ascontiguousarray(spikes.astype(np.int32))}
    for i, layer in enumerate(layers):
        syn, lif = layer.synapse, layer.lif
        spec = {
            "kind": "conv" if isinstance(syn, ConvSynapse) else "dense",
            "weight_exp": syn.weight_exp,
            "num_message_bits": syn.num_message_bits,
            "du": lif.du,
            "dv": lif.dv,
            "vth": lif.vth,
        }
        if isinstance(syn, ConvSynapse):
            spec.update(
                input_shape=list(syn.input_shape), output_shape=list(syn.output_shape), stride=list(syn.stride),
                padding=list(syn.padding), dilation=list(syn.dilation), groups=syn.groups,
            )
        specs.append(spec)
        arrays[f"weights{i}"] = syn.hardware.weights.cpu().numpy().astype(np.int32)
        mant = lif.bias_mant if lif.bias_mant is not None else torch.zeros(lif.size, dtype=torch.int64)
        arrays[f"bias_mant{i}"] = mant.cpu().numpy().astype(np.int32)
        arrays[f"bias_exp{i}"] = torch.as_tensor(lif.bias_exp, dtype=torch.int64).expand(lif.size).numpy().astype(np.int32)
    header = {"op": "run", "steps": int(spikes.shape[0]), "record_state": record_state, "record_spikes": record_spikes, "hardware": hardware, "layers": specs}
    return header, arrays

