"""Suite names -> gymnasium vector envs with one env per task; the only module importing metaworld.

Suites (Config.suite):

- ``mt10-rand``, ``mt50-rand``: Meta-World MT10/MT50 with a new goal at every episode reset,
  drawn from 50 goals per task seeded by ``make_envs(seed=)`` (metaworld 3.x
  ``task_select="random"``): PaCo's MT10-rand, the paper's setting.
- ``mt10``, ``mt50``: one goal per task, drawn once in ``make_envs`` and kept for the whole run
  (``task_select="pseudorandom"``, which never resamples on reset): facebook mtrl's MT10.
- ``mt1:<task>``: one metaworld task with random goals, e.g. ``mt1:reach-v3``.
- ``gym:<EnvId>``: any registered gymnasium env with 1-d Box observation and action spaces,
  as one task, e.g. ``gym:Pendulum-v1``; for quick checks and teaching. Seeded by
  ``reset(seed=)`` alone, as gymnasium envs are.

The task id is the env index; task order and names are metaworld's (``env_dict.MT10_V3``:
reach, push, pick-place, door-open, drawer-open, drawer-close, button-press-topdown,
peg-insert-side, window-open, window-close). Observations come without the one-hot, as
float64 from metaworld, and the vector envs autoreset in SAME_STEP mode (gymnasium's
``AutoresetMode.SAME_STEP``: the step that ends an episode also resets it).

The goal set (and the fixed goal of ``mt10``/``mt50``) is a function of ``make_envs(seed=)``:
envs that should share goals, such as training and evaluation envs, must be made with the
same seed and told apart by the seed given to ``reset``.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import traceback
from collections.abc import Callable
from dataclasses import dataclass

import gymnasium as gym
import metaworld
import metaworld.evaluation
import numpy as np
from gymnasium.vector import AutoresetMode
from gymnasium.wrappers.vector import RescaleAction
from metaworld import env_dict

from taper.config import REWARD_VERSIONS

_MT_SUITES = {
    "mt10-rand": (env_dict.MT10_V3, "MT10", "random"),
    "mt50-rand": (env_dict.MT50_V3, "MT50", "random"),
    "mt10": (env_dict.MT10_V3, "MT10", "pseudorandom"),
    "mt50": (env_dict.MT50_V3, "MT50", "pseudorandom"),
}
_ALLOWED = ", ".join([*_MT_SUITES, "mt1:<task>", "gym:<EnvId>"])
_ASYNC_MIN_CPUS = 4
"""Fewest CPUs for async workers by default: on 2 CPUs sync stepped MT10 faster."""


@dataclass(frozen=True)
class SuiteSpec:
    """What the learner needs to know about a suite, without building its envs."""

    name: str
    """The suite string, as given."""
    task_names: tuple[str, ...]
    """Task names in env (= task id) order, e.g. ('reach-v3', 'push-v3', ...)."""
    obs_dim: int
    """Observation width (39 for metaworld; no one-hot)."""
    act_dim: int
    """Action width (4 for metaworld)."""
    episode_length: int
    """Steps after which an episode is truncated (a time limit, not a terminal)."""

    @property
    def num_tasks(self) -> int:
        return len(self.task_names)


def suite_spec(suite: str, episode_length: int = 150) -> SuiteSpec:
    """The `SuiteSpec` of `suite`; ValueError naming the bad value for an unknown suite.

    Metaworld suites instantiate one bare task env (~0.3 s) to read the spaces; ``gym:``
    suites make the env once. `episode_length` (default 150, as PaCo and MOORE) is honoured
    by every suite: for ``gym:`` suites it replaces the env's own time limit (Pendulum-v1:
    200), for metaworld it must not exceed the simulator's 500-step path limit.
    """
    if not isinstance(episode_length, int) or episode_length <= 0:
        raise ValueError(f"episode_length={episode_length!r} must be a positive integer")
    if suite.startswith("gym:"):
        obs_space, act_space = _gym_spaces(suite)
        return SuiteSpec(suite, (suite[len("gym:"):],), _box_dim(obs_space),
                         _box_dim(act_space), episode_length)
    if episode_length > metaworld.SawyerXYZEnv.max_path_length:
        raise ValueError(f"episode_length={episode_length!r} exceeds metaworld's path limit "
                         f"of {metaworld.SawyerXYZEnv.max_path_length} steps")
    names = _metaworld_task_names(suite)
    bare = env_dict.ALL_V3_ENVIRONMENTS[names[0]]()
    try:
        obs_dim, act_dim = _box_dim(bare.observation_space), _box_dim(bare.action_space)
    finally:
        bare.close()
    return SuiteSpec(suite, names, obs_dim, act_dim, episode_length)


def make_envs(suite: str, *, seed: int, episode_length: int = 150, reward_version: str = "v2",
              asynchronous: bool | None = None) -> tuple[gym.vector.VectorEnv, SuiteSpec]:
    """Vector env with env i running task i, and the suite's `SuiteSpec`.

    `seed` fixes the metaworld goal set (and the fixed goals of mt10/mt50). After
    ``envs.reset(seed=s)`` everything, goals drawn at later autoresets included, is a
    deterministic function of s and the actions. `reward_version` is metaworld's reward
    function version ("v2" as PaCo; ignored by ``gym:`` suites). `asynchronous`: one worker
    process per task; None means async when there is more than one task and at least
    ``_ASYNC_MIN_CPUS`` CPUs (on 2 CPUs sync stepped MT10 faster than async). Metaworld envs
    come in a vector wrapper (the reseeding on reset): reach ``call``, ``get_attr`` and
    ``set_attr`` through ``envs.unwrapped``.
    """
    spec = suite_spec(suite, episode_length)
    if reward_version not in REWARD_VERSIONS:
        raise ValueError(f"reward_version={reward_version!r} is not one of "
                         f"{', '.join(REWARD_VERSIONS)}")
    use_async = _use_async(asynchronous, spec.num_tasks)
    if suite.startswith("gym:"):
        return _make_vec(spec.task_names[0], use_async, episode_length), spec
    envs = _make_metaworld(suite, spec, seed, reward_version, use_async)
    return _ReseedTaskDraws(envs), spec


def make_policy_envs(suite: str, *, seed: int, episode_length: int = 150,
                     reward_version: str = "v2",
                     asynchronous: bool | None = None) -> gym.vector.VectorEnv:
    """`make_envs`'s vector env, its actions rescaled from the policy's [-1, 1] to the env's bounds.

    Training and evaluation envs are made alike (the goal set follows `seed`) and told apart
    by the seeds their resets get.
    """
    envs, _ = make_envs(suite, seed=seed, episode_length=episode_length,
                        reward_version=reward_version, asynchronous=asynchronous)
    space = envs.single_action_space
    if np.all(space.low == -1) and np.all(space.high == 1):
        return envs
    return RescaleAction(envs, -1.0, 1.0)


def benchmark_envs(suite: str, *, seed: int, use_one_hot: bool = False,
                   reward_version: str = "v2",
                   asynchronous: bool | None = None) -> gym.vector.VectorEnv:
    """Meta-World's own vector env for a metaworld suite, as `benchmark_evaluation` expects it.

    ``gym.make_vec("Meta-World/MT10" | "Meta-World/MT50", seed=seed, use_one_hot=...)`` (one
    ``Meta-World/MT1`` env for ``mt1:<task>``) with the library's defaults: 500-step episodes,
    a new goal at every reset drawn from the 50 goals `seed` fixes (the goal set of
    `make_envs` with the same seed; for ``mt10``/``mt50`` too, whose training kept one of
    them), no reseeding on reset. `use_one_hot` appends the task one-hot to the observations.
    """
    if suite.startswith("gym:"):
        raise ValueError(f"suite={suite!r} is not a metaworld suite; Meta-World's evaluation "
                         f"needs one of {', '.join(_MT_SUITES)}, mt1:<task>")
    names = _metaworld_task_names(suite)
    if reward_version not in REWARD_VERSIONS:
        raise ValueError(f"reward_version={reward_version!r} is not one of "
                         f"{', '.join(REWARD_VERSIONS)}")
    kwargs = dict(seed=seed, use_one_hot=use_one_hot, reward_function_version=reward_version)
    if suite.startswith("mt1:"):
        if use_one_hot:
            raise ValueError(f"use_one_hot=True: metaworld's MT1 ({suite!r}) has no one-hot")
        return gym.make_vec("Meta-World/MT1", num_envs=1, vectorization_mode="sync",
                            vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP},
                            env_name=names[0], **kwargs)
    use_async = _use_async(asynchronous, len(names))
    return gym.make_vec(f"Meta-World/{_MT_SUITES[suite][1]}",
                        vector_strategy="async" if use_async else "sync", **kwargs)


def env_task_names(envs: gym.vector.VectorEnv) -> tuple[str, ...]:
    """The metaworld task name each env of `envs` runs, in env order, e.g. ('reach-v3', ...).

    Read from the envs themselves (``task_name``, the env class's name), as
    ``metaworld.evaluation`` does; ValueError for an env that is not a metaworld v3 task.
    """
    by_class = {cls.__name__: name for name, cls in env_dict.ALL_V3_ENVIRONMENTS.items()}
    try:
        classes = envs.unwrapped.get_attr("task_name")
    except AttributeError:
        raise ValueError(f"{envs} runs no metaworld task (its envs have no task_name)") from None
    unknown = [c for c in classes if c not in by_class]
    if unknown:
        raise ValueError(f"{envs} runs {unknown[0]!r}, not a metaworld v3 task")
    return tuple(by_class[c] for c in classes)


def benchmark_evaluation(agent, envs: gym.vector.VectorEnv, episodes: int) -> dict:
    """Meta-World's own protocol, ``metaworld.evaluation.evaluation(agent, envs, episodes)``.

    There: episodes end at the first success (``terminate_on_success`` switched on for the
    evaluation) or at the time limit, an episode counts as a success if the ``success`` of its
    ``final_info`` is 1, the first `episodes` episodes of each task count, and the mean is
    unweighted over tasks. `agent` needs ``eval_action(observations) -> actions`` and
    ``reset(env_mask)``. Returns {"success": (N,), "return": (N,), "mean_success": float,
    "mean_return": float}, per-task values in env order.
    """
    if not isinstance(episodes, int) or episodes <= 0:
        raise ValueError(f"episodes={episodes!r} must be a positive integer")
    names = env_task_names(envs)
    mean_success, mean_return, success, returns = metaworld.evaluation.evaluation(
        agent, envs, episodes)
    return {"success": np.array([success[name] for name in names], np.float64),
            "return": np.array([np.mean(returns[name]) for name in names], np.float64),
            "mean_success": mean_success, "mean_return": mean_return}


class EnvWorker:
    """A vector env stepped in one worker process, so the learner can compute while it steps.

    `make` (picklable, no arguments) builds the vector env inside the worker. `step_async`
    sends the actions and returns at once, `step_wait` returns the step's
    (obs, rewards, terminated, truncated, infos); `step` and `reset` wait. One step is in
    flight at most. The worker ignores SIGINT, so Ctrl-C reaches only the learner, which
    checkpoints and then closes the worker. An error inside the worker is raised here as a
    RuntimeError carrying the worker's traceback.
    """

    def __init__(self, make: Callable[[], gym.vector.VectorEnv]) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_serve, args=(make, child), daemon=True,
                                        name="taper-env-worker")
        self._process.start()
        child.close()
        self._waiting = False
        self.num_envs, self.single_observation_space, self.single_action_space = self._receive()

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        self._request("reset", {"seed": seed, "options": options})
        return self._receive()

    def step_async(self, actions: np.ndarray) -> None:
        self._request("step", np.asarray(actions))
        self._waiting = True

    def step_wait(self):
        if not self._waiting:
            raise RuntimeError("step_wait() without a step_async() in flight")
        self._waiting = False
        return self._receive()

    def step(self, actions: np.ndarray):
        self.step_async(actions)
        return self.step_wait()

    def close(self) -> None:
        """Stop the worker (its envs closed there); a worker that hangs is terminated."""
        if self._process.is_alive():
            try:
                if self._waiting:
                    self._receive()
                self._conn.send(("close", None))
            except (OSError, EOFError, RuntimeError):
                pass
            self._process.join(timeout=10)
            if self._process.is_alive():
                self._process.terminate()
                self._process.join()
        self._conn.close()

    @property
    def pid(self) -> int | None:
        """The worker's process id."""
        return self._process.pid

    def _request(self, command: str, payload) -> None:
        if self._waiting:
            raise RuntimeError(f"{command}() while a step is in flight; call step_wait() first")
        self._conn.send((command, payload))

    def _receive(self):
        try:
            ok, value = self._conn.recv()
        except EOFError:
            raise RuntimeError(f"the env worker (pid {self.pid}) died, exit code "
                               f"{self._process.exitcode}") from None
        if not ok:
            raise RuntimeError(f"the env worker failed:\n{value}")
        return value


def _serve(make: Callable[[], gym.vector.VectorEnv], conn) -> None:
    """The worker's loop: build the envs, then answer reset / step until close."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    envs = None
    try:
        envs = make()
        conn.send((True, (envs.num_envs, envs.single_observation_space,
                          envs.single_action_space)))
        while True:
            command, payload = conn.recv()
            if command == "close":
                break
            result = envs.step(payload) if command == "step" else envs.reset(**payload)
            conn.send((True, result))
    except (EOFError, KeyboardInterrupt):
        pass
    except Exception:  # noqa: BLE001  (handed to the learner, which raises it)
        conn.send((False, traceback.format_exc()))
    finally:
        if envs is not None:
            envs.close()
        conn.close()


def successes(infos: dict, num_envs: int) -> np.ndarray:
    """(num_envs,) float64: each env's success flag at this step, 0 where none is reported.

    With SAME_STEP autoreset the step that ends an episode reports that episode's last info
    under ``final_info`` (masked by ``_final_info``), and the next episode's reset info at the
    top level; so read ``success`` masked by ``_success`` and then the final infos, or the
    success of every episode's last step is lost.
    """
    out = np.zeros(num_envs)
    if "success" in infos:
        mask = np.asarray(infos["_success"], bool)
        out[mask] = np.asarray(infos["success"], np.float64)[mask]
    final = infos.get("final_info", {})
    if "success" in final:
        mask = np.asarray(infos["_final_info"], bool) & np.asarray(final["_success"], bool)
        out[mask] = np.asarray(final["success"], np.float64)[mask]
    return out


def final_observations(next_obs: np.ndarray, infos: dict) -> np.ndarray:
    """Copy of `next_obs` with ``infos["final_obs"]`` where an episode ended: the true s'.

    With SAME_STEP autoreset `next_obs` of an ended env is already the next episode's first
    observation. Store this as s' and bootstrap with 1 - terminated: a time-limit truncation
    is not a terminal.
    """
    out = np.array(next_obs, copy=True)
    ended = np.asarray(infos.get("_final_obs", False), bool)
    if ended.any():
        out[ended] = np.stack(infos["final_obs"][ended])
    return out


class _ReseedTaskDraws(gym.vector.VectorWrapper):
    """``reset(seed=s)`` re-seeds each task env's goal draws before resetting.

    Metaworld 3.1 ignores the seed given to reset (``SawyerXYZEnv.reset``: "Ignored, use
    seed() instead") and its task-select wrapper draws the next goal from the env's
    ``np_random`` before resetting; so env i gets a generator from ``SeedSequence(s)``'s
    i-th child first, and the goal of every episode from then on follows from s.
    """

    def reset(self, *, seed=None, options=None):
        if seed is not None:
            _seed_task_draws(self.env, seed)
        return self.env.reset(seed=seed, options=options)


def _seed_task_draws(envs: gym.vector.VectorEnv, seed: int) -> None:
    children = np.random.SeedSequence(seed).spawn(envs.num_envs)
    envs.set_attr("np_random", [np.random.default_rng(child) for child in children])


def _make_metaworld(suite: str, spec: SuiteSpec, seed: int, reward_version: str,
                    use_async: bool) -> gym.vector.VectorEnv:
    kwargs = dict(seed=seed, use_one_hot=False, reward_function_version=reward_version)
    if suite.startswith("mt1:"):
        return _make_vec("Meta-World/MT1", use_async, spec.episode_length,
                         disable_env_checker=True, env_name=spec.task_names[0],
                         task_select="random", **kwargs)
    _, benchmark, task_select = _MT_SUITES[suite]
    envs = gym.make_vec(f"Meta-World/{benchmark}",
                        vector_strategy="async" if use_async else "sync",
                        autoreset_mode=AutoresetMode.SAME_STEP, task_select=task_select,
                        max_episode_steps=spec.episode_length, **kwargs)
    if task_select == "pseudorandom":
        _seed_task_draws(envs, seed)
        envs.call("sample_tasks")
    return envs


def _make_vec(env_id: str, use_async: bool, episode_length: int, **kwargs) -> gym.vector.VectorEnv:
    """One env of `env_id` in a vector env, truncated after `episode_length` steps."""
    return gym.make_vec(env_id, num_envs=1, vectorization_mode="async" if use_async else "sync",
                        vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP},
                        max_episode_steps=episode_length, **kwargs)


def _metaworld_task_names(suite: str) -> tuple[str, ...]:
    if suite in _MT_SUITES:
        return tuple(_MT_SUITES[suite][0])
    if suite.startswith("mt1:"):
        task = suite[len("mt1:"):]
        if task not in env_dict.ALL_V3_ENVIRONMENTS:
            raise ValueError(f"suite={suite!r}: {task!r} is not a metaworld v3 task; "
                             f"one of {', '.join(env_dict.ALL_V3_ENVIRONMENTS)}")
        return (task,)
    raise ValueError(f"suite={suite!r} is not one of {_ALLOWED}")


def _gym_spaces(suite: str) -> tuple[gym.Space, gym.Space]:
    env_id = suite[len("gym:"):]
    try:
        env = gym.make(env_id)
    except gym.error.Error as e:
        raise ValueError(f"suite={suite!r}: no gymnasium env {env_id!r} ({e})") from None
    try:
        spaces = env.observation_space, env.action_space
    finally:
        env.close()
    if not all(isinstance(space, gym.spaces.Box) and len(space.shape) == 1 for space in spaces):
        raise ValueError(f"suite={suite!r} needs 1-d Box observation and action spaces, "
                         f"got {_describe(spaces[0])} and {_describe(spaces[1])}")
    return spaces


def _describe(space: gym.Space) -> str:
    return f"Box{space.shape}" if isinstance(space, gym.spaces.Box) else str(space)


def _box_dim(space: gym.spaces.Box) -> int:
    return int(space.shape[0])


def available_cpus() -> int:
    """CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _use_async(asynchronous: bool | None, num_envs: int) -> bool:
    if asynchronous is not None:
        return asynchronous
    return num_envs > 1 and available_cpus() >= _ASYNC_MIN_CPUS
