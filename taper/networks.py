"""Actor and critic bodies of the three methods, their layers, and the triplet loss (Eq. 1).

Shapes. A body maps `(x, task_weights, groups)` to `y` with an ensemble axis in front: x is
(B, in) or (E, B, in), y is (E, B, out). The actor is one body with E = 1; the twin critics
are one body with E = 2, so both critics run in one batched matmul per layer.

Methods (`Config.method`), one small class each, all answering the same questions (what the
networks see, which layer they are built of, which extra parameters and losses there are):

- `MTSAC` ("mtsac"): the state and the task one-hot, [s, one_hot(i)], into plain MLPs.
- `PaCo` ("paco", Sun et al. 2022): every layer of actor and critics, hidden and head, is a
  `CompositionalLinear`: Kp parameter sets Phi = [phi_1 .. phi_Kp], one task-weight row w_i per
  task (the table w, num_tasks x Kp, shared by actor and both critics, with its own
  optimizer), task parameters theta_i = Phi w_i. The networks see the state only; the task
  enters through w alone. A task whose loss explodes is masked and its w_i reset to a random
  convex combination of the healthy tasks' rows (`PaCo.extreme_tasks`, `convex_reset`).
- `SharedUnique` ("taper", the paper's network, Fig. 2): PaCo's shared features plus unique
  features. Wiring, per state s of task i:

      u = f(s)                                 f: MLP  obs_dim -> unique_hidden_sizes -> unique_dim,
                                                  fed the raw state (no one-hot)
      actor    pi(. | s, i) = g_actor([s, u];  theta_i = Phi_actor  w_i)
      critics  Q_j(s, a, i) = g_Qj([s, u, a];  theta_i = Phi_Qj     w_i),  j = 1, 2

  i.e. the shared-feature branch of Fig. 2 is PaCo's compositional network and its input is
  the concatenation of the state with the unique feature u. f is trained only by the triplet
  loss of Eq. 1 (Algorithm 1, line 13) with its own Adam; SAC sees `u.detach()` unless
  `Config.unique_sac_grad` (ablation) lets the SAC gradients into f as well.

The compositional layer has two paths with the same numbers (tests/test_networks.py):
- grouped (`TaskGroups.sizes` set; rows contiguous and in task order, as the average, per
  and ta-per samplers deliver them): theta_t = Phi w_t composed once per task present, then
  one matmul per task group;
- general (any row order): every row through all Kp sets in one batched matmul, then the
  per-row mix with w of the row's task (Kp times the multiply-adds of the grouped path).
`benchmarks/bench_update.py` times both; the learner sorts ungrouped batches by task on the
host and takes the grouped path (see `taper.sac.Agent`).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from taper.config import Config


class TaskGroups(NamedTuple):
    """Which task each row of a batch belongs to.

    ids: (B,) int64 task index per row, on the networks' device.
    one_hot: (B, T) float32 one-hot of `ids`, on the device.
    sizes: rows per task 0..T-1 (zeros allowed) when the rows are grouped, i.e. contiguous and
        in ascending task order: compositional layers take the grouped path. None: the general
        path, any row order.
    present: grouped path with some task absent: (T',) int64 indices of the tasks present, on
        the device (made once here, not in every layer); None otherwise.
    """

    ids: Tensor
    one_hot: Tensor
    sizes: tuple[int, ...] | None = None
    present: Tensor | None = None


def task_groups(task_ids: Tensor, num_tasks: int, device: torch.device | str,
                grouped: bool = True) -> TaskGroups:
    """`TaskGroups` from host (CPU) task ids; no device-to-host transfer.

    grouped=True needs the ids in ascending order (ValueError otherwise; sort first).
    """
    if task_ids.device.type != "cpu" or task_ids.dim() != 1:
        raise ValueError(f"task_ids must be a 1-D CPU tensor, got shape {tuple(task_ids.shape)} "
                         f"on {task_ids.device}")
    ids = task_ids.to(torch.int64)
    if ids.numel() == 0:
        raise ValueError("task_ids is empty")
    if int(ids.min()) < 0 or int(ids.max()) >= num_tasks:
        raise ValueError(f"task ids must lie in [0, {num_tasks}), got [{int(ids.min())}, "
                         f"{int(ids.max())}]")
    sizes = present = None
    if grouped:
        if bool((ids[1:] < ids[:-1]).any()):
            raise ValueError("grouped=True needs task_ids in ascending order; sort the rows "
                             "by task or pass grouped=False")
        counts = torch.bincount(ids, minlength=num_tasks)
        sizes = tuple(counts.tolist())
        if 0 in sizes:
            present = torch.nonzero(counts).squeeze(1).to(device)
    ids = ids.to(device)
    one_hot = (ids[:, None] == torch.arange(num_tasks, device=ids.device)).to(torch.float32)
    return TaskGroups(ids, one_hot, sizes, present)


class Linear(nn.Module):
    """E independent affine maps (an ensemble of nn.Linear, same init): the plain MLP layer.

    weight (E, in, out), bias (E, 1, out); task_weights and groups are ignored.
    """

    def __init__(self, in_dim: int, out_dim: int, ensemble: int = 1) -> None:
        super().__init__()
        bound = in_dim ** -0.5
        self.weight = nn.Parameter(torch.empty(ensemble, in_dim, out_dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(ensemble, 1, out_dim).uniform_(-bound, bound))

    def params(self, task_weights: Tensor | None, groups: TaskGroups) -> tuple[Tensor, Tensor]:
        """(weight, bias) as stored: nothing to compose."""
        return self.weight, self.bias

    def forward(self, x: Tensor, task_weights: Tensor | None, groups: TaskGroups,
                params: tuple[Tensor, Tensor] | None = None) -> Tensor:
        weight, bias = self.params(task_weights, groups) if params is None else params
        if x.dim() == 2:
            return torch.matmul(x, weight) + bias
        return torch.baddbmm(bias, x, weight)


class CompositionalLinear(nn.Module):
    """PaCo's layer: y = sum_k w_tk (x W_k + b_k) = x theta_t, theta_t = Phi w_t, row of task t.

    weight (Kp, E, in, out) and bias (Kp, E, 1, out) hold the Kp parameter sets of each of
    the E ensemble members; the Kp sets start as copies of one nn.Linear-style init.
    task_weights: (T, Kp), the table w.
    """

    def __init__(self, in_dim: int, out_dim: int, ensemble: int = 1, num_sets: int = 5) -> None:
        super().__init__()
        bound = in_dim ** -0.5
        weight = torch.empty(ensemble, in_dim, out_dim).uniform_(-bound, bound)
        bias = torch.empty(ensemble, 1, out_dim).uniform_(-bound, bound)
        self.weight = nn.Parameter(weight.expand(num_sets, -1, -1, -1).clone())
        self.bias = nn.Parameter(bias.expand(num_sets, -1, -1, -1).clone())

    def params(self, task_weights: Tensor, groups: TaskGroups) -> tuple[Tensor, Tensor] | None:
        """Grouped path: (theta, bias) composed once per task present, (T', E, in, out) and
        (T', E, 1, out), for one or several forwards on the same groups. General path: None
        (each row mixes the Kp outputs itself)."""
        if groups.sizes is None:
            return None
        kp, e, i, o = self.weight.shape
        w = task_weights if groups.present is None else task_weights[groups.present]
        weight = (w @ self.weight.view(kp, -1)).view(-1, e, i, o)
        bias = (w @ self.bias.view(kp, -1)).view(-1, e, 1, o)
        return weight, bias

    def forward(self, x: Tensor, task_weights: Tensor, groups: TaskGroups,
                params: tuple[Tensor, Tensor] | None = None) -> Tensor:
        if groups.sizes is None:
            return self.general(x, task_weights, groups.one_hot)
        return self.grouped(x, groups, self.params(task_weights, groups) if params is None
                            else params)

    def grouped(self, x: Tensor, groups: TaskGroups, params: tuple[Tensor, Tensor]) -> Tensor:
        """Rows contiguous by task: one matmul per task group with its composed theta_t."""
        weight, bias = params
        rows = torch.split(x, [n for n in groups.sizes if n], dim=-2)
        tasks = zip(rows, weight.unbind(0), bias.unbind(0))             # unbind: one backward op
        if x.dim() == 2:
            parts = [torch.matmul(r, wt) + bt for r, wt, bt in tasks]
        else:
            parts = [torch.baddbmm(bt, r, wt) for r, wt, bt in tasks]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-2)

    def general(self, x: Tensor, task_weights: Tensor, one_hot: Tensor) -> Tensor:
        """Any row order: every row through all Kp sets, then mixed with its task's w."""
        mix = one_hot @ task_weights                                     # (B, Kp)
        y = torch.matmul(x, self.weight) + self.bias                     # (Kp, E, B, out)
        return torch.einsum("bk,kebo->ebo", mix, y)


class Body(nn.Module):
    """ReLU hidden layers and a linear head, every one built by `layer(in_dim, out_dim)`."""

    def __init__(self, layer: Callable[[int, int], nn.Module], in_dim: int,
                 hidden_sizes: tuple[int, ...], out_dim: int) -> None:
        super().__init__()
        dims = (in_dim, *hidden_sizes, out_dim)
        self.layers = nn.ModuleList(layer(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def params(self, task_weights: Tensor | None, groups: TaskGroups) -> list:
        """Every layer's parameters for `groups` (compositional layers: composed once), to pass
        to several forwards on the same batch; detach them for a forward that must not train
        this body."""
        return [layer.params(task_weights, groups) for layer in self.layers]

    def forward(self, x: Tensor, task_weights: Tensor | None, groups: TaskGroups,
                params: list | None = None) -> Tensor:
        params = params or [None] * len(self.layers)
        for layer, p in zip(self.layers[:-1], params):
            x = torch.relu(layer(x, task_weights, groups, p))
        return self.layers[-1](x, task_weights, groups, params[-1])


def detached(params: list) -> list:
    """`Body.params` cut from the graph: a forward through them trains nothing of the body."""
    return [None if p is None else tuple(t.detach() for t in p) for p in params]


class Method(nn.Module):
    """What sets one multi-task method apart: the networks' input, their layer, extra parameters
    and losses. The defaults here are "none"; the three methods below override what they use."""

    feature_dim: int
    """Width of `features(obs, groups)[0]`, the actor's input (critics add the action)."""

    def __init__(self, cfg: Config, obs_dim: int, num_tasks: int) -> None:
        super().__init__()
        self.num_tasks = num_tasks
        self.hidden_sizes = tuple(cfg.hidden_sizes)

    def features(self, obs: Tensor, groups: TaskGroups) -> tuple[Tensor, Tensor | None]:
        """(network input (B, feature_dim), unique features for `auxiliary_loss` or None)."""
        raise NotImplementedError

    def body(self, in_dim: int, out_dim: int, ensemble: int) -> Body:
        """A fresh actor (ensemble=1) or twin-critic (ensemble=2) body."""
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


class MTSAC(Method):
    """MT-SAC: [s, one_hot(i)] into plain MLPs; no extra parameters or losses."""

    def __init__(self, cfg: Config, obs_dim: int, num_tasks: int) -> None:
        super().__init__(cfg, obs_dim, num_tasks)
        self.feature_dim = obs_dim + num_tasks

    def features(self, obs: Tensor, groups: TaskGroups) -> tuple[Tensor, Tensor | None]:
        return torch.cat([obs, groups.one_hot], dim=-1), None

    def body(self, in_dim: int, out_dim: int, ensemble: int) -> Body:
        return Body(partial(Linear, ensemble=ensemble), in_dim, self.hidden_sizes, out_dim)


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

    def body(self, in_dim: int, out_dim: int, ensemble: int) -> Body:
        layer = partial(CompositionalLinear, ensemble=ensemble, num_sets=self.num_sets)
        return Body(layer, in_dim, self.hidden_sizes, out_dim)

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


class SharedUnique(PaCo):
    """The paper's network: PaCo on [s, u], u = f(s) trained by the triplet loss (Eq. 1)."""

    def __init__(self, cfg: Config, obs_dim: int, num_tasks: int) -> None:
        super().__init__(cfg, obs_dim, num_tasks)
        dims = (obs_dim, *cfg.unique_hidden_sizes, cfg.unique_dim)
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        self.unique = nn.Sequential(*layers[:-1])
        self.feature_dim = obs_dim + cfg.unique_dim
        self.margin = cfg.triplet_margin
        self.sac_grad = cfg.unique_sac_grad

    def features(self, obs: Tensor, groups: TaskGroups) -> tuple[Tensor, Tensor]:
        u = self.unique(obs)
        return torch.cat([obs, u if self.sac_grad else u.detach()], dim=-1), u

    def optimizer_groups(self, cfg: Config) -> dict[str, tuple[list[nn.Parameter], float]]:
        return {**super().optimizer_groups(cfg),
                "unique": (list(self.unique.parameters()), cfg.unique_lr)}

    def auxiliary_loss(self, unique: Tensor, groups: TaskGroups,
                       generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
        return triplet_loss(unique, groups, self.margin, generator)


METHODS: dict[str, type[Method]] = {"mtsac": MTSAC, "paco": PaCo, "taper": SharedUnique}


def make_method(cfg: Config, obs_dim: int, num_tasks: int) -> Method:
    """The method object named by `cfg.method`."""
    return METHODS[cfg.method](cfg, obs_dim, num_tasks)


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


def triplet_rows(groups: TaskGroups, draws: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Positive and negative row for every anchor row of the batch, from two uniforms per row.

    draws: (2, B) uniforms in [0, 1). The positive of row a is another row of a's task, the
    negative a row of another task, each uniform over the candidates. Returns (positive (B,),
    negative (B,), valid (B,) float), indices into the batch's rows; valid = 0 where a's task
    has a single row in the batch or no other task is present (the two picks are then
    meaningless).
    """
    b = groups.ids.shape[0]
    order = torch.argsort(groups.ids, stable=True)          # rows by task; identity when grouped
    counts = groups.one_hot.sum(dim=0).to(torch.int64)      # (T,)
    starts = torch.cumsum(counts, dim=0) - counts
    task = groups.ids[order]
    count, start = counts[task], starts[task]
    rank = torch.arange(b, device=order.device) - start       # position inside the task's run
    step = 1 + torch.minimum((draws[0] * (count - 1)).long(), (count - 2).clamp_min(0))
    positive = start + (rank + step) % count
    other = torch.minimum((draws[1] * (b - count)).long(), (b - count - 1).clamp_min(0))
    negative = torch.where(other < start, other, other + count).clamp_max(b - 1)
    valid = ((count >= 2) & (count < b)).to(draws.dtype)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(b, device=order.device)
    return order[positive][inverse], order[negative][inverse], valid[inverse]


def triplet_loss(u: Tensor, groups: TaskGroups, margin: float,
                 generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
    """Eq. 1 over the batch: mean of max(0, m + d(u_a, u_p) - d(u_a, u_n)), d Euclidean.

    Every row is an anchor, with a positive and a negative drawn by `triplet_rows` (two
    uniforms per row from `generator`, vectorised); invalid anchors are left out. Returns
    (loss, {"loss/triplet", "triplet/active_fraction"}), the latter the share of the anchors
    with a positive loss.
    """
    draws = torch.rand(2, u.shape[0], generator=generator, device=u.device, dtype=u.dtype)
    positive, negative, valid = triplet_rows(groups, draws)
    per_anchor = F.triplet_margin_loss(u, u[positive], u[negative], margin=margin,
                                       reduction="none")
    anchors = valid.sum().clamp_min(1.0)
    loss = (per_anchor * valid).sum() / anchors
    active = ((per_anchor > 0).to(u.dtype) * valid).sum() / anchors
    return loss, {"loss/triplet": loss.detach(), "triplet/active_fraction": active}
