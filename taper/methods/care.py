"""CARE (Sodhani et al. 2021, "Multi-Task Reinforcement Learning with Context-based
Representations"; code: facebookresearch/mtrl): the task enters through a context computed
from a language model's embedding of a written description of the task.

Wiring, per state s of task i with frozen description embedding e_i (`task_descriptions`):

    z_i     = g(e_i)                  g: MLP  D -> context_hidden_sizes -> context_dim
    alpha_i = softmax(W z_i + b)      (num_encoders,) attention over the encoders
    h       = sum_k alpha_ik f_k(s)   f_k: MLP  obs_dim -> encoder_hidden_sizes -> encoder_dim
    actor   pi(. | [h, z_i]),  critics Q_j([h, z_i], a)      plain MLPs (`Linear` layers)

e is a buffer (never trained, saved in checkpoints). g, W and the encoders f_k are trained by
the critic loss only: the actor sees the features detached (`actor_input`), as mtrl detaches
the encoder and the task encoding in the actor update.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor, nn

from taper.config import Config
from taper.methods.base import Method
from taper.networks import Body, Linear, TaskGroups
from taper.task_descriptions import task_embeddings


class CARE(Method):
    """CARE: [mixture of state encoders, task context] into plain MLPs; see the module docstring.

    task_names: the suite's task names in task-id order (ValueError naming a task without a
    description, or when missing).
    """

    needs_task_names = True

    def __init__(self, cfg: Config, obs_dim: int, num_tasks: int,
                 task_names: tuple[str, ...] | None = None) -> None:
        super().__init__(cfg, obs_dim, num_tasks)
        if task_names is None or len(task_names) != num_tasks:
            raise ValueError(f"method='care' needs the names of the {num_tasks} tasks, got "
                             f"{task_names!r}")
        embeddings = torch.from_numpy(task_embeddings(tuple(task_names)))
        self.register_buffer("embeddings", embeddings)                   # (T, D), frozen
        dims = (embeddings.shape[1], *cfg.context_hidden_sizes, cfg.context_dim)
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        self.context = nn.Sequential(*layers[:-1])
        self.attention = nn.Linear(cfg.context_dim, cfg.num_encoders)
        self.encoders = Body(partial(Linear, ensemble=cfg.num_encoders), obs_dim,
                             tuple(cfg.encoder_hidden_sizes), cfg.encoder_dim)
        self.feature_dim = cfg.encoder_dim + cfg.context_dim

    def task_context(self) -> tuple[Tensor, Tensor]:
        """(z (T, context_dim), attention weights (T, num_encoders), each row summing to 1)."""
        z = self.context(self.embeddings)
        return z, torch.softmax(self.attention(z), dim=-1)

    def features(self, obs: Tensor, groups: TaskGroups) -> tuple[Tensor, Tensor | None]:
        z, weights = self.task_context()
        encodings = self.encoders(obs, None, groups)                       # (K, B, encoder_dim)
        mixed = torch.einsum("bk,kbo->bo", weights[groups.ids], encodings)
        return torch.cat([mixed, z[groups.ids]], dim=-1), None

    def actor_input(self, features: Tensor) -> Tensor:
        return features.detach()

    def body(self, in_dim: int, out_dim: int, ensemble: int, layer_norm: bool = False) -> Body:
        return Body(partial(Linear, ensemble=ensemble), in_dim, self.hidden_sizes, out_dim,
                    layer_norm)

    def optimizer_groups(self, cfg: Config) -> dict[str, tuple[list[nn.Parameter], float]]:
        return {"care": (list(self.parameters()), cfg.lr)}
