"""`ReplayBuffer`: per-task ring storage of packed transition rows, composed with one of the
four samplers of `taper.samplers` (uniform, average, per, ta-per).

A transition is one packed float32 row [obs, action, reward, next_obs, done] so a gather touches
few cache lines. Slots are global ids ``task * capacity_per_task + slot``. Every batch comes
grouped by task (contiguous, task order), so per-task networks can use slices; its IS weights
(Eq. 4) come from the sampler.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from taper import kernels
from taper.samplers import SAMPLER_CLASSES, SAMPLERS


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


class RingStorage:
    """Per-task FIFO rings of packed float32 rows: `rows[task * capacity_per_task + slot]` is
    slot `slot` of task `task`. positions, counts: (N,) int64, each task's next slot to write and
    the rows it holds."""

    def __init__(self, num_tasks: int, capacity_per_task: int, row_width: int) -> None:
        self.capacity_per_task = capacity_per_task
        self.rows = np.zeros((num_tasks * capacity_per_task, row_width), np.float32)
        self.positions = np.zeros(num_tasks, np.int64)
        self.counts = np.zeros(num_tasks, np.int64)

    def __len__(self) -> int:
        return int(self.counts.sum())

    def write(self, tasks: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Append rows (B, W) float32 of tasks (B,) int64, each ring overwriting its oldest
        first; returns their slots (B,) int64."""
        slots = np.empty(tasks.shape[0], np.int64)
        kernels.ring_slots(tasks, self.positions, self.counts, self.capacity_per_task, slots)
        self.rows[tasks * self.capacity_per_task + slots] = rows
        return slots

    def gather(self, indices: np.ndarray) -> np.ndarray:
        """(K, W) float32 copy of the rows at global ids (K,) int64."""
        out = np.empty((indices.shape[0], self.rows.shape[1]), np.float32)
        kernels.gather_rows(self.rows, indices, out)
        return out

    def stored(self) -> np.ndarray:
        """(N, capacity_per_task) bool: the slots that hold a transition."""
        return np.arange(self.capacity_per_task)[None, :] < self.counts[:, None]


class ReplayBuffer:
    """A `RingStorage` of packed rows and a sampler (`buf.sampler`, chosen by name: uniform,
    average, per or ta-per) that picks the batches and keeps the priorities."""

    def __init__(self, num_tasks: int, capacity_per_task: int, obs_dim: int, act_dim: int,
                 sampler: str = "ta-per", per_alpha: float = 0.6, per_beta: float = 0.4,
                 per_eps: float = 1e-6, k_min: int = 0, k_max: int | None = None,
                 seed: int | None = 0) -> None:
        for name, value in (("num_tasks", num_tasks), ("capacity_per_task", capacity_per_task),
                            ("obs_dim", obs_dim), ("act_dim", act_dim)):
            _check_positive_int(name, value)
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler={sampler!r} is not one of {', '.join(SAMPLERS)}")
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
        self.per_alpha, self.per_beta, self.per_eps = float(per_alpha), float(per_beta), float(per_eps)
        self.rng = np.random.default_rng(seed)
        o, a = self.obs_dim, self.act_dim
        self._columns = {"observations": slice(0, o), "actions": slice(o, o + a),
                         "rewards": o + a, "next_observations": slice(o + a + 1, 2 * o + a + 1),
                         "dones": 2 * o + a + 1}
        self.storage = RingStorage(self.num_tasks, self.capacity_per_task, 2 * o + a + 2)
        self.sampler = SAMPLER_CLASSES[sampler](
            self.num_tasks, self.capacity_per_task, self.per_alpha, self.per_eps, int(k_min),
            None if k_max is None else int(k_max))

    def __len__(self) -> int:
        return len(self.storage)

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
        rows = np.empty((b, self.storage.rows.shape[1]), np.float32)
        for name, (value, shape) in fields.items():
            value = np.asarray(value, dtype=np.float32)
            if value.shape != shape:
                raise ValueError(f"{name} has shape {value.shape}, expected {shape} "
                                 f"(B={b} task ids, obs_dim={self.obs_dim}, act_dim={self.act_dim})")
            rows[:, self._columns[name]] = value
        tasks = task_ids.astype(np.int64)
        self.sampler.add(tasks, self.storage.write(tasks, rows))

    def update_priorities(self, indices, td_errors) -> None:
        """Store p = (|td| + per_eps)^per_alpha for the given global slots (Eq. 2 -> Eq. 3)."""
        indices = np.asarray(indices)
        td_errors = np.asarray(td_errors, dtype=np.float64)
        if indices.ndim != 1 or td_errors.shape != indices.shape:
            raise ValueError(f"indices {indices.shape} and td_errors {td_errors.shape} must be "
                             "1-D of the same length")
        if indices.dtype.kind not in "iu":
            raise ValueError(f"indices must be integers, got dtype {indices.dtype}")
        self.sampler.update_priority(self.storage, indices.astype(np.int64, copy=False), td_errors)

    # ------------------------------------------------------------------ sampling
    def quotas(self, batch_size: int) -> np.ndarray:
        """Draws per task in a batch of K: Eq. 5 for ta-per, K/N for average; for uniform and
        per (whose per-task counts are random) the expected counts K*M_i/M and K*S_i/S,
        rounded by largest remainder."""
        _check_positive_int("batch_size", batch_size)
        self._check_feasible(batch_size)
        return self.sampler.quotas(self.storage, batch_size)

    def probabilities(self, batch_size: int) -> np.ndarray:
        """(num_tasks, capacity_per_task): probability that one draw of a batch of K is the slot.

        uniform 1/M; average (k_i/K)/M_i; per p_j/S; ta-per (k_i/K) p_j/S_i; 0 where empty.
        """
        _check_positive_int("batch_size", batch_size)
        self._check_feasible(batch_size)
        return self.sampler.probabilities(self.storage, batch_size)

    def sample(self, batch_size: int, beta: float | None = None) -> Batch:
        """Draw a batch of K transitions, grouped by task, with IS weights for per/ta-per."""
        _check_positive_int("batch_size", batch_size)
        beta = self.per_beta if beta is None else _check_beta(beta, "beta")
        self._check_feasible(batch_size)
        tasks, indices, weights = self.sampler.sample(self.storage, batch_size, self.rng, beta)
        rows = self.storage.gather(indices)
        fields = {name: rows[:, column] for name, column in self._columns.items()}
        return Batch(task_ids=tasks, indices=indices, weights=weights, **fields)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """Everything needed to continue exactly: rows, ring positions, leaves, max priority, RNG."""
        return {**{name: array.copy() for name, array in self._checkpoint_arrays()},
                "max_priority": self.sampler.max_priority, "updates": self.sampler.updates,
                "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        """Restore a `state_dict()` of a buffer of the same shape; trees are rebuilt exactly."""
        for name, target in self._checkpoint_arrays():
            if np.shape(state[name]) != target.shape:
                raise ValueError(f"checkpoint {name} has shape {np.shape(state[name])}, this "
                                 f"buffer needs {target.shape}")
            target[...] = state[name]
        kernels.tree_rebuild(self.sampler.trees)
        self.sampler.max_priority = float(state["max_priority"])
        self.sampler.updates = int(state["updates"])
        self.rng.bit_generator.state = state["rng"]

    def _checkpoint_arrays(self) -> tuple[tuple[str, np.ndarray], ...]:
        storage = self.storage
        return (("storage", storage.rows), ("positions", storage.positions),
                ("counts", storage.counts), ("leaves", self.sampler.leaves))

    # ------------------------------------------------------------------ validation
    def _check_feasible(self, batch_size: int) -> None:
        """Data to draw from, and quota bounds the n tasks holding it can meet for K."""
        k_min, k_max = self.sampler.bounds(batch_size)
        n = np.count_nonzero(self.storage.counts)
        if n == 0:
            raise ValueError("cannot sample from an empty ReplayBuffer: add transitions first")
        if not n * k_min <= batch_size <= n * k_max:
            raise ValueError(f"k_min={k_min}, k_max={k_max} are infeasible for batch_size="
                             f"{batch_size} with {n} tasks holding data: need "
                             f"{n}*k_min <= {batch_size} <= {n}*k_max")


def scale_per_task(td_errors: np.ndarray, task_ids: np.ndarray, num_tasks: int) -> np.ndarray:
    """|td| divided by the mean |td| of the same task's rows in the batch: (K,) float64.

    Not in the paper (`Config.priority_scale="task"`): a task whose values are large has large
    absolute TD errors, so Eq. 5 gives it the larger quota whether or not it is still learning;
    scaled, each task's priorities measure surprise relative to its own TD errors. A task whose
    rows all have td = 0 keeps zeros.
    """
    td = np.abs(np.asarray(td_errors, np.float64))
    ids = np.asarray(task_ids)
    means = np.bincount(ids, td, num_tasks) / np.maximum(np.bincount(ids, None, num_tasks), 1)
    return td / np.where(means > 0, means, 1.0)[ids]


def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name}={value!r} must be a positive integer")


def _check_beta(beta: float, name: str) -> float:
    if not (math.isfinite(beta) and 0 <= beta <= 1):
        raise ValueError(f"{name}={beta!r} must be in [0, 1]")
    return float(beta)
