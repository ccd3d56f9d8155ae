"""The multi-task methods (`Config.method`), one small class each, all answering the questions
of `Method` (what the networks see, which layer they are built of, which extra parameters and
losses there are):

- `MTSAC` ("mtsac"): the state and the task one-hot into plain MLPs.
- `PaCo` ("paco", Sun et al. 2022): compositional layers, the task only through w.
- `SharedUnique` ("taper", the paper): PaCo on [s, u], u = f(s) trained by the triplet loss.
- `Single` ("single"): one independent network per task, nothing shared.
- `PCGrad` ("pcgrad", Yu et al. 2020): MT-SAC's network, per-task gradients projected.
- `SoftModularization` ("softmod", Yang et al. 2020): a routing network over modules.
- `CARE` ("care", Sodhani et al. 2021): encoders of s mixed by attention from a context made
  from an embedding of the task's written description.
"""

from __future__ import annotations

from taper.config import Config
from taper.methods.base import Method
from taper.methods.care import CARE
from taper.methods.mtsac import MTSAC
from taper.methods.paco import PaCo, convex_reset
from taper.methods.pcgrad import PCGrad, project_conflicting
from taper.methods.shared_unique import SharedUnique, triplet_loss, triplet_rows
from taper.methods.single import Single
from taper.methods.softmod import SoftModularization

METHODS: dict[str, type[Method]] = {"mtsac": MTSAC, "paco": PaCo, "taper": SharedUnique,
                                     "single": Single, "pcgrad": PCGrad,
                                     "softmod": SoftModularization, "care": CARE}

__all__ = ["CARE", "METHODS", "MTSAC", "Method", "PCGrad", "PaCo", "SharedUnique", "Single",
           "SoftModularization", "convex_reset", "make_method", "project_conflicting",
           "triplet_loss", "triplet_rows"]


def make_method(cfg: Config, obs_dim: int, num_tasks: int,
                task_names: tuple[str, ...] | None = None) -> Method:
    """The method object named by `cfg.method`; `task_names` go to those that need them."""
    method = METHODS[cfg.method]
    if method.needs_task_names:
        return method(cfg, obs_dim, num_tasks, task_names=task_names)
    return method(cfg, obs_dim, num_tasks)
