"""The four samplers of `ReplayBuffer`: which stored transitions a batch of K draws, and their
importance weights. K = batch size, M = transitions stored, p_j = stored priority
(|td_j| + eps)^alpha, S_i = sum of task i's p.

Storage and sampler are separate objects, as in torchrl's replay buffers: the buffer's
`RingStorage` holds the rows and the per-task counts, a sampler holds what only it needs (the
sum trees of `per` and `ta-per`) and reads the storage it is handed. Every batch comes grouped
by task (contiguous, task order). Each `sample` and `update_priority` is one call into the numba
kernels (`kernels.draw_*`, `kernels.set_priorities`); the classes hold state and pick the kernel.

IS weights (Eq. 4), for the two samplers that prioritise: w_j = (1/(M P(j)))^beta / max_batch w.
A draw of j is P(j) M times as likely as under uniform replay, so its gradient is scaled by the
inverse of that ratio, annealed by beta; the others' weights are 1.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from taper import kernels

if TYPE_CHECKING:
    from taper.replay import RingStorage

REBUILD_INTERVAL = 10_000
"""update_priority calls between exact tree rebuilds (a guard against float drift)."""


class Sampler:
    """What the four samplers share. Subclasses set `name` and write `_draw`, `probabilities`
    and `_totals` (or their own `quotas`).

    All four take the same arguments, so `ReplayBuffer` builds any of them by name.
    num_tasks, capacity_per_task: the storage's shape. per_alpha, per_eps: p = (|td| + eps)^alpha,
    computed by every sampler, so all four refuse a td error whose priority is not finite.
    k_min, k_max: ta-per's quota bounds (k_max None means K); the other three ignore them.

    State: `trees` (N, 2P) float64, the sum trees of the samplers that prioritise (an (N, 2)
    placeholder for the others); `max_priority`, given to new transitions; `updates`, the
    update_priority calls that wrote priorities.
    """

    name: str
    prioritized = False

    def __init__(self, num_tasks: int, capacity_per_task: int, per_alpha: float, per_eps: float,
                 k_min: int = 0, k_max: int | None = None) -> None:
        self.per_alpha, self.per_eps = per_alpha, per_eps
        self.k_min, self.k_max = k_min, k_max
        width = kernels.tree_width(capacity_per_task) if self.prioritized else 2
        self.trees = kernels.aligned_zeros((num_tasks, width))
        self.max_priority = 1.0
        self.updates = 0

    @property
    def leaves(self) -> np.ndarray:
        """(N, P) view of the trees' leaf columns: stored p^alpha, 0 where empty."""
        return self.trees[:, self.trees.shape[1] // 2:]

    def bounds(self, batch_size: int) -> tuple[int, int]:
        """(k_min, k_max) of a batch of K: (0, K) unless the sampler bounds its quotas."""
        return 0, batch_size

    def sample(self, storage: RingStorage, batch_size: int, rng: np.random.Generator,
               beta: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A batch of K: (task ids, global slot ids) (K,) int64 grouped by task, and IS weights
        (K,) float32. The caller has checked that the storage holds data and that bounds(K)
        are feasible for it."""
        tasks, indices = np.empty(batch_size, np.int64), np.empty(batch_size, np.int64)
        weights = np.ones(batch_size, np.float32)
        self._draw(storage, rng, beta, tasks, indices, weights)
        return tasks, indices, weights

    def _draw(self, storage, rng, beta, out_tasks, out_indices, out_weights) -> None:
        """Fill `sample`'s (K,) outputs in one kernel call."""
        raise NotImplementedError

    def quotas(self, storage: RingStorage, batch_size: int) -> np.ndarray:
        """(N,) int64 draws per task in a batch of K: K times each task's share of the totals,
        clipped to bounds(K) and rounded by largest remainder (the rule of Eq. 5)."""
        k_min, k_max = self.bounds(batch_size)
        out = np.empty(storage.counts.shape[0], np.int64)
        kernels.quotas(self._totals(storage), storage.counts, batch_size, k_min, k_max, out)
        return out

    def _totals(self, storage: RingStorage) -> np.ndarray:
        """(N,) float64 per-task totals that `quotas` shares K by."""
        raise NotImplementedError

    def probabilities(self, storage: RingStorage, batch_size: int) -> np.ndarray:
        """(num_tasks, capacity_per_task): probability that one draw of a batch of K is the
        slot; 0 where empty."""
        raise NotImplementedError

    def add(self, tasks: np.ndarray, slots: np.ndarray) -> None:
        """New transitions were written at (tasks, slots), (B,) int64 each."""

    def update_priority(self, storage: RingStorage, indices: np.ndarray,
                        td_errors: np.ndarray) -> None:
        """Check p = (|td| + per_eps)^per_alpha (Eq. 2 -> Eq. 3) of (B,) int64 global slot ids
        and (B,) float64 td errors; the samplers that prioritise store it."""
        self._set_priorities(storage, indices, td_errors)

    def _set_priorities(self, storage, indices, td_errors) -> float:
        """`kernels.set_priorities`, writing only when `prioritized`; ValueError naming the
        first id that is not a stored slot or td error whose priority is not finite (then
        nothing is written). Returns the largest priority."""
        capacity = storage.capacity_per_task
        bad_index, bad_td, largest = kernels.set_priorities(
            self.trees, indices, td_errors, storage.counts, capacity, self.per_eps,
            self.per_alpha, self.prioritized)
        if bad_index >= 0:
            raise ValueError(f"index {indices[bad_index]} is not a stored slot (global ids are "
                             f"task * {capacity} + slot, slot < stored count)")
        if bad_td >= 0:
            raise ValueError(f"td error {td_errors[bad_td]} gives a non-finite priority "
                             "(|td| + per_eps)^per_alpha; td errors must be finite")
        return largest


class UniformSampler(Sampler):
    """``uniform``: K iid draws over all stored transitions, P(j) = 1/M (the MTRL libraries'
    default). The per-task counts are multinomial(K, M_i/M); quotas() reports K M_i/M rounded."""

    name = "uniform"

    def _draw(self, storage, rng, beta, out_tasks, out_indices, out_weights):
        kernels.draw_uniform(storage.counts, storage.capacity_per_task,
                             rng.random(2 * out_tasks.shape[0]), out_tasks, out_indices)

    def _totals(self, storage):
        return storage.counts.astype(float)

    def probabilities(self, storage, batch_size):
        return storage.stored() / max(len(storage), 1)


class AverageSampler(Sampler):
    """``average``: k_i = K/n draws for each of the n tasks holding data (largest remainder),
    uniform inside a task: P(j of task i) = (k_i/K) / M_i."""

    name = "average"

    def _draw(self, storage, rng, beta, out_tasks, out_indices, out_weights):
        kernels.draw_average(storage.counts, storage.capacity_per_task,
                             rng.random(out_tasks.shape[0]), out_tasks, out_indices)

    def quotas(self, storage, batch_size):
        out = np.empty(storage.counts.shape[0], np.int64)
        kernels.even_quotas(storage.counts, batch_size, out)
        return out

    def probabilities(self, storage, batch_size):
        share = self.quotas(storage, batch_size) / batch_size
        return storage.stored() * (share / np.maximum(storage.counts, 1))[:, None]


class SumTreeSampler(Sampler):
    """What ``per`` and ``ta-per`` share: one sum tree per task over the stored p (the rows of
    `trees`, layout in `taper.kernels`), new transitions at the largest priority so far, an
    exact rebuild every REBUILD_INTERVAL updates."""

    prioritized = True

    def add(self, tasks, slots):
        kernels.tree_update(self.trees, tasks, slots, np.full(tasks.shape[0], self.max_priority))

    def update_priority(self, storage, indices, td_errors):
        largest = self._set_priorities(storage, indices, td_errors)
        if not indices.size:
            return
        self.max_priority = max(self.max_priority, largest)
        self.updates += 1
        if self.updates % REBUILD_INTERVAL == 0:
            kernels.tree_rebuild(self.trees)

    def _totals(self, storage):
        return self.trees[:, 1]


class PerSampler(SumTreeSampler):
    """``per``: one distribution over the whole buffer, P(j) = p_j / sum p (Eq. 3), K
    stratified draws. quotas() reports the expected counts K S_i / sum S, rounded."""

    name = "per"

    def _draw(self, storage, rng, beta, out_tasks, out_indices, out_weights):
        kernels.draw_per(self.trees, storage.capacity_per_task, rng.random(out_tasks.shape[0]),
                         beta, out_tasks, out_indices, out_weights)

    def probabilities(self, storage, batch_size):
        return self.leaves[:, :storage.capacity_per_task] / self.trees[:, 1].sum()


class TaPerSampler(SumTreeSampler):
    """``ta-per``: quotas k_i = clip(lambda K S_i / sum S, k_min, k_max) with sum k_i = K
    (Eq. 5), then k_i stratified draws from task i's tree: P(j of task i) = (k_i/K) p_j / S_i."""

    name = "ta-per"

    def bounds(self, batch_size):
        return self.k_min, self.k_max or batch_size

    def _draw(self, storage, rng, beta, out_tasks, out_indices, out_weights):
        k_min, k_max = self.bounds(out_tasks.shape[0])
        kernels.draw_ta_per(self.trees, storage.counts, k_min, k_max, storage.capacity_per_task,
                            rng.random(out_tasks.shape[0]), beta, out_tasks, out_indices,
                            out_weights)

    def probabilities(self, storage, batch_size):
        share = self.quotas(storage, batch_size) / batch_size
        sums = self.trees[:, 1]
        return (self.leaves[:, :storage.capacity_per_task]
                * (share / np.where(sums > 0, sums, 1.0))[:, None])


SAMPLER_CLASSES = {cls.name: cls for cls in (UniformSampler, AverageSampler, PerSampler,
                                             TaPerSampler)}
SAMPLERS = tuple(SAMPLER_CLASSES)
"""The sampler names, as `Config.sampler` and `taper train --sampler` take them."""
