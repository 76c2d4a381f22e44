"""The performance page's chart, drawn from the JSON `make bench` saves.

    python docs/chart.py [benchmarks/results/bench.json] [docs/assets/ratios.svg]

One group of bars per scenario (its ratio to the same work done by hand, 1.0 = no
overhead), one bar per engine. Run by `make docs` before the site is built.
"""

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ["request", "request_inject", "request_3mod", "request_3hooks", "publish_10", "publish_10_suspending"]
ENGINES = [("compiled", "compiled, CPython"), ("pure", "pure, CPython"), ("pypy", "pure, PyPy")]


def main() -> None:
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "benchmarks" / "results" / "bench.json"
    target = Path(sys.argv[2]) if len(sys.argv) > 2 else ROOT / "docs" / "assets" / "ratios.svg"
    results = json.loads(source.read_text())
    engines = [(key, label) for key, label in ENGINES if key in results]
    width = 0.8 / len(engines)
    figure, axes = plt.subplots(figsize=(9, 4))
    for index, (key, label) in enumerate(engines):
        ratios = [results[key][name]["ratio"] for name in SCENARIOS]
        positions = [i + (index - (len(engines) - 1) / 2) * width for i in range(len(SCENARIOS))]
        axes.bar(positions, ratios, width, label=label)
    axes.axhline(1.0, color="black", linewidth=0.8)
    axes.set_xticks(range(len(SCENARIOS)))
    axes.set_xticklabels(SCENARIOS, rotation=20, ha="right")
    axes.set_ylabel("time / the same work by hand")
    axes.set_title("mediator: a dispatch against the same work by hand (make bench)")
    axes.legend()
    figure.tight_layout()
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target, format="svg", metadata={"Date": None})
    print(f"{target.relative_to(ROOT)} from {source.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
