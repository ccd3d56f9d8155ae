"""The training loop end to end: run folder, metrics, checkpoints, exact resume, signals, NaN."""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from taper import suites
from taper import train as train_module
from taper.config import Config
from taper.replay import ReplayBuffer, scale_per_task
from taper.sac import Agent
from taper.train import CHECKPOINT, evaluate, evaluate_run, train

REPO = Path(__file__).resolve().parents[1]
TINY = dict(hidden_sizes=(16,), unique_hidden_sizes=(16,), unique_dim=8, num_param_sets=2,
            batch_size=32, buffer_size=4000, episode_length=50, eval_episodes=1)


def tiny(out: Path, **overrides) -> Config:
    """A run of seconds: one cheap task, tiny networks."""
    values = dict(suite="mt1:reach-v3", steps_per_env=300, learning_starts=50, eval_every=100,
                  log_every=50, **TINY)
    return Config(out=str(out), **{**values, **overrides})


def rows(run_dir: Path, kind: str | None = None) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if kind is None or r["kind"] == kind]


def cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "from taper.cli import main; main()", *args]


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1",
            "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


@pytest.mark.slow
def test_mt10_rand_end_to_end(tmp_path):
    cfg = Config(suite="mt10-rand", method="taper", sampler="ta-per", steps_per_env=200,
                 learning_starts=50, eval_every=100, log_every=50, out=str(tmp_path / "run"),
                 **{**TINY, "hidden_sizes": (32,), "batch_size": 64})
    run_dir = train(cfg)

    assert run_dir == tmp_path / "run"
    assert Config.load(run_dir) == cfg
    evals = rows(run_dir, "eval")
    assert [r["step"] for r in evals] == [100] * 10 + [200] * 10
    assert [r["task_id"] for r in evals[:10]] == list(range(10))
    assert len({r["task"] for r in evals}) == 10
    assert "peg-insert-side-v3" in {r["task"] for r in evals}
    assert all(0 <= r["success"] <= 1 and np.isfinite(r["return"]) for r in evals)
    means = rows(run_dir, "eval_mean")
    assert [m["step"] for m in means] == [100, 200]
    assert means[1]["success"] == pytest.approx(np.mean([r["success"] for r in evals[10:]]))
    trains = rows(run_dir, "train")
    assert [r["step"] for r in trains] == [50, 100, 150, 200]
    last = trains[-1]
    assert {"loss/critic", "loss/actor", "loss/alpha", "sps", "beta"} <= last.keys()
    assert {f"alpha/{i}" for i in range(10)} | {f"quota/{i}" for i in range(10)} <= last.keys()
    assert sum(last[f"quota/{i}"] for i in range(10)) == 64
    timing = rows(run_dir, "timing")[0]
    assert timing["updates"] == 150
    assert sum(timing[f"share/{p}"] for p in train_module.PHASES) <= 1.0
    checkpoint = torch.load(run_dir / CHECKPOINT, weights_only=False)
    assert checkpoint["step"] == 200 and checkpoint["best_eval"]["step"] in (100, 200)
    assert list((run_dir / "tensorboard").iterdir())


@pytest.mark.parametrize("priority_scale", ["none", "task"])
def test_loop_follows_algorithm_1(tmp_path, monkeypatch, priority_scale):
    """Warm-up without the policy, beta annealed, TD errors fed back, (s, a, r, s', terminated)
    stored with the true s' at episode ends, PaCo resets logged."""
    betas, fed_back, acted, added, stepped = [], [], [], [], []
    make_envs, sample = train_module.suites.make_envs, ReplayBuffer.sample
    add, update_priorities = ReplayBuffer.add, ReplayBuffer.update_priorities
    act, update = Agent.act, Agent.update

    def spy_make_envs(*args, **kwargs):
        envs, spec = make_envs(*args, **kwargs)
        step, steps = envs.step, []
        stepped.append(steps)  # training envs first, then evaluation envs

        def spy_step(actions):
            result = step(actions)
            steps.append((np.array(actions), result))
            return result

        envs.step = spy_step
        return envs, spec

    def spy_add(self, task_ids, observations, actions, rewards, next_observations, dones):
        added.append((observations, actions, rewards, next_observations, dones))
        add(self, task_ids, observations, actions, rewards, next_observations, dones)

    def spy_sample(self, batch_size, beta=None):
        betas.append(beta)
        return sample(self, batch_size, beta)

    def spy_update(self, batch):
        metrics, td = update(self, batch)
        expected = scale_per_task(td, batch.task_ids, 1) if priority_scale == "task" else td
        assert priority_scale == "none" or not np.allclose(expected, np.abs(td))
        fed_back.append((batch.indices.copy(), expected.copy()))
        if len(fed_back) == 10:
            metrics = {**metrics, "paco/resets": 1.0, "paco/reset/0": 1.0}
        return metrics, td

    def spy_update_priorities(self, indices, td_errors):
        assert np.array_equal(indices, fed_back[-1][0])
        assert np.array_equal(td_errors, fed_back[-1][1])
        update_priorities(self, indices, td_errors)

    def spy_act(self, observations, task_ids, deterministic):
        acted.append(deterministic)
        return act(self, observations, task_ids, deterministic)

    for owner, name, spy in ((train_module.suites, "make_envs", spy_make_envs),
                             (ReplayBuffer, "add", spy_add), (ReplayBuffer, "sample", spy_sample),
                             (ReplayBuffer, "update_priorities", spy_update_priorities),
                             (Agent, "update", spy_update), (Agent, "act", spy_act)):
        monkeypatch.setattr(owner, name, spy)
    train(tiny(tmp_path / "run", steps_per_env=200, gradient_steps=2, sampler="per",
               overlap_envs=False, priority_scale=priority_scale))

    assert len(betas) == len(fed_back) == 2 * (200 - 50)
    assert betas[0] == pytest.approx(0.4 + 0.6 * 50 / 200)
    assert betas[-1] == pytest.approx(0.4 + 0.6 * 199 / 200)
    assert np.all(np.diff(betas) >= 0)
    assert acted.count(False) == 200 - 50, "no policy actions during warm-up"
    assert len(added) == len(stepped[0]) == 200, "one transition per task and vector step"
    ends = 0
    for (actions, (next_obs, rewards, terminated, truncated, infos)), stored in zip(
            stepped[0], added):
        _, actions_, rewards_, next_, dones_ = stored
        assert np.array_equal(actions_, actions) and np.array_equal(rewards_, rewards)
        assert np.array_equal(dones_, terminated), "only termination is stored as done"
        if truncated[0]:
            ends += 1
            assert np.array_equal(next_, np.stack(infos["final_obs"])), "true s' at the end"
            assert not np.array_equal(next_, next_obs)
        else:
            assert np.array_equal(next_, next_obs)
    assert ends >= 2
    assert rows(tmp_path / "run", "paco_reset") == [
        {"kind": "paco_reset", "step": 55, "update": 10, "tasks": [0]}]


class _FakeEnvs:
    """Two tasks, episodes of 3 steps, reward 1 a step; task 0 succeeds only at the 2nd step of
    its first episode, task 1 only at the final step of its second (reported in final_info)."""

    num_envs = 2

    def reset(self, seed=None):
        self.t = 0
        return np.zeros((2, 1)), {}

    def step(self, actions):
        self.t += 1
        episode, t = divmod(self.t - 1, 3)
        success = np.array([episode == 0 and t == 1, episode == 1 and t == 2], float)
        truncated = np.full(2, t == 2)
        infos = {"success": success, "_success": np.ones(2, bool)}
        if t == 2:
            final_obs = np.array([np.zeros(1)] * 2, dtype=object)
            infos = {"final_info": infos, "_final_info": truncated, "final_obs": final_obs,
                     "_final_obs": truncated}
        return np.zeros((2, 1)), np.ones(2), np.zeros(2, bool), truncated, infos


class _FakeAgent:
    def act(self, observations, task_ids, deterministic):
        assert deterministic
        return np.zeros((len(task_ids), 1), np.float32)


def test_overlapped_loop_steps_in_a_worker_and_acts_one_update_ahead(tmp_path, monkeypatch):
    """The env worker is another process; after warm-up each step's actions are chosen before
    the previous step's update (the documented one-update lag), never across an evaluation."""
    events, workers = [], []
    act, update, init = Agent.act, Agent.update, suites.EnvWorker.__init__

    def spy_init(self, make):
        init(self, make)
        workers.append(self)

    def spy_act(self, observations, task_ids, deterministic):
        if not deterministic:
            events.append("act")
        return act(self, observations, task_ids, deterministic)

    def spy_update(self, batch):
        events.append("update")
        return update(self, batch)

    for owner, name, spy in ((suites.EnvWorker, "__init__", spy_init), (Agent, "act", spy_act),
                             (Agent, "update", spy_update)):
        monkeypatch.setattr(owner, name, spy)
    train(tiny(tmp_path / "run", steps_per_env=120, learning_starts=40, eval_every=60))

    assert len(workers) == 1 and workers[0].pid != os.getpid()
    assert not workers[0]._process.is_alive()                        # closed with the run
    # updates at steps 40..119; the actions of step t+1 are chosen before update t, except
    # across the evaluation at step 60 (chosen after update 59) and after the last step
    expected = (["act", "update"] * 19 + ["update"] + ["act", "act", "update"]
                + ["act", "update"] * 58 + ["update"])
    assert events == expected


def test_overlapped_and_sequential_loops_store_the_same_warm_up(tmp_path):
    """During warm-up no policy is involved: both loops must store identical transitions."""
    runs = {}
    for overlap in (True, False):
        run_dir = train(tiny(tmp_path / str(overlap), steps_per_env=60, learning_starts=60,
                             eval_every=30, overlap_envs=overlap, deterministic=True))
        runs[overlap] = torch.load(run_dir / CHECKPOINT, weights_only=False)["replay"]
    assert _same(runs[True], runs[False])
    assert [r["success"] for r in rows(tmp_path / "True", "eval")] == \
        [r["success"] for r in rows(tmp_path / "False", "eval")]


@pytest.mark.parametrize("overlap, threads", [(True, 2), (False, 4)])
def test_overlapped_runs_leave_the_env_worker_a_cpu(tmp_path, monkeypatch, overlap, threads):
    monkeypatch.setattr(suites, "available_cpus", lambda: 3)
    torch.set_num_threads(4)
    train(tiny(tmp_path / "run", steps_per_env=60, learning_starts=60, eval_every=60,
               overlap_envs=overlap))
    assert torch.get_num_threads() == threads


FAULTS_PER_UPDATE = """
import resource, sys
import numpy as np, torch
from taper.config import Config
from taper.replay import Batch
from taper.sac import Agent
from taper.train import keep_freed_memory
if sys.argv[1] == "kept":
    assert keep_freed_memory()
torch.set_num_threads(1)
k, n, rng = 256, 10, np.random.default_rng(0)
ids = np.repeat(np.arange(n), -(-k // n))[:k]
batch = Batch(rng.normal(size=(k, 39)).astype(np.float32),
              rng.uniform(-1, 1, (k, 4)).astype(np.float32), np.zeros(k, np.float32),
              rng.normal(size=(k, 39)).astype(np.float32), np.zeros(k, np.float32), ids,
              np.arange(k), np.ones(k, np.float32))
agent = Agent(Config(hidden_sizes=(256, 256, 256), batch_size=k), 39, 4, n, "cpu")
for _ in range(5):
    agent.update(batch)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    agent.update(batch)
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="needs glibc's mallopt")
def test_kept_heap_memory_spares_the_update_its_page_faults():
    """A taper update at 3x256 makes and frees multi-MB tensors; with `keep_freed_memory`
    (which `train` calls) they reuse the heap's pages instead of faulting in fresh ones."""
    def faults(mode: str) -> float:
        out = subprocess.run([sys.executable, "-c", FAULTS_PER_UPDATE, mode], cwd=REPO,
                             capture_output=True, text=True, check=True).stdout
        return float(out.split()[-1])
    kept, default = faults("kept"), faults("default")
    assert kept * 10 < default, (kept, default)             # here: about 150 against 3,800


def test_evaluate_counts_success_at_any_step():
    spec = type("Spec", (), {"num_tasks": 2, "task_names": ("a", "b")})()
    result = evaluate(_FakeAgent(), _FakeEnvs(), spec, episodes=2, seed=0)
    assert result["success"].tolist() == [0.5, 0.5]
    assert result["return"].tolist() == [3.0, 3.0]
    assert result["mean_success"] == 0.5


def test_nan_loss_names_loss_and_step_and_keeps_checkpoint(tmp_path, monkeypatch):
    update, calls = Agent.update, []

    def poisoned(self, batch):
        metrics, td = update(self, batch)
        calls.append(1)
        return ({**metrics, "loss/actor": float("nan")} if len(calls) == 160 else metrics), td

    monkeypatch.setattr(Agent, "update", poisoned)
    cfg = tiny(tmp_path / "run")
    with pytest.raises(FloatingPointError, match=r"loss/actor is nan at step 210"):
        train(cfg)
    assert torch.load(tmp_path / "run" / CHECKPOINT, weights_only=False)["step"] == 200
    assert not (tmp_path / "run" / f"{CHECKPOINT}.tmp").exists()
    spec, step, result = evaluate_run(tmp_path / "run")
    assert step == 200 and result["success"].shape == (1,)


def test_resume_refuses_another_config(tmp_path):
    cfg = tiny(tmp_path / "run", steps_per_env=100)
    train(cfg)
    with pytest.raises(ValueError, match="seed differ"):
        train(Config(**{**cfg.__dict__, "seed": 1}), resume=tmp_path / "run")
    assert train(cfg, resume=tmp_path / "run") == tmp_path / "run"
    assert [r["step"] for r in rows(tmp_path / "run", "eval_mean")] == [100]


def test_bad_config_writes_nothing(tmp_path):
    with pytest.raises(ValueError, match="mt11"):
        train(tiny(tmp_path / "run", suite="mt11"))
    with pytest.raises(ValueError, match="k_min=10"):
        train(tiny(tmp_path / "run", suite="mt10-rand", k_min=10, batch_size=64))
    assert not (tmp_path / "run").exists()


def _deterministic_args(out: Path) -> list[str]:
    return ["train", "--suite", "mt1:reach-v3", "--out", str(out), "--steps-per-env", "600",
            "--learning-starts", "50", "--eval-every", "150", "--eval-episodes", "1",
            "--episode-length", "50", "--log-every", "100", "--batch-size", "32",
            "--buffer-size", "4000", "--hidden-sizes", "16", "--deterministic", "--device", "cpu"]


def _wait_for(predicate, process, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert process.poll() is None, f"exited with {process.returncode} too early"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _same(a, b) -> bool:
    """Equal nested checkpoints: dicts, lists, tensors, arrays, scalars."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return np.array_equal(a, b)
    return a == b


@pytest.mark.slow
def test_sigkill_then_resume_reproduces_uninterrupted_run(tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    with open(tmp_path / "whole.log", "w") as log:
        reference = subprocess.Popen(cli(*_deterministic_args(whole)), env=env(), stdout=log,
                                     stderr=subprocess.STDOUT)
    with open(tmp_path / "killed.log", "w") as log:
        victim = subprocess.Popen(cli(*_deterministic_args(killed)), env=env(), stdout=log,
                                  stderr=subprocess.STDOUT)
    _wait_for((killed / CHECKPOINT).exists, victim)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL
    interrupted_at = torch.load(killed / CHECKPOINT, weights_only=False)["step"]
    assert interrupted_at < 600

    resumed = subprocess.run(cli("train", "--resume", str(killed)), env=env(),
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert reference.wait() == 0, (tmp_path / "whole.log").read_text()

    evals = [r for r in rows(killed) if r["kind"] in ("eval", "eval_mean")]
    assert evals == [r for r in rows(whole) if r["kind"] in ("eval", "eval_mean")]
    assert [r["step"] for r in rows(killed, "eval_mean")] == [150, 300, 450, 600]
    train_steps = [r["step"] for r in rows(killed, "train")]
    assert train_steps == list(range(100, 601, 100)), "rows after the checkpoint are not repeated"
    a, b = (torch.load(d / CHECKPOINT, weights_only=False) for d in (whole, killed))
    assert a["step"] == b["step"] == 600 and a["updates"] == b["updates"] == 550
    assert _same(a["agent"], b["agent"]) and _same(a["replay"], b["replay"])


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_writes_checkpoint(tmp_path, signum):
    out = tmp_path / "run"
    args = ["train", "--suite", "mt1:reach-v3", "--out", str(out), "--steps-per-env", "100000",
            "--eval-every", "100000", "--learning-starts", "20", "--log-every", "10",
            "--batch-size", "32", "--hidden-sizes", "16", "--buffer-size", "4000"]
    with open(tmp_path / "log", "w") as log:
        process = subprocess.Popen(cli(*args), env=env(), stdout=log, stderr=subprocess.STDOUT)
    _wait_for(lambda: (out / "metrics.jsonl").exists() and rows(out, "train"), process)
    process.send_signal(signum)
    assert process.wait(timeout=120) != 0
    assert "checkpoint at step" in (tmp_path / "log").read_text()
    checkpoint = torch.load(out / CHECKPOINT, weights_only=False)
    assert 10 <= checkpoint["step"] < 100000
    assert checkpoint["metrics_offset"] == (out / "metrics.jsonl").stat().st_size
