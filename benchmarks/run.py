"""Run the scenarios on every engine, each in its own process, and print the table.

    python benchmarks/run.py --python .venv/bin/python --pypy .venv-pypy/bin/python

Engines: compiled and pure on CPython (``--python``), pure on PyPy (``--pypy``). Each
cell is a ratio to the scenario's baseline measured in the same process, next to its
target; ``--json FILE`` also saves the raw results. ``--repeat K`` runs each engine K
times: a ratio cell is the median of the runs' ratios (each already the best rounds of
the two loops side by side; the best of the K would favour whichever run the noise
flattered), a time or rate is the best of the K (a slow run is noise from outside, never
a faster engine), and memory growth the worst.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

HERE = Path(__file__).resolve().parent

# scenario -> (what it is compared with, target per engine: compiled, pure, pypy)
TARGETS: Dict[str, Tuple[str, Tuple[Optional[float], ...]]] = {
    "request": ("await handler(cmd)", (1.3, 2.5, 1.5)),
    "request_attr": ("await handler(cmd)", (None, None, None)),
    "request_inject": ("await handler(cmd, user=u)", (1.8, 3.5, 2.0)),
    "request_3mod": ("the 3 layers nested by hand", (1.25, 2.0, 1.5)),
    "request_3mod_floor": ("the 3 layers nested by hand", (None, None, None)),
    "request_3hooks": ("await handler(cmd)", (1.5, 5.0, 2.0)),
    "request_3hooks_floor": ("await handler(cmd)", (None, None, None)),
    "request_3hooks_callbacks": ("await handler(cmd)", (None, None, None)),
    "request_3hooks_before": ("await handler(cmd)", (None, None, None)),
    "publish_1": ("await handler(evt)", (None, None, None)),
    "publish_10": ("10 sequential awaits", (2.5, 4.0, 3.0)),
    "publish_10_suspending": ("asyncio.gather of the 10", (1.1, 1.3, 1.3)),
    "publish_background": ("10 tasks made by hand", (None, None, None)),
    "request_traced": ("the same bus, not instrumented", (None, None, None)),
    "publish_traced": ("the same bus, not instrumented", (None, None, None)),
}
ENGINES = ("compiled", "pure", "pypy")


def run_engine(python: str, pure: bool, args: argparse.Namespace) -> Dict[str, Any]:
    env = {**os.environ, "MEDIATOR_NO_EXTENSIONS": "1" if pure else ""}
    command = [python, str(HERE / "scenarios.py"), "--iterations", str(args.iterations), "--rounds", str(args.rounds)]
    output = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(output)


def combine(runs: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Several runs of one engine as one: each ratio the median of the runs' (all of them
    kept under ``ratios``), each time or rate the best, memory growth the worst."""
    combined = json.loads(json.dumps(runs[0]))
    for name, figures in combined.items():
        if not isinstance(figures, dict):
            continue
        for key in list(figures):
            values = [run[name][key] for run in runs]
            if key == "ratio":
                figures[key] = statistics.median(values)
                figures["ratios"] = values
            else:
                # the best rate and time; the worst memory growth (flat must hold in every run)
                figures[key] = max(values) if key in ("events_per_s", "rss_growth_mb") else min(values)
    return combined


def cell(value: float, target: Optional[float]) -> str:
    if target is None:
        return f"{value:.2f}x"
    mark = "ok" if value <= target else "MISS"
    return f"{value:.2f}x (<= {target}) {mark}"


def table(results: Dict[str, Dict[str, Any]]) -> List[str]:
    engines = [engine for engine in ENGINES if engine in results]
    header = "| scenario | baseline | " + " | ".join(
        f"{engine} ({results[engine]['python']})" for engine in engines
    ) + " |"
    lines = [header, "|" + "---|" * (len(engines) + 2)]
    for name, (baseline, targets) in TARGETS.items():
        cells = []
        for engine in engines:
            target = targets[ENGINES.index(engine)]
            cells.append(cell(results[engine][name]["ratio"], target))
        lines.append(f"| {name} | {baseline} | " + " | ".join(cells) + " |")
    events = " | ".join(f"{results[e]['publish_background']['events_per_s']:,.0f}" for e in engines)
    lines.append(f"| publish_background, events/s | — | {events} |")
    for name in ("request_traced", "publish_traced"):
        added = " | ".join(f"+{results[e][name]['added_us']:.1f} µs" for e in engines)
        lines.append(f"| {name}, time added per dispatch | — | {added} |")
    register = []
    for engine in engines:
        target = {"compiled": 10.0, "pure": 15.0}.get(engine)
        ms = results[engine]["register_1000"]["ms"]
        register.append(f"{ms:.1f} ms" + ("" if target is None else f" (<= {target:g}) {'ok' if ms <= target else 'MISS'}"))
    lines.append("| register_1000 | — | " + " | ".join(register) + " |")
    memory = []
    for engine in engines:
        growth = results[engine]["memory"]["rss_growth_mb"]
        memory.append(f"{growth:+.2f} MB {'ok' if growth < 1.0 else 'MISS'}")
    dispatches = results[engines[0]]["memory"]["dispatches"]
    lines.append(f"| memory, {dispatches:,} dispatches, GC off | — | " + " | ".join(memory) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--python", default=sys.executable, help="CPython with the compiled engine built")
    parser.add_argument("--pypy", default=None, help="PyPy interpreter (skipped if not given)")
    parser.add_argument("--iterations", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=1, help="runs per engine: ratios their median, times their best")
    parser.add_argument("--json", default=None, help="also write the raw results here")
    args = parser.parse_args()

    engines = [("compiled", args.python, False), ("pure", args.python, True)]
    if args.pypy:
        engines.append(("pypy", args.pypy, True))
    results = {}
    for name, python, pure in engines:
        results[name] = combine([run_engine(python, pure, args) for _ in range(args.repeat)])
    if results["compiled"]["engine"] != "compiled":
        sys.exit(f"{args.python} did not load the compiled engine: build it first (pip install -e .)")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}")
    print("\n".join(table(results)))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
