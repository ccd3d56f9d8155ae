"""`Policy`: a run's agent under Meta-World's own evaluation protocol, and `taper eval --protocol`.

CPU cost: building the MT10 vector env takes about 4-8 s on the 2-core machine, one
metaworld evaluation episode per task (up to 500 vector steps) a few seconds more; MT50 is
only built in the slow test.
"""

from __future__ import annotations

import contextlib

import gymnasium as gym
import metaworld.evaluation
import metaworld.policies
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from metaworld import env_dict

from taper import suites
from taper.cli import main
from taper.config import Config
from taper.policy import Policy, metaworld_evaluation
from taper.sac import Agent
from taper.train import LoopState, make_buffer, save_checkpoint

TINY = dict(hidden_sizes=(16,), unique_hidden_sizes=(16,), unique_dim=8, num_param_sets=2,
            batch_size=32, buffer_size=1000, episode_length=50, eval_episodes=1, device="cpu")
MT10 = tuple(env_dict.MT10_V3)


def saved_run(run_dir, suite: str) -> Agent:
    """A run folder holding a checkpoint of an agent whose weights moved away from their seeded
    initialisation (so loading has something to restore), saved the way `train` saves it."""
    cfg = Config(suite=suite, out=str(run_dir), **TINY)
    spec = suites.suite_spec(cfg.suite, cfg.episode_length)
    agent = Agent(cfg, spec.obs_dim, spec.act_dim, spec.num_tasks, "cpu")
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in (*agent.method.parameters(), *agent.actor.parameters()):
            p.add_(0.5 * torch.randn(p.shape, generator=generator))
    run_dir.mkdir()
    cfg.save(run_dir)
    save_checkpoint(run_dir, agent, make_buffer(cfg, spec),
                    LoopState(rng=np.random.default_rng(0), step=123))
    return agent


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("policy") / "run"
    return run_dir, saved_run(run_dir, "mt10-rand")


@pytest.fixture(scope="module")
def mt10_envs():
    """MT10 without and with the one-hot, same seed: the same goals and first states."""
    plain = gym.make_vec("Meta-World/MT10", vector_strategy="sync", seed=3)
    one_hot = gym.make_vec("Meta-World/MT10", vector_strategy="sync", seed=3, use_one_hot=True)
    yield plain, one_hot
    plain.close()
    one_hot.close()


def test_from_run_reproduces_the_agents_actions(run):
    run_dir, agent = run
    policy = Policy.from_run(run_dir, device="cpu")
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(40, 39))
    task_ids = rng.integers(0, 10, size=40)

    actions = policy.act(obs, task_ids)
    assert policy.step == 123 and policy.spec.task_names == MT10
    assert np.array_equal(actions, agent.act(obs, task_ids, deterministic=True))
    fresh = Agent(Config.load(run_dir), 39, 4, 10, "cpu")
    assert not np.allclose(actions, fresh.act(obs, task_ids, deterministic=True))
    assert np.array_equal(actions, policy.act(obs, task_ids))  # deterministic
    assert np.abs(actions).max() <= 1


def test_one_hot_and_plain_observations_give_identical_actions(run, mt10_envs):
    policy = Policy.from_run(run[0], device="cpu")
    plain, one_hot = mt10_envs
    obs, _ = plain.reset()
    obs_one_hot, _ = one_hot.reset()
    assert obs.shape == (10, 39) and obs_one_hot.shape == (10, 49)
    # metaworld hands float64 states, float32 with the one-hot; the networks take float32
    assert obs.dtype == np.float64 and obs_one_hot.dtype == np.float32
    assert np.array_equal(obs_one_hot[:, :39], obs.astype(np.float32))
    assert np.array_equal(obs_one_hot[:, 39:], np.eye(10))

    expected = policy.act(obs, np.arange(10))
    assert np.array_equal(policy.eval_action(obs_one_hot), expected)  # unbound: one-hot decides
    with pytest.raises(ValueError, match=r"no task one-hot: bind the policy"):
        policy.eval_action(obs)
    assert np.array_equal(policy.bind(plain).eval_action(obs), expected)
    assert np.array_equal(policy.eval_action(obs_one_hot), expected)
    # the task comes from the one-hot: another task's one-hot changes the action
    swapped = obs_one_hot.copy()
    swapped[:, 39:] = np.eye(10)[[1, 0, *range(2, 10)]]
    unbound = Policy.from_run(run[0], device="cpu")
    assert np.array_equal(unbound.eval_action(swapped),
                          policy.act(obs, np.array([1, 0, *range(2, 10)])))
    with pytest.raises(ValueError, match=r"env 0 runs 'reach-v3' but its one-hot says task 1"):
        policy.eval_action(swapped)


def test_permuted_env_order_is_refused(run):
    policy = Policy.from_run(run[0], device="cpu")
    permuted = gym.make_vec("Meta-World/custom-mt-envs", vector_strategy="sync",
                            envs_list=[MT10[1], MT10[0], *MT10[2:]], seed=0)
    with contextlib.closing(permuted):
        assert suites.env_task_names(permuted) == (MT10[1], MT10[0], *MT10[2:])
        with pytest.raises(ValueError, match=r"env 0 runs 'push-v3' but task 0 of suite "
                                             r"'mt10-rand' is 'reach-v3'"):
            policy.bind(permuted)
    few = gym.make_vec("Meta-World/custom-mt-envs", vector_strategy="sync",
                       envs_list=list(MT10[:2]), seed=0)
    with contextlib.closing(few), pytest.raises(ValueError, match=r"the envs run 2 tasks, .* knows 10"):
        policy.bind(few)


@pytest.mark.parametrize("width, match", [
    (38, r"shape \(10, 38\).*\(num_envs, 39\) states or \(num_envs, 49\)"),
    (89, r"shape \(10, 89\)"),  # MT50's one-hot for an MT10 policy
])
def test_other_observation_widths_are_refused(run, width, match):
    policy = Policy.from_run(run[0], device="cpu")
    with pytest.raises(ValueError, match=match):
        policy.eval_action(np.zeros((10, width)))


def test_a_broken_one_hot_is_refused(run):
    policy = Policy.from_run(run[0], device="cpu")
    obs = np.concatenate([np.zeros((10, 39)), np.eye(10)], axis=1)
    obs[3, 39:] = 0.0
    with pytest.raises(ValueError, match=r"observation row 3 has no task one-hot"):
        policy.eval_action(obs)


def test_metaworld_protocol_calls_the_policy_and_scores_each_task(run, monkeypatch):
    """One episode per task: metaworld's evaluation drives eval_action on MT10's 39-dim states."""
    calls, protocol = [], metaworld.evaluation.evaluation

    def spy(agent, envs, num_episodes):
        calls.append((agent, num_episodes))
        return protocol(agent, envs, num_episodes)

    seen = []
    eval_action = Policy.eval_action
    monkeypatch.setattr(metaworld.evaluation, "evaluation", spy)
    monkeypatch.setattr(Policy, "eval_action",
                        lambda self, obs: seen.append(obs.shape) or eval_action(self, obs))
    policy, result = metaworld_evaluation(run[0], episodes=1, device="cpu")

    assert [(type(a), n) for a, n in calls] == [(Policy, 1)] and calls[0][0] is policy
    assert 1 <= len(seen) <= 500 and set(seen) == {(10, 39)}
    assert result["success"].shape == result["return"].shape == (10,)
    assert set(result["success"]) <= {0.0, 1.0}  # one episode per task
    assert result["mean_success"] == pytest.approx(result["success"].mean())
    assert np.isfinite(result["return"]).all()


class Scripted:
    """Metaworld's scripted experts on some MT10 envs, zero actions on the others."""

    def __init__(self, experts: dict[int, object]) -> None:
        self.experts, self.resets = experts, []

    def eval_action(self, observations):
        actions = np.zeros((len(observations), 4))
        for i, expert in self.experts.items():
            actions[i] = expert.get_action(observations[i])
        return actions

    def reset(self, env_mask):
        self.resets.append(np.array(env_mask))


def test_benchmark_evaluation_reports_each_task_in_env_order(mt10_envs):
    """Experts on drawer-close (env 5) and window-close (env 9): success there, nowhere else,
    and each of their episodes ends at its first success, well before 500 steps."""
    agent = Scripted({5: metaworld.policies.SawyerDrawerCloseV3Policy(),
                      9: metaworld.policies.SawyerWindowCloseV3Policy()})
    result = suites.benchmark_evaluation(agent, mt10_envs[0], episodes=1)

    assert result["success"].tolist() == [0, 0, 0, 0, 0, 1, 0, 0, 0, 1]
    assert result["mean_success"] == pytest.approx(0.2)
    ended = np.array(agent.resets[1:])
    assert ended[:, 5].any() and ended[:, 9].any()
    assert np.flatnonzero(ended[:, 5])[0] < 499 and np.flatnonzero(ended[:, 9])[0] < 499
    assert np.isfinite(result["return"]).all() and result["return"].shape == (10,)


def test_eval_prints_metaworld_next_to_taper(run):
    result = CliRunner().invoke(main, ["eval", str(run[0]), "--protocol", "metaworld",
                                       "--episodes", "1", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "step 123" in lines[0] and lines[1].split()[:3] == ["task", "taper", "metaworld"]
    rows = [line.split() for line in lines[2:13]]
    assert [r[0] for r in rows] == [*MT10, "mean"]
    scores = np.array([[float(r[1]), float(r[2])] for r in rows])
    assert ((0 <= scores) & (scores <= 1)).all()
    assert scores[-1] == pytest.approx(scores[:-1].mean(axis=0), abs=0.006)
    assert "500 steps" in lines[13]


def test_metaworld_protocol_needs_a_metaworld_suite(tmp_path):
    with pytest.raises(ValueError, match=r"gym:Pendulum-v1.*not a metaworld suite"):
        suites.benchmark_envs("gym:Pendulum-v1", seed=0)
    with pytest.raises(ValueError, match=r"mt11"):
        suites.benchmark_envs("mt11", seed=0)


def test_metaworld_protocol_on_an_mt1_run(tmp_path):
    saved_run(tmp_path / "run", "mt1:reach-v3")
    policy, result = metaworld_evaluation(tmp_path / "run", episodes=2, device="cpu")
    assert policy.spec.task_names == ("reach-v3",)
    assert result["success"].shape == (1,) and result["success"][0] in (0.0, 0.5, 1.0)
    with pytest.raises(ValueError, match=r"use_one_hot=True: metaworld's MT1"):
        suites.benchmark_envs("mt1:reach-v3", seed=0, use_one_hot=True)


@pytest.mark.slow
def test_mt50_task_mapping(tmp_path):
    """MT50 with the one-hot: env order and one-hot both map onto the suite's tasks (building
    the 50 envs takes 20-45 s here; no episode is run)."""
    saved_run(tmp_path / "run", "mt50-rand")
    policy = Policy.from_run(tmp_path / "run", device="cpu")
    envs = suites.benchmark_envs("mt50-rand", seed=0, use_one_hot=True, asynchronous=False)
    with contextlib.closing(envs):
        assert suites.env_task_names(envs) == tuple(env_dict.MT50_V3) == policy.spec.task_names
        obs, _ = envs.reset()
        assert obs.shape == (50, 89)
        expected = policy.act(obs[:, :39], np.arange(50))
        assert np.array_equal(policy.eval_action(obs), expected)
        assert np.array_equal(policy.bind(envs).eval_action(obs), expected)
