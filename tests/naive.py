"""Slow, obviously correct references for the kernels and the ReplayBuffer.

Plain Python over lists and numpy: no trees, no stratification, no water-filling tricks.
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import strategies as st


class NaiveReplay:
    """Per-task FIFO lists of (row, priority); priorities are stored p^alpha."""

    def __init__(self, num_tasks: int, capacity: int, alpha: float, eps: float) -> None:
        self.capacity, self.alpha, self.eps = capacity, alpha, eps
        self.rows = [[None] * capacity for _ in range(num_tasks)]
        self.priority = [[0.0] * capacity for _ in range(num_tasks)]
        self.next = [0] * num_tasks
        self.count = [0] * num_tasks
        self.max_priority = 1.0

    def add(self, task: int, row) -> None:
        slot = self.next[task]
        self.rows[task][slot] = row
        self.priority[task][slot] = self.max_priority
        self.next[task] = (slot + 1) % self.capacity
        self.count[task] = min(self.count[task] + 1, self.capacity)

    def update(self, task: int, slot: int, td: float) -> None:
        p = (abs(td) + self.eps) ** self.alpha
        self.priority[task][slot] = p
        self.max_priority = max(self.max_priority, p)

    def task_sums(self) -> list[float]:
        return [math.fsum(p) for p in self.priority]

    def probabilities(self, sampler: str, batch_size: int, k_min: int, k_max: int) -> np.ndarray:
        """P(one draw of the batch = slot), straight from the definitions."""
        n_tasks = len(self.rows)
        out = np.zeros((n_tasks, self.capacity))
        stored = sum(self.count)
        holding = [t for t in range(n_tasks) if self.count[t] > 0]
        if sampler == "uniform":
            for t in holding:
                out[t, :self.count[t]] = 1.0 / stored
        elif sampler == "per":
            total = math.fsum(self.task_sums())
            for t in holding:
                out[t] = np.array(self.priority[t]) / total
        else:
            weights = [1.0 if sampler == "average" else self.task_sums()[t] for t in range(n_tasks)]
            lo, hi = (0, batch_size) if sampler == "average" else (k_min, k_max)
            k = quotas(weights, self.count, batch_size, lo, hi)
            for t in holding:
                if sampler == "average":
                    out[t, :self.count[t]] = k[t] / batch_size / self.count[t]
                else:
                    out[t] = k[t] / batch_size * np.array(self.priority[t]) / self.task_sums()[t]
        return out


def real_quotas(sums, counts, batch_size: int, k_min: int, k_max: int) -> np.ndarray:
    """x_i = clip(lambda * K * S_i / sum S, k_min, k_max) with sum x_i = K, lambda by bisection."""
    holding = [i for i in range(len(sums)) if counts[i] > 0]
    total = math.fsum(sums[i] for i in holding)
    share = {i: batch_size * sums[i] / total for i in holding}

    def clipped(lam):
        return {i: min(max(lam * share[i], k_min), k_max) for i in holding}

    lo, hi = 0.0, 1.0
    while math.fsum(clipped(hi).values()) < batch_size:
        hi *= 2.0
        if hi > 1e300:
            break
    for _ in range(400):
        mid = 0.5 * (lo + hi)
        if math.fsum(clipped(mid).values()) < batch_size:
            lo = mid
        else:
            hi = mid
    x = np.zeros(len(sums))
    for i, value in clipped(hi).items():
        x[i] = value
    return x


@st.composite
def feasible_bounds(draw, n: int, max_k_min: int = 300) -> tuple[int, int, int]:
    """Hypothesis strategy of (K, k_min, k_max) that n tasks holding data can meet:
    n*k_min <= K <= n*k_max, 1 <= K, k_min <= k_max, drawn inside that region (k_max up to 2K:
    above K it binds no more than K does)."""
    k_min = draw(st.integers(0, max_k_min))
    batch_size = draw(st.integers(max(1, n * k_min), n * k_min + 2000))
    k_max = draw(st.integers(max(k_min, -(-batch_size // n)), 2 * batch_size))
    return batch_size, k_min, k_max


def quotas(sums, counts, batch_size: int, k_min: int, k_max: int) -> np.ndarray:
    """Integer quotas: floor of the real quotas, remainder to the largest fractions."""
    x = real_quotas(sums, counts, batch_size, k_min, k_max)
    k = np.floor(x + 1e-9).astype(int)
    remainder = batch_size - k.sum()
    order = sorted((i for i in range(len(sums)) if counts[i] > 0), key=lambda i: -(x[i] - k[i]))
    for i in order[:remainder]:
        k[i] += 1
    return k


def descend(leaves, target: float) -> int:
    """First slot whose running sum of leaves exceeds target (inverse CDF)."""
    running = 0.0
    last_positive = max(i for i, p in enumerate(leaves) if p > 0)
    for slot, p in enumerate(leaves):
        running += p
        if target < running and p > 0:
            return slot
    return last_positive


def is_weights(probs, stored: int, beta: float) -> np.ndarray:
    w = np.array([(1.0 / (stored * p)) ** beta for p in probs])
    return w / w.max()
