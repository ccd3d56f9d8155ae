"""Multi-task SAC: the losses as pure functions, and the `Agent` that chains them.

One update (`Agent.update`, `cfg.update_order = "joint"`) in three steps: all losses from the
same parameters (`Agent._losses`), the method's backward (one backward of the total, as PaCo's
code does; PCGrad projects per-task gradients) and every optimizer steps (`Agent._step`),
one device-to-host transfer of metrics and td errors together (`Agent._to_host`). With
"critic-first" (`Agent._critic_first`, as SB3 and Spinning Up order it) the critics step on
their loss first and the actor and alpha losses below are taken against the updated critics:

    a' ~ pi(.|s'),  y = r + gamma (1 - done) (min_j Qtarg_j(s', a') - alpha_i log pi(a'|s'))
    critic  = w_IS * sum_j (Q_j(s, a) - y)^2                   (IS-weighted; td error, Eq. 2:
                                                                 mean_j |y - Q_j(s, a)|)
    actor   = alpha_i log pi(a~|s) - min_j Q_j(s, a~),   a~ ~ pi(.|s), critics frozen
    alpha   = -log alpha_i (log pi(a~|s) - |A|)                 (per task, target entropy -|A|)
    + the method's own: PaCo masks the samples of tasks whose mean unweighted loss exceeds
      `extreme_loss_threshold` and resets their w afterwards; taper adds the triplet loss (Eq. 1);
      softmod weighs each task's critic and actor losses by T softmax(-log alpha)_i.
      care's actor sees its features detached (`Method.actor_input`).
    then: log alpha clamped to [log_alpha_min, log_alpha_max], and the target critics
    moved toward the critics, parameter by parameter: target <- (1 - tau) target + tau online.

The target critics are a Polyak copy of the critics' own parameters; PaCo's task weights w
are shared with them live (as in PaCo's code, where the target critics are built around the
same task-encoding network).

Randomness (policy noise, PaCo resets, triplet draws, PCGrad's orders) comes from one torch
generator on the device, seeded with `cfg.seed` and saved in `state_dict`; initial weights are
drawn under `torch.manual_seed(cfg.seed)` in a forked RNG, so they do not depend on the global
state.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from taper.config import Config
from taper.methods import make_method
from taper.networks import TaskGroups, detached, task_groups

LOG_STD_RANGES = {"clamp": (-20.0, 2.0), "tanh": (-5.0, 2.0)}
"""Range of the policy's log standard deviation per `Config.log_std_head`: the raw output
clamped to [-20, 2] (SB3, Spinning Up), or tanh-rescaled into [-5, 2] (CleanRL)."""


def log_std_of(raw: Tensor, head: str) -> Tensor:
    """The policy's log std from the network's raw output.

    "tanh": lo + (hi - lo)(tanh(raw) + 1)/2, which starts near the middle of [-5, 2] (std 0.22);
    "clamp": raw clamped to [-20, 2], which starts near 0 (std 1) and passes no gradient outside
    the range.
    """
    low, high = LOG_STD_RANGES[head]
    if head == "tanh":
        return low + 0.5 * (high - low) * (torch.tanh(raw) + 1.0)
    return raw.clamp(low, high)


def resolve_device(name: str) -> torch.device:
    """"auto" -> cuda if available else cpu; "cpu"/"cuda" as given, ValueError for "cuda" where
    no CUDA device is available or a name that is none of the three."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"device={name!r} is not one of auto, cpu, cuda")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' but no CUDA device is available; use cpu or auto")
    return torch.device(name)


def squashed_gaussian(out: Tensor, generator: torch.Generator, deterministic: bool = False, *,
                      log_std_head: str) -> tuple[Tensor, Tensor | None]:
    """Tanh-Gaussian policy head: (B, 2A) network output -> (action (B, A), log pi (B,) or None).

    deterministic: tanh(mean), no draw, no log-prob. Otherwise a reparameterised draw
    tanh(mean + std * eps), log std from the second half by `log_std_of`, with the
    change-of-variables correction log(1 - tanh(x)^2) = 2 (log 2 - x - softplus(-2x)).
    """
    mean, raw = out.chunk(2, dim=-1)
    if deterministic:
        return torch.tanh(mean), None
    log_std = log_std_of(raw, log_std_head)
    eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    pre = mean + log_std.exp() * eps
    log_prob = (-0.5 * eps.square() - log_std - 0.5 * math.log(2 * math.pi)).sum(dim=-1)
    log_det = 2.0 * (math.log(2.0) - pre - nn.functional.softplus(-2.0 * pre))
    log_prob = log_prob - log_det.sum(dim=-1)
    return torch.tanh(pre), log_prob


def soft_target(next_q: Tensor, next_log_pi: Tensor, alpha: Tensor, rewards: Tensor,
                dones: Tensor, gamma: float) -> Tensor:
    """y = r + gamma (1 - done) (min_j Qtarg_j(s', a') - alpha_i log pi(a'|s')).

    next_q (2, K); the rest (K,).
    """
    value = next_q.min(dim=0).values - alpha * next_log_pi
    return rewards + gamma * (1.0 - dones) * value


def critic_loss(q: Tensor, target: Tensor, weights: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-sample IS-weighted loss w_IS * sum_j (Q_j - y)^2, shape (K,); q (2, K), y and w_IS (K,).

    info: "td_error" (K,) = mean_j |y - Q_j| (Eq. 2, the new priorities) and "squared_error"
    (K,) = the unweighted loss, both detached.
    """
    td = target - q
    squared = td.square().sum(dim=0)
    info = {"td_error": td.detach().abs().mean(dim=0), "squared_error": squared.detach()}
    return weights * squared, info


def actor_loss(q_pi: Tensor, log_pi: Tensor, alpha: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-sample alpha_i log pi(a~|s) - min_j Q_j(s, a~), (K,); q_pi (2, K) from frozen critics."""
    return alpha * log_pi - q_pi.min(dim=0).values, {"entropy": -log_pi.detach()}


def alpha_loss(log_alpha: Tensor, log_pi: Tensor,
               target_entropy: float) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-sample -log alpha_i (log pi + target_entropy), (K,); only log alpha gets a gradient."""
    return -log_alpha * (log_pi.detach() + target_entropy), {}


def _adam(params: list[nn.Parameter], lr: float) -> torch.optim.Adam:
    """Adam, fused where this torch has the fused kernel for the device (CPU: torch >= 2.4)."""
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except RuntimeError:
        return torch.optim.Adam(params, lr=lr)


@contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Forward passes inside record no gradient for `module`'s parameters (inputs still get one)."""
    module.requires_grad_(False)
    try:
        yield
    finally:
        module.requires_grad_(True)


class Losses(NamedTuple):
    """One update's losses, on the device, before any parameter moves.

    total: the scalar of the one backward; metrics: metric name -> 0-d tensor (loss/critic,
    loss/actor, loss/alpha, stats/*, and the method's own); td_error: (K,) Eq. 2 in the staged
    row order; extreme: (T,) bool, the tasks PaCo masks and resets, None for mtsac;
    per_sample: "critic", "actor", "alpha" -> (K,) per-sample losses (masked and task-weighted
    as in `total`), for the method's `backward` (PCGrad's per-task gradients).
    """

    total: Tensor
    metrics: dict[str, Tensor]
    td_error: Tensor
    extreme: Tensor | None
    per_sample: dict[str, Tensor]


class Agent:
    """SAC learner for `cfg.method` (`taper.methods.METHODS`); see the module docstring for the
    update.

    grouped: compositional layers take the grouped path wherever it pays (`prefers_grouped`:
    update batches, not one observation per task), ungrouped rows sorted by task on the host
    first and results returned in the original order; False: always the general path on the
    rows as given. Both give the same numbers (tests/test_sac.py); the README's "Update cost
    per method" gives the speed of each (measured by benchmarks/bench_update.py).
    task_names: the suite's task names in task-id order, for methods that need them (care).
    """

    def __init__(self, cfg: Config, obs_dim: int, act_dim: int, num_tasks: int,
                 device: torch.device | str, *, grouped: bool = True,
                 task_names: tuple[str, ...] | None = None) -> None:
        for name, value in (("obs_dim", obs_dim), ("act_dim", act_dim), ("num_tasks", num_tasks)):
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        self.cfg = cfg
        self.obs_dim, self.act_dim, self.num_tasks = obs_dim, act_dim, num_tasks
        self.device = torch.device(device)
        self.grouped = grouped
        self.target_entropy = -float(act_dim)
        if cfg.deterministic:
            if self.device.type == "cuda":
                os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.method = make_method(cfg, obs_dim, num_tasks, task_names)
            self.actor = self.method.body(self.method.feature_dim, 2 * act_dim, ensemble=1,
                                          layer_norm=cfg.layer_norm == "all")
            self.critic = self.method.body(self.method.feature_dim + act_dim, 1, ensemble=2,
                                           layer_norm=cfg.layer_norm != "none")
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        for module in (self.method, self.actor, self.critic, self.critic_target):
            module.to(self.device)
        init = min(max(math.log(cfg.init_temperature), cfg.log_alpha_min), cfg.log_alpha_max)
        self.log_alpha = nn.Parameter(torch.full((num_tasks,), init, device=self.device))
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(cfg.seed)

        groups = {"actor": (list(self.actor.parameters()), cfg.lr),
                  "critic": (list(self.critic.parameters()), cfg.lr),
                  "alpha": ([self.log_alpha], cfg.alpha_lr),
                  **self.method.optimizer_groups(cfg)}
        self.optimizers = {name: _adam(params, lr) for name, (params, lr) in groups.items()}
        self._parameters = {name: params for name, (params, _) in groups.items()}
        self._target_pairs = list(zip(self.critic_target.parameters(),
                                      self.critic.parameters()))

    # ---- host <-> device -------------------------------------------------------------------

    def _groups(self, task_ids: np.ndarray) -> tuple[TaskGroups, np.ndarray | None]:
        """TaskGroups of the rows, and the permutation that sorted them by task (None: as given).

        Rows are sorted (on the host) only where the method's grouped path pays for it.
        """
        ids = np.asarray(task_ids)
        if ids.ndim != 1 or ids.size == 0 or not np.issubdtype(ids.dtype, np.integer):
            raise TypeError(f"task_ids must be a non-empty 1-D integer array, got {ids.dtype} "
                            f"{ids.shape}")
        if ids.min() < 0 or ids.max() >= self.num_tasks:
            raise ValueError(f"task ids must lie in [0, {self.num_tasks}), got "
                             f"[{ids.min()}, {ids.max()}]")
        present = np.count_nonzero(np.bincount(ids, minlength=self.num_tasks))
        grouped = self.grouped and self.method.prefers_grouped(ids.size, present)
        order = None
        if grouped and not bool(np.all(ids[1:] >= ids[:-1])):
            order = np.argsort(ids, kind="stable")
            ids = ids[order]
        groups = task_groups(torch.from_numpy(ids.astype(np.int64)), self.num_tasks,
                             self.device, grouped=grouped)
        return groups, order

    def _stage(self, batch) -> tuple[tuple[Tensor, ...], TaskGroups, np.ndarray | None]:
        """Batch -> (obs, actions, rewards, next_obs, dones, weights) on the device, in one copy."""
        groups, order = self._groups(batch.task_ids)
        k = groups.ids.shape[0]
        o, a = self.obs_dim, self.act_dim
        columns = (("observations", (k, o)), ("actions", (k, a)), ("rewards", (k,)),
                   ("next_observations", (k, o)), ("dones", (k,)), ("weights", (k,)))
        packed = np.empty((k, 2 * o + a + 3), dtype=np.float32)
        start = 0
        for name, shape in columns:
            array = np.asarray(getattr(batch, name))
            if array.shape != shape:
                raise ValueError(f"batch.{name} has shape {array.shape}, expected {shape}")
            width = shape[1] if len(shape) == 2 else 1
            rows = array if order is None else array[order]
            packed[:, start:start + width] = rows.reshape(k, width)
            start += width
        data = torch.from_numpy(packed).to(self.device, non_blocking=True)
        obs, actions, rewards, next_obs, dones, weights = data.split((o, a, 1, o, 1, 1), dim=1)
        return ((obs, actions, rewards.squeeze(1), next_obs, dones.squeeze(1),
                 weights.squeeze(1)), groups, order)

    # ---- acting ------------------------------------------------------------------------------

    @torch.no_grad()
    def act(self, observations: np.ndarray, task_ids: np.ndarray,
            deterministic: bool) -> np.ndarray:
        """(B, obs_dim) states of tasks `task_ids` -> (B, act_dim) float32 actions in [-1, 1]."""
        obs = np.asarray(observations, dtype=np.float32)
        if obs.ndim != 2 or obs.shape[1] != self.obs_dim:
            raise ValueError(f"observations has shape {obs.shape}, expected (B, {self.obs_dim})")
        if np.shape(task_ids) != obs.shape[:1]:
            raise ValueError(f"task_ids has shape {np.shape(task_ids)}, expected {obs.shape[:1]}")
        groups, order = self._groups(task_ids)
        if order is not None:
            obs = obs[order]
        features, _ = self.method.features(torch.from_numpy(obs).to(self.device), groups)
        out = self.actor(features, self.method.task_weights(), groups)[0]
        actions = squashed_gaussian(out, self.generator, deterministic,
                                    log_std_head=self.cfg.log_std_head)[0].cpu().numpy()
        if order is None:
            return actions
        result = np.empty_like(actions)
        result[order] = actions
        return result

    # ---- learning ----------------------------------------------------------------------------

    def update(self, batch) -> tuple[dict[str, float], np.ndarray]:
        """One gradient step of every network on `batch` -> (metrics, td errors (K,) float64).

        td errors come in the batch's row order. Metrics: loss/critic, loss/actor, loss/alpha,
        alpha/<task>, stats/q, stats/entropy, stats/td_error; paco and taper add paco/resets
        and paco/reset/<task> = 1.0 for each task reset this step; taper adds loss/triplet and
        triplet/active_fraction.

        `cfg.update_order`: "joint" takes every loss from the same parameters and steps once
        (`_losses`, `_step`); "critic-first" (`_critic_first`) steps the critics on the critic
        and auxiliary losses, then takes the actor and alpha losses against the updated
        critics and steps the rest.
        """
        staged, groups, order = self._stage(batch)
        if self.cfg.update_order == "critic-first":
            losses = self._critic_first(staged, groups)
        else:
            losses = self._losses(staged, groups)
            self._step(losses, groups)
        return self._to_host(losses, order)

    def _critic_terms(self, staged: tuple[Tensor, ...], groups: TaskGroups, w: Tensor | None,
                      actor_params: list | None, critic_params: list | None
                      ) -> tuple[Tensor, Tensor | None, Tensor, Tensor, Tensor, dict[str, Tensor]]:
        """(features, unique, log alpha (K,), q (2, K), per-sample critic loss, its info): the
        soft target y from the target critics and a' ~ pi(.|s'), then Q_j(s, a) against it."""
        obs, actions, rewards, next_obs, dones, weights = staged
        cfg, method = self.cfg, self.method
        log_alpha = groups.one_hot @ self.log_alpha                    # (K,) the row's task
        with torch.no_grad():
            next_features, _ = method.features(next_obs, groups)
            next_actions, next_log_pi = squashed_gaussian(
                self.actor(next_features, w, groups, actor_params)[0], self.generator,
                log_std_head=cfg.log_std_head)
            next_q = self.critic_target(torch.cat([next_features, next_actions], dim=-1),
                                        w, groups).squeeze(-1)
            target = soft_target(next_q, next_log_pi, log_alpha.detach().exp(), rewards, dones,
                                 cfg.gamma)
        features, unique = method.features(obs, groups)
        q = self.critic(torch.cat([features, actions], dim=-1), w, groups,
                        critic_params).squeeze(-1)
        critic, info = critic_loss(q, target, weights)
        return features, unique, log_alpha, q, critic, info

    def _actor_terms(self, features: Tensor, groups: TaskGroups, w: Tensor | None,
                     actor_params: list | None, critic_params: list | None,
                     log_alpha: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """(per-sample actor loss, per-sample alpha loss, actor info): a~ ~ pi(.|s) scored by
        the critics, frozen (`critic_params` detached, or None to compose them here)."""
        actions_pi, log_pi = squashed_gaussian(
            self.actor(self.method.actor_input(features), w, groups, actor_params)[0],
            self.generator, log_std_head=self.cfg.log_std_head)
        with frozen(self.critic):
            q_pi = self.critic(torch.cat([features.detach(), actions_pi], dim=-1),
                               None if w is None else w.detach(), groups,
                               critic_params).squeeze(-1)
        actor, info = actor_loss(q_pi, log_pi, log_alpha.detach().exp())
        temperature, _ = alpha_loss(log_alpha, log_pi, self.target_entropy)
        return actor, temperature, info

    def _losses(self, staged: tuple[Tensor, ...], groups: TaskGroups) -> Losses:
        """All losses from the current parameters (the module docstring's update, line by line)."""
        method = self.method
        w = method.task_weights()
        actor_params = self.actor.params(w, groups)          # composed once, used twice
        critic_params = self.critic.params(w, groups)
        features, unique, log_alpha, q, critic, critic_info = self._critic_terms(
            staged, groups, w, actor_params, critic_params)
        actor, temperature, actor_info = self._actor_terms(
            features, groups, w, actor_params, detached(critic_params), log_alpha)
        extreme = method.extreme_tasks(critic_info["squared_error"] + actor + temperature, groups)
        critic, actor, temperature = self._weigh(extreme, groups, critic, actor, temperature)
        metrics = self._metrics(q, critic, actor, temperature, critic_info, actor_info)
        total = self._plus_auxiliary(
            metrics["loss/critic"] + metrics["loss/actor"] + metrics["loss/alpha"], unique,
            groups, metrics)
        per_sample = {"critic": critic, "actor": actor, "alpha": temperature}
        return Losses(total, metrics, critic_info["td_error"], extreme, per_sample)

    def _critic_first(self, staged: tuple[Tensor, ...], groups: TaskGroups) -> Losses:
        """The critic-first update: critic and auxiliary losses -> backward -> the critics
        step; then actor and alpha losses against the updated critics (features and w from
        the method's parameters as they were, not yet stepped) -> backward -> every other
        optimizer steps, the method's own on the gradients of both phases. PaCo's extreme
        tasks are judged by the critic loss alone (the actor's is not known before the
        critics step) and masked in both phases. Then the clamp, the targets, the resets."""
        method, optimizers = self.method, self.optimizers
        for optimizer in optimizers.values():
            optimizer.zero_grad(set_to_none=True)
        w = method.task_weights()
        _, unique, log_alpha, q, critic, critic_info = self._critic_terms(  # features: again below
            staged, groups, w, None, self.critic.params(w, groups))
        extreme = method.extreme_tasks(critic_info["squared_error"], groups)
        critic, _, _ = self._weigh(extreme, groups, critic, None, None)
        metrics = {}
        total = self._plus_auxiliary(critic.mean(), unique, groups, metrics)
        method.backward(total, {"critic": critic}, groups, self._parameters, self.generator)
        optimizers["critic"].step()

        w = method.task_weights()
        features, _ = method.features(staged[0], groups)
        actor, temperature, actor_info = self._actor_terms(
            features, groups, w, self.actor.params(w, groups), None, log_alpha)
        _, actor, temperature = self._weigh(extreme, groups, None, actor, temperature)
        second = actor.mean() + temperature.mean()
        method.backward(second, {"actor": actor, "alpha": temperature}, groups,
                        self._parameters, self.generator)
        for name, optimizer in optimizers.items():
            if name != "critic":
                optimizer.step()
        self._after_step(extreme)
        metrics = {**self._metrics(q, critic, actor, temperature, critic_info, actor_info),
                   **metrics}
        per_sample = {"critic": critic, "actor": actor, "alpha": temperature}
        return Losses(total.detach() + second.detach(), metrics, critic_info["td_error"],
                      extreme, per_sample)

    def _plus_auxiliary(self, loss: Tensor, unique: Tensor | None, groups: TaskGroups,
                        metrics: dict[str, Tensor]) -> Tensor:
        """`loss` plus the method's auxiliary loss (taper's Eq. 1), its metrics added to
        `metrics`; `loss` itself for methods without one."""
        auxiliary = self.method.auxiliary_loss(unique, groups, self.generator)
        if auxiliary is None:
            return loss
        metrics.update(auxiliary[1])
        return loss + auxiliary[0]

    def _weigh(self, extreme: Tensor | None, groups: TaskGroups, critic: Tensor | None,
               actor: Tensor | None, temperature: Tensor | None
               ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        """The per-sample losses given (None: skipped) masked for PaCo's extreme tasks (all
        three) and weighed by Soft-Mod's T softmax(-log alpha)_i (critic and actor)."""
        if extreme is not None:                                        # PaCo: mask those tasks
            keep = groups.one_hot @ (~extreme).to(self.log_alpha.dtype)
            critic, actor, temperature = (None if x is None else x * keep
                                          for x in (critic, actor, temperature))
        reweight = self.method.task_loss_weights(self.log_alpha.detach())
        if reweight is not None:                                       # Soft-Mod: by alpha
            scale = groups.one_hot @ reweight
            critic, actor = (None if x is None else x * scale for x in (critic, actor))
        return critic, actor, temperature

    @staticmethod
    def _metrics(q: Tensor, critic: Tensor, actor: Tensor, temperature: Tensor,
                 critic_info: dict[str, Tensor], actor_info: dict[str, Tensor]) -> dict:
        """The SAC metrics of one update, as 0-d tensors."""
        return {"loss/critic": critic.mean(), "loss/actor": actor.mean(),
                "loss/alpha": temperature.mean(), "stats/q": q.detach().mean(),
                "stats/entropy": actor_info["entropy"].mean(),
                "stats/td_error": critic_info["td_error"].mean()}

    def _step(self, losses: Losses, groups: TaskGroups) -> None:
        """The method's backward (one backward of the total, or PCGrad's surgery), every
        optimizer steps; then the clamp, the targets and PaCo's resets."""
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=True)
        self.method.backward(losses.total, losses.per_sample, groups, self._parameters,
                             self.generator)
        for optimizer in self.optimizers.values():
            optimizer.step()
        self._after_step(losses.extreme)

    def _after_step(self, extreme: Tensor | None) -> None:
        """log alpha clamped, the target critics moved toward the critics, PaCo's resets."""
        cfg = self.cfg
        with torch.no_grad():
            self.log_alpha.clamp_(cfg.log_alpha_min, cfg.log_alpha_max)
            for target, online in self._target_pairs:
                target.lerp_(online, cfg.tau)         # target <- (1 - tau) target + tau online
            if extreme is not None:
                self.method.reset_tasks(extreme, self.generator)

    def _to_host(self, losses: Losses,
                 order: np.ndarray | None) -> tuple[dict[str, float], np.ndarray]:
        """(metrics, td errors in the batch's row order) in one device-to-host transfer."""
        td_error = losses.td_error
        tail = [self.log_alpha.detach().exp()]
        if losses.extreme is not None:
            tail.append(losses.extreme.to(td_error.dtype))
        tail.append(td_error)
        values = torch.stack(list(losses.metrics.values())).detach()
        host = torch.cat([values, *tail]).cpu().numpy().astype(np.float64)

        metrics = {name: float(v) for name, v in zip(losses.metrics, host)}
        t, at = self.num_tasks, len(losses.metrics)
        metrics.update({f"alpha/{i}": float(v) for i, v in enumerate(host[at:at + t])})
        if losses.extreme is not None:
            flags = host[at + t:at + 2 * t]
            metrics["paco/resets"] = float(flags.sum())
            metrics.update({f"paco/reset/{i}": 1.0 for i in np.flatnonzero(flags)})
        td = host[-td_error.shape[0]:]
        if order is not None:
            unsorted = np.empty_like(td)
            unsorted[order] = td
            td = unsorted
        return metrics, td

    # ---- checkpoints -------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Networks, target critics, log alpha, optimizers and the generator: torch.save-able."""
        return {"method": self.method.state_dict(), "actor": self.actor.state_dict(),
                "critic": self.critic.state_dict(),
                "critic_target": self.critic_target.state_dict(),
                "log_alpha": self.log_alpha.detach().clone(),
                "optimizers": {n: o.state_dict() for n, o in self.optimizers.items()},
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        """Restore a `state_dict()`; one saved on another device type loads too (tensors are
        mapped by torch.load, the random stream restarts from cfg.seed)."""
        self.method.load_state_dict(state["method"])
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.critic_target.load_state_dict(state["critic_target"])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state["optimizers"][name])
        if state["generator"].numel() == self.generator.get_state().numel():
            self.generator.set_state(state["generator"])
        else:  # saved on another device type (CUDA vs CPU): continue with a fresh stream
            self.generator.manual_seed(self.cfg.seed)
