"""The paper's network ("taper", Fig. 2): PaCo's shared features plus unique features.

Wiring, per state s of task i:

    u = f(s)                                 f: MLP  obs_dim -> unique_hidden_sizes -> unique_dim,
                                                fed the raw state (no one-hot); with
                                                `Config.unique_normalize` f(s) / ||f(s)||, on
                                                the unit sphere as FaceNet's triplet embedding
    actor    pi(. | s, i) = g_actor([s, u];  theta_i = Phi_actor  w_i)
    critics  Q_j(s, a, i) = g_Qj([s, u, a];  theta_i = Phi_Qj     w_i),  j = 1, 2

i.e. the shared-feature branch of Fig. 2 is PaCo's compositional network and its input is the
concatenation of the state with the unique feature u. f has its own Adam and is trained by the
triplet loss of Eq. 1 (Algorithm 1, line 13) and, with `Config.unique_sac_grad` (the default),
by the actor's and critics' losses too; with it off SAC sees `u.detach()` and only Eq. 1
shapes f.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from taper.config import Config
from taper.methods.paco import PaCo
from taper.networks import TaskGroups


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
        self.normalize = cfg.unique_normalize

    def features(self, obs: Tensor, groups: TaskGroups) -> tuple[Tensor, Tensor]:
        u = self.unique(obs)
        if self.normalize:
            u = F.normalize(u, dim=-1)
        return torch.cat([obs, u if self.sac_grad else u.detach()], dim=-1), u

    def optimizer_groups(self, cfg: Config) -> dict[str, tuple[list[nn.Parameter], float]]:
        return {**super().optimizer_groups(cfg),
                "unique": (list(self.unique.parameters()), cfg.unique_lr)}

    def auxiliary_loss(self, unique: Tensor, groups: TaskGroups,
                       generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
        return triplet_loss(unique, groups, self.margin, generator)


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
