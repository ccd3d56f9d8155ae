"""The replay targets over several independent `taper bench-replay` runs, because on a shared
machine one run's ratio moves with the neighbours' load.

    python benchmarks/bench_replay_runs.py --runs 5 --repeats 50

Each run is the full interleaved benchmark of `taper bench-replay` (all strategies and the
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    ratios: dict[str, list[float]] = {}
    for run in range(args.runs):
        result = bench.run(repeats=args.repeats)
        med = {(r["impl"], r["op"]): r["median_us"] for r in result.rows}
        targets = bench.targets(result)
        for name, value in targets.items():
            ratios.setdefault(name, []).append(value)
        print(f"run {run + 1}: uniform sample {med['uniform', 'sample']:.0f} us, ta-per sample "
              f"{med['ta-per', 'sample']:.0f} + update {med['ta-per', 'update']:.0f} us; "
              + "; ".join(f"{k}: {v:.2f}" for k, v in targets.items()), flush=True)
    for name, values in ratios.items():
        print(f"{name}: median {statistics.median(values):.2f}, min {min(values):.2f}, "
              f"max {max(values):.2f} over {len(values)} runs")


if __name__ == "__main__":
    main()
