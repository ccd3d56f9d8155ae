"""Every kernel against the naive reference, under hypothesis; compiled and interpreted."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taper import kernels
from tests import naive

FAST = settings(max_examples=60, deadline=None)
priorities = st.floats(min_value=1e-6, max_value=1e3, allow_nan=False)


def make_trees(leaf_rows: list[list[float]], capacity: int) -> np.ndarray:
    trees = np.zeros((len(leaf_rows), kernels.tree_width(capacity)))
    for task, row in enumerate(leaf_rows):
        kernels.tree_update(trees, np.full(len(row), task, np.int64),
                            np.arange(len(row), dtype=np.int64), np.array(row, np.float64))
    return trees


def assert_tree_consistent(trees: np.ndarray, leaf_rows: np.ndarray) -> None:
    """Every internal node equals the naive sum of the leaves below it (1e-9 relative)."""
    width = trees.shape[1] // 2
    f = kernels.FANOUT
    for task in range(trees.shape[0]):
        leaves = np.zeros(width)
        leaves[:leaf_rows.shape[1]] = leaf_rows[task]
        level, span = width // f, f
        while level >= 1:
            for node in range(level, 2 * level):
                first = (node - level) * span
                expected = math.fsum(leaves[first:first + span])
                assert trees[task, node] == pytest.approx(expected, rel=1e-9, abs=1e-300)
            level, span = level // f, span * f


@pytest.mark.parametrize("capacity, width", [(1, 2), (2, 16), (8, 16), (9, 128), (64, 128),
                                             (100_000, 524_288)])
def test_tree_width_is_twice_the_next_power_of_the_fanout(capacity, width):
    assert kernels.FANOUT == 8
    assert kernels.tree_width(capacity) == width


@FAST
@given(st.data())
def test_tree_sums_match_naive_after_random_updates(data):
    num_tasks = data.draw(st.integers(1, 4))
    capacity = data.draw(st.integers(1, 40))
    leaves = np.zeros((num_tasks, capacity))
    trees = np.zeros((num_tasks, kernels.tree_width(capacity)))
    for _ in range(data.draw(st.integers(1, 6))):
        size = data.draw(st.integers(1, 30))
        tasks = np.array(data.draw(st.lists(st.integers(0, num_tasks - 1), min_size=size, max_size=size)))
        slots = np.array(data.draw(st.lists(st.integers(0, capacity - 1), min_size=size, max_size=size)))
        values = np.array(data.draw(st.lists(priorities, min_size=size, max_size=size)))
        kernels.tree_update(trees, tasks, slots, values)
        for t, s, v in zip(tasks, slots, values):  # last write wins, as documented
            leaves[t, s] = v
    assert_tree_consistent(trees, leaves)


@FAST
@given(st.lists(st.lists(priorities, min_size=1, max_size=20), min_size=1, max_size=3))
def test_rebuild_restores_exact_sums_from_leaves(rows):
    capacity = max(len(r) for r in rows)
    leaves = np.array([r + [0.0] * (capacity - len(r)) for r in rows])
    trees = np.zeros((len(rows), kernels.tree_width(capacity)))
    trees[:, trees.shape[1] // 2:][:, :capacity] = leaves
    trees[:, 1:trees.shape[1] // 2] = 12345.0  # stale internal nodes (and unused columns)
    kernels.tree_rebuild(trees)
    assert_tree_consistent(trees, leaves)


@FAST
@given(st.lists(st.floats(0.0, 10.0), min_size=1, max_size=33).filter(lambda r: sum(r) > 1e-3),
       st.lists(st.floats(0.0, 1.0, exclude_max=True), min_size=1, max_size=20))
def test_descent_matches_inverse_cdf(row, fractions):
    trees = make_trees([row], len(row))
    targets = np.array(fractions) * trees[0, 1]
    out = np.empty(len(targets), np.int64)
    kernels.descend(trees, np.zeros(len(targets), np.int64), targets, out)
    cumulative = np.cumsum(row)
    for target, slot in zip(targets, out):
        assert row[slot] > 0, "a draw never lands on an empty leaf"
        expected = naive.descend(row, target)
        if slot != expected:  # only a target within rounding of a boundary may differ
            assert np.min(np.abs(cumulative - target)) <= 1e-9 * trees[0, 1]


@FAST
@given(st.lists(st.lists(st.floats(0.0, 10.0), min_size=1, max_size=600).filter(lambda r: sum(r) > 1e-3),
                min_size=1, max_size=3),
       st.lists(st.floats(0.0, 1.0, exclude_max=True), min_size=1, max_size=40), st.data())
def test_merge_then_descent_matches_inverse_cdf_for_sorted_targets(rows, fractions, data):
    """Targets increasing within each task's run: merging down to any level, then halving,
    finds the inverse-CDF leaf (up to rounding at a boundary), never an empty one."""
    capacity = max(len(r) for r in rows)
    trees = make_trees(rows, capacity)
    levels = [kernels.FANOUT ** e for e in range(8) if kernels.FANOUT ** e <= trees.shape[1] // 2]
    level = data.draw(st.sampled_from(levels))
    tasks = np.repeat(np.arange(len(rows)), len(fractions))
    targets = np.concatenate([np.sort(fractions) * trees[t, 1] for t in range(len(rows))])
    nodes, mass = np.empty(len(tasks), np.int64), np.empty(len(tasks))
    kernels.merge_level(trees, tasks, targets, level, nodes, mass)
    assert np.all((level <= nodes) & (nodes < 2 * level)) and np.all(mass >= 0)
    kernels.descend_from(trees, tasks, level, nodes, mass)
    slots = nodes - trees.shape[1] // 2
    for task, target, slot in zip(tasks, targets, slots):
        row = rows[task]
        assert slot < len(row) and row[slot] > 0, "a draw never lands on an empty leaf"
        if slot != naive.descend(row, target):  # only within rounding of a boundary
            assert np.min(np.abs(np.cumsum(row) - target)) <= 1e-9 * trees[task, 1]


def test_descent_never_returns_an_empty_slot_even_at_the_total():
    trees = make_trees([[0.0, 2.0, 0.0, 1.0, 0.0, 0.0]], 6)
    out = np.empty(3, np.int64)
    kernels.descend(trees, np.zeros(3, np.int64), np.array([0.0, 3.0, 3.0 + 1e-12]), out)
    assert out.tolist() == [1, 3, 3]


@st.composite
def quota_cases(draw):
    """Tree totals, counts (some tasks empty) and quota bounds the tasks holding data can meet."""
    counts = draw(st.lists(st.integers(0, 3), min_size=1, max_size=12).filter(any))
    sums = draw(st.lists(st.floats(1e-4, 1e4), min_size=len(counts), max_size=len(counts)))
    batch_size, k_min, k_max = draw(naive.feasible_bounds(sum(c > 0 for c in counts)))
    return sums, counts, batch_size, k_min, k_max


@settings(max_examples=200, deadline=None)
@given(quota_cases())
def test_quotas_sum_to_k_inside_bounds_and_round_the_water_filling(case):
    sums, counts, batch, k_min, k_max = case
    out = np.empty(len(sums), np.int64)
    kernels.quotas(np.array(sums), np.array(counts, np.int64), batch, k_min, k_max, out)
    assert out.sum() == batch
    for k, c in zip(out, counts):
        assert (k == 0) if c == 0 else (k_min <= k <= k_max)
    x = naive.real_quotas(sums, counts, batch, k_min, k_max)
    assert np.all(np.abs(out - x) < 1 + 1e-6), "each quota is the floor or ceil of Eq. 5's real quota"
    up = [i for i in range(len(sums)) if out[i] > x[i] + 1e-6]
    down = [i for i in range(len(sums)) if counts[i] and out[i] < x[i] - 1e-6]
    if up and down:  # largest remainders were rounded up
        assert min(x[i] - np.floor(x[i]) for i in up) >= max(x[i] - np.floor(x[i]) for i in down) - 1e-6


def test_quotas_follow_eq5_on_a_worked_example():
    # shares K*S/sum S = 80, 16, 4 -> clip at k_max=60 then water-fill: 60, 32, 8
    out = np.empty(3, np.int64)
    kernels.quotas(np.array([20.0, 4.0, 1.0]), np.ones(3, np.int64), 100, 5, 60, out)
    assert out.tolist() == [60, 32, 8]
    kernels.quotas(np.array([1000.0, 1.0, 1.0]), np.ones(3, np.int64), 100, 10, 100, out)
    assert out.tolist() == [80, 10, 10]
    kernels.quotas(np.array([5.0, 5.0, 5.0]), np.array([1, 0, 1]), 7, 0, 7, out)
    assert out.tolist() == [4, 0, 3]


probabilities = st.builds(lambda mantissa, exponent: mantissa * 10.0 ** -exponent,
                          st.floats(0.1, 1.0), st.integers(0, 300))


@FAST
@given(st.lists(probabilities, min_size=1, max_size=50), st.integers(1, 10**6), st.floats(0.0, 1.0))
def test_is_weights_match_the_formula(probs, stored, beta):
    """Ratios P_min / P(j) from 1 down to 1e-301: the float32 power, and below 1e-30 the
    float64 one (as a float32 such a ratio loses its digits or is 0). rtol: a float32 power
    is off by up to |beta ln ratio| float32 epsilons (< 69 * 6e-8); atol: below float32's normal
    range the output itself is subnormal or 0."""
    out = np.empty(len(probs), np.float32)
    kernels.is_weights(np.array(probs), beta, out)  # M cancels: the naive formula keeps it
    np.testing.assert_allclose(out, naive.is_weights(probs, stored, beta), rtol=1e-5, atol=1e-44)
    assert out.max() == pytest.approx(1.0)


def test_is_weights_of_a_ratio_below_float32_range_take_the_float64_power():
    out = np.empty(2, np.float32)
    kernels.is_weights(np.array([1.0, 1e-50]), 0.5, out)  # ratio 1e-50: 0 in float32
    assert out[0] == pytest.approx(1e-25, rel=1e-6) and out[1] == 1.0


@FAST
@given(st.data())
def test_ta_per_draws_follow_quotas_and_report_eq5_probabilities(data):
    rows = data.draw(st.lists(st.lists(st.floats(0.01, 100.0), min_size=1, max_size=16),
                              min_size=1, max_size=5))
    trees = make_trees(rows, 16)
    quotas = np.array(data.draw(st.lists(st.integers(0, 7), min_size=len(rows), max_size=len(rows))))
    batch = int(quotas.sum())
    if batch == 0:
        return
    u = np.random.default_rng(data.draw(st.integers(0, 99))).random(batch)
    tasks, slots, probs = np.empty(batch, np.int64), np.empty(batch, np.int64), np.empty(batch)
    kernels.sample_ta_per(trees, quotas, u, tasks, slots, probs)
    assert tasks.tolist() == np.repeat(np.arange(len(rows)), quotas).tolist()
    for t, s, p in zip(tasks, slots, probs):
        assert s < len(rows[t])
        assert p == pytest.approx(quotas[t] / batch * rows[t][s] / math.fsum(rows[t]), rel=1e-9)


@FAST
@given(st.lists(st.lists(st.floats(0.01, 100.0), min_size=1, max_size=16), min_size=1, max_size=5),
       st.integers(1, 60), st.integers(0, 3), st.floats(0.0, 1.0), st.integers(0, 99))
def test_whole_batch_draws_compose_quotas_draws_weights_and_global_ids(rows, batch, k_min, beta,
                                                                      seed):
    """draw_ta_per / draw_per = quotas -> sample_* -> is_weights -> task * capacity + slot."""
    capacity, n = 16, len(rows)
    if n * k_min > batch:
        return
    trees, counts = make_trees(rows, capacity), np.array([len(r) for r in rows], np.int64)
    u = np.random.default_rng(seed).random(batch)
    probs, slots = np.empty(batch), np.empty(batch, np.int64)
    tasks, indices, weights = np.empty(batch, np.int64), np.empty(batch, np.int64), np.empty(batch, np.float32)
    expected_tasks, expected_weights = np.empty(batch, np.int64), np.empty(batch, np.float32)

    kernels.draw_ta_per(trees, counts, k_min, batch, capacity, u, beta, tasks, indices, weights)
    quotas = np.empty(n, np.int64)
    kernels.quotas(trees[:, 1].copy(), counts, batch, k_min, batch, quotas)
    kernels.sample_ta_per(trees, quotas, u, expected_tasks, slots, probs)
    kernels.is_weights(probs, beta, expected_weights)
    assert tasks.tolist() == expected_tasks.tolist()
    assert indices.tolist() == (expected_tasks * capacity + slots).tolist()
    np.testing.assert_array_equal(weights, expected_weights)

    kernels.draw_per(trees, capacity, u, beta, tasks, indices, weights)
    kernels.sample_per(trees, u, expected_tasks, slots, probs)
    kernels.is_weights(probs, beta, expected_weights)
    assert indices.tolist() == (expected_tasks * capacity + slots).tolist()
    np.testing.assert_array_equal(weights, expected_weights)


@FAST
@given(st.lists(st.integers(0, 40), min_size=1, max_size=4), st.data())
def test_set_priorities_writes_only_valid_batches_and_names_the_first_bad_entry(counts, data):
    capacity, n = 40, len(counts)
    trees = np.zeros((n, kernels.tree_width(capacity)))
    ids = data.draw(st.lists(st.integers(-3, n * capacity + 3), min_size=1, max_size=12))
    td = data.draw(st.lists(st.floats(-1e3, 1e3) | st.just(float("nan")), min_size=len(ids),
                            max_size=len(ids)))
    write = data.draw(st.booleans())
    counts = np.array(counts, np.int64)
    bad_index, bad_td, largest = kernels.set_priorities(
        trees, np.array(ids, np.int64), np.array(td), counts, capacity, 1e-6, 0.6, write)
    stored = [0 <= i < n * capacity and i % capacity < counts[i // capacity] for i in ids]
    assert bad_index == (stored.index(False) if False in stored else -1)
    finite = [not math.isnan(x) for x in td]
    assert bad_td == (finite.index(False) if False in finite else -1)
    leaves = trees[:, trees.shape[1] // 2:]
    if write and bad_index < 0 and bad_td < 0:
        for i, x in zip(ids, td):  # the last write of a slot wins
            leaves_expected = (abs(td[len(ids) - 1 - ids[::-1].index(i)]) + 1e-6) ** 0.6
            assert leaves[i // capacity, i % capacity] == pytest.approx(leaves_expected, rel=1e-12)
        assert largest == pytest.approx(max((abs(x) + 1e-6) ** 0.6 for x in td), rel=1e-12)
        assert_tree_consistent(trees, leaves[:, :capacity])
    else:
        assert not trees.any(), "nothing is written unless asked and every entry is valid"


@FAST
@given(st.lists(st.lists(st.floats(0.0, 100.0), min_size=1, max_size=16), min_size=1, max_size=5)
       .filter(lambda rows: sum(map(sum, rows)) > 1e-3), st.integers(1, 64), st.integers(0, 99))
def test_per_draws_are_grouped_and_report_eq3_probabilities(rows, batch, seed):
    trees = make_trees(rows, 16)
    u = np.random.default_rng(seed).random(batch)
    tasks, slots, probs = np.empty(batch, np.int64), np.empty(batch, np.int64), np.empty(batch)
    kernels.sample_per(trees, u, tasks, slots, probs)
    assert np.all(np.diff(tasks) >= 0)
    total = math.fsum(map(math.fsum, rows))
    for t, s, p in zip(tasks, slots, probs):
        assert rows[t][s] > 0
        assert p == pytest.approx(rows[t][s] / total, rel=1e-9)


@FAST
@given(st.lists(st.integers(0, 50), min_size=1, max_size=8).filter(any), st.integers(1, 200),
       st.integers(0, 99))
def test_uniform_counts_and_within_task_draws_stay_on_stored_slots(counts, batch, seed):
    counts = np.array(counts, np.int64)
    u = np.random.default_rng(seed).random(2 * batch)
    quotas = np.empty(len(counts), np.int64)
    kernels.uniform_counts(counts, u[:batch], quotas)
    assert quotas.sum() == batch
    assert np.all(quotas[counts == 0] == 0)
    tasks, slots = np.empty(batch, np.int64), np.empty(batch, np.int64)
    kernels.sample_within_tasks(counts, quotas, u[batch:], tasks, slots)
    assert np.all(np.diff(tasks) >= 0)
    assert np.all(slots < counts[tasks]) and np.all(slots >= 0)


@FAST
@given(st.integers(1, 4), st.integers(1, 6), st.lists(st.integers(0, 3), max_size=40))
def test_ring_slots_fill_then_overwrite_the_oldest(num_tasks, capacity, task_list):
    tasks = np.array([t % num_tasks for t in task_list], np.int64)
    positions, counts = np.zeros(num_tasks, np.int64), np.zeros(num_tasks, np.int64)
    out = np.empty(tasks.size, np.int64)
    kernels.ring_slots(tasks, positions, counts, capacity, out)
    ref = naive.NaiveReplay(num_tasks, capacity, 1.0, 0.0)
    for j, task in enumerate(tasks):
        assert out[j] == ref.next[task]
        ref.add(task, None)
    assert positions.tolist() == ref.next and counts.tolist() == ref.count


@FAST
@given(st.lists(st.integers(-3, 40), max_size=30), st.lists(st.integers(0, 8), min_size=1, max_size=4))
def test_split_indices_is_divmod_and_flags_the_first_unstored_id(ids, counts):
    capacity = 8
    indices, counts = np.array(ids, np.int64), np.array(counts, np.int64)
    tasks, slots = np.empty_like(indices), np.empty_like(indices)
    bad = kernels.split_indices(indices, counts, capacity, tasks, slots)
    valid = [0 <= i and i // capacity < counts.size and i % capacity < counts[i // capacity] for i in ids]
    assert bad == (valid.index(False) if False in valid else -1)
    good = len(ids) if bad < 0 else bad
    assert tasks[:good].tolist() == [i // capacity for i in ids[:good]]
    assert slots[:good].tolist() == [i % capacity for i in ids[:good]]


@FAST
@given(st.lists(st.floats(allow_nan=True, allow_infinity=True, width=64), max_size=20),
       st.floats(1e-8, 1.0), st.floats(0.0, 2.0))
def test_td_priorities_are_abs_plus_eps_to_the_alpha_and_flag_non_finite(td, eps, alpha):
    out = np.empty(len(td))
    bad, largest = kernels.td_priorities(np.array(td, np.float64), eps, alpha, out)
    with np.errstate(all="ignore"):
        expected = (np.abs(np.array(td, np.float64)) + eps) ** alpha
    finite = np.isfinite(expected).tolist()
    assert bad == (finite.index(False) if False in finite else -1)
    good = len(td) if bad < 0 else bad
    np.testing.assert_allclose(out[:good], expected[:good], rtol=1e-12)
    assert largest == max(out[:good], default=0.0)


@FAST
@given(st.integers(1, 30), st.integers(1, 9), st.integers(0, 99))
def test_gather_rows_copies_the_named_rows(num_rows, width, seed):
    rng = np.random.default_rng(seed)
    storage = rng.random((num_rows, width), dtype=np.float32)
    rows = rng.integers(0, num_rows, 17)
    out = np.empty((17, width), np.float32)
    kernels.gather_rows(storage, rows, out)
    np.testing.assert_array_equal(out, storage[rows])


@pytest.mark.skipif(os.environ.get("NUMBA_DISABLE_JIT") == "1", reason="already interpreted")
def test_kernel_and_replay_tests_pass_interpreted():
    """The same tests with NUMBA_DISABLE_JIT=1: the Python semantics of every kernel hold too."""
    env = {**os.environ, "NUMBA_DISABLE_JIT": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
         "tests/test_kernels.py", "tests/test_replay.py", "-m", "not statistical"],
        env=env, capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
