"""The training loop (Algorithm 1), evaluation, checkpoints and metrics of a taper run.

A run folder holds `config.json`, `metrics.jsonl` (one JSON object a line, `kind` in
train / paco_reset / eval / eval_mean / timing), `checkpoint.pt` and TensorBoard events under
`tensorboard/`.

Exact resume: at every evaluation point the training envs are re-seeded with a seed that is a
function of (cfg.seed, step) only, in uninterrupted and resumed runs alike, and the checkpoint
written there holds every other piece of state (networks, optimisers, replay, RNGs, counters).
So a run resumed from an evaluation checkpoint continues bit for bit in deterministic CPU mode.
A checkpoint written on SIGINT/SIGTERM between evaluations resumes with freshly re-seeded envs.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import dataclasses
import functools
import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from taper import suites
from taper.config import Config
from taper.replay import ReplayBuffer, scale_per_task
from taper.runs import CHECKPOINT, METRICS, TENSORBOARD, check, run_dir_for, write_provenance
from taper.sac import Agent, resolve_device

PHASES = ("env", "act", "replay_add", "replay_sample", "update", "replay_update", "eval",
          "checkpoint")
TRAIN_STREAM, EVAL_STREAM = 0, 1
"""Seed streams: training-env re-seeds and evaluation-env seeds never coincide."""


def train(cfg: Config, resume: str | Path | None = None, *,
          command: list[str] | None = None) -> Path:
    """Run Algorithm 1 for `cfg`, or continue the run folder `resume`; returns the run folder.

    Every vector step adds one transition per task; after `learning_starts` vector steps of
    uniform random actions, `gradient_steps` SAC updates per vector step on batches of K drawn
    by `cfg.sampler`, each update's TD errors (Eq. 2) becoming the new priorities (Eq. 3).
    A start and every resume append an entry to the run folder's provenance.json (versions,
    git commit, device, `command`; None: this process's command line).
    """
    spec = check(cfg, resume)
    if resume is None:
        run_dir = run_dir_for(cfg)
        cfg = dataclasses.replace(cfg, out=str(run_dir))
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg.save(run_dir)
    else:
        run_dir = Path(resume)
    _configure_torch(cfg)
    keep_freed_memory()
    device = resolve_device(cfg.device)
    write_provenance(run_dir, "start" if resume is None else "resume", device.type, command)
    torch.manual_seed(cfg.seed)
    agent = make_agent(cfg, spec, device)
    buf = make_buffer(cfg, spec)
    state = LoopState(rng=np.random.default_rng(cfg.seed))
    if resume is not None:
        state = load_checkpoint(run_dir, agent, buf)
    if state.step >= cfg.steps_per_env:
        return run_dir
    with contextlib.ExitStack() as stack:
        envs = stack.enter_context(contextlib.closing(_make_envs(cfg, cfg.overlap_envs)))
        eval_envs = stack.enter_context(contextlib.closing(_make_envs(cfg)))
        log = stack.enter_context(MetricsLog(run_dir, state.metrics_offset, state.step))
        caught = stack.enter_context(_deferred_signals())
        _loop(_Run(cfg, spec, run_dir, agent, buf, envs, eval_envs, log, state,
                   Stopwatch(state.seconds), caught))
    if caught:
        signal.raise_signal(caught[0])
    return run_dir


def _loop(run: _Run) -> None:
    """Algorithm 1, from `run.state.step` to `cfg.steps_per_env` vector steps.

    Overlapped (`cfg.overlap_envs`): once step t's transition is stored, the actions of step
    t+1 are chosen and sent to the env worker, which steps while this process runs update t;
    so those actions come from the policy before update t. Nothing is in flight at an
    evaluation point, so its checkpoint and exact resume are those of the sequential loop; a
    step in flight when a signal arrives is dropped (a resume re-seeds the envs anyway).
    """
    cfg, state = run.cfg, run.state
    obs = run.reseed()
    actions = None
    with tqdm(total=cfg.steps_per_env, initial=state.step, unit="step", dynamic_ncols=True) as bar:
        if state.last_eval is not None:
            bar.set_postfix(success=f"{state.last_eval['success']:.2f}")
        while state.step < cfg.steps_per_env:
            if actions is None:
                actions = run.send(obs)
            obs = run.receive_and_store(obs, actions)
            ends_interval = (state.step + 1) % cfg.eval_every == 0
            actions = None
            if cfg.overlap_envs and not ends_interval and not run.caught \
                    and state.step + 1 < cfg.steps_per_env:
                actions = run.send(obs)
            if state.step >= cfg.learning_starts:
                for _ in range(cfg.gradient_steps):
                    run.gradient_step()
            state.step += 1
            bar.update()
            if state.step % cfg.log_every == 0:
                run.log_train()
            if state.step % cfg.eval_every == 0 or state.step == cfg.steps_per_env:
                bar.set_postfix(success=f"{run.evaluate():.2f}")
                run.checkpoint()
                obs = run.reseed()
            elif run.caught:
                run.checkpoint()
            if run.caught:
                bar.write(f"signal {run.caught[0]}: checkpoint at step {state.step} in "
                          f"{run.run_dir}; continue with: taper train --resume {run.run_dir}",
                          file=sys.stderr)
                return
        run.log.write({"kind": "timing", "step": state.step, **run.clock.row(state.updates)})
        bar.write(run.clock.table(state.updates), file=sys.stderr)


@dataclass
class _Run:
    """What one run's loop works on; each method is one line of Algorithm 1."""

    cfg: Config
    spec: suites.SuiteSpec
    run_dir: Path
    agent: Agent
    buf: ReplayBuffer
    envs: object
    eval_envs: object
    log: MetricsLog
    state: LoopState
    clock: Stopwatch
    caught: list[int]
    metrics: dict[str, float] = field(default_factory=dict)
    """The last update's metrics, for the next train row."""
    task_ids: np.ndarray = field(init=False)
    """Task id of each env: its index."""
    last_row: tuple[int, float] = field(init=False)
    """(step, time) of the last train row, for steps per second."""

    def __post_init__(self) -> None:
        self.task_ids = np.arange(self.spec.num_tasks)
        self.last_row = (self.state.step, time.perf_counter())

    def reseed(self) -> np.ndarray:
        """Reset the training envs with f(cfg.seed, step): the resume point of exact resume."""
        obs, _ = self.envs.reset(seed=env_seed(self.cfg.seed, self.state.step, TRAIN_STREAM))
        return obs

    def send(self, obs: np.ndarray) -> np.ndarray:
        """Choose the actions for `obs` (uniform random during warm-up, then a ~ pi(.|s, task))
        and hand them to the envs; overlapped, the worker starts stepping at once."""
        with self.clock("act"):
            if self.state.step < self.cfg.learning_starts:
                actions = self.state.rng.uniform(-1, 1, (self.spec.num_tasks,
                                                         self.spec.act_dim))
            else:
                actions = self.agent.act(obs, self.task_ids, deterministic=False)
        if self.cfg.overlap_envs:
            with self.clock("env"):
                self.envs.step_async(actions)
        return actions

    def receive_and_store(self, obs: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """The envs' step on `actions`; store (s, a, r, s', terminated) per task; the next obs.

        s' is the true last observation where an episode ended; a time-limit truncation is not
        terminal, so it is not stored as done.
        """
        with self.clock("env"):
            result = self.envs.step_wait() if self.cfg.overlap_envs else self.envs.step(actions)
            next_obs, rewards, terminated, _, infos = result
            true_next = suites.final_observations(next_obs, infos)
        with self.clock("replay_add"):
            self.buf.add(self.task_ids, obs, actions, rewards, true_next, terminated)
        return next_obs

    def gradient_step(self) -> None:
        """Sample K (IS exponent beta annealed to 1), one SAC update, TD errors as priorities."""
        cfg, state = self.cfg, self.state
        beta = min(1.0, cfg.per_beta + (1 - cfg.per_beta) * state.step / cfg.steps_per_env)
        with self.clock("replay_sample"):
            batch = self.buf.sample(cfg.batch_size, beta=beta)
        with self.clock("update"):
            metrics, td_errors = self.agent.update(batch)
        state.updates += 1
        self.check_finite(metrics, td_errors)
        if cfg.priority_scale == "task":
            td_errors = scale_per_task(td_errors, batch.task_ids, self.spec.num_tasks)
        with self.clock("replay_update"):
            self.buf.update_priorities(batch.indices, td_errors)
        self.metrics = {**metrics, "beta": beta}
        if metrics.get("paco/resets", 0) > 0:
            tasks = [i for i in range(self.spec.num_tasks) if f"paco/reset/{i}" in metrics]
            self.log.write({"kind": "paco_reset", "step": state.step + 1,
                            "update": state.updates, "tasks": tasks})

    def check_finite(self, metrics: dict[str, float], td_errors: np.ndarray) -> None:
        """FloatingPointError naming the first non-finite loss (or TD error) and the step."""
        bad = [name for name, value in metrics.items()
               if name.startswith("loss/") and not math.isfinite(value)]
        if not bad and not np.isfinite(td_errors).all():
            bad = ["td_error"]
        if bad:
            raise FloatingPointError(
                f"{bad[0]} is {metrics.get(bad[0], float('nan'))} at step {self.state.step + 1} "
                f"(update {self.state.updates}); the run stopped, the last good checkpoint "
                f"({self.run_dir / CHECKPOINT}) is untouched")

    def log_train(self) -> None:
        """A `train` row: the last update's losses and per-task alpha, per-task quotas, SPS."""
        now, step = time.perf_counter(), self.state.step
        quotas = {f"quota/{i}": int(q) for i, q in enumerate(self.buf.quotas(self.cfg.batch_size))}
        sps = (step - self.last_row[0]) / max(now - self.last_row[1], 1e-9)
        self.log.write({"kind": "train", "step": step, "updates": self.state.updates,
                        "buffer": len(self.buf), "sps": sps, **self.metrics, **quotas})
        self.last_row = (step, now)

    def evaluate(self) -> float:
        """Evaluate on the separate env set, log the rows; the mean success."""
        with self.clock("eval"):
            result = evaluate(self.agent, self.eval_envs, self.spec, self.cfg.eval_episodes,
                              seed=env_seed(self.cfg.seed, self.state.step, EVAL_STREAM))
        _log_eval(self.spec, self.state, result, self.log)
        return result["mean_success"]

    def checkpoint(self) -> None:
        """Save the loop where it stands, with the metrics offset and the timing so far."""
        with self.clock("checkpoint"):
            self.state.metrics_offset, self.state.seconds = self.log.offset, self.clock.snapshot()
            save_checkpoint(self.run_dir, self.agent, self.buf, self.state)


def _log_eval(spec, state, result, log) -> None:
    """One `eval` row per task, one `eval_mean` row; remember the best and the last."""
    for i, task in enumerate(spec.task_names):
        log.write({"kind": "eval", "step": state.step, "task": task, "task_id": i,
                   "success": float(result["success"][i]), "return": float(result["return"][i])})
    mean = {"step": state.step, "success": result["mean_success"], "return": result["mean_return"]}
    state.last_eval = mean
    if state.best_eval is None or mean["success"] > state.best_eval["success"]:
        state.best_eval = mean
    log.write({"kind": "eval_mean", **mean, "best_success": state.best_eval["success"]})


def evaluate(agent, envs, spec, episodes: int, seed: int) -> dict:
    """Success rate and mean return per task of the deterministic policy over `episodes` episodes.

    Meta-World's metric: an episode succeeds if `success` was reached at any step. `envs` is
    reset with `seed` first, so the result depends only on the agent and `seed`. Returns
    {"success": (N,), "return": (N,), "mean_success": float, "mean_return": float}.
    """
    if episodes <= 0:
        raise ValueError(f"episodes={episodes!r} must be a positive integer")
    n = spec.num_tasks
    task_ids = np.arange(n)
    done = np.zeros(n, np.int64)
    successes, returns = np.zeros(n), np.zeros(n)
    ever, ret = np.zeros(n, bool), np.zeros(n)
    obs, _ = envs.reset(seed=seed)
    while (done < episodes).any():
        obs, rewards, terminated, truncated, infos = envs.step(
            agent.act(obs, task_ids, deterministic=True))
        ever |= suites.successes(infos, n) > 0
        ret += rewards
        ended = (terminated | truncated) & (done < episodes)
        successes[ended] += ever[ended]
        returns[ended] += ret[ended]
        done[ended] += 1
        ever[terminated | truncated], ret[terminated | truncated] = False, 0.0
    successes, returns = successes / episodes, returns / episodes
    return {"success": successes, "return": returns, "mean_success": float(successes.mean()),
            "mean_return": float(returns.mean())}


def evaluate_run(run_dir: str | Path, episodes: int | None = None,
                 device: str | None = None) -> tuple[suites.SuiteSpec, int, dict]:
    """Evaluate the latest checkpoint of a run folder: (spec, its step, `evaluate` result).

    Uses the evaluation seed of that step, so with the run's `eval_episodes` it reproduces the
    run's own evaluation there.
    """
    cfg, spec, agent, step = load_agent(run_dir, device)
    with contextlib.closing(_make_envs(cfg)) as envs:
        result = evaluate(agent, envs, spec, episodes or cfg.eval_episodes,
                          seed=env_seed(cfg.seed, step, EVAL_STREAM))
    return spec, step, result


def load_agent(run_dir: str | Path,
               device: str | None = None) -> tuple[Config, suites.SuiteSpec, Agent, int]:
    """The agent of a run folder's latest checkpoint: (config, spec, agent, its step).

    `device`: "auto", "cpu" or "cuda"; None means the run's own ``cfg.device``.
    """
    run_dir = Path(run_dir)
    cfg = Config.load(run_dir)
    spec = suites.suite_spec(cfg.suite, cfg.episode_length)
    agent = make_agent(cfg, spec, resolve_device(device or cfg.device))
    checkpoint = _read_checkpoint(run_dir)
    agent.load_state_dict(checkpoint["agent"])
    return cfg, spec, agent, checkpoint["step"]


# ---------------------------------------------------------------------- set-up
def make_agent(cfg: Config, spec: suites.SuiteSpec, device: torch.device) -> Agent:
    """The agent of `cfg` for the suite `spec` on `device` (fresh weights from cfg.seed)."""
    return Agent(cfg, spec.obs_dim, spec.act_dim, spec.num_tasks, device,
                 task_names=spec.task_names)


def make_buffer(cfg: Config, spec: suites.SuiteSpec) -> ReplayBuffer:
    """The replay buffer of `cfg`: buffer_size // N per task, quota bounds of Eq. 5 filled in."""
    k_min, k_max = cfg.quota_bounds(spec.num_tasks)
    return ReplayBuffer(spec.num_tasks, cfg.buffer_size // spec.num_tasks, spec.obs_dim,
                        spec.act_dim, sampler=cfg.sampler, per_alpha=cfg.per_alpha,
                        per_beta=cfg.per_beta, per_eps=cfg.per_eps, k_min=k_min, k_max=k_max,
                        seed=cfg.seed)


def env_seed(seed: int, step: int, stream: int) -> int:
    """The seed of an env reset at `step` of the run seeded `seed`: f(seed, step) only."""
    return int(np.random.SeedSequence([seed, stream, step]).generate_state(1)[0])


def _make_envs(cfg: Config, in_worker: bool = False):
    """The suite's vector env (`suites.make_policy_envs`), in an `EnvWorker` if `in_worker`."""
    make = functools.partial(suites.make_policy_envs, cfg.suite, seed=cfg.seed,
                             episode_length=cfg.episode_length, reward_version=cfg.reward_version)
    return suites.EnvWorker(make) if in_worker else make()


def keep_freed_memory() -> bool:
    """glibc's malloc: serve blocks up to 32 MB from the heap and never give freed heap memory
    back (mallopt M_MMAP_THRESHOLD = 32 MB, M_TRIM_THRESHOLD = 1 GB), so the multi-MB tensors
    an update makes and frees (a compositional layer's composed theta_t and its gradient) reuse
    pages instead of faulting in fresh ones. With glibc's defaults a taper update at 3x256,
    K = 256 faults about 3,800 pages, with these about 150 (tests/test_train.py counts them;
    README "Update cost per method").
    The numbers computed do not change. Returns whether it applied (False without glibc)."""
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3                       # glibc's <malloc.h>
    return bool(libc.mallopt(m_mmap_threshold, 32 << 20)
                and libc.mallopt(m_trim_threshold, 1 << 30))


def _configure_torch(cfg: Config) -> None:
    """Deterministic mode: one CPU thread (the Agent turns on deterministic kernels).
    Overlapped envs: the env worker keeps one CPU busy, so torch gets at most the others (on
    2 CPUs one thread; a second one only fights the worker, see README "Training speed")."""
    if cfg.deterministic:
        torch.set_num_threads(1)
    elif cfg.overlap_envs:
        torch.set_num_threads(max(1, min(torch.get_num_threads(), suites.available_cpus() - 1)))


# ---------------------------------------------------------------------- checkpoints
@dataclass
class LoopState:
    """Counters and RNGs of the loop that a checkpoint saves next to the agent and replay."""

    rng: np.random.Generator
    """Draws the warm-up actions."""
    step: int = 0
    """Vector steps done (= environment steps per task)."""
    updates: int = 0
    """Gradient updates done."""
    best_eval: dict | None = None
    last_eval: dict | None = None
    metrics_offset: int = 0
    """Bytes of metrics.jsonl written when the checkpoint was taken."""
    seconds: dict[str, float] = field(default_factory=dict)
    """Time per phase so far, carried across resumes."""


def save_checkpoint(run_dir: Path, agent, buf: ReplayBuffer, state: LoopState) -> None:
    """Write checkpoint.pt atomically: a temp file, fsync, os.replace over the previous one."""
    payload = {"step": state.step, "updates": state.updates, "agent": agent.state_dict(),
               "replay": buf.state_dict(), "rng": state.rng.bit_generator.state,
               "torch_rng": torch.get_rng_state(),
               "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
               "best_eval": state.best_eval, "last_eval": state.last_eval,
               "metrics_offset": state.metrics_offset, "seconds": state.seconds}
    tmp = run_dir / f"{CHECKPOINT}.tmp"
    with open(tmp, "wb") as f:
        torch.save(payload, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, run_dir / CHECKPOINT)


def load_checkpoint(run_dir: Path, agent, buf: ReplayBuffer) -> LoopState:
    """Restore agent, replay and RNGs from checkpoint.pt; the loop state to continue from."""
    checkpoint = _read_checkpoint(run_dir)
    agent.load_state_dict(checkpoint["agent"])
    buf.load_state_dict(checkpoint["replay"])
    rng = np.random.default_rng()
    rng.bit_generator.state = checkpoint["rng"]
    torch.set_rng_state(checkpoint["torch_rng"])
    if checkpoint["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(checkpoint["cuda_rng"])
    return LoopState(rng=rng, step=checkpoint["step"], updates=checkpoint["updates"],
                     best_eval=checkpoint["best_eval"], last_eval=checkpoint["last_eval"],
                     metrics_offset=checkpoint["metrics_offset"], seconds=checkpoint["seconds"])


def _read_checkpoint(run_dir: Path) -> dict:
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        raise ValueError(f"run folder {str(run_dir)!r} has no {CHECKPOINT}")
    return torch.load(path, map_location="cpu", weights_only=False)


@contextlib.contextmanager
def _deferred_signals():
    """SIGINT/SIGTERM only append to the yielded list; the loop checkpoints, then returns.

    `train` re-raises the signal after cleaning up, so its usual effect (KeyboardInterrupt,
    termination) follows the checkpoint. Outside the main thread signals are left alone.
    """
    caught: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield caught
        return
    previous = {s: signal.signal(s, lambda signum, frame: caught.append(signum))
                for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield caught
    finally:
        for s, handler in previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)


# ---------------------------------------------------------------------- metrics and timing
class MetricsLog:
    """metrics.jsonl, one JSON object a line, mirrored to TensorBoard events under tensorboard/.

    Opening truncates the file to `offset` (the bytes a resumed checkpoint had seen), and
    TensorBoard purges events from `step` on, so a resumed run leaves no duplicate rows.
    """

    def __init__(self, run_dir: Path, offset: int, step: int) -> None:
        path = run_dir / METRICS
        self.file = open(path, "ab", buffering=0)
        self.file.truncate(offset)
        self.file.seek(offset)
        self.writer = SummaryWriter(str(run_dir / TENSORBOARD), purge_step=step or None)

    def write(self, row: dict) -> None:
        self.file.write((json.dumps(row) + "\n").encode())
        prefix = f"{row['kind']}/" if row["kind"] != "eval" else f"eval/{row['task']}/"
        for key, value in row.items():
            if key not in ("kind", "step", "task", "task_id") and isinstance(value, (int, float)):
                self.writer.add_scalar(prefix + key, value, row["step"])

    @property
    def offset(self) -> int:
        return self.file.tell()

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()
        self.writer.close()


class Stopwatch:
    """Seconds per phase of the loop (`PHASES`) and in total, continuing `seconds` of a resume."""

    def __init__(self, seconds: dict[str, float]) -> None:
        self.seconds = {phase: 0.0 for phase in (*PHASES, "total")} | seconds
        self._since = time.perf_counter()

    def snapshot(self) -> dict[str, float]:
        """The seconds so far, total included."""
        now = time.perf_counter()
        self.seconds["total"] += now - self._since
        self._since = now
        return dict(self.seconds)

    @contextlib.contextmanager
    def __call__(self, phase: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] += time.perf_counter() - start

    def row(self, updates: int) -> dict[str, float]:
        """seconds/<phase>, share/<phase> of the total, and updates per second of update time."""
        seconds = self.snapshot()
        total = max(seconds["total"], 1e-9)
        return {"seconds/total": total,
                **{f"seconds/{p}": seconds[p] for p in PHASES},
                **{f"share/{p}": seconds[p] / total for p in PHASES},
                "updates": updates,
                "updates_per_s": updates / max(seconds["update"], 1e-9)}

    def table(self, updates: int) -> str:
        row = self.row(updates)
        lines = [f"timing over {row['seconds/total']:.1f} s ({updates} updates):"]
        lines += [f"  {p:<14}{row[f'seconds/{p}']:9.2f} s {100 * row[f'share/{p}']:6.1f} %"
                  for p in PHASES]
        return "\n".join(lines)
