"""The questions every multi-task method answers; the defaults mean "none"."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from taper.config import Config
from taper.networks import Body, TaskGroups


class Method(nn.Module):
    """What sets one multi-task method apart: the networks' input, their layer, extra parameters
    and losses. The defaults here are "none"; the three methods below override what they use."""

    feature_dim: int
    """Width of `features(obs, groups)[0]`, the actor's input (critics add the action)."""
    needs_task_names: bool = False
    """Whether the constructor takes the suite's task names (`task_names=`, CARE)."""

    def __init__(self, cfg: Config, obs_dim: int, num_tasks: int) -> None:
        super().__init__()
        self.num_tasks = num_tasks
        self.hidden_sizes = tuple(cfg.hidden_sizes)

    def features(self, obs: Tensor, groups: TaskGroups) -> tuple[Tensor, Tensor | None]:
        """(network input (B, feature_dim), unique features for `auxiliary_loss` or None)."""
        raise NotImplementedError

    def actor_input(self, features: Tensor) -> Tensor:
        """The actor's view of `features` in the update; detached where only the critic loss
        may train what made them (CARE)."""
        return features

    def body(self, in_dim: int, out_dim: int, ensemble: int, layer_norm: bool = False) -> Body:
        """A fresh actor (ensemble=1) or twin-critic (ensemble=2) body; `layer_norm`: see
        `Body`."""
        raise NotImplementedError

    def task_weights(self) -> Tensor | None:
        """PaCo's table w (T, Kp), passed to every body call; None without one."""
        return None

    def prefers_grouped(self, rows: int, tasks_present: int) -> bool:
        """Whether sorting rows by task for the grouped path pays; plain MLPs do not care."""
        return False

    def optimizer_groups(self, cfg: Config) -> dict[str, tuple[list[nn.Parameter], float]]:
        """The method's own parameters: {name: (params, lr)}, one Adam each."""
        return {}

    def extreme_tasks(self, sample_loss: Tensor, groups: TaskGroups) -> Tensor | None:
        """(T,) bool tasks to mask and reset this step, from per-sample losses; None: never."""
        return None

    def reset_tasks(self, extreme: Tensor, generator: torch.Generator) -> None:
        """After the optimizer step: reset what `extreme_tasks` flagged."""

    def auxiliary_loss(self, unique: Tensor | None, groups: TaskGroups,
                       generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor]] | None:
        """An extra loss of the method's own parameters, or None."""
        return None

    def task_loss_weights(self, log_alpha: Tensor) -> Tensor | None:
        """(T,) weights of each task's critic and actor losses, from the detached per-task
        log alpha (T,); None: every task weighs 1."""
        return None

    def backward(self, total: Tensor, per_sample: dict[str, Tensor], groups: TaskGroups,
                 parameters: dict[str, list[nn.Parameter]], generator: torch.Generator) -> None:
        """Fill `.grad` of every parameter for this update (gradient surgery goes here).

        total: the scalar loss of this backward, the sum of the means of `per_sample` ("critic",
        "actor", "alpha": (K,) per-sample losses; the critic-first update passes the critic's
        in its first backward and the other two in its second) and of the method's auxiliary
        loss (in the first);
        parameters: the optimizer groups by name ("actor", "critic", "alpha", the method's own).
        Default: one backward of `total`.
        """
        total.backward()
