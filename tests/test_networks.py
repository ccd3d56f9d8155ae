"""Compositional layers (both paths against explicit per-task layers), triplet loss, PaCo reset."""

from __future__ import annotations

from dataclasses import replace
from functools import partial

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from taper.config import Config
from taper.methods import SharedUnique, convex_reset, make_method, triplet_loss, triplet_rows
from taper.networks import Body, CompositionalLinear, Linear, detached, task_groups
from taper.sac import Agent


def distinct_sets(layer: CompositionalLinear, seed: int) -> CompositionalLinear:
    """Give every parameter set its own values (they start as copies), nn.Linear's scale."""
    g = torch.Generator().manual_seed(seed)
    scale = layer.weight.shape[2] ** -0.5
    with torch.no_grad():
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=g) * scale)
        layer.bias.copy_(torch.randn(layer.bias.shape, generator=g) * scale)
    return layer


def groups_for(ids: np.ndarray, num_tasks: int, grouped: bool):
    return task_groups(torch.as_tensor(ids, dtype=torch.int64), num_tasks, "cpu", grouped=grouped)


@pytest.mark.parametrize("grouped", [True, False])
def test_composition_equals_explicit_per_task_linear(grouped):
    num_tasks, kp, d_in, d_out = 4, 3, 6, 5
    layer = distinct_sets(CompositionalLinear(d_in, d_out, ensemble=1, num_sets=kp), 0)
    w = torch.randn(num_tasks, kp, generator=torch.Generator().manual_seed(1))
    ids = np.array([0, 0, 1, 2, 2, 2, 3]) if grouped else np.array([2, 0, 3, 2, 1, 0, 2])
    x = torch.randn(len(ids), d_in, generator=torch.Generator().manual_seed(2))
    y = layer(x, w, groups_for(ids, num_tasks, grouped))[0]
    for t in range(num_tasks):
        explicit = nn.Linear(d_in, d_out)
        with torch.no_grad():
            explicit.weight.copy_(sum(w[t, k] * layer.weight[k, 0].T for k in range(kp)))
            explicit.bias.copy_(sum(w[t, k] * layer.bias[k, 0, 0] for k in range(kp)))
        rows = torch.from_numpy(ids == t)
        torch.testing.assert_close(y[rows], explicit(x[rows]), atol=1e-5, rtol=1e-5)


def test_parameter_sets_start_as_copies_of_one_init():
    layer = CompositionalLinear(7, 3, ensemble=2, num_sets=4)
    for k in range(1, 4):
        assert torch.equal(layer.weight[k], layer.weight[0])
        assert torch.equal(layer.bias[k], layer.bias[0])
    assert not torch.equal(layer.weight[0, 0], layer.weight[0, 1])   # critics differ


def per_sample_reference(body: Body, x: torch.Tensor, w: torch.Tensor, ids: np.ndarray):
    """Row by row with the composed weights of the row's task: the obviously correct version."""
    out = []
    for j, t in enumerate(ids):
        h = x[j:j + 1]
        for n, layer in enumerate(body.layers):
            weight = torch.einsum("k,keio->eio", w[t], layer.weight)
            bias = torch.einsum("k,keio->eio", w[t], layer.bias)
            h = torch.matmul(h, weight) + bias
            if n < len(body.layers) - 1:
                h = torch.relu(h)
        out.append(h)
    return torch.cat(out, dim=1)


@settings(max_examples=25, deadline=None)
@given(num_tasks=st.integers(1, 6), rows=st.integers(1, 24), seed=st.integers(0, 2**16),
       absent=st.booleans())
def test_grouped_general_and_per_sample_paths_agree(num_tasks, rows, seed, absent):
    rng = np.random.default_rng(seed)
    high = max(1, num_tasks - 1) if absent else num_tasks       # maybe leave the last task out
    ids = rng.integers(0, high, rows)
    torch.manual_seed(seed)
    body = Body(lambda a, b: distinct_sets(CompositionalLinear(a, b, 2, 3), seed + a), 5, (8, 6), 2)
    w = torch.randn(num_tasks, 3, requires_grad=True)
    x = torch.randn(rows, 5)
    order = np.argsort(ids, kind="stable")
    inverse = np.argsort(order)

    general = body(x, w, groups_for(ids, num_tasks, grouped=False))
    grouped = body(x[order], w, groups_for(ids[order], num_tasks, grouped=True))[:, inverse]
    reference = per_sample_reference(body, x, w, ids)
    torch.testing.assert_close(general, reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grouped, reference, atol=1e-5, rtol=1e-5)

    grads = [torch.autograd.grad(y.square().sum(), [w, *body.parameters()]) for y in
             (general, grouped)]
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-5 * (1 + a.abs().max().item()), rtol=1e-4)


@pytest.mark.parametrize("layer", [lambda a, b: distinct_sets(CompositionalLinear(a, b, 2, 3), a),
                                   lambda a, b: Linear(a, b, 2)])
def test_params_composed_once_serve_several_forwards(layer):
    """`Body.params` gives the same outputs and gradients as composing inside the forward, and
    `detached` params train nothing of the body while the input still gets its gradient."""
    torch.manual_seed(0)
    body = Body(layer, 5, (8, 6), 2)
    ids = np.array([0, 0, 1, 3, 3, 3])
    groups = groups_for(ids, 4, grouped=True)
    w = torch.randn(4, 3, requires_grad=True)
    x = torch.randn(ids.size, 5, requires_grad=True)
    inside = body(x, w, groups)
    params = body.params(w, groups)
    shared = body(x, w, groups, params)
    assert torch.equal(inside, shared)
    assert torch.equal(body(x, w, groups, params), shared)              # used twice
    wrt = [x, w, *body.parameters()]
    grads = [torch.autograd.grad(y.square().sum(), wrt, allow_unused=True) for y in (inside, shared)]
    for a, b in zip(*grads):
        assert (a is None and b is None) or torch.equal(a, b)
    frozen = body(x, w, groups, detached(body.params(w, groups)))
    x_grad, *others = torch.autograd.grad(frozen.sum(), wrt, allow_unused=True)
    assert x_grad is not None and x_grad.abs().sum() > 0
    assert all(g is None for g in others)


@pytest.mark.parametrize("layer", [lambda a, b: distinct_sets(CompositionalLinear(a, b, 2, 3), a),
                                   lambda a, b: Linear(a, b, 2)])
def test_one_input_feeds_every_ensemble_member(layer):
    """A (B, in) input goes to each of the E members: the same outputs and gradients as the
    input copied E times, and as each member's explicit affine map (x theta_t + b_t)."""
    torch.manual_seed(0)
    lin = layer(5, 4)
    ids = np.array([0, 0, 1, 3, 3, 3])
    groups = groups_for(ids, 4, grouped=True)
    w = torch.randn(4, 3)
    x = torch.randn(ids.size, 5, requires_grad=True)
    copied = x.detach().repeat(2, 1, 1).requires_grad_()
    shared, separate = lin(x, w, groups), lin(copied, w, groups)
    torch.testing.assert_close(shared, separate)
    weight, bias = lin.params(w, groups)
    if weight.dim() == 4:                                                # per task present
        rows = torch.as_tensor(np.searchsorted(np.unique(ids), ids))
        weight, bias = weight[rows].transpose(0, 1), bias[rows].transpose(0, 1)
        explicit = (x[None, :, None, :] @ weight).squeeze(2) + bias.squeeze(2)
    else:
        explicit = x @ weight + bias
    torch.testing.assert_close(shared, explicit)
    (grad_shared,) = torch.autograd.grad(shared.square().sum(), x)
    (grad_copied,) = torch.autograd.grad(separate.square().sum(), copied)
    torch.testing.assert_close(grad_shared, grad_copied.sum(0))


def test_task_groups_checks_its_input():
    with pytest.raises(ValueError, match="ascending"):
        groups_for(np.array([1, 0]), 2, grouped=True)
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        groups_for(np.array([0, 2]), 2, grouped=False)
    groups = groups_for(np.array([0, 0, 2]), 3, grouped=True)
    assert groups.sizes == (2, 0, 1)
    assert groups_for(np.array([2, 0]), 3, grouped=False).sizes is None


def test_methods_wire_the_task_in_as_documented():
    cfg = Config(hidden_sizes=(8,), unique_dim=4, unique_hidden_sizes=(6,))
    obs, groups = torch.randn(3, 5), groups_for(np.array([0, 1, 1]), 2, grouped=True)
    features = {m: make_method(replace(cfg, method=m), 5, 2).features(obs, groups)
                for m in ("mtsac", "paco", "taper")}
    torch.testing.assert_close(features["mtsac"][0][:, 5:], groups.one_hot)    # [s, one-hot]
    assert torch.equal(features["paco"][0], obs)                                 # s only
    taper, u = features["taper"]
    assert taper.shape == (3, 9) and torch.equal(taper[:, :5], obs)              # [s, u]
    assert u.requires_grad and taper.requires_grad                               # SAC trains f
    detached, u = SharedUnique(replace(cfg, unique_sac_grad=False), 5, 2).features(obs, groups)
    assert u.requires_grad and not detached.requires_grad                        # u.detach()


def test_unique_features_lie_on_the_unit_sphere_when_switched_on():
    cfg = Config(hidden_sizes=(8,), unique_dim=4, unique_hidden_sizes=(6,), unique_normalize=True)
    obs, groups = torch.randn(7, 5) * 10, groups_for(np.array([0, 0, 0, 1, 1, 1, 1]), 2, True)
    torch.manual_seed(0)
    unit = SharedUnique(cfg, 5, 2)
    torch.manual_seed(0)
    raw = SharedUnique(replace(cfg, unique_normalize=False), 5, 2)
    features, u = unit.features(obs, groups)
    torch.testing.assert_close(u.norm(dim=1), torch.ones(7))
    torch.testing.assert_close(features[:, 5:], u.detach())                  # what SAC sees
    raw_u = raw.features(obs, groups)[1]
    assert not torch.allclose(raw_u.norm(dim=1), torch.ones(7))
    torch.testing.assert_close(u, raw_u / raw_u.norm(dim=1, keepdim=True))   # same f, projected


def test_triplet_loss_on_the_unit_sphere_separates_two_tasks_by_the_margin():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    ids = np.repeat([0, 1], 32)
    obs = torch.as_tensor(rng.normal(size=(64, 6)), dtype=torch.float32)
    obs[:32, 0] += 1.0                                       # the tasks differ in one dimension
    groups = groups_for(ids, 2, grouped=True)
    cfg = Config(unique_dim=8, unique_hidden_sizes=(32,), unique_normalize=True)
    method = SharedUnique(cfg, 6, 2)
    opt = torch.optim.Adam(method.unique.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(300):
        loss, _ = method.auxiliary_loss(method.features(obs, groups)[1], groups, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        u = method.features(obs, groups)[1]
    centre = torch.stack([u[:32].mean(0), u[32:].mean(0)])
    spread = max((u[:32] - centre[0]).norm(dim=1).mean(), (u[32:] - centre[1]).norm(dim=1).mean())
    assert (centre[0] - centre[1]).norm() > cfg.triplet_margin + spread      # apart by m
    torch.testing.assert_close(u.norm(dim=1), torch.ones(64))


def test_triplet_rows_pick_same_task_positives_and_other_task_negatives():
    ids = np.array([3, 0, 1, 0, 3, 1, 1, 3, 0, 2])                  # task 2 has a single row
    groups = groups_for(ids, 4, grouped=False)
    seen_pos, seen_neg = set(), set()
    for seed in range(200):
        draws = torch.rand(2, len(ids), generator=torch.Generator().manual_seed(seed))
        positive, negative, valid = (v.numpy() for v in triplet_rows(groups, draws))
        np.testing.assert_array_equal(valid, ids != 2)
        ok = valid > 0
        assert np.all(ids[positive[ok]] == ids[ok]) and np.all(positive[ok] != np.arange(10)[ok])
        assert np.all(ids[negative] != ids)
        seen_pos.update(zip(np.flatnonzero(ok), positive[ok]))
        seen_neg.update(zip(range(10), negative))
    # every same-task partner and every other-task row is reachable from every anchor
    assert len(seen_pos) == sum((ids == ids[a]).sum() - 1 for a in range(10) if ids[a] != 2)
    assert len(seen_neg) == sum((ids != ids[a]).sum() for a in range(10))


def test_triplet_loss_falls_and_separates_two_tasks():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    ids = np.repeat([0, 1], 32)
    obs = torch.as_tensor(rng.normal(size=(64, 6)) * 0.3 + np.where(ids[:, None] == 0, 1.0, -1.0)
                          * np.array([1, -1, 0.5, 0, 0, 0]), dtype=torch.float32)
    groups = groups_for(ids, 2, grouped=True)
    f = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 8))
    opt = torch.optim.Adam(f.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)

    def separation():
        with torch.no_grad():
            d = torch.cdist(f(obs), f(obs))
        same = torch.from_numpy(ids[:, None] == ids[None, :])
        off_diagonal = ~torch.eye(64, dtype=torch.bool)
        return d[~same].mean() - d[same & off_diagonal].mean()

    margin = 1.0
    first, gap_before = triplet_loss(f(obs), groups, margin, gen)[0].item(), separation()
    for _ in range(150):
        loss, info = triplet_loss(f(obs), groups, margin, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    last, gap_after = triplet_loss(f(obs), groups, margin, gen)[0].item(), separation()
    assert gap_before < margin < gap_after          # inter-task distance > intra-task + margin
    assert last < 0.1 * first
    assert 0.0 <= info["triplet/active_fraction"].item() <= 1.0


def test_convex_reset_replaces_only_flagged_rows_with_convex_combinations():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 3, generator=g)
    extreme = torch.tensor([False, True, False, False, True, False])
    uniforms = torch.rand(6, 6, generator=g)
    new = convex_reset(w, extreme, uniforms)
    torch.testing.assert_close(new[~extreme], w[~extreme], rtol=0, atol=0)
    healthy = w[~extreme]
    for t in (1, 4):
        coeffs = uniforms[t, ~extreme] / uniforms[t, ~extreme].sum()
        assert torch.all(coeffs >= 0) and torch.isclose(coeffs.sum(), torch.tensor(1.0))
        torch.testing.assert_close(new[t], coeffs @ healthy)
        assert not torch.allclose(new[t], w[t])
    everything = torch.ones(6, dtype=torch.bool)
    assert torch.equal(convex_reset(w, everything, uniforms), w)     # nobody healthy: keep


def scaled_first_layer_output(body: Body, x: Tensor, task_weights, groups, scale: float):
    """The body's output after its first layer's weight and bias are multiplied by `scale`."""
    first = body.layers[0]
    with torch.no_grad():
        first.weight.mul_(scale)
        first.bias.mul_(scale)
    return body(x, task_weights, groups)


@pytest.mark.parametrize("layer", [Linear, CompositionalLinear])
def test_layer_norm_makes_a_body_blind_to_the_scale_of_its_hidden_layers(layer):
    """Body(layer_norm=True): each hidden pre-activation is normalised over its width, so
    multiplying the first layer's weight and bias by c > 0 leaves the output unchanged; without
    it the output moves. Same parameters either way."""
    ids = np.array([0, 0, 1, 1, 1])
    groups, x = groups_for(ids, 2, grouped=True), torch.randn(2, 5, 6)
    w = torch.tensor([[0.3, 0.7], [0.6, 0.4]])
    build = partial(layer, ensemble=2) if layer is Linear else partial(layer, ensemble=2,
                                                                       num_sets=2)
    for layer_norm in (True, False):
        torch.manual_seed(0)
        body = Body(build, 6, (8, 8), 1, layer_norm=layer_norm)
        assert sum(p.numel() for p in body.parameters()) == sum(
            p.numel() for p in Body(build, 6, (8, 8), 1).parameters())
        before = body(x, w, groups)
        after = scaled_first_layer_output(body, x, w, groups, 7.0)
        moved = (after - before).abs().max()
        assert moved < 1e-3 if layer_norm else moved > 1e-2          # LN's eps leaves 1e-4


@pytest.mark.parametrize("method", ["mtsac", "taper"])
@pytest.mark.parametrize("choice, in_actor, in_critic",
                         [("none", False, False), ("critic", False, True), ("all", True, True)])
def test_layer_norm_choice_puts_it_in_the_networks_it_names(method, choice, in_actor, in_critic):
    cfg = Config(method=method, hidden_sizes=(8, 8), unique_dim=4, unique_hidden_sizes=(6,),
                 layer_norm=choice)
    agent = Agent(cfg, 5, 2, 2, "cpu")
    groups = groups_for(np.array([0, 0, 1, 1]), 2, grouped=True)
    w = agent.method.task_weights()
    for body, expected in ((agent.actor, in_actor), (agent.critic, in_critic)):
        x = torch.randn(4, body.layers[0].weight.shape[-2])
        before = body(x, w, groups).detach()
        after = scaled_first_layer_output(body, x, w, groups, 5.0).detach()
        assert ((after - before).abs().max() < 1e-3) == expected             # LN's eps: 1e-4


def test_layer_norm_is_checked():
    with pytest.raises(ValueError, match="layer_norm='batch' is not one of none, critic, all"):
        Config(layer_norm="batch")
    with pytest.raises(ValueError, match="layer_norm='critic' is not available for "
                                         "method='softmod'"):
        Config(method="softmod", layer_norm="critic")
