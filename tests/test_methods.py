"""The baselines' defining properties: single's per-task networks are independent, PCGrad's
projection by hand, Soft Modularization's routing; every method x sampler on MT10-rand."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from taper.config import METHODS, SAMPLERS, Config
from taper.methods import PCGrad, project_conflicting
from taper.methods.softmod import SoftModularBody
from taper.networks import TaskLinear, task_groups
from taper.replay import Batch
from taper.sac import Agent
from taper.train import evaluate_run, train
from tests.test_sac import TARGETS, assert_round_trip_is_exact, bandit_means, make_batch

BASELINES = ("single", "pcgrad", "softmod")
OBS, ACT = 3, 2
IDS = np.repeat([0, 1, 2], 4)


def tiny(method: str, **overrides) -> Config:
    values = dict(method=method, hidden_sizes=(8, 8), num_modules=2, module_layers=3,
                  module_width=8, routing_layers=1, batch_size=12)
    return Config(**{**values, **overrides})


def networks(agent: Agent) -> dict[str, torch.Tensor]:
    return {f"{m}.{n}": p.detach().clone() for m in ("actor", "critic", "critic_target")
            for n, p in getattr(agent, m).named_parameters()}


# ---- every new method through the update ----------------------------------------------------

@pytest.mark.parametrize("order", ["joint", "critic-first"])
@pytest.mark.parametrize("method", BASELINES)
def test_one_update_changes_every_parameter_and_keeps_them_finite(method, order):
    agent = Agent(tiny(method, update_order=order), OBS, ACT, 3, "cpu")
    before = {**networks(agent), "log_alpha": agent.log_alpha.detach().clone()}
    metrics, td = agent.update(make_batch(IDS))
    after = {**networks(agent), "log_alpha": agent.log_alpha.detach().clone()}
    for name in before:
        assert torch.isfinite(after[name]).all(), name
        assert not torch.equal(before[name], after[name]), f"{name} did not change"
    assert td.shape == (12,) and np.all(np.isfinite(td))
    assert {"loss/critic", "loss/actor", "loss/alpha", "alpha/2"} <= set(metrics)
    assert "paco/resets" not in metrics


@pytest.mark.parametrize("method", BASELINES)
def test_state_dict_round_trip_gives_identical_updates(method):
    assert_round_trip_is_exact(
        Agent(tiny(method), OBS, ACT, 3, "cpu"), Agent(tiny(method, seed=7), OBS, ACT, 3, "cpu"),
        lambda seed: make_batch(IDS, seed=seed),
        np.random.default_rng(1).normal(size=(5, OBS)), np.array([0, 1, 2, 2, 0]))


@pytest.mark.parametrize("method, order", [*((m, "joint") for m in BASELINES),
                                           ("pcgrad", "critic-first")])
def test_sac_learns_each_tasks_target_action_in_a_one_step_bandit(method, order):
    """reward = -(a - target_i)^2, one-step episodes: pi's mean moves to each task's target
    (PCGrad's surgery also in the critic-first update, one network's gradients at a time).
    single's networks each learn from their own task's 16 rows of the 48, so they get twice
    the updates (after 600, seeds 0 and 1 left task 2 at 0.78 and 0.83 against 0.7)."""
    cfg = tiny(method, hidden_sizes=(32, 32), module_width=32, lr=1e-2, alpha_lr=1e-2,
               batch_size=48, update_order=order)
    updates = 1200 if method == "single" else 600
    np.testing.assert_allclose(bandit_means(cfg, updates), TARGETS, atol=0.1)


# ---- single: independent networks -----------------------------------------------------------

@pytest.mark.parametrize("grouped, absent", [(True, False), (True, True), (False, False)])
def test_task_linear_is_each_tasks_own_affine_map(grouped, absent):
    layer = TaskLinear(4, 3, ensemble=2, num_tasks=3)
    ids = np.array([0, 0, 2, 2, 2] if absent else [0, 1, 1, 2, 2])
    x = torch.randn(2, ids.size, 4, generator=torch.Generator().manual_seed(0))
    y = layer(x, None, task_groups(torch.from_numpy(ids), 3, "cpu", grouped=grouped))
    expected = torch.stack([(x[:, j, None] @ layer.weight[t] + layer.bias[t])[:, 0]
                            for j, t in enumerate(ids)], dim=1)
    torch.testing.assert_close(y, expected, rtol=1e-6, atol=1e-6)
    assert not torch.equal(layer.weight[0], layer.weight[1])       # independent inits


def test_a_loss_on_task_i_rows_leaves_every_parameter_of_task_j_untouched():
    """Two single agents, same seed, updated three times on batches that differ only in task
    0's rows: every parameter slice of tasks 1 and 2 (and their alpha) stays bit for bit equal,
    task 0's differ; and a gradient of task 1's rows alone is zero outside task 1's slices."""
    a, b = (Agent(tiny("single"), OBS, ACT, 3, "cpu") for _ in range(2))
    for seed in range(3):
        batch = make_batch(IDS, seed=seed)
        other = Batch(*(np.copy(x) for x in batch))
        other.rewards[IDS == 0] += 3.0
        other.observations[IDS == 0] *= -1.0
        a.update(batch)
        b.update(other)
    for (name, pa), pb in zip(networks(a).items(), networks(b).values()):
        assert torch.equal(pa[1:], pb[1:]), name
        assert not torch.equal(pa[0], pb[0]), name
    assert torch.equal(a.log_alpha[1:], b.log_alpha[1:])

    a.actor.zero_grad(set_to_none=True)
    a.critic.zero_grad(set_to_none=True)
    staged, groups, _ = a._stage(make_batch(IDS, seed=5))
    losses = a._losses(staged, groups)
    task1 = sum(loss[torch.from_numpy(IDS == 1)].sum() for loss in losses.per_sample.values())
    task1.backward()
    for name, p in [*a.actor.named_parameters(), *a.critic.named_parameters()]:
        assert torch.all(p.grad[[0, 2]] == 0), name
        assert torch.any(p.grad[1] != 0), name


# ---- PCGrad ----------------------------------------------------------------------------------

def test_pcgrad_projects_two_conflicting_gradients_as_computed_by_hand():
    """g1 = (1, 0), g2 = (-1, 1) conflict (g1.g2 = -1 < 0):
    g1' = g1 - (g1.g2)/|g2|^2 g2 = (1, 0) + 1/2 (-1, 1) = (0.5, 0.5),
    g2' = g2 - (g2.g1)/|g1|^2 g1 = (-1, 1) + (1, 0) = (0, 1); the update is g1' + g2'.
    The actor's (3, 1) and (1, 1) do not conflict: their plain sum. alpha: plain gradient."""
    method = PCGrad(Config(method="pcgrad"), OBS, 2)
    critic = torch.nn.Parameter(torch.zeros(2))
    actor = torch.nn.Parameter(torch.zeros(2))
    log_alpha = torch.nn.Parameter(torch.zeros(2))
    groups = task_groups(torch.tensor([0, 1]), 2, "cpu")
    g_critic = torch.tensor([[1.0, 0.0], [-1.0, 1.0]])
    g_actor = torch.tensor([[3.0, 1.0], [1.0, 1.0]])
    k = 2                                       # task losses are each task's share of the mean
    per_sample = {"critic": k * g_critic @ critic, "actor": k * g_actor @ actor,
                  "alpha": -log_alpha * torch.tensor([1.0, 2.0])}
    total = sum(loss.mean() for loss in per_sample.values())
    parameters = {"critic": [critic], "actor": [actor], "alpha": [log_alpha]}
    method.backward(total, per_sample, groups, parameters, torch.Generator().manual_seed(0))
    torch.testing.assert_close(critic.grad, torch.tensor([0.5, 1.5]))
    torch.testing.assert_close(actor.grad, torch.tensor([4.0, 2.0]))
    torch.testing.assert_close(log_alpha.grad, torch.tensor([-0.5, -1.0]))


def naive_projection(grads: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
    """Yu et al. 2020, Alg. 1, one task at a time; the others in the order of uniforms[i]."""
    out = grads.copy()
    for i in range(len(grads)):
        for j in sorted((j for j in range(len(grads)) if j != i), key=lambda j: uniforms[i, j]):
            dot = out[i] @ grads[j]
            if dot < 0:
                out[i] -= dot / (grads[j] @ grads[j]) * grads[j]
    return out


@pytest.mark.parametrize("seed", range(5))
def test_projection_matches_the_one_task_at_a_time_algorithm(seed):
    rng = np.random.default_rng(seed)
    grads = rng.normal(size=(5, 7))
    grads[3] = 0.0                                          # an absent task
    uniforms = rng.random((5, 5))
    projected = project_conflicting(torch.from_numpy(grads), torch.from_numpy(uniforms))
    np.testing.assert_allclose(projected.numpy(), naive_projection(grads, uniforms), atol=1e-12)
    assert np.all(projected.numpy()[3] == 0)


def gradients(agent: Agent) -> list[torch.Tensor]:
    """The actor's and critics' gradients of the last update (kept until the next one)."""
    return [p.grad.clone() for p in [*agent.actor.parameters(), *agent.critic.parameters()]]


def test_pcgrad_without_conflict_is_mtsac():
    """One task in the batch: nothing to project, PCGrad's gradient is MT-SAC's."""
    batch = make_batch(np.ones(8, dtype=np.int64))
    plain, surgery = (Agent(tiny(m), OBS, ACT, 3, "cpu") for m in ("mtsac", "pcgrad"))
    for (name, p), q in zip(networks(plain).items(), networks(surgery).values()):
        assert torch.equal(p, q), name
    plain.update(batch)
    surgery.update(batch)
    for p, q in zip(gradients(plain), gradients(surgery)):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(plain.log_alpha.grad, surgery.log_alpha.grad)


def test_pcgrad_changes_the_gradient_only_where_tasks_conflict():
    """Rewards +5 / -5 / 0 by task pull the critics' task gradients apart (some pairs conflict);
    the actor's task gradients all agree at this init (seed 0, log std tanh-rescaled, so the
    policy starts narrow and the entropy term pulls every task alike), so its gradient stays
    MT-SAC's."""
    batch = make_batch(IDS)
    batch.rewards[:] = np.array([5.0, -5.0, 0.0])[IDS]
    plain, surgery = (Agent(tiny(m, log_std_head="tanh"), OBS, ACT, 3, "cpu")
                      for m in ("mtsac", "pcgrad"))
    plain.update(batch)
    surgery.update(batch)
    actor = len(list(plain.actor.parameters()))
    pairs = list(zip(gradients(plain), gradients(surgery)))
    for p, q in pairs[:actor]:
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)
    assert any(not torch.allclose(p, q, rtol=1e-3, atol=1e-5) for p, q in pairs[actor:])


# ---- Soft Modularization ---------------------------------------------------------------------

def softmod_body(ensemble: int = 2) -> SoftModularBody:
    torch.manual_seed(0)
    return SoftModularBody(5, 3, ensemble, num_tasks=4, hidden_sizes=(8, 8), num_modules=3,
                           module_layers=3, module_width=6, routing_layers=2)


def test_routing_weights_are_distributions_per_row_and_differ_between_tasks():
    body = softmod_body()
    ids = torch.tensor([0, 1, 2, 3, 0])
    groups = task_groups(ids, 4, "cpu", grouped=False)
    f = torch.randn(2, 5, 8)
    probs = body.routing(f, groups.one_hot)
    assert [tuple(p.shape) for p in probs] == [(2, 5, 3, 3), (2, 5, 3, 3), (2, 5, 3)]
    for p in probs:
        assert torch.all(p >= 0)
        torch.testing.assert_close(p.sum(dim=-1), torch.ones(p.shape[:-1]))
    same_state = body.routing(f[:, :1].expand(2, 4, 8), groups.one_hot[:4])[0]
    assert not torch.allclose(same_state[:, 0], same_state[:, 1])   # the task routes


def test_gradients_reach_the_router_the_modules_and_the_base():
    body = softmod_body()
    groups = task_groups(torch.tensor([0, 1, 2, 3, 3]), 4, "cpu", grouped=False)
    y = body(torch.randn(5, 5), None, groups)
    assert y.shape == (2, 5, 3)
    y.square().sum().backward()
    for name, p in body.named_parameters():
        assert p.grad is not None and torch.any(p.grad != 0), name


def test_softmod_weighs_each_tasks_losses_by_t_softmax_of_minus_log_alpha():
    agent = Agent(tiny("softmod"), OBS, ACT, 3, "cpu")
    log_alpha = torch.tensor([0.0, -1.0, -2.0])
    weights = agent.method.task_loss_weights(log_alpha)
    torch.testing.assert_close(weights, 3 * torch.softmax(-log_alpha, dim=0))
    with torch.no_grad():
        agent.log_alpha.copy_(log_alpha)
    staged, groups, _ = agent._stage(make_batch(IDS))

    def per_sample() -> dict[str, torch.Tensor]:
        agent.generator.manual_seed(0)
        return agent._losses(staged, groups).per_sample

    weighted = per_sample()
    agent.method.task_loss_weights = lambda log_alpha: None
    plain = per_sample()
    for name in ("critic", "actor"):
        torch.testing.assert_close(weighted[name], plain[name] * weights[IDS])
    torch.testing.assert_close(weighted["alpha"], plain["alpha"])


def test_softmod_sizes_are_checked():
    with pytest.raises(ValueError, match="module_layers=0"):
        Config(method="softmod", module_layers=0)
    with pytest.raises(ValueError, match="routing_layers=-1"):
        Config(method="softmod", routing_layers=-1)


# ---- every method with every sampler on MT10-rand --------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_on_mt10_rand_with_every_sampler(tmp_path, method, sampler):
    cfg = Config(suite="mt10-rand", method=method, sampler=sampler, steps_per_env=100,
                 learning_starts=40, eval_every=100, log_every=50, hidden_sizes=(16, 16),
                 unique_hidden_sizes=(16,), unique_dim=8, num_param_sets=2, module_width=16,
                 batch_size=40, buffer_size=4000, episode_length=50, eval_episodes=1,
                 overlap_envs=False, out=str(tmp_path / "run"))
    run_dir = train(cfg)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    trains = [r for r in rows if r["kind"] == "train"]
    assert [r["step"] for r in trains] == [50, 100]
    assert all(np.isfinite(trains[-1][k]) for k in ("loss/critic", "loss/actor", "loss/alpha"))
    quotas = [trains[-1][f"quota/{i}"] for i in range(10)]
    assert sum(quotas) == 40
    if sampler == "average":
        assert quotas == [4] * 10
    evals = [r for r in rows if r["kind"] == "eval"]
    assert [r["task_id"] for r in evals] == list(range(10))
    _, step, result = evaluate_run(run_dir)                 # the checkpoint loads and reproduces
    assert step == 100
    np.testing.assert_allclose(result["success"], [r["success"] for r in evals])
