"""`ReplayBuffer`: per-task ring storage of packed transition rows and four samplers.

Strategies (K = batch size, M = transitions stored, p_j = stored priority (|td_j| + eps)^alpha):

- ``uniform``: K iid draws over all stored transitions, P(j) = 1/M (the MTRL libraries' default).
- ``average``: K/N draws per task (largest remainder), uniform inside a task.
- ``per``: one distribution over the whole buffer, P(j) = p_j / sum p (Eq. 3), K stratified draws.
- ``ta-per``: one sum tree per task; quotas k_i = clip(lambda K S_i / sum S, k_min, k_max) with
  sum k_i = K (Eq. 5), then k_i stratified draws from tree i: P(j of task i) = (k_i/K) p_j / S_i.

Every batch comes grouped by task (contiguous, task order), so per-task networks can use slices.
IS weights (Eq. 4) w_j = (1/(M P(j)))^beta / max_batch w for ``per`` and ``ta-per``; 1 for the
others, which do not prioritise. The derivation: a draw of j is P(j) M times as likely as under
uniform replay, so its gradient is scaled by the inverse of that ratio, annealed by beta.

A transition is one packed float32 row [obs, action, reward, next_obs, done] so a gather touches
few cache lines. Slots are global ids ``task * capacity_per_task + slot``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from taper import kernels

STRATEGIES = ("uniform", "average", "per", "ta-per")
PRIORITIZED = ("per", "ta-per")
REBUILD_INTERVAL = 10_000
"""update_priorities calls between exact tree rebuilds (a guard against float drift)."""


class Batch(NamedTuple):
    """K transitions, grouped by task; arrays may be strided views of one packed array."""

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    next_observations: np.ndarray
    dones: np.ndarray
    task_ids: np.ndarray
    indices: np.ndarray
    weights: np.ndarray


class ReplayBuffer:
    """Per-task FIFO ring buffers of packed rows with uniform, average, PER or TA-PER sampling."""

    def __init__(self, num_tasks: int, capacity_per_task: int, obs_dim: int, act_dim: int,
                 strategy: str = "ta-per", per_alpha: float = 0.6, per_beta: float = 0.4,
                 per_eps: float = 1e-6, k_min: int = 0, k_max: int | None = None,
                 seed: int | None = 0) -> None:
        for name, value in (("num_tasks", num_tasks), ("capacity_per_task", capacity_per_task),
                            ("obs_dim", obs_dim), ("act_dim", act_dim)):
            _check_positive_int(name, value)
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy={strategy!r} is not one of {', '.join(STRATEGIES)}")
        if not (np.isfinite(per_alpha) and per_alpha >= 0):
            raise ValueError(f"per_alpha={per_alpha!r} must be a finite number >= 0")
        _check_beta(per_beta, "per_beta")
        if not (np.isfinite(per_eps) and per_eps > 0):
            raise ValueError(f"per_eps={per_eps!r} must be a finite number > 0")
        if not (isinstance(k_min, (int, np.integer)) and k_min >= 0):
            raise ValueError(f"k_min={k_min!r} must be an integer >= 0")
        if k_max is not None and not (isinstance(k_max, (int, np.integer)) and k_max >= max(k_min, 1)):
            raise ValueError(f"k_max={k_max!r} must be None or an integer >= max(k_min, 1)")
        self.num_tasks, self.capacity_per_task = int(num_tasks), int(capacity_per_task)
        self.obs_dim, self.act_dim = int(obs_dim), int(act_dim)
        self.strategy = strategy
        self.per_alpha, self.per_beta, self.per_eps = float(per_alpha), float(per_beta), float(per_eps)
        self.k_min, self.k_max = int(k_min), None if k_max is None else int(k_max)
        self.rng = np.random.default_rng(seed)
        o, a = self.obs_dim, self.act_dim
        self._columns = {"observations": slice(0, o), "actions": slice(o, o + a),
                         "rewards": o + a, "next_observations": slice(o + a + 1, 2 * o + a + 1),
                         "dones": 2 * o + a + 1}
        self.storage = np.zeros((self.num_tasks * self.capacity_per_task, 2 * o + a + 2),
                                np.float32)
        self.positions = np.zeros(self.num_tasks, np.int64)
        self.counts = np.zeros(self.num_tasks, np.int64)
        width = kernels.tree_width(self.capacity_per_task) if strategy in PRIORITIZED else 2
        self.trees = kernels.aligned_zeros((self.num_tasks, width))
        self.max_priority = 1.0
        self._updates = 0

    def __len__(self) -> int:
        return int(self.counts.sum())

    # ------------------------------------------------------------------ writing
    def add(self, task_ids, observations, actions, rewards, next_observations, dones) -> None:
        """Append B transitions (leading dim B); each task's ring overwrites its oldest first.

        New transitions get the largest priority assigned so far (1.0 before any update).
        """
        task_ids = np.asarray(task_ids)
        if task_ids.ndim != 1 or not np.issubdtype(task_ids.dtype, np.integer):
            raise ValueError(f"task_ids must be a 1-D integer array, got shape {task_ids.shape} "
                             f"dtype {task_ids.dtype}")
        bad = task_ids[(task_ids < 0) | (task_ids >= self.num_tasks)]
        if bad.size:
            raise ValueError(f"task id {bad[0]} out of range [0, {self.num_tasks})")
        b = task_ids.shape[0]
        fields = {"observations": (observations, (b, self.obs_dim)),
                  "actions": (actions, (b, self.act_dim)), "rewards": (rewards, (b,)),
                  "next_observations": (next_observations, (b, self.obs_dim)),
                  "dones": (dones, (b,))}
        rows = np.empty((b, self.storage.shape[1]), np.float32)
        for name, (value, shape) in fields.items():
            value = np.asarray(value, dtype=np.float32)
            if value.shape != shape:
                raise ValueError(f"{name} has shape {value.shape}, expected {shape} "
                                 f"(B={b} task ids, obs_dim={self.obs_dim}, act_dim={self.act_dim})")
            rows[:, self._columns[name]] = value
        tasks = task_ids.astype(np.int64)
        slots = np.empty(b, np.int64)
        kernels.ring_slots(tasks, self.positions, self.counts, self.capacity_per_task, slots)
        self.storage[tasks * self.capacity_per_task + slots] = rows
        if self.strategy in PRIORITIZED:
            kernels.tree_update(self.trees, tasks, slots, np.full(b, self.max_priority))

    def update_priorities(self, indices, td_errors) -> None:
        """Store p = (|td| + per_eps)^per_alpha for the given global slots (Eq. 2 -> Eq. 3)."""
        indices = np.asarray(indices)
        td_errors = np.asarray(td_errors, dtype=np.float64)
        if indices.ndim != 1 or td_errors.shape != indices.shape:
            raise ValueError(f"indices {indices.shape} and td_errors {td_errors.shape} must be "
                             "1-D of the same length")
        if indices.dtype.kind not in "iu":
            raise ValueError(f"indices must be integers, got dtype {indices.dtype}")
        indices = indices.astype(np.int64, copy=False)
        bad_index, bad_td, largest = kernels.set_priorities(
            self.trees, indices, td_errors, self.counts, self.capacity_per_task, self.per_eps,
            self.per_alpha, self.strategy in PRIORITIZED)
        if bad_index >= 0:
            raise ValueError(f"index {indices[bad_index]} is not a stored slot (global ids are "
                             f"task * {self.capacity_per_task} + slot, slot < stored count)")
        if bad_td >= 0:
            raise ValueError(f"td error {td_errors[bad_td]} gives a non-finite priority "
                             "(|td| + per_eps)^per_alpha; td errors must be finite")
        if self.strategy not in PRIORITIZED or not indices.size:
            return
        self.max_priority = max(self.max_priority, largest)
        self._updates += 1
        if self._updates % REBUILD_INTERVAL == 0:
            kernels.tree_rebuild(self.trees)

    # ------------------------------------------------------------------ sampling
    def quotas(self, batch_size: int) -> np.ndarray:
        """Draws per task in a batch of K: Eq. 5 for ta-per, K/N for average; for uniform and
        per (whose per-task counts are random) the expected counts K*M_i/M and K*S_i/S,
        rounded by largest remainder."""
        _check_positive_int("batch_size", batch_size)
        k_min, k_max = self._quota_bounds(batch_size)
        self._check_feasible(batch_size, k_min, k_max)
        out = np.empty(self.num_tasks, np.int64)
        if self.strategy == "average":
            kernels.even_quotas(self.counts, batch_size, out)
        else:
            weights = self.counts.astype(float) if self.strategy == "uniform" else self.trees[:, 1]
            kernels.quotas(weights, self.counts, batch_size, k_min, k_max, out)
        return out

    def _quota_bounds(self, batch_size: int) -> tuple[int, int]:
        """(k_min, k_max): the buffer's for ta-per (k_max None means K), (0, K) otherwise."""
        if self.strategy == "ta-per":
            return self.k_min, self.k_max or batch_size
        return 0, batch_size

    def probabilities(self, batch_size: int) -> np.ndarray:
        """(num_tasks, capacity_per_task): probability that one draw of a batch of K is the slot.

        uniform 1/M; average (k_i/K)/M_i; per p_j/S; ta-per (k_i/K) p_j/S_i; 0 where empty.
        """
        stored = np.arange(self.capacity_per_task)[None, :] < self.counts[:, None]
        if self.strategy == "uniform":
            return stored / max(len(self), 1)
        k = self.quotas(batch_size) / batch_size
        if self.strategy == "average":
            return stored * (k / np.maximum(self.counts, 1))[:, None]
        leaves = self.trees[:, self.trees.shape[1] // 2:][:, :self.capacity_per_task]
        if self.strategy == "per":
            return leaves / self.trees[:, 1].sum()
        return leaves * (k / np.where(self.trees[:, 1] > 0, self.trees[:, 1], 1.0))[:, None]

    def sample(self, batch_size: int, beta: float | None = None) -> Batch:
        """Draw a batch of K transitions, grouped by task, with IS weights for per/ta-per."""
        _check_positive_int("batch_size", batch_size)
        beta = self.per_beta if beta is None else _check_beta(beta, "beta")
        if not self.counts.any():
            raise ValueError("cannot sample from an empty ReplayBuffer: add transitions first")
        tasks = np.empty(batch_size, np.int64)
        indices = np.empty(batch_size, np.int64)
        weights = np.ones(batch_size, np.float32)
        capacity = self.capacity_per_task
        if self.strategy == "uniform":
            kernels.draw_uniform(self.counts, capacity, self.rng.random(2 * batch_size), tasks,
                                 indices)
        elif self.strategy == "average":
            kernels.draw_average(self.counts, capacity, self.rng.random(batch_size), tasks, indices)
        elif self.strategy == "per":
            kernels.draw_per(self.trees, capacity, self.rng.random(batch_size), beta, tasks,
                             indices, weights)
        else:
            k_min, k_max = self._quota_bounds(batch_size)
            self._check_feasible(batch_size, k_min, k_max)
            kernels.draw_ta_per(self.trees, self.counts, k_min, k_max, capacity,
                                self.rng.random(batch_size), beta, tasks, indices, weights)
        rows = np.empty((batch_size, self.storage.shape[1]), np.float32)
        kernels.gather_rows(self.storage, indices, rows)
        fields = {name: rows[:, column] for name, column in self._columns.items()}
        return Batch(task_ids=tasks, indices=indices, weights=weights, **fields)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """Everything needed to continue exactly: rows, ring positions, leaves, max priority, RNG."""
        leaves = self.trees.shape[1] // 2
        return {"storage": self.storage.copy(), "positions": self.positions.copy(),
                "counts": self.counts.copy(), "leaves": self.trees[:, leaves:].copy(),
                "max_priority": self.max_priority, "updates": self._updates,
                "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        """Restore a `state_dict()` of a buffer of the same shape; trees are rebuilt exactly."""
        leaves = self.trees.shape[1] // 2
        for name, target in (("storage", self.storage), ("positions", self.positions),
                             ("counts", self.counts), ("leaves", self.trees[:, leaves:])):
            if np.shape(state[name]) != target.shape:
                raise ValueError(f"checkpoint {name} has shape {np.shape(state[name])}, this "
                                 f"buffer needs {target.shape}")
            target[...] = state[name]
        kernels.tree_rebuild(self.trees)
        self.max_priority = float(state["max_priority"])
        self._updates = int(state["updates"])
        self.rng.bit_generator.state = state["rng"]

    # ------------------------------------------------------------------ validation
    def _check_feasible(self, batch_size: int, k_min: int, k_max: int) -> None:
        n = np.count_nonzero(self.counts)
        if n == 0:
            raise ValueError("cannot sample from an empty ReplayBuffer: add transitions first")
        if not n * k_min <= batch_size <= n * k_max:
            raise ValueError(f"k_min={k_min}, k_max={k_max} are infeasible for batch_size="
                             f"{batch_size} with {n} tasks holding data: need "
                             f"{n}*k_min <= {batch_size} <= {n}*k_max")


def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name}={value!r} must be a positive integer")


def _check_beta(beta: float, name: str) -> float:
    if not (math.isfinite(beta) and 0 <= beta <= 1):
        raise ValueError(f"{name}={beta!r} must be in [0, 1]")
    return float(beta)
