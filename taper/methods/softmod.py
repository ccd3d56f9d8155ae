"""Soft Modularization ("softmod", Yang et al. 2020, "Multi-Task Reinforcement Learning with
Soft Modularization"), after the authors' code (RchalYang/Soft-Module,
`ModularGatedCascadeCondNet` and the `temp_reweight` of its MT-SAC).

Each of actor and critics is one `SoftModularBody`; for a row of task i with input x (the state;
the critics add the action):

    f   = base(x)                     MLP, widths `hidden_sizes`, no activation on its output
    z   = W_z one_hot(i)              the task embedding, width of f
    e   = routing trunk(z * f)        `routing_layers` linear layers of `module_width`, ReLU
                                      between (none: e = z * f)
    p^1 = softmax(W_1 relu(e))        (M, M): row j weighs the modules of layer 1 for module j
                                      of layer 2
    p^l = softmax(W_l relu(U_l [p^1 .. p^(l-1)] * e)),  l = 2 .. L - 1: conditioned on the
                                      routing probabilities before it
    p^L = the same with M outputs: the weights of the last layer's modules
    h^1_k = m^1_k(relu(f)),           M modules of width `module_width` per layer, L layers
    h^l_j = m^l_j(relu(sum_k p^(l-1)_jk h^(l-1)_k))
    y   = W_out relu(sum_k p^L_k h^L_k)

(M = `num_modules`, L = `module_layers`; the original uses 2 x 2 modules of 256, two routing
layers of 256 and a 400, 400 base for MT10, 4 x 4 of 128 for MT50.) All softmaxes are over the
modules of the layer below, so every routing row sums to 1. Each layer is `Linear` with the
ensemble axis, so the twin critics run batched as elsewhere; inits are nn.Linear's.

Implemented as in the original code, not facebookresearch/mtrl's simplified version (which
drops the last routing p^L and the loss weighting, and is reported to do worse): the last
layer's modules are mixed by p^L, and each task's critic and actor losses are weighed by
T softmax(-log alpha)_i (`task_loss_weights`), so tasks whose temperature is still high (not
yet learned) weigh less. Not taken over: batch norm in the modules (off in the original's
configs) and its special last-layer init.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from taper.config import Config
from taper.methods.base import Method
from taper.networks import Linear, TaskGroups


class SoftModularization(Method):
    """Soft Modularization: a routed modular body for actor and critics, per-task loss weights."""

    def __init__(self, cfg: Config, obs_dim: int, num_tasks: int) -> None:
        super().__init__(cfg, obs_dim, num_tasks)
        self.feature_dim = obs_dim
        self.sizes = dict(num_modules=cfg.num_modules, module_layers=cfg.module_layers,
                          module_width=cfg.module_width, routing_layers=cfg.routing_layers)

    def features(self, obs: Tensor, groups: TaskGroups) -> tuple[Tensor, Tensor | None]:
        return obs, None

    def body(self, in_dim: int, out_dim: int, ensemble: int,
             layer_norm: bool = False) -> SoftModularBody:
        """The modular body; `Config` refuses layer_norm for softmod, so it is always False."""
        return SoftModularBody(in_dim, out_dim, ensemble, self.num_tasks, self.hidden_sizes,
                               **self.sizes)

    def task_loss_weights(self, log_alpha: Tensor) -> Tensor:
        """T softmax(-log alpha): (T,) weights with mean 1 (Soft-Module's `temp_reweight`)."""
        return log_alpha.shape[0] * torch.softmax(-log_alpha, dim=0)


class Modules(nn.Module):
    """M modules of one layer, each E independent affine maps: weight (M, E, in, out)."""

    def __init__(self, in_dim: int, out_dim: int, ensemble: int, num_modules: int) -> None:
        super().__init__()
        bound = in_dim ** -0.5
        shape = (num_modules, ensemble)
        self.weight = nn.Parameter(torch.empty(*shape, in_dim, out_dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(*shape, 1, out_dim).uniform_(-bound, bound))

    def forward(self, x: Tensor) -> Tensor:
        """x (E, B, in), the same input to every module, or (M, E, B, in) -> (M, E, B, out)."""
        return torch.matmul(x, self.weight) + self.bias


class SoftModularBody(nn.Module):
    """Base, task embedding, routing network and M x L modules (module docstring).

    Called like `Body`: (x (B, in) or (E, B, in), task_weights (ignored), groups) -> (E, B, out);
    the task enters through `groups.one_hot`.
    """

    def __init__(self, in_dim: int, out_dim: int, ensemble: int, num_tasks: int,
                 hidden_sizes: tuple[int, ...], num_modules: int, module_layers: int,
                 module_width: int, routing_layers: int) -> None:
        super().__init__()
        dims = (in_dim, *hidden_sizes)
        width = hidden_sizes[-1]
        m, e = num_modules, ensemble
        self.num_modules = m
        self.base = nn.ModuleList(Linear(a, b, e) for a, b in zip(dims[:-1], dims[1:]))
        self.embed = Linear(num_tasks, width, e)
        trunk = (width, *[module_width] * routing_layers)
        self.trunk = nn.ModuleList(Linear(a, b, e) for a, b in zip(trunk[:-1], trunk[1:]))
        gate = trunk[-1]
        self.routes = nn.ModuleList(Linear(gate, m * m if layer < module_layers - 1 else m, e)
                                    for layer in range(module_layers))
        self.conditions = nn.ModuleList(Linear(layer * m * m, gate, e)
                                        for layer in range(1, module_layers))
        widths = (width, *[module_width] * module_layers)
        self.layers = nn.ModuleList(Modules(a, b, e, m) for a, b in zip(widths[:-1], widths[1:]))
        self.head = Linear(module_width, out_dim, e)

    def params(self, task_weights: Tensor | None, groups: TaskGroups) -> list:
        """Nothing to compose: `Body.params`' interface, an empty list."""
        return []

    def routing(self, f: Tensor, one_hot: Tensor) -> list[Tensor]:
        """[p^1 .. p^L]: (E, B, M, M) for the layers between modules, (E, B, M) for the last."""
        g = self.embed(one_hot, None, None) * f
        for layer in self.trunk:
            g = layer(torch.relu(g), None, None)
        probs: list[Tensor] = []
        for n, route in enumerate(self.routes):
            if n == 0:
                cond = torch.relu(g)
            else:
                flat = torch.cat([p.flatten(-2) for p in probs], dim=-1)
                cond = torch.relu(self.conditions[n - 1](flat, None, None) * g)
            logits = route(cond, None, None)
            if n < len(self.routes) - 1:
                logits = logits.unflatten(-1, (self.num_modules, self.num_modules))
            probs.append(torch.softmax(logits, dim=-1))
        return probs

    def forward(self, x: Tensor, task_weights: Tensor | None, groups: TaskGroups,
                params: list | None = None) -> Tensor:
        f = x
        for n, layer in enumerate(self.base):
            f = layer(torch.relu(f) if n else f, None, None)
        probs = self.routing(f, groups.one_hot)
        h = self.layers[0](torch.relu(f))                                # (M, E, B, H)
        for modules, p in zip(self.layers[1:], probs[:-1]):
            h = modules(torch.relu(torch.einsum("ebjk,kebh->jebh", p, h)))
        mixed = torch.einsum("ebk,kebh->ebh", probs[-1], h)
        return self.head(torch.relu(mixed), None, None)
