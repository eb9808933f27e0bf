"""The ``hal`` command: what devices are here, what each can do, why some are missing, plans and quick benches.

stdout carries only the result (a table, or JSON with ``--json``); errors, hints and progress go to stderr.
Every ``--json`` document is valid against its committed schema in ``hal/capability/`` (``hal.capability.schema``).

Exit codes, one table for every command:

==== ===========================================================================================================
code meaning
==== ===========================================================================================================
0    ok
1    the request failed on a device that exists: an op or feature it does not offer (``--watch`` on a device
     without telemetry, ``bench`` of an op it does not run), a failed run, ``demo`` outside a declared tolerance,
     ``plan`` of a model file that fails to build or cannot be placed
2    usage: unknown command or option, a bad option value (negative size, zero repeats, unknown op or policy),
     a missing model file, a malformed ``--pin``
3    unknown or unavailable device: no driver for the kind, an index the driver does not list, a device its probe
     reports unavailable, bad device options; for a device argument, ``--kind``, ``query --all`` and ``plan`` pins
4    ``doctor``: a driver is broken (its module fails to import, its probe raises or hangs, its checks raise);
     a driver that works but finds no device is absent, not broken, and exits 0
==== ===========================================================================================================

Startup stays light: torch, the contract and the drivers are imported by the commands that need them, so
``hal --help`` does not import torch.
"""

from __future__ import annotations

import enum
import json
import os
import statistics
import sys
import time
from typing import TYPE_CHECKING, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

import hal
from hal import registry
from hal.capability import Capabilities, Figure, to_jsonable
from hal.errors import DeviceUnavailable, HalError, InvalidInput, UnknownDevice

if TYPE_CHECKING:
    from hal.device import Device, DeviceInfo

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_DEVICE = 3
EXIT_BROKEN_DRIVER = 4
#: A family of devices (same kind and same ``family`` in the probe summary) larger than this shows as one row
#: of ``hal devices``; ``--all`` lists each.
FAMILY_ROWS_MAX = 8
#: Columns of `hal devices` that keep their width on a narrow terminal (a few characters each) while the long ones
#: wrap, as long as each long column keeps WRAPPED_COLUMN_MIN characters.
SHORT_COLUMNS = ("kind", "paradigm", "simulated", "memory")
WRAPPED_COLUMN_MIN = 12
#: Console width when stdout is not a terminal: wide enough that rich never wraps or cuts a table (its default
#: for a pipe is 80 columns).
PIPE_WIDTH = 100_000

app = typer.Typer(help="hal: one API over GPUs, neuromorphic, quantum, analog and photonic devices.", no_args_is_help=True, add_completion=False)


# --------------------------------------------------------------------------- output


def _stdout() -> Console:
    """The console for results: the terminal's width on a terminal; when piped, wide enough to print in full."""
    console = Console()
    return console if console.is_terminal else Console(width=PIPE_WIDTH)


def _stderr() -> Console:
    """The console for errors, hints and progress (never mixed into the result on stdout)."""
    console = Console(stderr=True)
    return console if console.is_terminal else Console(stderr=True, width=PIPE_WIDTH)


def _fail(message: str, code: int) -> NoReturn:
    _stderr().print(f"[red]error:[/red] {escape(message)}", highlight=False)
    raise typer.Exit(code)


def _usage(message: str) -> NoReturn:
    _fail(f"{message} (see `hal --help`)", EXIT_USAGE)


def _exit_code(exc: HalError) -> int:
    """The exit code of an error raised by a device or the runtime (see the table in the module docstring)."""
    if isinstance(exc, (UnknownDevice, DeviceUnavailable)):
        return EXIT_DEVICE
    if isinstance(exc, InvalidInput):
        return EXIT_USAGE
    return EXIT_FAILED


def _emit_json(document: Any) -> None:
    try:
        text = json.dumps(document, indent=2, allow_nan=False)
    except ValueError as exc:  # NaN/inf: a wrong number is worse than none
        _fail(f"the result holds a non-finite number and is not valid JSON ({exc}); report it as a bug of the driver", EXIT_FAILED)
    sys.stdout.write(text + "\n")


def _open(uri: str) -> Device:
    """Open a device for a command; exit 3 if the string names no device that opens here."""
    try:
        return hal.device(uri)
    except HalError as exc:
        _fail(str(exc), EXIT_DEVICE)


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


def _family_groups(infos: list[DeviceInfo], expand: bool) -> list[list[DeviceInfo]]:
    """Rows of the device table: one device each, except that a family of more than FAMILY_ROWS_MAX devices
    (same kind and same ``family`` in the summary) is one row, at the place of its first member, unless ``expand``."""
    def family(info: DeviceInfo) -> tuple[str, str] | None:
        name = info.summary.get("family")
        return (info.kind, name) if isinstance(name, str) and name else None

    sizes: dict[tuple[str, str], int] = {}
    for info in infos:
        key = family(info)
        if key is not None:
            sizes[key] = sizes.get(key, 0) + 1
    groups: dict[tuple[str, str], list[DeviceInfo]] = {}
    rows: list[list[DeviceInfo]] = []
    for info in infos:
        key = family(info)
        if expand or key is None or sizes[key] <= FAMILY_ROWS_MAX:
            rows.append([info])
        elif key in groups:
            groups[key].append(info)
        else:
            groups[key] = [info]
            rows.append(groups[key])
    return rows


def _peak_text(summary: dict[str, Any]) -> str:
    peak = summary.get("peak_flop_per_s")
    if peak:
        return f"{_human_rate(peak)} {summary.get('peak_dtype', '')}".strip()
    return str(summary.get("peak", "-"))


def _shared(values: list[str]) -> str:
    return values[0] if len(set(values)) == 1 else "varies"


def _device_row(group: list[DeviceInfo]) -> list[str]:
    first = group[0]
    if len(group) == 1:
        uri = escape(first.uri)
        available = "[green]yes[/green]" if first.available else f"[red]no[/red]: {escape(first.reason)}"
    else:
        indices = [i.uri.split("?")[0].partition(":")[2] for i in group]
        uri = escape(f"{first.kind}:{os.path.commonprefix(indices)}* ({len(group)} devices, {first.summary['family']})")
        n_available = sum(i.available for i in group)
        available = "[green]yes[/green]" if n_available == len(group) else f"{n_available} of {len(group)}"
    return [
        uri,
        escape(first.kind),
        escape(_shared([i.paradigm or "-" for i in group])),
        available,
        _shared(["yes" if i.simulated else "no" for i in group]),
        _shared([_human_bytes(i.summary.get("memory_bytes")) for i in group]),
        escape(_shared([_peak_text(i.summary) for i in group])),
    ]


DEVICE_COLUMNS = ("uri", "kind", "paradigm", "available", "simulated", "memory", "peak")


def _devices_table(cells: list[list[str]], title: str, width: int) -> Table:
    """The device table. Where ``width`` leaves the long columns (uri, the reasons, peak) at least
    WRAPPED_COLUMN_MIN characters each, the short columns keep their width and only the long ones wrap;
    on a narrower terminal every column wraps (rich shares the width out)."""
    natural = [max([len(column), *(Text.from_markup(row[i]).cell_len for row in cells)]) for i, column in enumerate(DEVICE_COLUMNS)]
    short = sum(n for column, n in zip(DEVICE_COLUMNS, natural) if column in SHORT_COLUMNS)
    borders = 3 * len(DEVICE_COLUMNS) + 1
    keep_short = short + borders + WRAPPED_COLUMN_MIN * (len(DEVICE_COLUMNS) - len(SHORT_COLUMNS)) <= width
    table = Table(title=title)
    for column, n in zip(DEVICE_COLUMNS, natural):
        table.add_column(column, overflow="fold", min_width=n if keep_short and column in SHORT_COLUMNS else None)
    for row in cells:
        table.add_row(*row)
    return table


@app.command()
def devices(
    all: bool = typer.Option(False, "--all", help="Also list unavailable devices, each with its reason, and every member of large families."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output, every device (schema: hal/capability/devices.schema.json)."),
    kind: str | None = typer.Option(None, "--kind", help="Only devices of this kind (e.g. ibm_qpu)."),
) -> None:
    """List the devices on this machine: uri, kind, paradigm, availability, simulated or not, memory, peak rate."""
    if kind is not None and kind not in registry.drivers():
        _fail(str(UnknownDevice(kind, registry.device_kinds())), EXIT_DEVICE)
    infos = hal.devices(all=all, kind=kind)
    if as_json:
        _emit_json({"devices": [to_jsonable(i) for i in infos]})
        return
    rows = _family_groups(infos, expand=all)
    out = _stdout()
    out.print(_devices_table([_device_row(group) for group in rows], "hal devices" + (" (all)" if all else ""), out.width))
    hints = [f"{len(g)} {g[0].kind} devices ({g[0].summary['family']}) are shown as one row; `hal devices --all` lists each." for g in rows if len(g) > 1]
    if not all:
        hints.append("`hal devices --all` also lists unavailable devices with the reason; `hal doctor` says how to fix them.")
    for hint in hints:
        _stderr().print(f"[dim]{escape(hint)}[/dim]")


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
                tree.add(f"{escape(str(key))}: {_figure_text(fig)}")
            elif isinstance(item, (dict, list)) or hasattr(item, "__dataclass_fields__"):
                _add_branch(tree.add(escape(str(key))), item)
            else:
                tree.add(escape(f"{key}: {item}"))
    elif isinstance(data, list):
        if data and all(not isinstance(x, (dict, list)) for x in data):
            tree.add(escape(", ".join(str(x) for x in data)))
        else:
            for i, item in enumerate(data):
                _add_branch(tree.add(f"[{i}]"), item)
    else:
        tree.add(escape(str(data)))


def _print_capabilities(out: Console, caps: Capabilities) -> None:
    paradigm = getattr(caps.paradigm, "value", caps.paradigm)
    tree = Tree(f"[bold]{escape(caps.uri)}[/bold]  {escape(caps.kind)}, {escape(str(paradigm))}{', simulated' if caps.simulated else ''}{', deterministic' if caps.deterministic else ', noisy'}")
    _add_branch(tree.add("identity"), caps.identity)
    if caps.memory_bytes is not None:
        tree.add(f"memory: {_human_bytes(caps.memory_bytes.value)}  [dim]({escape(caps.memory_bytes.source)})[/dim]")
    if caps.peak:
        _add_branch(tree.add("peak"), caps.peak)
    if caps.energy:
        _add_branch(tree.add("energy"), caps.energy)
    for name, section in caps.sections.items():
        _add_branch(tree.add(escape(name)), section)
    for note in caps.notes:
        tree.add(f"[dim]note: {escape(note)}[/dim]")
    out.print(tree)
    ops = Table(title=f"ops on {escape(caps.uri)}")
    for column in ("op", "dtypes", "tolerance (rel. error vs float64)", "limits", "notes"):
        ops.add_column(column, overflow="fold")
    for name, support in sorted(caps.ops.items()):
        tolerance = ", ".join(f"{k} {v:.1g}" for k, v in support.tolerance.items())
        limits = ", ".join(f"{k}={v}" for k, v in support.limits.items())
        ops.add_row(escape(name), ", ".join(support.dtypes), tolerance, escape(limits) or "-", escape(support.notes))
    out.print(ops)


def _watch(device: Device, interval_s: float, count: int) -> None:
    """Print telemetry readings every ``interval_s`` (``count`` of them, or until Ctrl-C when 0), as a live table."""
    from rich.live import Live

    from hal.errors import UnsupportedOp

    readings: list[tuple[float, dict[str, Any]]] = []

    def read() -> None:
        try:
            readings.append((time.time(), device.telemetry()))
        except UnsupportedOp as exc:
            _fail(f"{exc}; `hal query {device.uri}` shows what it does report", EXIT_FAILED)
        except HalError as exc:
            _fail(str(exc), _exit_code(exc))

    def render() -> Table:
        table = Table(title=f"{escape(str(device.uri))} telemetry every {interval_s:g} s")
        keys = list(readings[-1][1]) if readings else []
        for column in ("time", *keys):
            table.add_column(escape(column), overflow="fold")
        for stamp, reading in readings[-20:]:
            table.add_row(time.strftime("%H:%M:%S", time.localtime(stamp)), *(escape(str(reading.get(k, ""))) for k in keys))
        return table

    read()
    with Live(render(), console=_stdout(), refresh_per_second=4) as live:
        while count == 0 or len(readings) < count:
            time.sleep(interval_s)
            read()
            live.update(render())


@app.command()
def query(
    uri: str | None = typer.Argument(None, help="Device string, e.g. cpu:0, hopper:0, memristor:0?tile=128."),
    all: bool = typer.Option(False, "--all", help="Every available device."),
    as_json: bool = typer.Option(False, "--json", help="Full capabilities as JSON (schemas: capabilities.schema.json, with --all capabilities_list.schema.json)."),
    watch: float = typer.Option(0.0, "--watch", help="Stream live telemetry every WATCH seconds (like nvidia-smi dmon).", min=0.0),
    count: int = typer.Option(0, "--count", help="With --watch: stop after COUNT readings (0: until Ctrl-C).", min=0),
) -> None:
    """Show everything a device is and can do: identity, ops and tolerances, memory, peak rates, energy, paradigm detail."""
    if bool(uri) == all:
        _usage("give one device (hal query cpu:0) or --all, not both")
    if watch:
        if not uri:
            _usage("--watch needs one device, not --all")
        _watch(_open(uri), watch, count)
        return
    if count:
        _usage("--count goes with --watch")
    capabilities, failed = _capabilities_of(uri) if uri else _all_capabilities()
    out = _stdout()
    if as_json:
        _emit_json(capabilities[0].to_dict() if uri else {"devices": [c.to_dict() for c in capabilities]})
    else:
        for caps in capabilities:
            _print_capabilities(out, caps)
    if failed:
        for message in failed:
            _stderr().print(f"[red]error:[/red] {escape(message)}", highlight=False)
        raise typer.Exit(EXIT_DEVICE)


def _capabilities_of(uri: str) -> tuple[list[Capabilities], list[str]]:
    device = _open(uri)
    try:
        return [device.capabilities], []
    except HalError as exc:
        _fail(str(exc), _exit_code(exc))


def _all_capabilities() -> tuple[list[Capabilities], list[str]]:
    """Capabilities of every available device, and an error message for each that failed to open or describe itself."""
    capabilities, failed = [], []
    for info in hal.devices():
        try:
            capabilities.append(hal.device(info.uri).capabilities)
        except HalError as exc:
            failed.append(f"{info.uri} was probed available but failed: {exc}")
    return capabilities, failed


# --------------------------------------------------------------------------- doctor


def _doctor_entry(health: registry.DriverHealth) -> dict[str, Any]:
    status = "broken" if health.broken else "available" if any(d.available for d in health.devices) else "absent"
    return {
        "kind": health.kind,
        "driver": health.target,
        "status": status,
        "broken": health.broken,
        "devices": [to_jsonable(d) for d in health.devices],
        "checks": [to_jsonable(c) for c in health.checks],
    }


def _print_doctor_entry(out: Console, entry: dict[str, Any]) -> None:
    available = [d for d in entry["devices"] if d["available"]]
    status = {
        "available": f"[green]{len(available)} available[/green]",
        "absent": "[yellow]none available[/yellow]",
        "broken": f"[red]broken[/red]: {escape(entry['broken'])}",
    }[entry["status"]]
    tree = Tree(f"[bold]{escape(entry['kind'])}[/bold] ({escape(entry['driver'])}): {status}")
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
    out.print(tree)


@app.command()
def doctor(as_json: bool = typer.Option(False, "--json", help="Machine-readable findings (schema: hal/capability/doctor.schema.json).")) -> None:
    """For every known driver: found or not, exactly why, and how to fix it. Exits 4 if a driver is broken."""
    report = [_doctor_entry(registry.health(kind)) for kind in sorted(registry.drivers())]
    if as_json:
        _emit_json({"drivers": report})
    else:
        out = _stdout()
        for entry in report:
            _print_doctor_entry(out, entry)
    broken = [e["kind"] for e in report if e["status"] == "broken"]
    if broken:
        _stderr().print(f"[red]{len(broken)} driver(s) broken:[/red] {escape(', '.join(broken))} (a device that is merely absent is not an error)")
        raise typer.Exit(EXIT_BROKEN_DRIVER)


# --------------------------------------------------------------------------- bench


class BenchOp(str, enum.Enum):
    """Ops ``hal bench`` times (square operands)."""

    matmul = "matmul"
    linear = "linear"


@app.command()
def bench(
    uri: str = typer.Argument(..., help="Device string."),
    op: BenchOp = typer.Option(BenchOp.matmul, help="Vocabulary op on n x n operands."),
    size: int = typer.Option(512, help="Square size n (n x n operands).", min=1),
    repeat: int = typer.Option(20, help="Timed calls after one warm-up call (median reported).", min=1),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable result (schema: hal/capability/bench.schema.json)."),
) -> None:
    """Time one op on a device (median of REPEAT calls after a warm-up) beside the device's own estimate."""
    import torch

    from hal.device import OpSpec

    device = _open(uri)
    try:
        declared = device.capabilities.ops.get(op.value)
    except HalError as exc:
        _fail(str(exc), _exit_code(exc))
    if declared is None:
        _fail(f"{device.uri} does not run {op.value}; it runs: {', '.join(sorted(device.capabilities.ops)) or 'no vocabulary op'}", EXIT_FAILED)
    dtype_name = "float32" if "float32" in declared.dtypes else declared.dtypes[0]
    dtype = getattr(torch, dtype_name)
    try:
        a = torch.randn(size, size, dtype=dtype)
        b = torch.randn(size, size, dtype=dtype)
    except RuntimeError as exc:  # the operands do not fit in host memory
        _fail(f"two {size} x {size} {dtype_name} operands ({2 * size * size * dtype.itemsize / 2**30:.3g} GiB) could not be allocated: {exc}", EXIT_FAILED)
    spec, params, inputs = (OpSpec("matmul", [a, b]), {}, (a, b)) if op is BenchOp.matmul else (OpSpec("linear", [a], {"weight": b}), {"weight": b}, (a,))
    try:
        program = device.prepare(spec, params)
        program(*inputs)
        device.synchronize()
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            program(*inputs)
            device.synchronize()
            times.append(time.perf_counter() - start)
    except HalError as exc:
        _fail(str(exc), _exit_code(exc))
    result = {
        "uri": str(device.uri), "op": str(spec), "size": size, "dtype": dtype_name, "repeat": repeat,
        "measured_median_s": statistics.median(times), "measured_min_s": min(times), "measured_max_s": max(times),
        "estimated_s": program.cost.latency_s, "estimated_energy_j": program.cost.energy_j, "estimate_formula": program.cost.formula,
    }
    if as_json:
        _emit_json(result)
        return
    _stdout().print(
        escape(f"{spec} on {device.uri}: measured {result['measured_median_s'] * 1e3:.3f} ms (median of {repeat}; min {min(times) * 1e3:.3f}, "
               f"max {max(times) * 1e3:.3f}), estimated {program.cost.latency_s * 1e3:.3f} ms, {program.cost.energy_j:.3g} J"),
        highlight=False,
    )


# --------------------------------------------------------------------------- demo


@app.command()
def demo(seed: int = typer.Option(0, help="Seed of the random operands.")) -> None:
    """Run every op each available device declares on small random operands, beside the float64 reference.

    Prints, per device and op, the relative error against ``cpu:0?precision=float64``, the device's declared
    tolerance, and the wall time of the call; exits 1 if any device misses its own tolerance.
    """
    import torch

    from hal import ops as vocabulary
    from hal.device import OpSpec
    from hal.testing.samples import default_sample, relative_error

    reference = hal.device("cpu:0?precision=float64")
    table = Table(title="hal demo: each available device's ops vs the float64 reference")
    table.add_column("device", overflow="fold")
    for column in ("op", "dtype", "rel. error", "tolerance", "time", "est. energy"):
        table.add_column(column, overflow="fold")
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
                table.add_row(escape(info.uri), label, dtype_text, f"[red]{escape(type(exc).__name__)}[/red]", "", "", escape(str(exc)))
                continue
            ref = reference.prepare(spec, sample.params)(*sample.inputs)
            error = relative_error(out, ref)
            tolerance = ops[name].tolerance.get(dtype_text, float("nan"))
            ok = error <= tolerance
            missed += not ok
            table.add_row(escape(info.uri), label, dtype_text, f"[{'green' if ok else 'red'}]{error:.2e}[/]", f"{tolerance:.0e}", f"{elapsed * 1e3:.2f} ms", f"{program.cost.energy_j:.2e} J")
    _stdout().print(table)
    if missed:
        _fail(f"{missed} op(s) missed their device's declared tolerance", EXIT_FAILED)


# --------------------------------------------------------------------------- plan


@app.command()
def plan(
    model_file: str = typer.Argument(..., help="Python file defining build() -> (model, example_inputs) (see docs/runtime.md)."),
    policy: str = typer.Option("latency", help="latency, energy or accuracy."),
    pin: list[str] = typer.Option([], "--pin", help="Pin a node to a device: NODE=URI (repeatable)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable plan (schema: hal/capability/plan.schema.json)."),
    plot: str | None = typer.Option(None, help="Write a PNG of the plan here."),
    simulated: bool = typer.Option(False, "--simulated", help="Also place on emulated devices (memristor, photonic, loihi2, fake IBM backends)."),
) -> None:
    """Place a model's operations across the available devices and explain the plan (nothing runs on a device)."""
    from hal.runtime import POLICIES
    from hal.runtime import plan as make_plan
    from hal.runtime.command import load_model_file, parse_pins
    from hal.runtime.costs import HOST

    if policy not in POLICIES:
        _usage(f"--policy {policy!r} is not one of {', '.join(POLICIES)}")
    if not os.path.isfile(model_file):
        _usage(f"{model_file}: no such file; give the path of a Python file that defines build()")
    try:
        pins = parse_pins(pin)
    except InvalidInput as exc:
        _usage(str(exc))
    try:
        model, example_inputs, default_pins = load_model_file(model_file)
    except HalError as exc:
        _fail(str(exc), EXIT_USAGE)
    except Exception as exc:  # noqa: BLE001 (the user's file failed: say so, with the exception, not a traceback wall)
        _fail(f"{model_file} failed while loading or building: {type(exc).__name__}: {exc}", EXIT_FAILED)
    pins = {**default_pins, **pins}
    for uri in sorted(set(pins.values()) - {HOST}):
        _open(uri)
    try:
        the_plan = make_plan(model, example_inputs, policy=policy, pins=pins, allow_simulated=simulated)
    except HalError as exc:
        _fail(str(exc), _exit_code(exc))
    if as_json:
        _emit_json(the_plan.to_dict())
    else:
        sys.stdout.write(str(the_plan))
    if plot:
        the_plan.save_plot(plot)
        _stderr().print(f"plot written to {escape(plot)}")


def main() -> None:
    """Console-script entry point (``hal``) and ``python -m hal``."""
    app()
