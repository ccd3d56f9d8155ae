"""Single-task SAC ("single"): one independent SAC per task, trained side by side.

Every layer of actor and critics is a `TaskLinear`: task i has its own weights in every layer
(and its own alpha, as every method here), no parameter is shared, so a loss on task i's rows
never moves a parameter of task j (tests/test_methods.py). The networks see the state only;
the task picks the network. One process, one replay, one Adam per network: Adam's moments are
elementwise, so each task's slice follows its own Adam (only the step count, for the bias
correction, is common). The papers' single-task baseline is 3x400 (`--hidden-sizes`), each
SAC run alone on its task (Yu et al. 2019, Meta-World; Sun et al. 2022, PaCo, Table 1).
"""

from __future__ import annotations

from functools import partial

from torch import Tensor

from taper.config import Config
from taper.methods.base import Method
from taper.networks import Body, TaskGroups, TaskLinear


class Single(Method):
    """Independent per-task networks: every layer a `TaskLinear`, the state as input."""

    def __init__(self, cfg: Config, obs_dim: int, num_tasks: int) -> None:
        super().__init__(cfg, obs_dim, num_tasks)
        self.feature_dim = obs_dim

    def features(self, obs: Tensor, groups: TaskGroups) -> tuple[Tensor, Tensor | None]:
        return obs, None

    def body(self, in_dim: int, out_dim: int, ensemble: int, layer_norm: bool = False) -> Body:
        layer = partial(TaskLinear, ensemble=ensemble, num_tasks=self.num_tasks)
        return Body(layer, in_dim, self.hidden_sizes, out_dim, layer_norm)

    def prefers_grouped(self, rows: int, tasks_present: int) -> bool:
        """Grouped: each row through its own task's map (B in*out multiply-adds a layer, one
        matmul per task present); general: every row through all T maps (T B in*out, one
        batched matmul). Grouped for update batches; general for one row per task (acting on a
        vector env), where the per-task calls cost more than the extra multiply-adds
        (bench_update.py: act/single 2.25 ms grouped, 1.64 ms general at cpu-hour)."""
        return rows > tasks_present
