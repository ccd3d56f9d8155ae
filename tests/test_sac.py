"""The SAC learner: Eq. 2 by hand, IS weights, per-task alpha and its direction, the target
critics' Polyak step, PaCo's reset, policy evaluation on a chain with a known answer, learning,
resume."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from scipy.optimize import nnls

from taper.config import Config
from taper.networks import CompositionalLinear, task_groups
from taper.replay import Batch
from taper.sac import (LOG_STD_RANGES, Agent, critic_loss, log_std_of, resolve_device,
                       squashed_gaussian)

METHODS = ("mtsac", "paco", "taper")
OBS, ACT = 3, 2


def tiny(method: str, **overrides) -> Config:
    values = dict(method=method, hidden_sizes=(8, 8), unique_hidden_sizes=(8,), unique_dim=3,
                  num_param_sets=3, batch_size=12)
    return Config(**{**values, **overrides})


def make_batch(task_ids, seed=0, obs=OBS, act=ACT) -> Batch:
    rng = np.random.default_rng(seed)
    ids = np.asarray(task_ids, dtype=np.int64)
    k = ids.size
    return Batch(observations=rng.normal(size=(k, obs)).astype(np.float32),
                 actions=rng.uniform(-1, 1, (k, act)).astype(np.float32),
                 rewards=rng.normal(size=k).astype(np.float32),
                 next_observations=rng.normal(size=(k, obs)).astype(np.float32),
                 dones=(np.arange(k) % 4 == 3).astype(np.float32), task_ids=ids,
                 indices=np.arange(k, dtype=np.int64),
                 weights=rng.uniform(0.2, 1.0, k).astype(np.float32))


def snapshot(agent: Agent) -> dict[str, torch.Tensor]:
    modules = {"method": agent.method, "actor": agent.actor, "critic": agent.critic,
               "target": agent.critic_target}
    state = {f"{m}.{n}": p.detach().clone() for m, mod in modules.items()
             for n, p in mod.state_dict().items()}
    state["log_alpha"] = agent.log_alpha.detach().clone()
    return state


IDS = np.repeat([0, 1, 2], 4)


# ---- Eq. 2 by hand ---------------------------------------------------------------------------

def hand_body(body, x: np.ndarray, ids: np.ndarray, w: np.ndarray | None) -> np.ndarray:
    """(E, B, out) in float64, row by row, composing PaCo's weights of the row's task by hand;
    a body with layer norm normalises each hidden pre-activation over its width."""
    out = []
    for j, t in enumerate(ids):
        h = x[j][None, None, :]
        for n, layer in enumerate(body.layers):
            weight = layer.weight.detach().double().numpy()
            bias = layer.bias.detach().double().numpy()
            if isinstance(layer, CompositionalLinear):      # theta_t = sum_k w_tk phi_k
                weight = np.tensordot(w[t], weight, axes=1)
                bias = np.tensordot(w[t], bias, axes=1)
            h = h @ weight + bias
            if n < len(body.layers) - 1:
                if body.layer_norm:
                    h = (h - h.mean(-1, keepdims=True)) / np.sqrt(h.var(-1, keepdims=True) + 1e-5)
                h = np.maximum(h, 0.0)
        out.append(h)
    return np.concatenate(out, axis=1)


@pytest.mark.parametrize("method, head, norm", [
    ("mtsac", "tanh", "none"), ("paco", "tanh", "none"), ("mtsac", "clamp", "critic"),
    ("paco", "clamp", "critic"), ("paco", "clamp", "all")])
def test_td_errors_are_eq2_by_hand(method, head, norm):
    cfg = tiny(method, hidden_sizes=(4,), gamma=0.9, init_temperature=0.5, log_std_head=head,
               layer_norm=norm)
    agent = Agent(cfg, OBS, ACT, 3, "cpu")
    batch = make_batch(IDS)
    w = None if method == "mtsac" else agent.method.w.detach().double().numpy()
    one_hot = np.eye(3)[IDS]
    extra = [one_hot] if method == "mtsac" else []
    features = np.concatenate([batch.observations, *extra], axis=1).astype(np.float64)
    next_features = np.concatenate([batch.next_observations, *extra], axis=1).astype(np.float64)
    # the update's first draw is the noise of a' ~ pi(.|s')
    noise = torch.randn((12, ACT), generator=torch.Generator().set_state(
        agent.generator.get_state())).double().numpy()
    out = hand_body(agent.actor, next_features, IDS, w)[0]
    mean, raw = out[:, :ACT], out[:, ACT:]
    log_std = -5.0 + 3.5 * (np.tanh(raw) + 1.0) if head == "tanh" else np.clip(raw, -20.0, 2.0)
    pre = mean + np.exp(log_std) * noise
    next_action = np.tanh(pre)
    log_pi = (-0.5 * noise**2 - log_std - 0.5 * np.log(2 * np.pi)
              - np.log(1.0 - np.tanh(pre) ** 2)).sum(axis=1)
    q_next = hand_body(agent.critic_target, np.concatenate([next_features, next_action], 1),
                       IDS, w)[..., 0]
    alpha = 0.5
    y = batch.rewards + 0.9 * (1 - batch.dones) * (q_next.min(axis=0) - alpha * log_pi)
    q = hand_body(agent.critic, np.concatenate([features, batch.actions], 1), IDS, w)[..., 0]
    expected = np.abs(y[None, :] - q).mean(axis=0)

    _, td = agent.update(batch)
    assert td.dtype == np.float64 and td.shape == (12,)
    np.testing.assert_allclose(td, expected, rtol=1e-4, atol=1e-5)


# ---- IS weights ------------------------------------------------------------------------------

def test_critic_loss_is_weighted_per_sample():
    q = torch.randn(2, 5, requires_grad=True)
    target, weights = torch.randn(5), torch.tensor([1.0, 0.0, 0.5, 1.0, 2.0])
    loss, info = critic_loss(q, target, weights)
    loss.sum().backward()
    assert torch.all(q.grad[:, 1] == 0) and torch.all(q.grad[:, [0, 2, 3, 4]] != 0)
    torch.testing.assert_close(info["td_error"], (target - q.detach()).abs().mean(dim=0))
    torch.testing.assert_close(loss.detach(), weights * info["squared_error"])


@pytest.mark.parametrize("method", METHODS)
def test_zero_is_weight_sample_does_not_move_the_critic(method):
    def critic_after(reward_shift: float, weight: float) -> list[torch.Tensor]:
        batch = make_batch(IDS)
        batch.rewards[5] += reward_shift
        batch.weights[5] = weight
        agent = Agent(tiny(method), OBS, ACT, 3, "cpu")
        agent.update(batch)
        return [p.detach().clone() for p in agent.critic.parameters()]

    for a, b in zip(critic_after(0.0, 0.0), critic_after(5.0, 0.0)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7)
    moved = zip(critic_after(0.0, 1.0), critic_after(5.0, 1.0))     # the control: weight 1
    assert any(not torch.allclose(a, b) for a, b in moved)


# ---- temperature -----------------------------------------------------------------------------

def test_alpha_is_per_task():
    agent = Agent(tiny("paco", alpha_lr=0.05), OBS, ACT, 3, "cpu")
    before = agent.log_alpha.detach().clone()
    metrics, _ = agent.update(make_batch(np.ones(6, dtype=np.int64)))      # task 1 only
    after = agent.log_alpha.detach()
    assert after[1] != before[1]
    assert after[0] == before[0] and after[2] == before[2]
    assert metrics["alpha/1"] == pytest.approx(float(after[1].exp()), rel=1e-6)
    assert metrics["alpha/0"] == pytest.approx(1.0)


def test_log_alpha_is_clamped():
    cfg = tiny("mtsac", init_temperature=5.0, alpha_lr=1e-6, log_alpha_min=-0.15)
    agent = Agent(cfg, OBS, ACT, 3, "cpu")
    assert torch.all(agent.log_alpha == 0.0)                           # log 5 clamped to max 0
    with torch.no_grad():
        agent.log_alpha.copy_(torch.tensor([3.0, -20.0, -0.1]))
    metrics, _ = agent.update(make_batch(IDS))
    log_alpha = agent.log_alpha.detach()
    assert log_alpha[0] == 0.0 and log_alpha[1] == -0.15
    assert log_alpha[2] == pytest.approx(-0.1, abs=1e-5)
    assert metrics["alpha/1"] == pytest.approx(np.exp(-0.15), rel=1e-6)


def test_log_std_heads_map_the_raw_output_into_their_ranges():
    """tanh: lo + (hi - lo)(tanh(raw) + 1)/2, inside (-5, 2) with gradient everywhere; clamp: the
    raw output inside [-20, 2], the bound and no gradient outside."""
    raw = torch.tensor([-30.0, -3.0, 0.0, 1.5, 9.0], requires_grad=True)
    tanh = log_std_of(raw, "tanh")
    low, high = LOG_STD_RANGES["tanh"]
    expected = low + (high - low) * (torch.tanh(raw.detach()) + 1) / 2
    np.testing.assert_allclose(tanh.detach(), expected, rtol=1e-6)
    assert tanh[2].item() == pytest.approx(-1.5)
    clamp = log_std_of(raw, "clamp")
    np.testing.assert_allclose(clamp.detach(), [-20.0, -3.0, 0.0, 1.5, 2.0])
    clamp.sum().backward()
    np.testing.assert_allclose(raw.grad, [0.0, 1.0, 1.0, 1.0, 0.0])


@pytest.mark.parametrize("head, log_std", [("tanh", -1.5), ("clamp", 0.0)])
def test_the_policy_draws_with_the_log_std_of_its_head(head, log_std):
    """With a raw output of 0 the pre-tanh draws have std exp(-1.5) (tanh head) or 1 (clamp head),
    and log pi is the squashed Gaussian's density of those draws."""
    out = torch.zeros(20_000, 2 * ACT)
    gen = torch.Generator().manual_seed(0)
    actions, log_pi = squashed_gaussian(out, gen, log_std_head=head)
    pre = torch.atanh(actions.clamp(-1 + 1e-6, 1 - 1e-6))
    assert pre.std().item() == pytest.approx(math.exp(log_std), rel=0.03)
    gaussian = (-0.5 * (pre / math.exp(log_std)) ** 2 - log_std
                - 0.5 * math.log(2 * math.pi)).sum(-1)
    expected = gaussian - torch.log(1 - actions.square()).sum(-1)
    keep = actions.abs().max(-1).values < 0.999                 # away from float32's tanh limit
    np.testing.assert_allclose(log_pi[keep], expected[keep], rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("head", ["tanh", "clamp"])
@pytest.mark.parametrize("log_std, rises", [(-4.5, True), (0.0, False)])
def test_log_alpha_rises_below_the_target_entropy_and_falls_above(log_std, rises, head):
    """Every row's policy is tanh(N(0, exp(log_std)^2)): at log std -4.5 its entropy is far below
    the target -|A|, at 0 far above; log alpha starts between its clamps."""
    cfg = tiny("mtsac", init_temperature=0.1, alpha_lr=0.01, log_alpha_min=-10.0,
               log_alpha_max=1.0, log_std_head=head)
    agent = Agent(cfg, OBS, ACT, 3, "cpu")
    last = agent.actor.layers[-1]
    low, high = LOG_STD_RANGES[head]
    raw = math.atanh(2 * (log_std - low) / (high - low) - 1) if head == "tanh" else log_std
    with torch.no_grad():                          # output = bias: mean 0, the raw log std
        last.weight.zero_()
        last.bias.zero_()
        last.bias[..., ACT:] = raw
    before = agent.log_alpha.detach().clone()
    metrics, _ = agent.update(make_batch(IDS))
    assert (metrics["stats/entropy"] < -ACT) == rises
    step = agent.log_alpha.detach() - before       # Adam's first step: alpha_lr * sign(grad)
    np.testing.assert_allclose(step, np.full(3, 0.01 if rises else -0.01), rtol=1e-3)


# ---- one update ------------------------------------------------------------------------------

@pytest.mark.parametrize("order", ["joint", "critic-first"])
@pytest.mark.parametrize("method", METHODS)
def test_one_update_changes_every_parameter_and_keeps_them_finite(method, order):
    agent = Agent(tiny(method, update_order=order), OBS, ACT, 3, "cpu")
    before = snapshot(agent)
    metrics, td = agent.update(make_batch(IDS))
    after = snapshot(agent)
    for name in before:
        assert torch.isfinite(after[name]).all(), name
        assert not torch.equal(before[name], after[name]), f"{name} did not change"
    assert td.shape == (12,) and np.all(np.isfinite(td)) and np.all(td >= 0)
    expected = {"loss/critic", "loss/actor", "loss/alpha", "stats/q", "stats/entropy",
                "stats/td_error", "alpha/0", "alpha/1", "alpha/2"}
    if method != "mtsac":
        expected |= {"paco/resets"}
    if method == "taper":
        expected |= {"loss/triplet", "triplet/active_fraction"}
    assert set(metrics) == expected
    assert all(isinstance(v, float) and np.isfinite(v) for v in metrics.values())


@pytest.mark.parametrize("sac_grad", [True, False])
def test_sac_losses_train_the_unique_features_only_when_switched_on(sac_grad):
    """Config.unique_sac_grad: the critic's and actor's losses reach f; off, they do not (Eq. 1
    alone trains f then, tests/test_networks.py)."""
    agent = Agent(tiny("taper", unique_sac_grad=sac_grad), OBS, ACT, 3, "cpu")
    staged, groups, _ = agent._stage(make_batch(IDS))
    losses = agent._losses(staged, groups)
    f = list(agent.method.unique.parameters())
    for name in ("loss/critic", "loss/actor"):
        grads = torch.autograd.grad(losses.metrics[name], f, retain_graph=True, allow_unused=True)
        reached = any(g is not None and bool(g.abs().sum() > 0) for g in grads)
        assert reached == sac_grad, name


@pytest.mark.parametrize("order", ["joint", "critic-first"])
@pytest.mark.parametrize("method", METHODS)
def test_target_critics_take_a_tau_step_toward_the_updated_critics(method, order):
    """target <- (1 - tau) target + tau critic, with the critic after its optimizer step; the
    targets start away from the critics, so tau and 1 - tau give different numbers."""
    tau = 0.3
    agent = Agent(tiny(method, tau=tau, update_order=order), OBS, ACT, 3, "cpu")
    noise = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in agent.critic_target.parameters():
            p.add_(torch.randn(p.shape, generator=noise))
    old = {n: p.detach().clone() for n, p in agent.critic_target.named_parameters()}
    before = {n: p.detach().clone() for n, p in agent.critic.named_parameters()}
    agent.update(make_batch(IDS))
    for (name, target), online in zip(agent.critic_target.named_parameters(),
                                      agent.critic.parameters()):
        assert not torch.equal(online, before[name]), f"critic {name} did not step"
        torch.testing.assert_close(target, (1 - tau) * old[name] + tau * online.detach(),
                                   rtol=0, atol=1e-6, msg=name)


@pytest.mark.parametrize("method", ["mtsac", "paco"])
def test_critic_first_steps_the_critics_as_joint_and_the_actor_against_the_updated_critics(
        method):
    """update_order="critic-first": the critics take joint's step (their loss is the same), and
    the actor and log alpha the gradient joint takes from the updated critics: that of a joint
    agent whose critics were set to the updated ones beforehand (same random draws: these
    methods draw nothing between a' and a~). The actor's gradient differs from joint's.
    (Gradients, not parameters: Adam's first step is lr * sign(g) and would hide the change.)"""
    batch = make_batch(IDS, seed=5)
    first = Agent(tiny(method, update_order="critic-first"), OBS, ACT, 3, "cpu")
    joint = Agent(tiny(method), OBS, ACT, 3, "cpu")
    probe = Agent(tiny(method), OBS, ACT, 3, "cpu")
    td_first, td_joint = first.update(batch)[1], joint.update(batch)[1]
    np.testing.assert_allclose(td_first, td_joint, rtol=1e-6)
    probe.critic.load_state_dict(first.critic.state_dict())
    probe.update(batch)

    def grads(module: torch.nn.Module) -> list[torch.Tensor]:
        return [p.grad.clone() for p in module.parameters()]

    for a, b in zip(grads(first.critic), grads(joint.critic)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    for a, b in zip(snapshot(first).items(), snapshot(joint).items()):
        if a[0].startswith("critic."):
            torch.testing.assert_close(a[1], b[1], rtol=1e-5, atol=1e-7, msg=a[0])
    for a, c in zip(grads(first.actor) + [first.log_alpha.grad],
                    grads(probe.actor) + [probe.log_alpha.grad]):
        torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-7)
    assert not all(torch.allclose(a, b, rtol=1e-3, atol=1e-6)
                   for a, b in zip(grads(first.actor), grads(joint.actor)))


def test_update_order_is_checked():
    with pytest.raises(ValueError, match="update_order='actor-first' is not one of joint, "
                                         "critic-first"):
        tiny("mtsac", update_order="actor-first")


@pytest.mark.parametrize("method", ["paco", "taper"])
def test_ungrouped_batch_gives_the_grouped_numbers_in_its_own_order(method):
    batch = make_batch(IDS, seed=3)
    # interleave the tasks, each task's rows keeping their order (so sorting restores the batch)
    labels = np.random.default_rng(0).permutation(IDS)
    perm = np.concatenate([np.flatnonzero(IDS == t) for t in range(3)])[
        np.argsort(np.argsort(labels, kind="stable"), kind="stable")]
    assert not np.all(np.diff(IDS[perm]) >= 0)
    shuffled = Batch(*(np.ascontiguousarray(a[perm]) for a in batch))
    _, td = Agent(tiny(method), OBS, ACT, 3, "cpu").update(batch)
    _, td_shuffled = Agent(tiny(method), OBS, ACT, 3, "cpu").update(shuffled)
    np.testing.assert_allclose(td_shuffled, td[perm], rtol=1e-6, atol=1e-7)

    # the general path on the shuffled rows, no sort, agrees too
    general = Agent(tiny(method), OBS, ACT, 3, "cpu", grouped=False)
    _, td_general = general.update(batch)
    np.testing.assert_allclose(td_general, td, rtol=1e-5, atol=1e-6)


def test_act_keeps_the_callers_row_order():
    agent = Agent(tiny("paco"), OBS, ACT, 3, "cpu")
    obs = np.random.default_rng(0).normal(size=(7, OBS)).astype(np.float32)
    ids = np.array([2, 0, 1, 1, 0, 2, 2])
    actions = agent.act(obs, ids, deterministic=True)
    assert actions.dtype == np.float32 and actions.shape == (7, ACT)
    for j in range(7):
        np.testing.assert_allclose(actions[j], agent.act(obs[j:j + 1], ids[j:j + 1], True)[0],
                                   rtol=1e-5, atol=1e-6)
    sampled = agent.act(obs, ids, deterministic=False)
    assert np.all(np.abs(sampled) <= 1.0) and not np.allclose(sampled, actions)
    with pytest.raises(ValueError):
        agent.act(obs, np.full(7, 3), True)


# ---- PaCo's extreme-loss reset ---------------------------------------------------------------

@pytest.mark.parametrize("method", ["paco", "taper"])
def test_extreme_task_is_masked_and_only_its_w_reset_to_a_convex_combination(method):
    batch = make_batch(np.repeat([0, 1, 2, 3], 3))
    batch.rewards[6:9] = 300.0                                         # task 2's loss ~ 2e5
    flagged = Agent(tiny(method, num_param_sets=5, extreme_loss_threshold=3e3), OBS, ACT, 4,
                    "cpu")
    unflagged = Agent(tiny(method, num_param_sets=5, extreme_loss_threshold=1e12), OBS, ACT, 4,
                      "cpu")
    default = Agent(tiny(method, num_param_sets=5), OBS, ACT, 4, "cpu")  # reset off: inf
    metrics, _ = flagged.update(batch)
    plain, _ = unflagged.update(batch)
    assert default.update(batch)[0]["paco/resets"] == 0.0

    assert metrics["paco/resets"] == 1.0 and metrics["paco/reset/2"] == 1.0
    assert plain["paco/resets"] == 0.0 and not any(k.startswith("paco/reset/") for k in plain)
    assert metrics["loss/critic"] < 100 < plain["loss/critic"]        # task 2 masked out
    w, w_plain = flagged.method.w.detach(), unflagged.method.w.detach()
    healthy = [0, 1, 3]
    torch.testing.assert_close(w[healthy], w_plain[healthy], rtol=0, atol=1e-7)
    assert not torch.allclose(w[2], w_plain[2])
    # w_2 = sum_h c_h w_h with c >= 0, sum c = 1: a non-negative fit with a heavy sum row
    system = np.vstack([w[healthy].double().numpy().T, 1e3 * np.ones(3)])
    coeffs, residual = nnls(system, np.append(w[2].double().numpy(), 1e3))
    assert residual < 1e-4, (coeffs, residual)


# ---- policy evaluation with a known answer ---------------------------------------------------

CHAIN_REWARDS = np.array([-4.0, 1.0, 1.0, 1.0, 1.0, 8.0])
"""Reward for entering each state of the chain 0..5; the ends 0 and 5 are terminal."""


def chain_transitions(rng: np.random.Generator, episodes: int = 40,
                      time_limit: int = 4) -> np.ndarray:
    """(n, 4) int rows (s, s', terminated, truncated) of fair random walks from interior starts.

    An episode cut by the time limit ends with terminated = 0 and its true next state: the
    buffer stores it as a transition to bootstrap from (done = terminated alone).
    """
    rows, end = [], len(CHAIN_REWARDS) - 1
    for _ in range(episodes):
        s = int(rng.integers(1, end))
        for t in range(time_limit):
            nxt = s + (1 if rng.random() < 0.5 else -1)
            terminated = nxt in (0, end)
            rows.append((s, nxt, terminated, not terminated and t == time_limit - 1))
            if terminated:
                break
            s = nxt
    return np.array(rows, dtype=np.int64)


def chain_values(rows: np.ndarray, gamma: float) -> np.ndarray:
    """V of the interior states 1..4 under the data's own model: V = r + gamma P V, solved."""
    n = len(CHAIN_REWARDS)
    s, nxt, terminated = rows[:, 0], rows[:, 1], rows[:, 2]
    visits = np.bincount(s, minlength=n)[1:-1]
    reward = np.bincount(s, weights=CHAIN_REWARDS[nxt], minlength=n)[1:-1] / visits
    go_on = terminated == 0
    counts = np.zeros((n, n))
    np.add.at(counts, (s[go_on], nxt[go_on]), 1.0)
    p = counts[1:-1, 1:-1] / visits[:, None]
    return np.linalg.solve(np.eye(n - 2) - gamma * p, reward)


def test_critic_converges_to_the_exact_values_of_a_chain_with_terminal_ends_and_time_limits():
    """Rewards and moves do not depend on the action, so Q(s, a) = V(s) under any policy; alpha
    is fixed at 1e-6 (clamped), so the entropy bonus is negligible. Every transition appears
    with the same five actions, so the best fit at each action is the same expectation."""
    gamma, n, actions = 0.9, len(CHAIN_REWARDS), np.linspace(-1, 1, 5, dtype=np.float32)
    rows = chain_transitions(np.random.default_rng(0))
    assert rows[:, 2].sum() > 0 and rows[:, 3].sum() > 0          # terminations and time limits
    values = chain_values(rows, gamma)
    eye, m = np.eye(n, dtype=np.float32), len(actions)
    k = len(rows) * m
    batch = Batch(observations=np.repeat(eye[rows[:, 0]], m, axis=0),
                  actions=np.tile(actions, len(rows))[:, None],
                  rewards=np.repeat(CHAIN_REWARDS[rows[:, 1]], m).astype(np.float32),
                  next_observations=np.repeat(eye[rows[:, 1]], m, axis=0),
                  dones=np.repeat(rows[:, 2], m).astype(np.float32),
                  task_ids=np.zeros(k, np.int64), indices=np.arange(k),
                  weights=np.ones(k, np.float32))
    alpha = 1e-6
    cfg = Config(method="mtsac", hidden_sizes=(32, 32), gamma=gamma, tau=0.1, lr=3e-3,
                 init_temperature=alpha, log_alpha_min=math.log(alpha),
                 log_alpha_max=math.log(alpha))
    agent = Agent(cfg, n, 1, 1, "cpu")
    for _ in range(600):
        agent.update(batch)

    grid = 21                                                      # Q(s, a) on a finer grid
    obs = torch.from_numpy(np.repeat(eye[1:-1], grid, axis=0))
    probe = torch.linspace(-1, 1, grid).repeat(n - 2)[:, None]
    groups = task_groups(torch.zeros(len(obs), dtype=torch.int64), 1, "cpu", grouped=False)
    with torch.no_grad():
        features, _ = agent.method.features(obs, groups)
        q = agent.critic(torch.cat([features, probe], dim=-1), None, groups)
    q = q.squeeze(-1).numpy().reshape(2, n - 2, grid)
    error = np.abs(q - values[None, :, None]).max()
    assert error < 0.03 * np.abs(values).max(), (values, q.mean(axis=(0, 2)))


# ---- learning --------------------------------------------------------------------------------

TARGETS = np.array([-0.6, 0.1, 0.7])


def bandit_means(cfg: Config, updates: int = 600) -> np.ndarray:
    """reward = -(a - target_i)^2, every episode one step: `updates` updates of an agent of
    `cfg` (batch 48, three tasks), then the mean deterministic action per task, (3,)."""
    agent = Agent(cfg, OBS, 1, 3, "cpu")
    rng = np.random.default_rng(0)
    ids = np.repeat(np.arange(3), 16)
    for _ in range(updates):
        obs = rng.normal(size=(48, OBS)).astype(np.float32)
        actions = rng.uniform(-1, 1, (48, 1)).astype(np.float32)
        rewards = (-(actions[:, 0] - TARGETS[ids]) ** 2).astype(np.float32)
        agent.update(Batch(obs, actions, rewards, obs, np.ones(48, np.float32), ids,
                           np.arange(48), np.ones(48, np.float32)))
    test_ids = np.repeat(np.arange(3), 20)
    chosen = agent.act(rng.normal(size=(60, OBS)), test_ids, deterministic=True)[:, 0]
    return np.array([chosen[test_ids == t].mean() for t in range(3)])


@pytest.mark.parametrize("order", ["joint", "critic-first"])
@pytest.mark.parametrize("method", METHODS)
def test_sac_learns_each_tasks_target_action_in_a_one_step_bandit(method, order):
    """Q is the reward, pi's mean -> each task's target."""
    cfg = tiny(method, hidden_sizes=(32, 32), lr=1e-2, alpha_lr=1e-2, batch_size=48,
               update_order=order)
    np.testing.assert_allclose(bandit_means(cfg), TARGETS, atol=0.1)


# ---- checkpoints -----------------------------------------------------------------------------

def assert_round_trip_is_exact(agent: Agent, restored: Agent, batch_for, obs: np.ndarray,
                               ids: np.ndarray) -> None:
    """Three updates of `agent` (batches `batch_for(seed)`), its state_dict saved and loaded into
    `restored` (built with another seed): both then act and update identically."""
    for seed in range(3):
        agent.update(batch_for(seed))
    buffer = io.BytesIO()
    torch.save(agent.state_dict(), buffer)
    buffer.seek(0)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    for deterministic in (True, False):
        np.testing.assert_array_equal(agent.act(obs, ids, deterministic),
                                      restored.act(obs, ids, deterministic))
    batch = batch_for(9)
    (m1, td1), (m2, td2) = agent.update(batch), restored.update(batch)
    assert m1 == m2
    np.testing.assert_array_equal(td1, td2)


@pytest.mark.parametrize("method", ["mtsac", "taper"])
def test_state_dict_round_trip_gives_identical_outputs(method):
    assert_round_trip_is_exact(
        Agent(tiny(method), OBS, ACT, 3, "cpu"), Agent(tiny(method, seed=7), OBS, ACT, 3, "cpu"),
        lambda seed: make_batch(IDS, seed=seed),
        np.random.default_rng(1).normal(size=(5, OBS)), np.array([0, 1, 2, 2, 0]))


def test_a_checkpoint_from_another_device_type_loads_with_a_fresh_random_stream():
    agent = Agent(tiny("paco"), OBS, ACT, 3, "cpu")
    agent.update(make_batch(IDS, seed=0))
    state = agent.state_dict()
    state["generator"] = torch.zeros(16, dtype=torch.uint8)  # the size of a CUDA generator state
    restored = Agent(tiny("paco", seed=7), OBS, ACT, 3, "cpu")
    restored.load_state_dict(state)
    obs = np.random.default_rng(1).normal(size=(4, OBS))
    ids = np.array([0, 1, 2, 0])
    np.testing.assert_array_equal(agent.act(obs, ids, True), restored.act(obs, ids, True))
    fresh = Agent(tiny("paco", seed=7), OBS, ACT, 3, "cpu")
    fresh.load_state_dict(state)
    np.testing.assert_array_equal(restored.act(obs, ids, False), fresh.act(obs, ids, False))


def test_same_seed_same_updates_and_config_checks():
    a, b = (Agent(tiny("taper", seed=3), OBS, ACT, 3, "cpu") for _ in range(2))
    for seed in range(2):
        assert a.update(make_batch(IDS, seed=seed))[0] == b.update(make_batch(IDS, seed=seed))[0]
    with pytest.raises(ValueError, match="act_dim"):
        Agent(tiny("mtsac"), OBS, 0, 3, "cpu")
    with pytest.raises(ValueError, match="shape"):
        a.update(make_batch(IDS, obs=OBS + 1))
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="'tpu' is not one of auto, cpu, cuda"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device is available"):
            resolve_device("cuda")
