"""Layers of the actor and critic bodies, shared by every method (`taper.methods`).

Shapes. A body maps `(x, task_weights, groups)` to `y` with an ensemble axis in front: x is
(B, in) or (E, B, in), y is (E, B, out). The actor is one body with E = 1; the twin critics
are one body with E = 2, so both critics run in one batched matmul per layer.

- `Linear`: E independent affine maps, the plain MLP layer.
- `CompositionalLinear` (PaCo, Sun et al. 2022): Kp parameter sets Phi = [phi_1 .. phi_Kp],
  task parameters theta_i = Phi w_i for the row w_i of the task-weight table w.
- `TaskLinear`: one affine map per task (independent single-task networks): a compositional
  layer whose task weights are fixed to the identity, Kp = T, so theta_t = phi_t.
- `Body`: ReLU hidden layers and a linear head of one of these layers.
- `TaskGroups`: which task each row of a batch belongs to.

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
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn



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


def ensemble_input(x: Tensor, ensemble: int) -> Tensor:
    """(B, in) -> (E, B, in) as a view (no copy), (E, B, in) unchanged: every layer then takes
    one batched `baddbmm`. A broadcasting `matmul` of (B, in) with (E, in, out) plus the bias
    costs 1.75x as much forward and backward on the CPU (the critics' first layer; README
    "Update cost per method")."""
    return x.expand(ensemble, -1, -1) if x.dim() == 2 else x


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
        return torch.baddbmm(bias, ensemble_input(x, weight.shape[0]), weight)


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
        x = ensemble_input(x, weight.shape[1])
        rows = torch.split(x, [n for n in groups.sizes if n], dim=-2)
        tasks = zip(rows, weight.unbind(0), bias.unbind(0))             # unbind: one backward op
        parts = [torch.baddbmm(bt, r, wt) for r, wt, bt in tasks]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-2)

    def general(self, x: Tensor, task_weights: Tensor, one_hot: Tensor) -> Tensor:
        """Any row order: every row through all Kp sets, then mixed with its task's w."""
        mix = one_hot @ task_weights                                     # (B, Kp)
        y = torch.matmul(x, self.weight) + self.bias                     # (Kp, E, B, out)
        return torch.einsum("bk,kebo->ebo", mix, y)


class TaskLinear(CompositionalLinear):
    """One affine map per task: `CompositionalLinear` with w fixed to the identity (Kp = T).

    weight (T, E, in, out) and bias (T, E, 1, out); row of task t: y = x W_t + b_t. Each task's
    map has its own nn.Linear-style init (independent networks, not copies). Grouped path: the
    stored maps of the tasks present, nothing composed; general path: every row through all T
    maps, then the row's own picked by its one-hot. `task_weights` is ignored.
    """

    def __init__(self, in_dim: int, out_dim: int, ensemble: int = 1, num_tasks: int = 1) -> None:
        nn.Module.__init__(self)
        bound = in_dim ** -0.5
        self.weight = nn.Parameter(
            torch.empty(num_tasks, ensemble, in_dim, out_dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(
            torch.empty(num_tasks, ensemble, 1, out_dim).uniform_(-bound, bound))

    def params(self, task_weights: Tensor | None,
               groups: TaskGroups) -> tuple[Tensor, Tensor] | None:
        """Grouped path: the maps of the tasks present, (T', E, in, out), (T', E, 1, out)."""
        if groups.sizes is None:
            return None
        if groups.present is None:
            return self.weight, self.bias
        return self.weight[groups.present], self.bias[groups.present]

    def general(self, x: Tensor, task_weights: Tensor | None, one_hot: Tensor) -> Tensor:
        y = torch.matmul(x, self.weight) + self.bias                     # (T, E, B, out)
        return torch.einsum("bt,tebo->ebo", one_hot, y)


class Body(nn.Module):
    """ReLU hidden layers and a linear head, every one built by `layer(in_dim, out_dim)`.

    layer_norm: each hidden layer's output h normalised over its width before the ReLU,
    (h - mean(h)) / sqrt(var(h) + 1e-5) (Ba et al. 2016, without gain or bias: the next layer
    scales), so no parameter is added and a checkpoint's shapes do not change.
    """

    def __init__(self, layer: Callable[[int, int], nn.Module], in_dim: int,
                 hidden_sizes: tuple[int, ...], out_dim: int, layer_norm: bool = False) -> None:
        super().__init__()
        dims = (in_dim, *hidden_sizes, out_dim)
        self.layers = nn.ModuleList(layer(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.layer_norm = layer_norm

    def params(self, task_weights: Tensor | None, groups: TaskGroups) -> list:
        """Every layer's parameters for `groups` (compositional layers: composed once), to pass
        to several forwards on the same batch; detach them for a forward that must not train
        this body."""
        return [layer.params(task_weights, groups) for layer in self.layers]

    def forward(self, x: Tensor, task_weights: Tensor | None, groups: TaskGroups,
                params: list | None = None) -> Tensor:
        params = params or [None] * len(self.layers)
        for layer, p in zip(self.layers[:-1], params):
            x = layer(x, task_weights, groups, p)
            if self.layer_norm:
                x = F.layer_norm(x, x.shape[-1:])
            x = torch.relu(x)
        return self.layers[-1](x, task_weights, groups, params[-1])


def detached(params: list) -> list:
    """`Body.params` cut from the graph: a forward through them trains nothing of the body."""
    return [None if p is None else tuple(t.detach() for t in p) for p in params]
