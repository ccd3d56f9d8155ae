"""PaCo (Sun et al. 2022): every layer of actor and critics, hidden and head, is a
`CompositionalLinear`: Kp parameter sets Phi = [phi_1 .. phi_Kp], one task-weight row w_i per
task (the table w, num_tasks x Kp, shared by actor and both critics, with its own optimizer),
task parameters theta_i = Phi w_i. The networks see the state only; the task enters through w
alone. A task whose loss explodes is masked and its w_i reset to a random convex combination
of the healthy tasks' rows (`PaCo.extreme_tasks`, `convex_reset`).
"""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor, nn

from taper.config import Config
from taper.methods.base import Method
from taper.networks import Body, CompositionalLinear, TaskGroups


class PaCo(Method):
    """PaCo: compositional layers everywhere, task only through w; extreme-loss reset.

    w_i starts uniform on the simplex (a flat Dirichlet draw): with the Kp identical sets every
    task starts at exactly the shared init (sum_k w_ik = 1) while unequal rows break the
    symmetry between the sets. (PaCo's code draws w like an nn.Linear(T, Kp) weight.)
    """

    def __init__(self, cfg: Config, obs_dim: int, num_tasks: int) -> None:
        super().__init__(cfg, obs_dim, num_tasks)
        self.feature_dim = obs_dim
        self.num_sets = cfg.num_param_sets
        self.threshold = cfg.extreme_loss_threshold
        draws = -torch.rand(num_tasks, cfg.num_param_sets).clamp_min(1e-12).log()
        self.w = nn.Parameter(draws / draws.sum(dim=1, keepdim=True))

    def features(self, obs: Tensor, groups: TaskGroups) -> tuple[Tensor, Tensor | None]:
        return obs, None

    def body(self, in_dim: int, out_dim: int, ensemble: int, layer_norm: bool = False) -> Body:
        layer = partial(CompositionalLinear, ensemble=ensemble, num_sets=self.num_sets)
        return Body(layer, in_dim, self.hidden_sizes, out_dim, layer_norm)

    def task_weights(self) -> Tensor:
        return self.w

    def prefers_grouped(self, rows: int, tasks_present: int) -> bool:
        """Grouped costs (T' Kp + B) in*out multiply-adds a layer, general Kp B in*out: grouped
        wins once a task has more than Kp / (Kp - 1) rows on average (updates), general for one
        row per task (acting on a vector env); bench_update.py agrees."""
        return rows * (self.num_sets - 1) > tasks_present * self.num_sets

    def optimizer_groups(self, cfg: Config) -> dict[str, tuple[list[nn.Parameter], float]]:
        return {"task_weights": ([self.w], cfg.lr)}

    def extreme_tasks(self, sample_loss: Tensor, groups: TaskGroups) -> Tensor:
        """Tasks in the batch whose mean loss exceeds `extreme_loss_threshold`."""
        counts = groups.one_hot.sum(dim=0)
        task_loss = (groups.one_hot.T @ sample_loss.detach()) / counts.clamp_min(1.0)
        return (task_loss > self.threshold) & (counts > 0)

    @torch.no_grad()
    def reset_tasks(self, extreme: Tensor, generator: torch.Generator) -> None:
        t = extreme.shape[0]
        uniforms = torch.rand(t, t, generator=generator, device=self.w.device)
        self.w.copy_(convex_reset(self.w, extreme, uniforms))


def convex_reset(w: Tensor, extreme: Tensor, uniforms: Tensor) -> Tensor:
    """PaCo's reset: each extreme task's w row becomes a random convex combination of healthy rows.

    w (T, Kp); extreme (T,) bool; uniforms (T, T) in [0, 1), row t weighing the healthy rows
    for task t (L1-normalised over the healthy tasks). Healthy rows come back unchanged, and
    so does everything when no task is healthy.
    """
    healthy = (~extreme).to(w.dtype)
    mix = uniforms * healthy
    mix = mix / mix.sum(dim=1, keepdim=True).clamp_min(torch.finfo(w.dtype).tiny)
    replace = extreme & (healthy.sum() > 0)
    return torch.where(replace[:, None], mix @ w, w)
