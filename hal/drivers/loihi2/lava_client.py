"""Finding a Python 3.10 with lava-nc, and talking to the lava worker process that runs in it.

lava-nc 0.10 imports only on Python 3.10, so hal (any Python) runs it in a separate process:
``LavaWorker`` starts ``<python3.10> lava_worker.py`` and exchanges JSON-header + npz frames over its
stdin/stdout. A worker that dies is restarted on the next request; one that dies or hangs during a request is
killed and reported with the tail of its stderr (DeviceFailure).

Interpreter discovery, first hit wins: the ``?python=`` device option, ``$HAL_LAVA_PYTHON``, the environment
named by ``$HAL_LAVA_ENV``, a ``.venv-lava`` in the working directory or one of its parents or in the hal
checkout, ``python3.10`` on PATH, then pyenv's ``versions/3.10*``. Every candidate is verified by running it.

Verifying means starting the interpreter and importing lava (0.4-0.8 s), so its verdict is kept, per process and
on disk (``lava_python.json`` under ``$HAL_CACHE_DIR``, else ``$XDG_CACHE_HOME/hal``, else ``~/.cache/hal``), with
what it depended on: the interpreter file (resolved path, size, modification time), its venv's ``pyvenv.cfg``, the
``PYTHON*`` environment variables the worker would see, and the modification time of every directory on the
interpreter's ``sys.path`` and of lava's package directories, as the interpreter saw them before importing lava.
Installing or removing a package changes its site-packages directory, so a kept verdict is reused only while it
still holds; anything else is verified again. ``fresh=True`` (``hal doctor``) always verifies again.
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

from hal.cache import cache_dir
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


#: Run by a candidate: report the directories on its sys.path (with their modification times, taken before the
#: import), then whether it is Python 3.10 and imports lava, as one JSON line. The working directory is dropped from
#: sys.path first: the worker runs as a script and does not see it.
_VERIFY = """
import json, os, sys
sys.path = [p for p in sys.path if p]
report = {"dirs": {p: os.stat(p).st_mtime_ns for p in sys.path if os.path.isdir(p)}, "ok": False}
try:
    assert sys.version_info[:2] == (3, 10), "Python " + sys.version.split()[0] + ", not 3.10"
    import lava
    import lava.magma.core.run_configs
    report["dirs"].update({p: os.stat(p).st_mtime_ns for p in lava.__path__})
    report["ok"] = True
except Exception as exc:
    report["error"] = type(exc).__name__ + ": " + str(exc)
print(json.dumps(report))
"""
CACHE_FILE = "lava_python.json"

#: Verdicts of this process: interpreter path -> {"fingerprint", "dirs", "ok", "reason"} (the disk file's entries).
_verdicts: dict[str, dict] = {}
_verdicts_lock = threading.Lock()


def worker_environment() -> dict[str, str]:
    """The environment a lava worker (and a verification) runs in: hal's, without PYTHONPATH (it needs nothing of hal's)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("PYTHONPATH", None)
    return env


def cache_file() -> Path:
    """The file of kept verdicts (``$HAL_CACHE_DIR``, then ``$XDG_CACHE_HOME/hal``, then ``~/.cache/hal``)."""
    return cache_dir() / CACHE_FILE


def _interpreter_fingerprint(path: str) -> list | None:
    """What a verdict on ``path`` depends on besides its sys.path directories; None if the interpreter is not there."""
    try:
        real = os.path.realpath(path)
        stat = os.stat(real)
    except OSError:
        return None
    venv_cfg = Path(path).parent.parent / "pyvenv.cfg"
    try:
        cfg_mtime_ns = venv_cfg.stat().st_mtime_ns
    except OSError:
        cfg_mtime_ns = None
    env = sorted([k, v] for k, v in worker_environment().items() if k.startswith("PYTHON"))
    return [real, stat.st_size, stat.st_mtime_ns, cfg_mtime_ns, env]


def _still_holds(verdict: object, path: str) -> bool:
    """Whether a kept verdict on ``path`` was made on the same interpreter, environment and directories as now."""
    if not isinstance(verdict, dict) or not isinstance(verdict.get("dirs"), dict) or not isinstance(verdict.get("ok"), bool):
        return False
    if verdict.get("fingerprint") != _interpreter_fingerprint(path):
        return False
    for directory, mtime_ns in verdict["dirs"].items():
        try:
            if os.stat(directory).st_mtime_ns != mtime_ns:
                return False
        except OSError:
            return False
    return True


def _read_verdicts() -> dict[str, dict]:
    try:
        entries = json.loads(cache_file().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return entries if isinstance(entries, dict) else {}


def _keep(path: str, verdict: dict) -> None:
    """Keep a verdict in this process and in the cache file (temporary file + rename; skipped if unwritable)."""
    _verdicts[path] = verdict
    target = cache_file()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        entries = _read_verdicts()
        entries[path] = verdict
        handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=".lava_python.", suffix=".json")
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            json.dump(entries, out, indent=1, sort_keys=True)
        os.replace(temporary, target)
    except OSError:
        return


def _run_verification(path: str) -> tuple[bool, str]:
    """Start ``path`` and ask it to import lava: (ok, why not); a verdict it reports is kept for as long as it holds."""
    fingerprint = _interpreter_fingerprint(path)
    try:
        proc = subprocess.run([path, "-c", _VERIFY], capture_output=True, text=True, timeout=VERIFY_TIMEOUT_S, check=False, env=worker_environment())
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, type(exc).__name__
    try:
        report = json.loads(proc.stdout.strip().splitlines()[-1])
        dirs, ok = report["dirs"], report["ok"]
    except (IndexError, ValueError, KeyError, TypeError):  # not a Python that ran the check (a failing shim): nothing to keep
        return False, (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
    reason = "" if ok else str(report.get("error", "lava did not import"))
    if fingerprint is not None:
        _keep(path, {"fingerprint": fingerprint, "dirs": dirs, "ok": bool(ok), "reason": reason})
    return bool(ok), reason


def verify(path: str, fresh: bool = False) -> tuple[bool, str]:
    """Whether interpreter ``path`` is Python 3.10 and imports lava, and if not why: a kept verdict while it still
    holds (see the module docstring), else (or with ``fresh``) by running it."""
    with _verdicts_lock:
        if not fresh:
            for verdict in (_verdicts.get(path), _read_verdicts().get(path)):
                if _still_holds(verdict, path):
                    _verdicts[path] = verdict
                    return verdict["ok"], verdict["reason"]
        return _run_verification(path)


def find_lava_python(option: str | None = None, fresh: bool = False) -> LavaPython:
    """The first candidate interpreter that is Python 3.10 and imports lava, each checked by ``verify``.

    ``fresh=True`` runs every candidate tried instead of trusting kept verdicts (for ``hal doctor``).
    """
    tried: list[str] = []
    for path, how in _candidates(option):
        ok, reason = verify(path, fresh)
        if ok:
            return LavaPython(path, how)
        tried.append(f"{path} ({how}): {reason}")
    detail = "; ".join(tried) if tried else "no python3.10 interpreter was found"
    return LavaPython(None, "", f"no Python 3.10 with lava-nc: {detail}")


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
        self._proc = subprocess.Popen(
            [self.python, str(WORKER_SCRIPT)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, env=worker_environment()
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

