"""MT-SAC: the state and the task one-hot, [s, one_hot(i)], into plain MLPs."""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor

from taper.config import Config
from taper.methods.base import Method
from taper.networks import Body, Linear, TaskGroups


class MTSAC(Method):
    """MT-SAC: [s, one_hot(i)] into plain MLPs; no extra parameters or losses."""

    def __init__(self, cfg: Config, obs_dim: int, num_tasks: int) -> None:
        super().__init__(cfg, obs_dim, num_tasks)
        self.feature_dim = obs_dim + num_tasks

    def features(self, obs: Tensor, groups: TaskGroups) -> tuple[Tensor, Tensor | None]:
        return torch.cat([obs, groups.one_hot], dim=-1), None

    def body(self, in_dim: int, out_dim: int, ensemble: int, layer_norm: bool = False) -> Body:
        return Body(partial(Linear, ensemble=ensemble), in_dim, self.hidden_sizes, out_dim,
                    layer_norm)
