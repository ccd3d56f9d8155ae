"""PCGrad (Yu et al. 2020, "Gradient Surgery for Multi-Task Learning", Algorithm 1) on MT-SAC.

The network is MT-SAC's ([s, one_hot(i)] into plain MLPs, as in facebookresearch/mtrl's PCGrad
agent); only the backward differs (`PCGrad.backward`, the `Method` hook `Agent._step` calls).
For the critics and for the actor separately (each network is trained by its own loss), with
L_i = the task's share of the batch mean (sum of task i's per-sample losses / K, so sum_i L_i is
the plain loss):

    g_i = grad L_i                             all T at once: one vmapped backward
                                               (`torch.autograd.grad(is_grads_batched=True)`)
    for each task i, for j != i in a random order (uniforms from the agent's generator):
        if g_i' . g_j < 0:  g_i' -= (g_i' . g_j) / |g_j|^2 g_j      (g_j the original gradient)
    grad = sum_i g_i'

With no conflict this is the plain gradient. The sum rather than mtrl's mean keeps the step of
a conflict-free batch equal to MT-SAC's (with K/T rows per task mtrl's per-task means and mean
give the same number). Tasks absent from the batch have g_i = 0 and change nothing. alpha:
each task's log alpha_i gets gradient from task i's rows only, so g_i . g_j = 0 and the
projection is the identity; it takes the plain gradient (mtrl projects it too, to no effect).
Reference code: tianheyu927/PCGrad (TensorFlow), WeiChengTseng/Pytorch-PCGrad,
facebookresearch/mtrl `mtrl/agent/pcgrad.py`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from taper.methods.mtsac import MTSAC
from taper.networks import TaskGroups

SURGERY = ("critic", "actor")
"""The networks whose per-task gradients are projected, each with its own loss."""


class PCGrad(MTSAC):
    """MT-SAC's network; critic and actor gradients by gradient surgery (module docstring)."""

    def backward(self, total: Tensor, per_sample: dict[str, Tensor], groups: TaskGroups,
                 parameters: dict[str, list[nn.Parameter]], generator: torch.Generator) -> None:
        rest = total
        for name in (n for n in SURGERY if n in per_sample):      # critic-first: one at a time
            loss, params = per_sample[name], parameters[name]
            task_loss = groups.one_hot.T @ loss / loss.shape[0]        # (T,), sums to loss.mean()
            grads = task_gradients(task_loss, params)
            uniforms = torch.rand(grads.shape[0], grads.shape[0], generator=generator,
                                  device=grads.device, dtype=grads.dtype)
            merged = project_conflicting(grads, uniforms).sum(dim=0)
            for p, g in zip(params, torch.split(merged, [p.numel() for p in params])):
                p.grad = g.view_as(p)
            rest = rest - loss.mean()
        others = [p for name, params in parameters.items() if name not in SURGERY
                  for p in params]
        rest.backward(inputs=others)              # alpha (and any other loss): plain gradient


def task_gradients(task_loss: Tensor, params: list[nn.Parameter]) -> Tensor:
    """(T, P) gradient of each of the T losses with respect to the P flattened `params`.

    One vmapped backward over the rows of the identity (no T separate passes); the graph is
    kept for the backward of the remaining losses.
    """
    t = task_loss.shape[0]
    eye = torch.eye(t, device=task_loss.device, dtype=task_loss.dtype)
    grads = torch.autograd.grad(task_loss, params, grad_outputs=eye, is_grads_batched=True,
                                retain_graph=True)
    return torch.cat([g.reshape(t, -1) for g in grads], dim=1)


def project_conflicting(grads: Tensor, uniforms: Tensor) -> Tensor:
    """PCGrad's projection (Yu et al. 2020, Alg. 1): (T, P) gradients -> (T, P) projected ones.

    Row i visits the other rows j in the order of uniforms[i] (ascending; (T, T) in [0, 1),
    the diagonal ignored) and, where it conflicts with the original g_j (g_i' . g_j < 0),
    removes its component along g_j: g_i' -= (g_i' . g_j) / |g_j|^2 g_j. Zero rows (absent
    tasks) never conflict. All rows advance together, one other row each per step.
    """
    t = grads.shape[0]
    diagonal = torch.eye(t, dtype=torch.bool, device=grads.device)
    order = torch.argsort(uniforms.masked_fill(diagonal, 2.0), dim=1)[:, :t - 1]
    squared = grads.square().sum(dim=1).clamp_min(torch.finfo(grads.dtype).tiny)
    projected = grads.clone()
    for step in range(t - 1):
        j = order[:, step]
        other = grads[j]
        dot = (projected * other).sum(dim=1)
        projected = projected - (dot.clamp_max(0.0) / squared[j])[:, None] * other
    return projected
