"""`taper bench-replay`: microseconds per sample / update_priorities / add of every sampler,
and of peer PER libraries when installed, all timed interleaved in one run.

Work per op, for every implementation: `sample` draws K indices, computes IS weights and
gathers all five transition fields; `update` writes K new priorities from td errors; `add`
appends one vector step (one transition per task). Buffers hold N x capacity transitions,
filled before timing, with random priorities. Each repetition times every (impl, op) once, so
drift in machine load hits all of them alike; the implementations take their turns in a fresh
random order each repetition (an impl's ops stay together: sample, update, add), so none always
finds the caches as one particular neighbour left them. The first repetitions are warm-up.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from importlib import import_module

import numpy as np

from taper.config import Config
from taper.replay import SAMPLERS, ReplayBuffer

WARMUP = 5


@dataclass
class BenchResult:
    rows: list[dict]
    """One row per (impl, op): impl, op, median_us, p10_us, p90_us, ratio_to_uniform."""
    jit_compile_s: float
    """Seconds of the first sample + update on a tiny buffer (numba compile or cache load)."""
    setup: dict

    def medians(self) -> dict[tuple[str, str], float]:
        """{(impl, op): median_us}."""
        return {(r["impl"], r["op"]): r["median_us"] for r in self.rows}


def _fill_arrays(rng, n, obs_dim, act_dim):
    return dict(observations=rng.standard_normal((n, obs_dim), np.float32),
                actions=rng.uniform(-1, 1, (n, act_dim)).astype(np.float32),
                rewards=rng.standard_normal(n).astype(np.float32),
                next_observations=rng.standard_normal((n, obs_dim), np.float32),
                dones=np.zeros(n, np.float32))


class _Taper:
    """One taper sampler behind the three timed ops."""

    def __init__(self, sampler, num_tasks, capacity, obs_dim, act_dim, batch_size, seed):
        rng = np.random.default_rng(seed)
        k_min, k_max = Config(batch_size=batch_size, sampler="ta-per").quota_bounds(num_tasks)
        self.buf = ReplayBuffer(num_tasks, capacity, obs_dim, act_dim, sampler=sampler,
                                k_min=k_min, k_max=k_max, seed=seed)
        tasks = np.repeat(np.arange(num_tasks), capacity)
        self.buf.add(tasks, **_fill_arrays(rng, tasks.size, obs_dim, act_dim))
        self.buf.update_priorities(np.arange(tasks.size), rng.exponential(1.0, tasks.size))
        self.step = dict(task_ids=np.arange(num_tasks), **_fill_arrays(rng, num_tasks, obs_dim, act_dim))
        self.td = rng.exponential(1.0, batch_size)
        self.batch_size = batch_size
        self.indices = self.buf.sample(batch_size).indices

    def sample(self):
        self.indices = self.buf.sample(self.batch_size).indices

    def update(self):
        self.buf.update_priorities(self.indices, self.td)

    def add(self):
        self.buf.add(**self.step)


class _Cpprb:
    """cpprb's PrioritizedReplayBuffer (C++ segment trees) over one flat buffer."""

    def __init__(self, num_tasks, capacity, obs_dim, act_dim, batch_size, seed):
        cpprb = import_module("cpprb")
        rng = np.random.default_rng(seed)
        n = num_tasks * capacity
        self.buf = cpprb.PrioritizedReplayBuffer(
            n, {"obs": {"shape": obs_dim}, "act": {"shape": act_dim}, "rew": {},
                "next_obs": {"shape": obs_dim}, "done": {}}, alpha=0.6)
        a = _fill_arrays(rng, n, obs_dim, act_dim)
        self.buf.add(obs=a["observations"], act=a["actions"], rew=a["rewards"],
                     next_obs=a["next_observations"], done=a["dones"])
        self.buf.update_priorities(np.arange(n), rng.exponential(1.0, n))
        s = _fill_arrays(rng, num_tasks, obs_dim, act_dim)
        self.step = dict(obs=s["observations"], act=s["actions"], rew=s["rewards"],
                         next_obs=s["next_observations"], done=s["dones"])
        self.td = rng.exponential(1.0, batch_size)
        self.batch_size = batch_size
        self.indices = self.buf.sample(batch_size, beta=0.4)["indexes"]

    def sample(self):
        self.indices = self.buf.sample(self.batch_size, beta=0.4)["indexes"]

    def update(self):
        self.buf.update_priorities(self.indices, self.td)

    def add(self):
        self.buf.add(**self.step)


class _Tianshou:
    """tianshou's PrioritizedReplayBuffer (numpy segment tree) over one flat buffer."""

    def __init__(self, num_tasks, capacity, obs_dim, act_dim, batch_size, seed):
        data = import_module("tianshou.data")
        rng = np.random.default_rng(seed)
        n = num_tasks * capacity
        self.buf = data.PrioritizedReplayBuffer(n, alpha=0.6, beta=0.4)
        a = _fill_arrays(rng, n, obs_dim, act_dim)
        false = np.zeros(n, bool)
        self.buf.set_batch(data.Batch(obs=a["observations"], act=a["actions"], rew=a["rewards"],
                                      terminated=false, truncated=false, done=false,
                                      obs_next=a["next_observations"]))
        self.buf._size, self.buf._index = n, 0  # bulk fill; tianshou adds one row per call
        self.buf.update_weight(np.arange(n), rng.exponential(1.0, n))
        s = _fill_arrays(rng, 1, obs_dim, act_dim)
        self.steps = num_tasks
        self.row = data.Batch(obs=s["observations"][0], act=s["actions"][0], rew=s["rewards"][0],
                              terminated=False, truncated=False, obs_next=s["next_observations"][0],
                              info={})
        self.td = rng.exponential(1.0, batch_size)
        self.batch_size = batch_size
        self.indices = self.buf.sample(batch_size)[1]

    def sample(self):
        batch, self.indices = self.buf.sample(self.batch_size)
        batch.weight  # noqa: B018 - the IS weights are part of the work

    def update(self):
        self.buf.update_weight(self.indices, self.td)

    def add(self):
        for _ in range(self.steps):
            self.buf.add(self.row)


class _Torchrl:
    """torchrl's PrioritizedSampler (C++ SumSegmentTree) over a LazyTensorStorage."""

    def __init__(self, num_tasks, capacity, obs_dim, act_dim, batch_size, seed):
        torch = import_module("torch")
        trl = import_module("torchrl.data")
        tensordict = import_module("tensordict")
        rng = np.random.default_rng(seed)
        n = num_tasks * capacity
        self.buf = trl.TensorDictReplayBuffer(
            storage=trl.LazyTensorStorage(n), batch_size=batch_size,
            sampler=trl.PrioritizedSampler(n, alpha=0.6, beta=0.4))
        a = {k: torch.from_numpy(v) for k, v in _fill_arrays(rng, n, obs_dim, act_dim).items()}
        self.buf.extend(tensordict.TensorDict(a, batch_size=[n]))
        self.buf.update_priority(torch.arange(n), torch.from_numpy(rng.exponential(1.0, n)))
        s = {k: torch.from_numpy(v) for k, v in _fill_arrays(rng, num_tasks, obs_dim, act_dim).items()}
        self.step = tensordict.TensorDict(s, batch_size=[num_tasks])
        self.td = torch.from_numpy(rng.exponential(1.0, batch_size))
        self.indices = self.buf.sample()["index"]

    def sample(self):
        self.indices = self.buf.sample()["index"]

    def update(self):
        self.buf.update_priority(self.indices, self.td)

    def add(self):
        self.buf.extend(self.step)


PEERS = {"cpprb": _Cpprb, "tianshou": _Tianshou, "torchrl": _Torchrl}


def _jit_compile_seconds(seed: int) -> float:
    start = time.perf_counter()
    for sampler in SAMPLERS:
        buf = ReplayBuffer(2, 4, 3, 1, sampler=sampler, seed=seed)
        buf.add(np.arange(2), np.zeros((2, 3)), np.zeros((2, 1)), np.zeros(2), np.zeros((2, 3)),
                np.zeros(2))
        buf.update_priorities(buf.sample(2).indices, np.ones(2))
    return time.perf_counter() - start


def run(num_tasks=10, capacity=100_000, batch_size=1280, obs_dim=39, act_dim=4, repeats=50,
        peers=True, seed=0, extra=None) -> BenchResult:
    """Build every implementation, then time all (impl, op) pairs interleaved `repeats` times.

    extra: optional {name: factory}; each factory gets the built implementations (dict by name)
    and returns one more object with `sample`, `update` and `add`, timed like the others (the
    reference implementations of `benchmarks/replay_floor.py`).
    """
    jit_s = _jit_compile_seconds(seed)
    impls = {s: _Taper(s, num_tasks, capacity, obs_dim, act_dim, batch_size, seed) for s in SAMPLERS}
    skipped = {}
    for name, cls in (PEERS.items() if peers else ()):
        try:
            impls[name] = cls(num_tasks, capacity, obs_dim, act_dim, batch_size, seed)
        except Exception as error:  # absent or broken peer: reported, not fatal
            skipped[name] = f"{type(error).__name__}: {str(error).splitlines()[0][:80]}"
    for name, factory in (extra or {}).items():
        impls[name] = factory(dict(impls))
    ops = ("sample", "update", "add")
    times = {(name, op): [] for name in impls for op in ops}
    order = np.random.default_rng(seed)
    for rep in range(WARMUP + repeats):
        for name in order.permutation(list(impls)):
            impl = impls[name]
            for op in ops:
                fn = getattr(impl, op)
                start = time.perf_counter()
                fn()
                elapsed = time.perf_counter() - start
                if rep >= WARMUP:
                    times[name, op].append(elapsed * 1e6)
    base = float(np.median(times["uniform", "sample"]))
    rows = []
    for (name, op), t in times.items():
        median = float(np.median(t))
        rows.append({"impl": name, "op": op, "median_us": round(median, 1),
                     "p10_us": round(float(np.percentile(t, 10)), 1),
                     "p90_us": round(float(np.percentile(t, 90)), 1),
                     "ratio_to_uniform": round(median / base, 3)})
    setup = dict(num_tasks=num_tasks, capacity=capacity, batch_size=batch_size, obs_dim=obs_dim,
                 act_dim=act_dim, repeats=repeats, skipped=skipped)
    return BenchResult(rows=rows, jit_compile_s=jit_s, setup=setup)


def targets(result: BenchResult) -> dict[str, float]:
    """The two target ratios: ta-per's sample + update over uniform's sample, and the fastest
    peer's sample + update over ta-per's (absent when no peer ran)."""
    med = result.medians()
    ours = med["ta-per", "sample"] + med["ta-per", "update"]
    out = {"ta-per sample+update / uniform sample": ours / med["uniform", "sample"]}
    peer = [med[p, "sample"] + med[p, "update"] for p in PEERS if (p, "sample") in med]
    if peer:
        out["fastest peer sample+update / ta-per sample+update"] = min(peer) / ours
    return out


def format_table(result: BenchResult) -> str:
    s = result.setup
    lines = [f"replay benchmark: {s['num_tasks']} tasks x {s['capacity']:,} filled, "
             f"K={s['batch_size']}, obs {s['obs_dim']}, act {s['act_dim']}, "
             f"{s['repeats']} interleaved repetitions (+{WARMUP} warm-up)",
             f"numba compile / cache load: {result.jit_compile_s:.2f} s", "",
             f"{'impl':<10} {'op':<7} {'median_us':>10} {'p10_us':>9} {'p90_us':>9} {'ratio':>7}"]
    for r in result.rows:
        lines.append(f"{r['impl']:<10} {r['op']:<7} {r['median_us']:>10.1f} {r['p10_us']:>9.1f} "
                     f"{r['p90_us']:>9.1f} {r['ratio_to_uniform']:>7.2f}")
    lines.append("ratio: median over uniform's sample median")
    for name, reason in s["skipped"].items():
        lines.append(f"skipped {name}: {reason}")
    lines += [f"{k}: {v:.2f}" for k, v in targets(result).items()]
    return "\n".join(lines)
