"""How far TA-PER's replay cost is above what its memory traffic alone costs, measured inside
the interleaved `taper bench-replay` loop (same buffers, same random order, same caches).

    python benchmarks/replay_floor.py --runs 3 --repeats 40

Two reference implementations join the run:

- `tree-lines`: its `sample` only loads the tree nodes a ta-per batch's descent reads (every
  draw's node on every level, all draws one level at a time with the next level prefetched, as
  `kernels.descend_from` does, but no search arithmetic), for a fresh batch of leaves each time,
  spread as ta-per's are (stratified inside each task by the ta-per quotas). Its `update` only
  computes the float64 priorities (|td| + eps)^alpha that `update_priorities` must store.
- `numpy-uniform`: a plain uniform sampler, for orientation: `rng.integers` and a fancy-index
  gather from five separate arrays (no packed rows, no prefetch).

Per run it prints the medians and
    floor = (uniform sample + tree-lines sample + tree-lines update) / uniform sample,
the ta-per ratio if the descent's search, the node sums of the update, quotas and IS weights
cost nothing beyond their memory loads; then the median, min and max over the runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from numba import njit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_replay_runs import over_runs  # noqa: E402

from taper import bench, kernels  # noqa: E402

BATCHES = 64
"""Leaf batches `tree-lines` cycles through: at least the repetitions of a run (warm-up
included), so none is loaded twice and every load finds the caches as the others left them."""


@njit(cache=True)
def load_paths(trees, tasks, slots):
    """Sum of every draw's node on every level below the root, loaded level by level with the
    next level's node prefetched: the loads of a descent to leaves `slots`, without the search."""
    leaves = trees.shape[1] // 2
    total = 0.0
    level = kernels.FANOUT
    while level <= leaves:
        span = leaves // level
        for j in range(tasks.shape[0]):
            total += trees[tasks[j], level + slots[j] // span]
            if level < leaves:
                kernels.prefetch(trees, tasks[j], kernels.FANOUT * level + slots[j] // (span // kernels.FANOUT))
        level *= kernels.FANOUT
    return total


class TreeLines:
    """The memory floor of ta-per: tree loads of a batch (`sample`), priorities only (`update`)."""

    def __init__(self, impls):
        ta_per = impls["ta-per"]
        self.buf, self.td = ta_per.buf, ta_per.td
        rng = np.random.default_rng(1)
        quotas = self.buf.quotas(ta_per.batch_size)
        self.tasks = np.repeat(np.arange(self.buf.num_tasks), quotas)
        self.batches = []
        for _ in range(BATCHES):
            u = (np.arange(self.tasks.size) - np.repeat(np.cumsum(quotas) - quotas, quotas)
                 + rng.random(self.tasks.size)) / quotas[self.tasks]
            self.batches.append((u * self.buf.storage.counts[self.tasks]).astype(np.int64))
        self.next = 0
        self.priorities = np.empty(self.td.shape[0])

    def sample(self):
        load_paths(self.buf.sampler.trees, self.tasks, self.batches[self.next % BATCHES])
        self.next += 1

    def update(self):
        kernels.td_priorities(self.td, self.buf.per_eps, self.buf.per_alpha, self.priorities)

    def add(self):
        pass


class NumpyUniform:
    """Uniform replay as plain numpy: five field arrays, `rng.integers`, fancy-index gather."""

    def __init__(self, impls):
        uniform = impls["uniform"].buf
        self.fields = [np.ascontiguousarray(uniform.storage.rows[:, column])
                       for column in uniform._columns.values()]
        self.batch_size = impls["uniform"].batch_size
        self.rng = np.random.default_rng(2)

    def sample(self):
        rows = self.rng.integers(0, self.fields[0].shape[0], self.batch_size)
        return [field[rows] for field in self.fields]

    def update(self):
        pass

    def add(self):
        pass


def _floor(result: bench.BenchResult) -> tuple[str, dict[str, float]]:
    med = result.medians()
    uniform = med["uniform", "sample"]
    ta_per = med["ta-per", "sample"] + med["ta-per", "update"]
    line = (f"uniform sample {uniform:.0f} us, numpy-uniform sample "
            f"{med['numpy-uniform', 'sample']:.0f} us, ta-per sample {med['ta-per', 'sample']:.0f}"
            f" + update {med['ta-per', 'update']:.0f} us, tree-lines sample "
            f"{med['tree-lines', 'sample']:.0f} + update {med['tree-lines', 'update']:.0f} us")
    return line, {
        "ta-per / uniform": ta_per / uniform,
        "floor": (uniform + med["tree-lines", "sample"] + med["tree-lines", "update"]) / uniform,
        "ta-per / numpy-uniform": ta_per / med["numpy-uniform", "sample"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=40)
    args = parser.parse_args()
    if not 0 < args.repeats <= BATCHES - bench.WARMUP:
        parser.error(f"--repeats {args.repeats} must be in [1, {BATCHES - bench.WARMUP}]")
    over_runs(args.runs, args.repeats, _floor,
              extra={"tree-lines": TreeLines, "numpy-uniform": NumpyUniform})


if __name__ == "__main__":
    main()
