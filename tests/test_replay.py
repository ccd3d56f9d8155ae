"""ReplayBuffer behaviour: against the naive reference, sampling statistics, TA-PER's guarantee."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from taper import config
from taper.replay import SAMPLERS, ReplayBuffer, scale_per_task
from tests import naive

OBS, ACT = 3, 2


def transitions(rng, task_ids):
    b = len(task_ids)
    return dict(task_ids=np.asarray(task_ids), observations=rng.normal(size=(b, OBS)),
                actions=rng.uniform(-1, 1, (b, ACT)), rewards=rng.normal(size=b),
                next_observations=rng.normal(size=(b, OBS)),
                dones=(rng.random(b) < 0.2).astype(np.float32))


def packed(t: dict, j: int) -> np.ndarray:
    return np.concatenate([t["observations"][j], t["actions"][j], [t["rewards"][j]],
                           t["next_observations"][j], [t["dones"][j]]]).astype(np.float32)


def filled(sampler, num_tasks=4, capacity=12, sizes=(12, 5, 9, 1), k_min=0, k_max=None, seed=0):
    """A buffer with the given number of transitions per task and random priorities."""
    rng = np.random.default_rng(seed)
    buf = ReplayBuffer(num_tasks, capacity, OBS, ACT, sampler=sampler, k_min=k_min,
                       k_max=k_max, seed=seed)
    for task, size in enumerate(sizes):
        if size:
            buf.add(**transitions(rng, [task] * size))
    stored = np.concatenate([task * capacity + np.arange(size) for task, size in enumerate(sizes)])
    buf.update_priorities(stored, rng.exponential(2.0, stored.size))
    return buf


# ---------------------------------------------------------------- against the naive reference
operations = st.lists(st.one_of(
    st.tuples(st.just("add"), st.lists(st.integers(0, 2), min_size=1, max_size=9)),
    st.tuples(st.just("update"), st.integers(1, 12), st.floats(0, 50)),
    st.tuples(st.just("sample"), st.integers(3, 24))), min_size=1, max_size=25)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(SAMPLERS), st.integers(1, 7), operations, st.integers(0, 10**6))
def test_buffer_matches_naive_replay_over_random_operations(sampler, capacity, ops, seed):
    rng = np.random.default_rng(seed)
    alpha, eps = 0.6, 1e-6
    buf = ReplayBuffer(3, capacity, OBS, ACT, sampler=sampler, per_alpha=alpha, per_eps=eps,
                       k_min=1, k_max=20, seed=seed)
    ref = naive.NaiveReplay(3, capacity, alpha, eps)
    for op in ops:
        if op[0] == "add":
            t = transitions(rng, op[1])
            buf.add(**t)
            for j, task in enumerate(op[1]):
                ref.add(task, packed(t, j))
        elif len(buf) == 0:
            continue
        elif op[0] == "update":
            stored = [(t, s) for t in range(3) for s in range(ref.count[t])]
            picks = [stored[i] for i in rng.integers(0, len(stored), op[1])]
            td = rng.normal(0, op[2], op[1])
            buf.update_priorities(np.array([t * capacity + s for t, s in picks]), td)
            for (t, s), d in zip(picks, td):
                ref.update(t, s, d)
        else:
            holding = sum(c > 0 for c in ref.count)
            if not holding <= op[1] <= 20 * holding:
                continue
            batch = buf.sample(op[1])
            for task, slot, obs in zip(batch.task_ids, batch.indices % capacity, batch.observations):
                np.testing.assert_array_equal(obs, ref.rows[task][slot][:OBS])
    assert len(buf) == sum(ref.count)
    for task in range(3):
        for slot in range(ref.count[task]):
            np.testing.assert_array_equal(buf.storage.rows[task * capacity + slot], ref.rows[task][slot])
    if sampler in ("per", "ta-per"):
        np.testing.assert_allclose(buf.sampler.trees[:, 1], ref.task_sums(), rtol=1e-9)
    if len(buf):
        holding = sum(c > 0 for c in ref.count)
        batch_size = max(holding, 6)
        np.testing.assert_allclose(buf.probabilities(batch_size),
                                   ref.probabilities(sampler, batch_size, 1, 20), rtol=1e-9,
                                   atol=1e-15)


# ---------------------------------------------------------------- sampling statistics
@pytest.mark.statistical
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_sampling_frequencies_match_probabilities(sampler):
    """Chi-square over 1.6e5 draws: observed slot counts follow probabilities(K)."""
    batch_size, batches = 32, 5000
    buf = filled(sampler, k_min=2, k_max=20, seed=1)
    expected = buf.probabilities(batch_size).ravel()
    assert expected.sum() == pytest.approx(1.0)
    observed = np.zeros_like(expected)
    for _ in range(batches):
        np.add.at(observed, buf.sample(batch_size).indices, 1)
    support = expected > 0
    assert observed[~support].sum() == 0, "no draw lands on an empty slot"
    chi = stats.chisquare(observed[support], expected[support] * batch_size * batches)
    assert chi.pvalue > 1e-4, f"{sampler}: chi2={chi.statistic:.1f} p={chi.pvalue:.2e}"


def test_probabilities_follow_the_formulas():
    """uniform 1/M; average (k_i/K)/M_i; per p/S; ta-per (k_i/K) p/S_i (p stored as p^alpha)."""
    sizes, capacity, k = (12, 5, 9, 1), 12, 40
    probs = {s: filled(s, k_min=3, k_max=16, seed=5).probabilities(k) for s in SAMPLERS}
    buf = filled("ta-per", k_min=3, k_max=16, seed=5)
    leaves = buf.sampler.leaves[:, :capacity]
    quotas = buf.quotas(k)
    stored = np.arange(capacity)[None, :] < np.array(sizes)[:, None]
    np.testing.assert_allclose(probs["uniform"], stored / sum(sizes))
    np.testing.assert_allclose(probs["average"], stored * (10 / k / np.array(sizes))[:, None])
    np.testing.assert_allclose(probs["per"], leaves / leaves.sum())
    np.testing.assert_allclose(probs["ta-per"],
                               quotas[:, None] / k * leaves / leaves.sum(1, keepdims=True))
    assert quotas.tolist() == naive.quotas(leaves.sum(1), sizes, k, 3, 16).tolist()
    for p in probs.values():
        assert p.sum() == pytest.approx(1.0)


def test_average_gives_each_task_an_equal_share_by_largest_remainder():
    buf = filled("average", sizes=(12, 5, 0, 1))
    assert buf.quotas(10).tolist() == [4, 3, 0, 3]
    batch = buf.sample(10)
    assert batch.task_ids.tolist() == [0] * 4 + [1] * 3 + [3] * 3


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_batches_come_grouped_by_task_in_task_order(sampler):
    batch = filled(sampler, k_min=1, k_max=30).sample(64)
    assert np.all(np.diff(batch.task_ids) >= 0)
    assert np.array_equal(batch.indices // 12, batch.task_ids)


# ---------------------------------------------------------------- TA-PER's guarantee (the paper's argument)
def test_per_starves_a_low_priority_task_while_ta_per_with_k_min_never_does():
    num_tasks, capacity, batch_size, k_min = 10, 200, 64, 3
    counts = {}
    for sampler in ("per", "ta-per"):
        rng = np.random.default_rng(0)
        buf = ReplayBuffer(num_tasks, capacity, OBS, ACT, sampler=sampler, k_min=k_min, seed=0)
        buf.add(**transitions(rng, np.repeat(np.arange(num_tasks), capacity)))
        td = np.where(np.arange(num_tasks * capacity) // capacity == 9, 1e-4, 1.0)  # task 9 is "learned"
        buf.update_priorities(np.arange(num_tasks * capacity), td)
        counts[sampler] = np.array([np.sum(buf.sample(batch_size).task_ids == 9) for _ in range(500)])
    assert np.mean(counts["per"] == 0) > 0.9, "one global PER tree leaves task 9 out of most batches"
    assert counts["ta-per"].min() >= k_min, "TA-PER's k_min holds in every batch"


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(0, 1e3), min_size=10, max_size=10),
       naive.feasible_bounds(10, max_k_min=20))
def test_quotas_respect_bounds_for_arbitrary_priorities(td, bounds):
    batch_size, k_min, k_max = bounds
    buf = ReplayBuffer(10, 4, OBS, ACT, sampler="ta-per", k_min=k_min, k_max=k_max)
    buf.add(**transitions(np.random.default_rng(0), np.arange(10)))
    buf.update_priorities(np.arange(10) * 4, td)
    q = buf.quotas(batch_size)
    assert q.sum() == batch_size and q.min() >= k_min and q.max() <= k_max
    batch = buf.sample(batch_size)
    assert np.bincount(batch.task_ids, minlength=10).tolist() == q.tolist()


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 5), st.integers(1, 60), st.booleans())
def test_infeasible_quota_bounds_raise(n, batch_size, k_min_too_large):
    """n*k_min > K or n*k_max < K for the n tasks holding data (an empty task does not count):
    quotas, probabilities and sample refuse, naming the bounds."""
    if k_min_too_large:
        k_min, k_max = batch_size // n + 1, None
    else:
        batch_size += n  # K > n, so k_max = ceil(K/n) - 1 >= 1 is too small
        k_min, k_max = 0, -(-batch_size // n) - 1
    buf = ReplayBuffer(n + 1, 4, OBS, ACT, sampler="ta-per", k_min=k_min, k_max=k_max)
    buf.add(**transitions(np.random.default_rng(0), np.arange(n)))
    message = f"infeasible for batch_size={batch_size} with {n} tasks holding data"
    for call in (buf.quotas, buf.probabilities, buf.sample):
        with pytest.raises(ValueError, match=message):
            call(batch_size)


# ---------------------------------------------------------------- priorities and weights
@pytest.mark.parametrize("sampler", ["per", "ta-per"])
def test_is_weights_equal_the_formula(sampler):
    buf = filled(sampler, k_min=2, k_max=20, seed=3)
    probs = buf.probabilities(32).ravel()
    for beta in (0.0, 0.4, 1.0):
        batch = buf.sample(32, beta=beta)
        w = (1.0 / (len(buf) * probs[batch.indices])) ** beta
        np.testing.assert_allclose(batch.weights, w / w.max(), rtol=1e-6)


@pytest.mark.parametrize("sampler", ["uniform", "average"])
def test_non_prioritized_samplers_have_unit_weights(sampler):
    assert np.all(filled(sampler).sample(32).weights == 1.0)


def test_priorities_are_abs_td_plus_eps_to_the_alpha_and_new_rows_get_the_max():
    buf = ReplayBuffer(2, 4, OBS, ACT, sampler="per", per_alpha=0.5, per_eps=0.01)
    rng = np.random.default_rng(0)
    buf.add(**transitions(rng, [0, 0, 1]))
    assert buf.sampler.trees[:, 1].tolist() == [2.0, 1.0], "1.0 before any update"
    buf.update_priorities(np.array([0, 4]), np.array([-3.99, 0.0]))
    leaves = buf.sampler.leaves
    assert leaves[0, 0] == pytest.approx(2.0) and leaves[1, 0] == pytest.approx(0.1)
    buf.add(**transitions(rng, [1]))
    assert leaves[1, 1] == pytest.approx(2.0), "a new transition gets the largest priority so far"


def test_ring_overwrites_the_oldest_rows_first():
    rng = np.random.default_rng(0)
    buf = ReplayBuffer(2, 3, OBS, ACT, sampler="ta-per")
    batches = [transitions(rng, [0, 1, 0]) for _ in range(3)]
    for t in batches:
        buf.add(**t)
    rows0 = [packed(t, j) for t in batches for j in (0, 2)]  # task 0 got 6 rows: keeps the last 3
    assert len(buf) == 6 and buf.storage.counts.tolist() == [3, 3]
    expected = {s % 3: rows0[s] for s in range(3, 6)}
    for slot, row in expected.items():
        np.testing.assert_array_equal(buf.storage.rows[slot], row)
    np.testing.assert_array_equal(buf.storage.rows[3], packed(batches[0], 1))
    assert buf.storage.positions.tolist() == [0, 0]


def test_state_dict_round_trip_continues_identically():
    buf = filled("ta-per", k_min=1, k_max=20, seed=7)
    copy = ReplayBuffer(4, 12, OBS, ACT, sampler="ta-per", k_min=1, k_max=20, seed=99)
    copy.load_state_dict(buf.state_dict())
    np.testing.assert_allclose(copy.sampler.trees, buf.sampler.trees, rtol=1e-12)
    a, b = buf.sample(16, beta=0.5), copy.sample(16, beta=0.5)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_batch_fields_have_the_documented_shapes_and_values():
    rng = np.random.default_rng(0)
    buf = ReplayBuffer(1, 5, OBS, ACT, sampler="uniform")
    t = transitions(rng, [0])
    buf.add(**t)
    batch = buf.sample(4)
    assert batch.observations.shape == (4, OBS) and batch.actions.shape == (4, ACT)
    assert batch.rewards.shape == batch.dones.shape == batch.weights.shape == (4,)
    np.testing.assert_array_equal(batch.next_observations[2], t["next_observations"][0].astype(np.float32))
    assert batch.rewards[0] == np.float32(t["rewards"][0]) and batch.dones[0] == t["dones"][0]


# ---------------------------------------------------------------- bad input
def test_the_buffer_takes_the_sampler_names_the_config_takes():
    assert SAMPLERS == config.SAMPLERS
    for name in SAMPLERS:
        assert ReplayBuffer(2, 4, OBS, ACT, sampler=name).sampler.name == name


def test_bad_constructor_arguments_raise_naming_the_value():
    cases = [(dict(sampler="prioritised"), "prioritised"), (dict(num_tasks=0), "num_tasks=0"),
             (dict(capacity_per_task=-5), "capacity_per_task=-5"), (dict(per_alpha=-1.0), "per_alpha"),
             (dict(per_beta=1.5), "per_beta=1.5"), (dict(per_eps=0.0), "per_eps=0.0"),
             (dict(k_min=5, k_max=2), "k_max=2"), (dict(obs_dim=2.5), "obs_dim=2.5")]
    for overrides, text in cases:
        kwargs = dict(num_tasks=2, capacity_per_task=4, obs_dim=OBS, act_dim=ACT) | overrides
        with pytest.raises(ValueError, match=text.replace("(", r"\(").replace(".", r"\.")):
            ReplayBuffer(**kwargs)
    with pytest.raises(ValueError) as error:
        ReplayBuffer(2, 4, OBS, ACT, sampler="x")
    assert str(error.value) == "sampler='x' is not one of uniform, average, per, ta-per"


def test_bad_calls_raise_naming_the_value():
    rng = np.random.default_rng(0)
    buf = ReplayBuffer(2, 4, OBS, ACT, sampler="ta-per", k_min=3, k_max=4)
    with pytest.raises(ValueError, match="empty"):
        buf.sample(8)
    with pytest.raises(ValueError, match="task id 2"):
        buf.add(**transitions(rng, [0, 2]))
    with pytest.raises(ValueError, match="observations has shape"):
        buf.add(**(transitions(rng, [0, 1]) | {"observations": np.zeros((2, OBS + 1))}))
    buf.add(**transitions(rng, [0, 1]))
    with pytest.raises(ValueError, match="td error nan"):
        buf.update_priorities(np.array([0]), np.array([np.nan]))
    with pytest.raises(ValueError, match="td error inf"):
        buf.update_priorities(np.array([0]), np.array([np.inf]))
    with pytest.raises(ValueError, match="index 1 is not a stored slot"):
        buf.update_priorities(np.array([1]), np.array([0.5]))
    with pytest.raises(ValueError, match="index 99"):
        buf.update_priorities(np.array([99]), np.array([0.5]))
    with pytest.raises(ValueError, match="same length"):
        buf.update_priorities(np.array([0, 4]), np.array([0.5]))
    with pytest.raises(ValueError, match="infeasible for batch_size=10"):
        buf.sample(10)
    with pytest.raises(ValueError, match="infeasible for batch_size=5"):
        buf.sample(5)
    with pytest.raises(ValueError, match="batch_size=0"):
        buf.sample(0)
    with pytest.raises(ValueError, match="beta=2"):
        buf.sample(8, beta=2)
    assert buf.sample(8).task_ids.tolist() == [0] * 4 + [1] * 4


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 6), st.integers(1, 40), st.integers(0, 2**16))
def test_td_errors_scaled_per_task_have_mean_one_in_every_task(num_tasks, k, seed):
    rng = np.random.default_rng(seed)
    ids = np.sort(rng.integers(0, num_tasks, k))
    scales = 10.0 ** rng.uniform(-3, 3, num_tasks)
    td = rng.normal(size=k) * scales[ids]
    td[rng.random(k) < 0.1] = 0.0
    scaled = scale_per_task(td, ids, num_tasks)
    assert scaled.shape == (k,) and (scaled >= 0).all()
    for task in np.unique(ids):
        rows = ids == task
        if np.abs(td[rows]).sum() > 0:
            assert scaled[rows].mean() == pytest.approx(1.0)
            np.testing.assert_allclose(scaled[rows] * np.abs(td[rows]).mean(), np.abs(td[rows]))
        else:
            assert (scaled[rows] == 0).all()
