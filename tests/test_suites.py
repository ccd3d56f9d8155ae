"""Suites: names and order, goal resampling, seeding, time limits, and the SAME_STEP info helpers.

Making an MT10 vector env takes ~10 s (metaworld draws 50 goals per task), so the two MT10
envs are module fixtures with 3-step episodes and the rest use mt1:reach-v3 or gym:Pendulum-v1.
"""

from __future__ import annotations

import functools
import os
import re

import numpy as np
import pytest

from taper import suites

PACO_MT10 = ("reach-v3", "push-v3", "pick-place-v3", "door-open-v3", "drawer-open-v3",
             "drawer-close-v3", "button-press-topdown-v3", "peg-insert-side-v3",
             "window-open-v3", "window-close-v3")
EPISODE = 3
GOAL = slice(36, 39)


@pytest.fixture(scope="module")
def mt10_rand():
    envs, _ = suites.make_envs("mt10-rand", seed=0, episode_length=EPISODE,
                                  asynchronous=False)
    yield envs
    envs.close()


@pytest.fixture(scope="module")
def mt10_fixed():
    envs, _ = suites.make_envs("mt10", seed=0, episode_length=EPISODE, asynchronous=False)
    yield envs
    envs.close()


def rollout(envs, seed: int, steps: int) -> np.ndarray:
    """(steps + 1, num_envs, obs_dim): reset(seed) and `steps` fixed pseudo-random actions."""
    actions = np.random.default_rng(123).uniform(-1, 1, (steps, envs.num_envs, 4))
    obs, _ = envs.reset(seed=seed)
    sequence = [obs]
    for action in actions:
        obs, *_ = envs.step(action)
        sequence.append(obs)
    return np.stack(sequence)


def episode_goals(sequence: np.ndarray) -> np.ndarray:
    """(episodes, num_envs, 3): the goal of each episode, read at its first observation."""
    return sequence[::EPISODE, :, GOAL]


def test_task_names_follow_metaworld():
    assert suites.suite_spec("mt10-rand").task_names == PACO_MT10
    assert suites.suite_spec("mt10").task_names == PACO_MT10
    mt50 = suites.suite_spec("mt50-rand")
    assert mt50.num_tasks == len(set(mt50.task_names)) == 50
    assert suites.suite_spec("mt50").task_names == mt50.task_names
    assert suites.suite_spec("mt1:push-v3").task_names == ("push-v3",)
    spec = suites.suite_spec("gym:Pendulum-v1", episode_length=20)
    assert (spec.task_names, spec.obs_dim, spec.act_dim, spec.episode_length) == (
        ("Pendulum-v1",), 3, 1, 20)


@pytest.mark.parametrize("suite", ["mt20", "MT10", "mt1:reach-v9", "gym:NoSuchEnv-v0",
                                   "gym:CartPole-v1"])
def test_unknown_suite_raises_naming_it(suite):
    with pytest.raises(ValueError, match=re.escape(repr(suite))):
        suites.suite_spec(suite)


def test_env_i_runs_task_i(mt10_fixed):
    tasks = [type(env) for env in mt10_fixed.unwrapped.get_attr("unwrapped")]
    assert tasks == [suites.env_dict.ALL_V3_ENVIRONMENTS[name] for name in PACO_MT10]


def test_rand_draws_a_new_goal_at_each_reset(mt10_rand):
    goals = episode_goals(rollout(mt10_rand, seed=1, steps=2 * EPISODE))
    changed = (goals[1:] != goals[:-1]).any(axis=2)
    assert changed.sum(axis=1).min() >= 8, changed  # a repeat has chance 1/50 per task


def test_rand_goals_depend_on_the_reset_seed(mt10_rand):
    first, second = rollout(mt10_rand, seed=1, steps=0), rollout(mt10_rand, seed=2, steps=0)
    assert (first[0, :, GOAL] != second[0, :, GOAL]).any(axis=1).sum() >= 8


def test_reset_seed_overrides_history(mt10_rand):
    first = rollout(mt10_rand, seed=5, steps=2 * EPISODE)
    rollout(mt10_rand, seed=7, steps=4)
    np.testing.assert_array_equal(rollout(mt10_rand, seed=5, steps=2 * EPISODE), first)


def test_same_seed_and_actions_give_same_observations_sync_or_async():
    sequences = []
    for asynchronous in (False, True):
        envs, _ = suites.make_envs("mt1:reach-v3", seed=0, episode_length=EPISODE,
                                   asynchronous=asynchronous)
        try:
            sequences.append(rollout(envs, seed=5, steps=3 * EPISODE))
        finally:
            envs.close()
    assert (episode_goals(sequences[0])[1:] != episode_goals(sequences[0])[:-1]).all()
    np.testing.assert_array_equal(sequences[0], sequences[1])


def test_fixed_goals_stay_fixed_for_the_run(mt10_fixed):
    goals = np.concatenate([episode_goals(rollout(mt10_fixed, seed=s, steps=2 * EPISODE))
                            for s in (1, 2)])
    np.testing.assert_array_equal(goals, np.broadcast_to(goals[0], goals.shape))


@pytest.mark.parametrize("suite", ["mt1:reach-v3", "gym:Pendulum-v1"])
def test_episode_length_truncates_exactly(suite):
    length = 7
    envs, spec = suites.make_envs(suite, seed=0, episode_length=length)
    try:
        assert envs.num_envs == spec.num_tasks == 1
        assert envs.single_observation_space.shape == (spec.obs_dim,)
        assert envs.single_action_space.shape == (spec.act_dim,)
        envs.reset(seed=0)
        ended = []
        for step in range(1, 2 * length + 1):
            _, _, terminated, truncated, infos = envs.step(np.zeros((1, spec.act_dim)))
            assert not terminated.any()
            if truncated[0]:
                ended.append(step)
                assert infos["_final_obs"][0]
    finally:
        envs.close()
    assert ended == [length, 2 * length]


def test_successes_reads_final_info_at_episode_ends():
    infos = {
        "success": np.array([1.0, 0.0, 0.0, 0.0]),
        "_success": np.array([True, True, False, False]),
        "final_info": {"success": np.array([0.0, 0.0, 1.0, 1.0]),
                       "_success": np.array([False, False, True, True])},
        "_final_info": np.array([False, False, True, False]),
    }
    np.testing.assert_array_equal(suites.successes(infos, 4), [1.0, 0.0, 1.0, 0.0])
    np.testing.assert_array_equal(suites.successes({}, 2), [0.0, 0.0])


def test_final_observations_substitutes_only_where_ended():
    next_obs = np.arange(6.0).reshape(3, 2)
    final_obs = np.array([None, np.array([-1.0, -2.0]), None], dtype=object)
    infos = {"final_obs": final_obs, "_final_obs": np.array([False, True, False])}
    stored = suites.final_observations(next_obs, infos)
    np.testing.assert_array_equal(stored, [[0.0, 1.0], [-1.0, -2.0], [4.0, 5.0]])
    np.testing.assert_array_equal(next_obs, np.arange(6.0).reshape(3, 2))
    unchanged = suites.final_observations(next_obs, {})
    assert unchanged is not next_obs
    np.testing.assert_array_equal(unchanged, next_obs)


def test_env_worker_steps_like_the_env_it_wraps_in_another_process():
    make = functools.partial(suites.make_policy_envs, "gym:Pendulum-v1", seed=0, episode_length=7)
    local, worker = make(), suites.EnvWorker(make)
    try:
        assert worker.pid != os.getpid() and worker.num_envs == 1
        assert worker.single_action_space == local.single_action_space
        np.testing.assert_array_equal(worker.reset(seed=3)[0], local.reset(seed=3)[0])
        rng = np.random.default_rng(0)
        for t in range(10):                          # across a time-limit truncation at 7
            actions = rng.uniform(-1, 1, (1, 1)).astype(np.float32)
            worker.step_async(actions)
            theirs, ours = worker.step_wait(), local.step(actions)
            for a, b in zip(theirs[:4], ours[:4]):
                np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(suites.final_observations(theirs[0], theirs[4]),
                                          suites.final_observations(ours[0], ours[4]))
        with pytest.raises(RuntimeError, match="without a step_async"):
            worker.step_wait()
        worker.step_async(np.zeros((1, 1), np.float32))
        with pytest.raises(RuntimeError, match="in flight"):
            worker.reset(seed=1)
        worker.step_wait()
        with pytest.raises(RuntimeError, match="the env worker failed:\n.*Traceback"):
            worker.step(np.zeros((3, 5), np.float32))
    finally:
        worker.close()
        local.close()
    assert not worker._process.is_alive()
