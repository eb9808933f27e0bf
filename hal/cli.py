"""The ``hal`` command: what devices are here, what each can do, why some are missing, plans and quick benches.

Exit codes: 0 ok, 2 usage error, 3 unknown or unavailable device (and 1 for a failed bench/demo check).
``--json`` output is stable and valid against the schemas in ``hal/capability/``.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from typing import Any, Optional

import torch
import typer
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.tree import Tree

import hal
from hal import registry
from hal.capability import Capabilities, Figure, to_jsonable
from hal.device import Device, OpSpec
from hal.errors import DeviceUnavailable, HalError, InvalidInput, UnknownDevice

EXIT_DEVICE = 3

app = typer.Typer(help="hal: one API over GPUs, neuromorphic, quantum, analog and photonic devices.", no_args_is_help=True, add_completion=False)
console = Console()


def _emit_json(document: Any) -> None:
    sys.stdout.write(json.dumps(document, indent=2, sort_keys=False) + "\n")


def _open(uri: str) -> Device:
    try:
        return hal.device(uri)
    except (UnknownDevice, DeviceUnavailable, InvalidInput) as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(EXIT_DEVICE) from None


def _human_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return "-"


def _human_rate(n: float | None, unit: str = "flop/s") -> str:
    if n is None:
        return "-"
    for prefix, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {prefix}{unit}"
    return f"{n:.3g} {unit}"


# --------------------------------------------------------------------------- devices


@app.command()
def devices(
    all: bool = typer.Option(False, "--all", help="Also list unavailable devices, each with its reason."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output (schema: hal/capability/devices.schema.json)."),
    kind: Optional[str] = typer.Option(None, "--kind", help="Only devices of this kind (e.g. ibm_qpu)."),
) -> None:
    """List the devices on this machine: uri, kind, paradigm, availability, simulated or not, memory, peak rate."""
    if kind is not None and kind not in registry.drivers():
        console.print(f"[red]error:[/red] {escape(str(UnknownDevice(kind, registry.device_kinds())))}")
        raise typer.Exit(EXIT_DEVICE)
    infos = hal.devices(all=all, kind=kind)
    if as_json:
        _emit_json({"devices": [to_jsonable(i) for i in infos]})
        return
    table = Table(title="hal devices" + (" (all)" if all else ""))
    table.add_column("uri", no_wrap=True)
    for column in ("kind", "paradigm", "available", "simulated", "memory", "peak"):
        table.add_column(column)
    for info in infos:
        summary = info.summary
        peak = summary.get("peak_flop_per_s")
        peak_text = f"{_human_rate(peak)} {summary.get('peak_dtype', '')}".strip() if peak else str(summary.get("peak", "-"))
        table.add_row(
            info.uri,
            info.kind,
            info.paradigm or "-",
            "[green]yes[/green]" if info.available else f"[red]no[/red]: {escape(info.reason)}",
            "yes" if info.simulated else "no",
            _human_bytes(summary.get("memory_bytes")),
            peak_text,
        )
    console.print(table)
    if not all:
        console.print("[dim]hal devices --all also lists unavailable devices with the reason; hal doctor says how to fix them.[/dim]")


# --------------------------------------------------------------------------- query


def _figure_text(fig: Figure) -> str:
    return escape(f"{fig.value:.4g} {fig.unit}") + f"  [dim]({escape(fig.source)}{'; ' + escape(fig.note) if fig.note else ''})[/dim]"


def _add_branch(tree: Tree, value: Any) -> None:
    if isinstance(value, Figure):
        tree.add(_figure_text(value))
        return
    data = value if isinstance(value, dict) else to_jsonable(value)
    if isinstance(data, dict):
        for key, item in data.items():
            if isinstance(item, Figure) or (isinstance(item, dict) and "source" in item and "value" in item):
                fig = item if isinstance(item, Figure) else Figure(**item)
                tree.add(f"{key}: {_figure_text(fig)}")
            elif isinstance(item, (dict, list)) or hasattr(item, "__dataclass_fields__"):
                _add_branch(tree.add(str(key)), item)
            else:
                tree.add(escape(f"{key}: {item}"))
    elif isinstance(data, list):
        if all(not isinstance(x, (dict, list)) for x in data) and len(data) > 0:
            tree.add(escape(", ".join(str(x) for x in data[:64])) + (f" ... ({len(data)} items)" if len(data) > 64 else ""))
        else:
            for i, item in enumerate(data[:64]):
                _add_branch(tree.add(f"[{i}]"), item)
    else:
        tree.add(escape(str(data)))


def _print_capabilities(caps: Capabilities) -> None:
    tree = Tree(f"[bold]{caps.uri}[/bold]  {caps.kind}, {caps.paradigm.value}{', simulated' if caps.simulated else ''}{', deterministic' if caps.deterministic else ', noisy'}")
    _add_branch(tree.add("identity"), caps.identity)
    if caps.memory_bytes is not None:
        tree.add(f"memory: {_human_bytes(caps.memory_bytes.value)}  [dim]({caps.memory_bytes.source})[/dim]")
    if caps.peak:
        _add_branch(tree.add("peak"), caps.peak)
    if caps.energy:
        _add_branch(tree.add("energy"), caps.energy)
    for name, section in caps.sections.items():
        _add_branch(tree.add(name), section)
    for note in caps.notes:
        tree.add(f"[dim]note: {escape(note)}[/dim]")
    console.print(tree)
    ops = Table(title=f"ops on {caps.uri}")
    for column in ("op", "dtypes", "tolerance (rel. error vs float64)", "limits", "notes"):
        ops.add_column(column)
    for name, support in sorted(caps.ops.items()):
        tolerance = ", ".join(f"{k} {v:.1g}" for k, v in support.tolerance.items())
        limits = ", ".join(f"{k}={v}" for k, v in support.limits.items())
        ops.add_row(name, ", ".join(support.dtypes), tolerance, limits or "-", escape(support.notes))
    console.print(ops)


def _watch(device: Device, interval_s: float, count: int) -> None:
    try:
        device.telemetry()
    except HalError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(EXIT_DEVICE) from None
    rows: list[dict[str, Any]] = []

    def render() -> Table:
        table = Table(title=f"{device.uri} telemetry every {interval_s:g} s")
        keys = list(rows[-1]) if rows else []
        table.add_column("time")
        for key in keys:
            table.add_column(key)
        for row in rows[-20:]:
            table.add_row(time.strftime("%H:%M:%S", time.localtime(row.pop("_t"))) if "_t" in row else "", *(str(row.get(k, "")) for k in keys if k != "_t"))
        return table

    n = 0
    with Live(render(), console=console, refresh_per_second=4) as live:
        while count <= 0 or n < count:
            reading = {"_t": time.time(), **device.telemetry()}
            rows.append(reading)
            live.update(render())
            n += 1
            if count <= 0 or n < count:
                time.sleep(interval_s)


@app.command()
def query(
    uri: Optional[str] = typer.Argument(None, help="Device string, e.g. cpu:0, hopper:0, memristor:0?tile=128."),
    all: bool = typer.Option(False, "--all", help="Every available device."),
    as_json: bool = typer.Option(False, "--json", help="Full capabilities as JSON (schema: hal/capability/capabilities.schema.json)."),
    watch: float = typer.Option(0.0, "--watch", help="Stream live telemetry every WATCH seconds (like nvidia-smi dmon)."),
    count: int = typer.Option(0, "--count", help="With --watch: stop after COUNT readings (0: until Ctrl-C)."),
) -> None:
    """Show everything a device is and can do: identity, ops and tolerances, memory, peak rates, energy, paradigm detail."""
    if not uri and not all:
        console.print("[red]error:[/red] give a device (hal query cpu:0) or --all")
        raise typer.Exit(2)
    if watch:
        if not uri:
            console.print("[red]error:[/red] --watch needs one device")
            raise typer.Exit(2)
        _watch(_open(uri), watch, count)
        return
    uris = [uri] if uri else [i.uri for i in hal.devices()]
    capabilities = [_open(u).capabilities for u in uris]
    if as_json:
        _emit_json(capabilities[0].to_dict() if uri else {"devices": [c.to_dict() for c in capabilities]})
        return
    for caps in capabilities:
        _print_capabilities(caps)


# --------------------------------------------------------------------------- doctor


@app.command()
def doctor(as_json: bool = typer.Option(False, "--json", help="Machine-readable findings.")) -> None:
    """For every known driver: found or not, exactly why, and how to fix it."""
    report = []
    for kind in sorted(registry.drivers()):
        infos = registry.probe(kind)
        checks = registry.diagnose(kind)
        report.append({"kind": kind, "driver": registry.drivers()[kind].target, "devices": [to_jsonable(i) for i in infos], "checks": [to_jsonable(c) for c in checks]})
    if as_json:
        _emit_json({"drivers": report})
        return
    for entry in report:
        available = [d for d in entry["devices"] if d["available"]]
        status = f"[green]{len(available)} available[/green]" if available else "[yellow]none available[/yellow]"
        tree = Tree(f"[bold]{entry['kind']}[/bold] ({entry['driver']}): {status}")
        for d in entry["devices"]:
            line = f"{escape(d['uri'])}: " + ("[green]ok[/green]" if d["available"] else f"[red]unavailable[/red]: {escape(d['reason'])}")
            if d["fix"] and not d["available"]:
                line += f"\n  [cyan]fix:[/cyan] {escape(d['fix'])}"
            tree.add(line)
        for c in entry["checks"]:
            mark = "[green]ok[/green]" if c["ok"] else "[red]missing[/red]"
            line = f"{escape(c['name'])}: {mark} {escape(c['detail'])}"
            if c["fix"] and not c["ok"]:
                line += f"\n  [cyan]fix:[/cyan] {escape(c['fix'])}"
            tree.add(line)
        console.print(tree)


# --------------------------------------------------------------------------- bench


@app.command()
def bench(
    uri: str = typer.Argument(..., help="Device string."),
    op: str = typer.Option("matmul", help="Vocabulary op: matmul or linear."),
    size: int = typer.Option(512, help="Square size n (n x n operands)."),
    repeat: int = typer.Option(20, help="Timed calls (median reported)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Time one op on a device (median of REPEAT calls after a warm-up) beside the device's own estimate."""
    device = _open(uri)
    dtype = getattr(torch, next(iter(device.capabilities.ops.get(op).dtypes))) if op in device.capabilities.ops else torch.float32
    a = torch.randn(size, size, dtype=dtype)
    b = torch.randn(size, size, dtype=dtype)
    spec, params = (OpSpec("matmul", [a, b]), {}) if op == "matmul" else (OpSpec("linear", [a], {"weight": b}), {"weight": b})
    try:
        program = device.prepare(spec, params)
    except HalError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(EXIT_DEVICE) from None
    inputs = (a, b) if op == "matmul" else (a,)
    program(*inputs)
    device.synchronize()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        program(*inputs)
        device.synchronize()
        times.append(time.perf_counter() - start)
    result = {"uri": str(device.uri), "op": str(spec), "measured_median_s": statistics.median(times), "estimated_s": program.cost.latency_s, "estimated_energy_j": program.cost.energy_j, "estimate_formula": program.cost.formula}
    if as_json:
        _emit_json(result)
        return
    console.print(escape(f"{spec} on {device.uri}:"), end=" ")
    console.print(f"measured {result['measured_median_s'] * 1e3:.3f} ms (median of {repeat}), estimated {program.cost.latency_s * 1e3:.3f} ms, {program.cost.energy_j:.3g} J")


# --------------------------------------------------------------------------- demo


@app.command()
def demo(seed: int = typer.Option(0, help="Seed of the random operands.")) -> None:
    """Run every op each available device declares on small random operands, beside the float64 reference.

    Prints, per device and op, the relative error against ``cpu:0?precision=float64``, the device's declared
    tolerance, and the wall time of the call; exits 1 if any device misses its own tolerance.
    """
    from hal import ops as vocabulary
    from hal.testing.samples import default_sample, relative_error

    reference = hal.device("cpu:0?precision=float64")
    table = Table(title="hal demo: each available device's ops vs the float64 reference")
    table.add_column("device", no_wrap=True)
    for column in ("op", "dtype", "rel. error", "tolerance", "time", "est. energy"):
        table.add_column(column, no_wrap=True)
    missed = 0
    for info in hal.devices():
        try:
            device = hal.device(info.uri)
            ops = device.capabilities.ops
        except HalError as exc:
            table.add_row(escape(info.uri), "-", "-", f"[red]{escape(str(exc))}[/red]", "", "", "")
            continue
        device.manual_seed(seed)
        for name in sorted(n for n in ops if n in vocabulary.VOCABULARY):
            dtype_text = "float32" if "float32" in ops[name].dtypes else ops[name].dtypes[0]
            sample = default_sample(name, getattr(torch, dtype_text), torch.Generator().manual_seed(seed))
            spec = OpSpec(name, sample.inputs, sample.params, sample.attrs)
            if not device.supports(spec) and name == "linear":  # spiking devices compute rectified layers
                sample.attrs["activation"] = "relu"
                spec = OpSpec(name, sample.inputs, sample.params, sample.attrs)
            if not device.supports(spec):
                continue
            label = "linear+relu" if sample.attrs.get("activation") == "relu" else name
            try:
                program = device.prepare(spec, sample.params)
                start = time.perf_counter()
                out = program(*sample.inputs)
                device.synchronize()
                elapsed = time.perf_counter() - start
            except HalError as exc:
                table.add_row(escape(info.uri), label, dtype_text, f"[red]{escape(type(exc).__name__)}[/red]", "", "", escape(str(exc))[:60])
                continue
            ref = reference.prepare(spec, sample.params)(*sample.inputs)
            error = relative_error(out, ref)
            tolerance = ops[name].tolerance.get(dtype_text, float("nan"))
            ok = error <= tolerance
            missed += not ok
            table.add_row(escape(info.uri), label, dtype_text, f"[{'green' if ok else 'red'}]{error:.2e}[/]", f"{tolerance:.0e}", f"{elapsed * 1e3:.2f} ms", f"{program.cost.energy_j:.2e} J")
    console.print(table)
    if missed:
        console.print(f"[red]{missed} op(s) missed their device's declared tolerance[/red]")
        raise typer.Exit(1)


# --------------------------------------------------------------------------- plan


@app.command()
def plan(
    model_file: str = typer.Argument(..., help="Python file defining the model (see docs/runtime.md)."),
    policy: str = typer.Option("latency", help="latency, energy or accuracy."),
    pin: list[str] = typer.Option([], "--pin", help="Pin a node to a device: NODE=URI (repeatable)."),
    as_json: bool = typer.Option(False, "--json"),
    plot: Optional[str] = typer.Option(None, help="Write a PNG of the plan here."),
) -> None:
    """Place a model's operations across the available devices and explain the plan."""
    from hal.runtime.command import plan_command

    raise typer.Exit(plan_command(model_file, policy, pin, as_json, plot))


def main() -> None:
    """Console-script entry point (``hal``) and ``python -m hal``."""
    app()
