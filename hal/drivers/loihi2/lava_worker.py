"""The lava-nc worker: runs inside the Python 3.10 lava environment, builds networks in lava and runs them.

Started by ``lava_client.LavaWorker`` as ``<python3.10> <this file>``. It imports only the standard library,
numpy and lava (never torch or the hal package), so it runs in lava's own small environment.

Wire protocol, both directions: one JSON header line, then ``header["npz_bytes"]`` bytes of a numpy ``.npz``
archive holding the arrays. Requests:

- ``{"op": "ping"}`` -> versions, and whether lava-loihi (the hardware back end) is importable.
- ``{"op": "run", "steps": T, "record_state": bool, "record_spikes": bool, "hardware": bool, "layers": [...]}`` with arrays
  ``input`` (T, n_in) and per layer ``weights{i}``, ``bias_mant{i}``, ``bias_exp{i}`` -> arrays ``spikes{i}`` (T, N) and, when
  asked, ``v{i}``/``u{i}`` (T, N), plus ``build_s``/``run_s`` timings in the header. A layer dict holds ``kind``
  ("dense" or "conv"), ``weight_exp``, ``num_message_bits``, ``du``, ``dv``, ``vth`` and, for
  conv, ``input_shape`` (C, H, W), ``stride``, ``padding``, ``dilation``, ``groups`` (torch conventions; conv
  weights are torch's (O, C/g, kh, kw) cross-correlation kernels, converted here to lava's (O, W, H, C)
  convolution kernels).
- ``{"op": "exit"}``.

Errors come back as ``{"ok": false, "error": "..."}``; the worker keeps serving.
"""

import io
import json
import os
import sys
import time
import traceback

import numpy as np

PROTOCOL_OUT = sys.stdout.buffer
sys.stdout = sys.stderr  # lava and numpy may print; keep the protocol stream clean


def read_frame(stream):
    line = stream.readline()
    if not line:
        return None, None
    header = json.loads(line)
    size = int(header.get("npz_bytes", 0))
    arrays = {}
    if size:
        payload = stream.read(size)
        with np.load(io.BytesIO(payload)) as archive:
            arrays = {name: archive[name] for name in archive.files}
    return header, arrays


def write_frame(header, arrays=None):
    payload = b""
    if arrays:
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        payload = buffer.getvalue()
    header = dict(header, npz_bytes=len(payload))
    PROTOCOL_OUT.write((json.dumps(header) + "\n").encode())
    PROTOCOL_OUT.write(payload)
    PROTOCOL_OUT.flush()


def hardware_available():
    try:
        from lava.utils import loihi

        return bool(loihi.is_installed())
    except (ImportError, AttributeError):
        return False


def ping():
    import lava

    version = getattr(lava, "__version__", None)
    if version is None:
        try:
            from importlib.metadata import version as dist_version

            version = dist_version("lava-nc")
        except ImportError:
            version = "unknown"
    return {"ok": True, "lava": version, "numpy": np.__version__, "python": sys.version.split()[0], "hardware": hardware_available()}


def lava_conv_weight(weight):
    """torch cross-correlation kernel (O, C, kh, kw) -> lava convolution kernel (O, kw, kh, C)."""
    flipped = weight[:, :, ::-1, ::-1]
    return np.ascontiguousarray(flipped.transpose(0, 3, 2, 1))


def build_and_run(header, arrays):
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2HwCfg, Loihi2SimCfg
    from lava.proc.conv.process import Conv
    from lava.proc.dense.process import Dense
    from lava.proc.io.source import RingBuffer as SpikeSource
    from lava.proc.lif.process import LIF
    from lava.proc.monitor.process import Monitor

    steps = int(header["steps"])
    record_state = bool(header.get("record_state", False))
    record_spikes = bool(header.get("record_spikes", True))
    layers = header["layers"]
    started = time.perf_counter()
    data = arrays["input"].astype(np.int32)  # (T, n_in)
    first = layers[0]
    if first["kind"] == "conv":
        c, h, w = first["input_shape"]
        data = data.reshape(steps, c, h, w).transpose(3, 2, 1, 0)  # (W, H, C, T)
    else:
        data = data.T  # (n_in, T)
    source = SpikeSource(data=np.ascontiguousarray(data))
    previous_port = source.s_out
    previous_kind = first["kind"]
    lifs = []
    for i, layer in enumerate(layers):
        weights = arrays[f"weights{i}"].astype(np.int32)
        if layer["kind"] == "dense":
            if previous_kind == "conv":
                # lava's conv populations are (W, H, C); torch flattens (C, H, W)
                previous_port = previous_port.transpose(axes=(2, 1, 0)).flatten()
            synapse = Dense(weights=weights, weight_exp=int(layer["weight_exp"]), num_message_bits=int(layer["num_message_bits"]))
            shape = (weights.shape[0],)
        else:
            c, h, w = layer["input_shape"]
            synapse = Conv(
                weight=lava_conv_weight(weights),
                weight_exp=int(layer["weight_exp"]),
                input_shape=(w, h, c),
                padding=tuple(layer["padding"][::-1]),
                stride=tuple(layer["stride"][::-1]),
                dilation=tuple(layer["dilation"][::-1]),
                groups=int(layer["groups"]),
                num_message_bits=int(layer["num_message_bits"]),
            )
            o, oh, ow = layer["output_shape"]
            shape = (ow, oh, o)
        bias_mant = arrays[f"bias_mant{i}"].astype(np.int32)
        bias_exp = arrays[f"bias_exp{i}"].astype(np.int32)
        if layer["kind"] == "conv":
            o, oh, ow = layer["output_shape"]
            bias_mant = bias_mant.reshape(o, oh, ow).transpose(2, 1, 0)
            bias_exp = np.ascontiguousarray(bias_exp).reshape(o, oh, ow).transpose(2, 1, 0)
        lif = LIF(shape=shape, du=int(layer["du"]), dv=int(layer["dv"]), vth=int(layer["vth"]), bias_mant=np.ascontiguousarray(bias_mant), bias_exp=np.ascontiguousarray(bias_exp))
        previous_port.connect(synapse.s_in)
        synapse.a_out.connect(lif.a_in)
        lifs.append((lif, layer))
        previous_port = lif.s_out
        previous_kind = layer["kind"]
    monitors = []
    for lif, _ in lifs:
        names = (["s_out"] if record_spikes or record_state else []) + (["v", "u"] if record_state else [])
        probes = {}
        for name in names:
            monitor = Monitor()
            monitor.probe(getattr(lif, name), steps)
            probes[name] = monitor
        monitors.append(probes)
    run_cfg = Loihi2HwCfg() if header.get("hardware") else Loihi2SimCfg(select_tag="fixed_pt")
    anchor = lifs[-1][0]
    # One step first so that compilation and process start-up stay out of the timed run.
    anchor.run(condition=RunSteps(num_steps=1), run_cfg=run_cfg)
    built = time.perf_counter()
    if steps > 1:
        anchor.run(condition=RunSteps(num_steps=steps - 1), run_cfg=run_cfg)
    finished = time.perf_counter()
    out = {}
    for i, ((lif, layer), probes) in enumerate(zip(lifs, monitors)):
        for name, monitor in probes.items():
            values = monitor.get_data()[lif.name][name]  # (T, *shape)
            if layer["kind"] == "conv":
                values = values.transpose(0, 3, 2, 1)  # (T, O, H', W') like torch
            key = {"s_out": "spikes", "v": "v", "u": "u"}[name]
            out[f"{key}{i}"] = np.ascontiguousarray(values.reshape(steps, -1)).astype(np.int64)
    anchor.stop()
    return {"ok": True, "build_s": built - started, "run_s": finished - built, "steps_timed": steps - 1}, out


def main():
    stdin = sys.stdin.buffer
    while True:
        header, arrays = read_frame(stdin)
        if header is None or header.get("op") == "exit":
            return
        try:
            if header["op"] == "ping":
                write_frame(ping())
            elif header["op"] == "run":
                reply, out = build_and_run(header, arrays)
                write_frame(reply, out)
            else:
                write_frame({"ok": False, "error": f"unknown op {header['op']!r}"})
        except Exception as exc:  # noqa: BLE001 - any failure goes back to the client; the worker keeps serving
            write_frame({"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()})


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
