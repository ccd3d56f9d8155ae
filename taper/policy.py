"""A trained agent as an object other code can call: ``Policy.from_run(run_dir)``.

A `Policy` acts deterministically (the tanh of the actor's mean, as taper's evaluation does)
and speaks Meta-World's agent protocol (``metaworld.evaluation.Agent``):
``eval_action(observations) -> actions`` and ``reset(env_mask)``, so that

    envs = gym.make_vec("Meta-World/MT10", vector_strategy="sync", seed=0)
    agent = Policy.from_run(run_dir).bind(envs)
    metaworld.evaluation.evaluation(agent, envs, 50)

scores a taper run with the benchmark's own protocol (`metaworld_evaluation` does this for a
run folder). The networks take the raw 39-dim state; the task enters as a task id. Where the
observations carry metaworld's task one-hot (``use_one_hot=True``: the state, then N one-hot
columns in the benchmark's task order) the one-hot gives the task id and is stripped before
the networks; otherwise env i runs task i, which `bind` checks against the task names the envs
report. A policy bound to its envs checks the one-hot against those names as well.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

from taper import suites
from taper.sac import Agent
from taper.train import load_agent


class Policy:
    """The deterministic policy of a taper agent for the tasks of `spec`, in `spec`'s order."""

    def __init__(self, agent: Agent, spec: suites.SuiteSpec, step: int) -> None:
        self.agent, self.spec, self.step = agent, spec, step
        self._bound: int | None = None

    @classmethod
    def from_run(cls, run_dir: str | Path, device: str = "auto") -> Policy:
        """The policy of a run folder's latest checkpoint, on `device` (auto, cpu or cuda)."""
        _, spec, agent, step = load_agent(run_dir, device)
        return cls(agent, spec, step)

    def act(self, observations: np.ndarray, task_ids: np.ndarray) -> np.ndarray:
        """(B, obs_dim) raw states of tasks `task_ids` (B,) -> (B, act_dim) float32 mean actions
        in [-1, 1] (for metaworld the env's own action range)."""
        return self.agent.act(observations, task_ids, deterministic=True)

    def bind(self, envs) -> Policy:
        """Check that env i of `envs` runs task i of the policy's suite; returns self.

        ValueError naming the first env whose task differs (a permuted or another suite's
        env order) or the counts. Needed where the observations carry no one-hot.
        """
        names = suites.env_task_names(envs)
        expected = self.spec.task_names
        if len(names) != len(expected):
            raise ValueError(f"the envs run {len(names)} tasks, the policy (suite "
                             f"{self.spec.name!r}) knows {len(expected)}")
        for i, (name, task) in enumerate(zip(names, expected)):
            if name != task:
                raise ValueError(f"env {i} runs {name!r} but task {i} of suite "
                                 f"{self.spec.name!r} is {task!r}: the policy needs the envs in "
                                 f"the suite's task order ({', '.join(expected)})")
        self._bound = len(names)
        return self

    def eval_action(self, observations: np.ndarray) -> np.ndarray:
        """Meta-World's agent protocol: (num_envs, D) observations -> (num_envs, act_dim) actions.

        D is obs_dim (env i runs task i; the policy must be bound with `bind`) or obs_dim + N
        (the task from the one-hot, checked against the bound envs where bound).
        """
        states, task_ids = self.states_and_task_ids(observations)
        return self.act(states, task_ids)

    def reset(self, env_mask: np.ndarray) -> None:
        """Meta-World's agent protocol: episodes ended where `env_mask`; the policy is memoryless,
        so there is nothing to reset."""

    def states_and_task_ids(self, observations: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(num_envs, D) observations -> (raw states (num_envs, obs_dim), task ids (num_envs,)).

        ValueError for a width other than obs_dim or obs_dim + N, a row whose one-hot is not
        one, a one-hot that disagrees with the bound envs, or plain states from unbound envs.
        """
        obs = np.asarray(observations)
        o, n = self.spec.obs_dim, self.spec.num_tasks
        if obs.ndim != 2 or obs.shape[1] not in (o, o + n):
            raise ValueError(f"observations have shape {obs.shape}; the policy (suite "
                             f"{self.spec.name!r}) takes (num_envs, {o}) states or "
                             f"(num_envs, {o + n}) states with a {n}-task one-hot")
        envs = np.arange(obs.shape[0])
        if self._bound is not None and obs.shape[0] != self._bound:
            raise ValueError(f"observations of {obs.shape[0]} envs, the policy is bound to "
                             f"{self._bound}")
        if obs.shape[1] == o:
            if self._bound is None:
                raise ValueError("observations carry no task one-hot: bind the policy to its "
                                 "envs first (policy.bind(envs)), so that env order can be "
                                 "checked against the tasks")
            return obs, envs
        one_hot = obs[:, o:]
        ids = one_hot.argmax(axis=1)
        bad = np.flatnonzero((one_hot != np.eye(n)[ids]).any(axis=1))
        if bad.size:
            raise ValueError(f"observation row {bad[0]} has no task one-hot in its last {n} "
                             f"columns: {one_hot[bad[0]].tolist()}")
        if self._bound is not None and (ids != envs).any():
            i = int(np.flatnonzero(ids != envs)[0])
            raise ValueError(f"env {i} runs {self.spec.task_names[i]!r} but its one-hot says "
                             f"task {ids[i]} ({self.spec.task_names[ids[i]]!r})")
        return obs[:, :o], ids


def metaworld_evaluation(run_dir: str | Path, episodes: int | None = None,
                         device: str | None = None, *,
                         use_one_hot: bool = False) -> tuple[Policy, dict]:
    """Score a run folder's latest checkpoint with Meta-World's own protocol.

    The benchmark's envs (`suites.benchmark_envs`: 500-step episodes, random goals from the
    run's goal set, one-hot if `use_one_hot`), ``metaworld.evaluation.evaluation`` with the
    bound `Policy` (`suites.benchmark_evaluation`). `episodes` per task, default the run's
    ``eval_episodes``; `device` default the run's. Returns (the policy, {"success": (N,),
    "return": (N,), "mean_success", "mean_return"}) in the suite's task order.
    """
    cfg, spec, agent, step = load_agent(run_dir, device)
    policy = Policy(agent, spec, step)
    envs = suites.benchmark_envs(cfg.suite, seed=cfg.seed, use_one_hot=use_one_hot,
                                 reward_version=cfg.reward_version)
    with contextlib.closing(envs):
        result = suites.benchmark_evaluation(policy.bind(envs), envs,
                                             episodes or cfg.eval_episodes)
    return policy, result
