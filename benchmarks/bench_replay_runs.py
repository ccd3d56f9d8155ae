"""The replay targets over several independent `taper bench-replay` runs, because on a shared
machine one run's ratio moves with the neighbours' load.

    python benchmarks/bench_replay_runs.py --runs 5 --repeats 50

Each run is the full interleaved benchmark of `taper bench-replay` (all samplers and the
installed peers, same defaults). Prints one line per run with the medians behind the two
targets, then the median, min and max of each target ratio over the runs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from taper import bench  # noqa: E402


def over_runs(runs: int, repeats: int, per_run, extra=None) -> None:
    """Run the interleaved benchmark `runs` times (`bench.run` with `extra`). per_run(result)
    returns (a description, {ratio name: value}); each run prints its line, then each ratio's
    median, min and max over the runs."""
    ratios: dict[str, list[float]] = {}
    for run in range(runs):
        result = bench.run(repeats=repeats, extra=extra)
        line, run_ratios = per_run(result)
        for name, value in run_ratios.items():
            ratios.setdefault(name, []).append(value)
        print(f"run {run + 1}: {line}; " + "; ".join(f"{k}: {v:.2f}" for k, v in run_ratios.items()),
              flush=True)
    for name, values in ratios.items():
        print(f"{name}: median {statistics.median(values):.2f}, min {min(values):.2f}, "
              f"max {max(values):.2f} over {len(values)} runs")


def _targets(result: bench.BenchResult) -> tuple[str, dict[str, float]]:
    med = result.medians()
    line = (f"uniform sample {med['uniform', 'sample']:.0f} us, ta-per sample "
            f"{med['ta-per', 'sample']:.0f} + update {med['ta-per', 'update']:.0f} us")
    return line, bench.targets(result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    over_runs(args.runs, args.repeats, _targets)


if __name__ == "__main__":
    main()
