"""Startup latency of the ``hal`` command: each command in a fresh Python process, several repeats, median.

Targets (issue 14): ``hal --help`` under 0.5 s; ``hal devices`` at most 1.5 x the time of ``python -c "import torch"``
(the floor: every driver computes with torch); ``hal query --all --json`` under 5 s.

Commands run as ``python -m hal ...`` (the ``hal`` console script runs the same ``hal.cli:main``), output discarded,
exit status checked. Each command runs once untimed first (the OS file cache, ``__pycache__``, and the CPU driver's
cached rates are then warm, as on any machine after the first use), then ``--repeats`` timed rounds; the commands
alternate within a round so that a change of machine load touches all of them alike. Where ``hal query --all`` misses
its target, one more fresh process reports where its time goes (imports, probing, each kind's open + capabilities).

    python -m benchmarks.cli_latency [--repeats 7] [--query-repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from benchmarks.common import environment, write_result

TARGET_HELP_S = 0.5
TARGET_DEVICES_OVER_TORCH = 1.5
TARGET_QUERY_ALL_S = 5.0

COMMANDS = {
    "import_torch": ["-c", "import torch"],
    "import_hal": ["-c", "import hal"],
    "help": ["-m", "hal", "--help"],
    "devices": ["-m", "hal", "devices"],
}
QUERY_ALL = ["-m", "hal", "query", "--all", "--json"]

#: Run in a fresh process: where the time of `hal query --all --json` goes (seconds per phase and per kind).
#: Run in a fresh process: where the time of `hal devices` and `hal query --all --json` goes: imports, each driver's
#: probe (all in parallel threads, as `hal devices` runs them), then each kind's open + capabilities (seconds).
BREAKDOWN = """
import json, threading, time
start = time.perf_counter()
import hal.cli
phases = {"import_hal_cli_s": time.perf_counter() - start}
mark = time.perf_counter()
import torch
import hal.device
phases["import_torch_and_contract_s"] = time.perf_counter() - mark
import hal
from hal import registry
probe_s = {}
def probe(kind):
    began = time.perf_counter()
    registry.probe(kind)
    probe_s[kind] = time.perf_counter() - began
mark = time.perf_counter()
threads = [threading.Thread(target=probe, args=(kind,)) for kind in registry.drivers()]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
phases["probe_all_s"] = time.perf_counter() - mark
per_kind, counts = {}, {}
for info in hal.devices():
    mark = time.perf_counter()
    hal.device(info.uri).capabilities.to_dict()
    per_kind[info.kind] = per_kind.get(info.kind, 0.0) + time.perf_counter() - mark
    counts[info.kind] = counts.get(info.kind, 0) + 1
phases["total_s"] = time.perf_counter() - start
print(json.dumps({"phases": phases, "probe_s_by_kind": probe_s, "open_and_capabilities_s_by_kind": per_kind, "devices_by_kind": counts}))
"""


def run_once(args: list[str]) -> float:
    """Seconds of one fresh ``python <args>`` process, output discarded; raises if it fails."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=600, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"python {' '.join(args)} exited {proc.returncode}: {proc.stderr[-2000:]}")
    return elapsed


def measure(commands: dict[str, list[str]], repeats: int) -> dict[str, list[float]]:
    """Raw seconds per command: one untimed warm-up each, then ``repeats`` rounds, commands alternating."""
    for args in commands.values():
        run_once(args)
    times: dict[str, list[float]] = {name: [] for name in commands}
    names = list(commands)
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            times[name].append(run_once(commands[name]))
    return times


def breakdown() -> dict:
    proc = subprocess.run([sys.executable, "-c", BREAKDOWN], capture_output=True, text=True, timeout=600, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds of the quick commands")
    parser.add_argument("--query-repeats", type=int, default=3, help="timed rounds of `hal query --all --json`")
    args = parser.parse_args()
    load_before = os.getloadavg()
    quick = measure(COMMANDS, args.repeats)
    query_all = measure({"query_all": QUERY_ALL}, args.query_repeats)["query_all"]
    medians = {name: statistics.median(values) for name, values in {**quick, "query_all": query_all}.items()}
    summary = {
        "help_s": medians["help"],
        "devices_s": medians["devices"],
        "import_torch_s": medians["import_torch"],
        "import_hal_s": medians["import_hal"],
        "devices_over_torch_import": medians["devices"] / medians["import_torch"],
        "query_all_s": medians["query_all"],
        "targets": {"help_s": TARGET_HELP_S, "devices_over_torch_import": TARGET_DEVICES_OVER_TORCH, "query_all_s": TARGET_QUERY_ALL_S},
    }
    summary["met"] = {
        "help_s": summary["help_s"] < TARGET_HELP_S,
        "devices_over_torch_import": summary["devices_over_torch_import"] <= TARGET_DEVICES_OVER_TORCH,
        "query_all_s": summary["query_all_s"] < TARGET_QUERY_ALL_S,
    }
    document = {
        "environment": {**environment(), "load_average_1_5_15_before": load_before, "load_average_1_5_15_after": os.getloadavg()},
        "method": "fresh `python -m hal ...` processes (output discarded), one untimed warm-up each, then median of the timed rounds",
        "raw_s": {**quick, "query_all": query_all},
        "summary": summary,
    }
    if not summary["met"]["query_all_s"] or not summary["met"]["devices_over_torch_import"]:
        document["where_the_time_goes"] = breakdown()
    path = write_result("cli_latency", document)
    print(json.dumps(summary, indent=2))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
