"""Numba kernels of prioritized replay: sum trees, stratified prefix-sum sampling, TA-PER
quotas (Eq. 5), importance weights (Eq. 4) and the row gather.

Pure functions over numpy arrays. Randomness enters as uniforms pre-drawn by the caller. A kernel
writes only into the arguments its docstring names as outputs (`out*`) or as updated in place.

Sum-tree layout: the N trees of N tasks are the rows of one float64 array `trees` of shape
(N, 2P). Each tree has fan-out F = FANOUT (8: the children of a node fill one 64-byte cache
line) and P leaves, P the smallest power of F >= capacity (a power of two). Row t holds task
t's tree like a heap: the root (the task's total S_t) at column 1, the children of column c
at columns F*c .. F*c + F - 1, so leaf `slot` sits at column P + slot and the level of size s
at columns [s, 2s); other columns are unused zeros. Leaves hold stored priorities p^alpha,
empty slots 0. Fan-out 8 makes a 100k-slot tree 6 levels deep instead of 17 (binary), so a
draw or an update touches 6 cache lines instead of 17 (one each when the array starts on a
cache line: `aligned_zeros`).

Batched kernels step all draws one level at a time and `prefetch` each draw's next line, and
the search inside a node has no data-dependent branch (a mispredicted branch costs more than
the whole search).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import config, njit, types
from numba.core import cgutils
from numba.extending import intrinsic

FANOUT = 8
"""Children per node; `descend` and `node_sum` are written out for exactly 8."""
ALIGNMENT = 64
"""Bytes; a tree array starting on a cache line keeps every node's 8 children in one line."""
MERGE_NODES = 64
"""Nodes of the deepest tree level that sorted draws reach by a merge instead of a search."""
GATHER_AHEAD = 8
"""Rows `gather_rows` prefetches ahead of the one it copies."""


@intrinsic
def _prefetch_compiled(typingctx, array, row, col):
    """LLVM's prefetch hint (read, keep in all cache levels) for the line of array[row, col]."""

    def codegen(context, builder, signature, args):
        array_type = signature.args[0]
        view = context.make_array(array_type)(context, builder, args[0])
        pointer = cgutils.get_item_pointer(context, builder, array_type, view, args[1:])
        byte_pointer = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        hint = builder.module.declare_intrinsic(
            "llvm.prefetch", [byte_pointer],
            ir.FunctionType(ir.VoidType(), [byte_pointer, i32, i32, i32]))
        builder.call(hint, [builder.bitcast(pointer, byte_pointer), ir.Constant(i32, 0),
                            ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return types.void(array, row, col), codegen


def _prefetch_python(array, row, col):
    """Interpreted kernels (NUMBA_DISABLE_JIT=1) have no cache hints to give."""


prefetch = _prefetch_python if config.DISABLE_JIT else _prefetch_compiled
"""prefetch(array, row, col): start loading the cache line of array[row, col]; no effect on
results. The batched kernels issue it for a draw's next node while the other draws proceed."""


def aligned_zeros(shape, dtype=np.float64) -> np.ndarray:
    """np.zeros whose data starts on an ALIGNMENT-byte boundary (numpy guarantees only 16)."""
    itemsize = np.dtype(dtype).itemsize
    size = int(np.prod(shape))
    raw = np.zeros(size + ALIGNMENT // itemsize, dtype)
    offset = (-raw.ctypes.data % ALIGNMENT) // itemsize
    return raw[offset:offset + size].reshape(shape)


def tree_width(capacity: int) -> int:
    """Columns of one tree row: 2P with P the smallest power of FANOUT >= capacity."""
    leaves = 1
    while leaves < capacity:
        leaves *= FANOUT
    return 2 * leaves


@njit(cache=True)
def ring_slots(tasks, positions, counts, capacity, out_slots):
    """Slots for appending B transitions to per-task FIFO rings (updates `positions`, `counts`).

    tasks: (B,) int64; positions, counts: (N,) int64 next write slot and rows held per task;
    out_slots: (B,) int64. Rows are placed in order, so a task's oldest row is overwritten first.
    """
    for j in range(tasks.shape[0]):
        task = tasks[j]
        out_slots[j] = positions[task]
        positions[task] = (positions[task] + 1) % capacity
        counts[task] = min(counts[task] + 1, capacity)


@njit(cache=True)
def split_indices(indices, counts, capacity, out_tasks, out_slots):
    """Global slot ids -> (task, slot) = divmod(index, capacity); returns the position of the
    first id that is not a stored slot (slot >= counts[task] or out of range), else -1.

    indices: (B,) int64; counts: (N,) int64; out_tasks, out_slots: (B,) int64.
    """
    for j in range(indices.shape[0]):
        task, slot = indices[j] // capacity, indices[j] % capacity
        if indices[j] < 0 or task >= counts.shape[0] or slot >= counts[task]:
            return j
        out_tasks[j], out_slots[j] = task, slot
    return -1


@njit(cache=True)
def td_priorities(td_errors, eps, alpha, out):
    """Stored priorities p = (|td| + eps)^alpha (Eq. 2 into Eq. 3).

    td_errors: (B,) float64; out: (B,) float64. Returns (position of the first td error whose
    priority is not finite (NaN, inf, or overflow) or -1, the largest priority).
    """
    largest = 0.0
    for j in range(td_errors.shape[0]):
        out[j] = (abs(td_errors[j]) + eps) ** alpha
        if not np.isfinite(out[j]):
            return j, largest
        largest = max(largest, out[j])
    return -1, largest


@njit(cache=True)
def node_sum(trees, row, first):
    """Sum of the 8 children trees[row, first:first + 8], added in pairs as `descend` adds them."""
    return ((trees[row, first] + trees[row, first + 1])
            + (trees[row, first + 2] + trees[row, first + 3])) + (
        (trees[row, first + 4] + trees[row, first + 5])
        + (trees[row, first + 6] + trees[row, first + 7]))


@njit(cache=True)
def tree_update(trees, tasks, slots, values):
    """Write leaves and restore every sum on their paths to the roots (updates `trees` in place).

    trees: (N, 2P) float64; tasks, slots: (B,) int64; values: (B,) float64, the new p^alpha.
    All B paths step up one level together (level-synchronous), each parent recomputed as the
    sum of its F children, so no float error accumulates and repeated leaves are harmless (the
    last write of a leaf wins). A parent equal to the previous path's is not recomputed: a
    sampled batch comes sorted by task and slot, so near the roots most paths share it.
    """
    leaves = trees.shape[1] // 2
    n = tasks.shape[0]
    nodes = np.empty(n, np.int64)
    for j in range(n):
        nodes[j] = leaves + slots[j]
        trees[tasks[j], nodes[j]] = values[j]
    level = leaves
    while level > 1:
        previous_task, previous_node = -1, -1
        for j in range(n):
            node = nodes[j] // FANOUT
            nodes[j] = node
            if node != previous_node or tasks[j] != previous_task:
                trees[tasks[j], node] = node_sum(trees, tasks[j], FANOUT * node)
                previous_task, previous_node = tasks[j], node
        level //= FANOUT


@njit(cache=True)
def tree_rebuild(trees):
    """Recompute every internal node of every tree from the leaves (updates `trees` in place).

    The exact rebuild used after loading leaves from a checkpoint and periodically against drift.
    """
    leaves = trees.shape[1] // 2
    for row in range(trees.shape[0]):
        level = leaves // FANOUT
        while level >= 1:
            for node in range(level, 2 * level):
                trees[row, node] = node_sum(trees, row, FANOUT * node)
            level //= FANOUT


@njit(cache=True)
def descend(trees, tasks, targets, out_slots):
    """Prefix-sum descent: out_slots[j] = the leaf of tree tasks[j] where the running sum of
    leaves first exceeds targets[j].

    trees: (N, 2P) float64; tasks: (B,) int64; targets: (B,) float64 in [0, S_task) (read only);
    out_slots: (B,) int64. A target that rounding pushes past the mass goes to the last
    non-empty leaf: a draw never lands on an empty one.
    """
    mass = targets.copy()
    out_slots[:] = 1
    descend_from(trees, tasks, 1, out_slots, mass)
    out_slots -= trees.shape[1] // 2


@njit(cache=True)
def descend_from(trees, tasks, level, nodes, mass):
    """Take draws from tree level `level` (a power of 8; its nodes are columns [level, 2 level))
    down to the leaves (updates `nodes` and `mass` in place).

    nodes: (B,) int64, each draw's node at that level, ends as its leaf's column; mass: (B,)
    float64, the target left inside the node, ends as the target left inside the leaf. All B
    draws step down one level together, and each draw prefetches its next node while the
    others step, so the loads of a level overlap in memory. Inside a node the 8 children are
    searched by halving (4 | 4, then 2 | 2, then 1 | 1) with no data-dependent branch: a random
    target would mispredict half of them. A half with no mass is never entered.
    """
    leaves = trees.shape[1] // 2
    n = tasks.shape[0]
    while level < leaves:
        for j in range(n):
            row = tasks[j]
            first = FANOUT * nodes[j]
            t = mass[j]
            left = ((trees[row, first] + trees[row, first + 1])
                    + (trees[row, first + 2] + trees[row, first + 3]))
            right = ((trees[row, first + 4] + trees[row, first + 5])
                     + (trees[row, first + 6] + trees[row, first + 7]))
            go = (t >= left) & (right > 0.0)  # `&`, not `and`: no branch
            t -= left * go  # exact: subtracts left or 0.0
            base = first + 4 * go
            left = trees[row, base] + trees[row, base + 1]
            right = trees[row, base + 2] + trees[row, base + 3]
            go = (t >= left) & (right > 0.0)
            t -= left * go
            base += 2 * go
            left = trees[row, base]
            go = (t >= left) & (trees[row, base + 1] > 0.0)
            mass[j] = t - left * go
            nodes[j] = base + go
            if FANOUT * level < leaves:  # the children of a leaf would be a wasted load
                prefetch(trees, row, FANOUT * nodes[j])
        level *= FANOUT


@njit(cache=True)
def merge_level(trees, tasks, targets, level, out_nodes, out_mass):
    """Resolve draws down to tree level `level` when each task's targets come contiguous and
    increasing, as stratified targets do: one walk along the level's nodes per task instead of
    a search per draw and level above it.

    A draw stops at the first node whose running sum (of the nodes before it, plus its own)
    exceeds its target; empty nodes are stepped over, and the last non-empty node takes any
    rounding overshoot. out_nodes: (B,) int64 node columns; out_mass: (B,) float64, the target
    minus the mass before the node. Ready for `descend_from(trees, tasks, level, ...)`.
    """
    n = tasks.shape[0]
    j = 0
    while j < n:
        task = tasks[j]
        last = 2 * level - 1
        while last > level and trees[task, last] <= 0.0:
            last -= 1
        node, before = level, 0.0
        while j < n and tasks[j] == task:
            t = targets[j]
            while node < last and t >= before + trees[task, node]:
                before += trees[task, node]
                node += 1
            out_nodes[j] = node
            out_mass[j] = t - before
            if level < trees.shape[1] // 2:
                prefetch(trees, task, FANOUT * node)
            j += 1


@njit(cache=True)
def merged_level(trees):
    """The tree level `sample_ta_per` and `sample_per` reach by `merge_level`: MERGE_NODES
    nodes, or the leaves of a smaller tree."""
    level = 1
    while level < trees.shape[1] // 2 and FANOUT * level <= MERGE_NODES:
        level *= FANOUT
    return level


@njit(cache=True)
def sample_ta_per(trees, quotas, u, out_tasks, out_slots, out_probs):
    """TA-PER draws: quotas[i] stratified draws from task i's tree, grouped by task.

    trees: (N, 2P) float64; quotas: (N,) int64 summing to K; u: (K,) uniforms in [0, 1).
    Draw j of task i targets (j + u) * S_i / k_i, one per equal segment of the tree's mass, so
    a task's targets increase with j: the top levels are merged, the rest searched
    (`_descend_sorted`). Outputs (K,): out_tasks, out_slots int64, and out_probs float64, the
    probability that one draw of the batch is that transition: P = (k_i / K) * p^alpha / S_i.
    """
    batch = u.shape[0]
    leaves = trees.shape[1] // 2
    targets = np.empty(batch, np.float64)
    start = 0
    for task in range(quotas.shape[0]):
        k = quotas[task]
        segment = trees[task, 1] / max(k, 1)
        for j in range(k):
            out_tasks[start + j] = task
            targets[start + j] = (j + u[start + j]) * segment
        start += k
    _descend_sorted(trees, out_tasks, targets, out_slots)
    for j in range(batch):
        task = out_tasks[j]
        share = quotas[task] / batch
        out_probs[j] = share * trees[task, leaves + out_slots[j]] / trees[task, 1]


@njit(cache=True)
def _descend_sorted(trees, tasks, targets, out_slots):
    """`descend` for targets increasing within each task's contiguous draws: merge, then halve."""
    level = merged_level(trees)
    mass = np.empty(targets.shape[0], np.float64)
    merge_level(trees, tasks, targets, level, out_slots, mass)
    descend_from(trees, tasks, level, out_slots, mass)
    out_slots -= trees.shape[1] // 2


@njit(cache=True)
def sample_per(trees, u, out_tasks, out_slots, out_probs):
    """Global PER draws (Eq. 3): K stratified draws over the mass of all trees together.

    Draw j targets (j + u) * S / K with S = sum of the roots; the task is found by walking the
    roots' running sum (targets increase, so the batch comes out grouped by task), then the
    task's tree is descended. out_probs[j] = p^alpha / S. Shapes as in `sample_ta_per`.
    """
    batch = u.shape[0]
    num_tasks = trees.shape[0]
    leaves = trees.shape[1] // 2
    total = 0.0
    last = 0
    for task in range(num_tasks):
        total += trees[task, 1]
        if trees[task, 1] > 0.0:
            last = task
    targets = np.empty(batch, np.float64)
    task = 0
    before = 0.0
    segment = total / batch
    for j in range(batch):
        target = (j + u[j]) * segment
        while task < last and target >= before + trees[task, 1]:
            before += trees[task, 1]
            task += 1
        out_tasks[j] = task
        targets[j] = target - before
    _descend_sorted(trees, out_tasks, targets, out_slots)
    for j in range(batch):
        out_probs[j] = trees[out_tasks[j], leaves + out_slots[j]] / total


@njit(cache=True)
def sample_within_tasks(counts, quotas, u, out_tasks, out_slots):
    """Uniform draws inside each task: quotas[i] draws from task i's counts[i] stored slots.

    counts, quotas: (N,) int64; u: (K,) uniforms; outputs (K,) int64, grouped by task. Used by
    the `average` sampler (quotas K/N) and, with multinomial quotas, by `uniform`.
    """
    start = 0
    for task in range(quotas.shape[0]):
        for j in range(quotas[task]):
            out_tasks[start + j] = task
            out_slots[start + j] = min(int(u[start + j] * counts[task]), counts[task] - 1)
        start += quotas[task]


@njit(cache=True)
def uniform_counts(counts, u, out_quotas):
    """Per-task counts of K iid uniform draws over all stored transitions.

    counts: (N,) int64 stored per task; u: (K,) uniforms; out_quotas: (N,) int64. Draw j falls
    in task i when floor(u_j * M) lies in task i's block of the running count (M = sum counts),
    so the counts are multinomial(K, counts / M), exactly one uniform draw over the buffer each.
    """
    stored = counts.sum()
    ends = np.cumsum(counts)
    out_quotas[:] = 0
    for j in range(u.shape[0]):
        rank = min(int(u[j] * stored), stored - 1)
        out_quotas[np.searchsorted(ends, rank, side="right")] += 1


@njit(cache=True)
def quotas(sums, counts, batch_size, k_min, k_max, out):
    """TA-PER quotas (Eq. 5): k_i = clip(lambda * K * S_i / sum S, k_min, k_max), sum k_i = K.

    sums: (N,) float64 tree totals S_i; counts: (N,) int64 stored per task (tasks with none get
    0 and are left out of sum S); out: (N,) int64. lambda is found by water-filling: the
    clipped sum is piecewise linear and non-decreasing in lambda, so the root lies between two
    consecutive breakpoints (k_min or k_max reached by some task) and is interpolated exactly.
    Integers: floor, then the remainder one by one to the largest fractional parts (ties to
    the lower task id), never leaving [k_min, k_max]. The caller guarantees
    n * k_min <= K <= n * k_max for the n tasks holding data.
    """
    n = sums.shape[0]
    total = 0.0
    for i in range(n):
        if counts[i] > 0:
            total += sums[i]
    share = np.zeros(n, np.float64)
    breaks = np.empty(2 * n, np.float64)
    num_breaks = 0
    for i in range(n):
        if counts[i] > 0 and sums[i] > 0.0:
            share[i] = batch_size * sums[i] / total
            breaks[num_breaks] = k_min / share[i]
            breaks[num_breaks + 1] = k_max / share[i]
            num_breaks += 2
    breaks = np.sort(breaks[:num_breaks])
    lam = 0.0
    previous, f_previous = 0.0, _clipped_sum(share, counts, 0.0, k_min, k_max)
    if f_previous < batch_size:
        lam = breaks[num_breaks - 1] if num_breaks > 0 else 0.0
        for b in breaks:
            f_b = _clipped_sum(share, counts, b, k_min, k_max)
            if f_b >= batch_size:
                lam = previous + (batch_size - f_previous) * (b - previous) / (f_b - f_previous)
                break
            previous, f_previous = b, f_b
    fraction = np.zeros(n, np.float64)
    remainder = batch_size
    for i in range(n):
        out[i] = 0
        if counts[i] > 0:
            x = min(max(lam * share[i], k_min), k_max)
            whole = min(max(np.floor(x + 1e-9), k_min), k_max)
            out[i] = int(whole)
            fraction[i] = max(x - whole, 0.0)
            remainder -= out[i]
    order = np.argsort(-fraction, kind="mergesort")
    changed = True
    while remainder != 0 and changed:
        changed = False
        step = 1 if remainder > 0 else -1
        for r in range(n):
            i = order[r] if step > 0 else order[n - 1 - r]
            if remainder != 0 and counts[i] > 0 and k_min <= out[i] + step <= k_max:
                out[i] += step
                remainder -= step
                changed = True


@njit(cache=True)
def even_quotas(counts, batch_size, out):
    """`average` quotas: K/n for each of the n tasks holding data, by largest remainder (the
    `quotas` rule with equal totals and no bounds). counts, out: (N,) int64."""
    holding = np.zeros(counts.shape[0], np.float64)
    for task in range(counts.shape[0]):
        if counts[task] > 0:
            holding[task] = 1.0
    quotas(holding, counts, batch_size, 0, batch_size, out)


@njit(cache=True)
def _clipped_sum(share, counts, lam, k_min, k_max):
    """sum over tasks holding data of clip(lam * share_i, k_min, k_max)."""
    s = 0.0
    for i in range(share.shape[0]):
        if counts[i] > 0:
            s += min(max(lam * share[i], k_min), k_max)
    return s


@njit(cache=True)
def is_weights(probs, beta, out):
    """Importance-sampling weights (Eq. 4): w_j = (1 / (M * P(j)))^beta / max_batch w.

    probs: (K,) float64 draw probabilities P(j), all > 0; out: (K,) float32. M cancels in the
    normalisation, so w_j = (P_min / P(j))^beta, at most 1 and exactly 1 for the least likely
    draw. The power runs in float32, the output's precision, unless the ratio is below
    float32's normal range (then in float64).
    """
    smallest = np.inf
    for j in range(probs.shape[0]):
        smallest = min(smallest, probs[j])
    beta32 = np.float32(beta)
    for j in range(probs.shape[0]):
        ratio = smallest / probs[j]
        out[j] = np.float32(ratio) ** beta32 if ratio >= 1e-30 else ratio ** beta


# ---------------------------------------------------------------- one call per buffer operation
# A sampler's `sample` and `update_priority` (`taper.samplers`) each cross from Python into numba
# once: between two batches the learner evicts most caches, and every extra crossing then costs
# microseconds.

@njit(cache=True)
def draw_uniform(counts, capacity, u, out_tasks, out_indices):
    """`uniform` batch: K iid draws over all stored transitions, grouped by task.

    counts: (N,) int64; u: (2K,) uniforms, the first K pick the tasks (`uniform_counts`), the
    last K the slots. Outputs (K,) int64: tasks and global ids task * capacity + slot.
    """
    batch = out_tasks.shape[0]
    per_task = np.empty(counts.shape[0], np.int64)
    uniform_counts(counts, u[:batch], per_task)
    sample_within_tasks(counts, per_task, u[batch:], out_tasks, out_indices)
    _to_global(out_tasks, capacity, out_indices)


@njit(cache=True)
def draw_average(counts, capacity, u, out_tasks, out_indices):
    """`average` batch: K/n draws per task holding data (largest remainder), uniform inside.

    counts: (N,) int64; u: (K,) uniforms. Outputs as in `draw_uniform`.
    """
    per_task = np.empty(counts.shape[0], np.int64)
    even_quotas(counts, out_tasks.shape[0], per_task)
    sample_within_tasks(counts, per_task, u, out_tasks, out_indices)
    _to_global(out_tasks, capacity, out_indices)


@njit(cache=True)
def draw_per(trees, capacity, u, beta, out_tasks, out_indices, out_weights):
    """`per` batch: `sample_per`, then IS weights (Eq. 4). u: (K,) uniforms; outputs (K,):
    tasks and global ids int64, weights float32."""
    probs = np.empty(u.shape[0], np.float64)
    sample_per(trees, u, out_tasks, out_indices, probs)
    is_weights(probs, beta, out_weights)
    _to_global(out_tasks, capacity, out_indices)


@njit(cache=True)
def draw_ta_per(trees, counts, k_min, k_max, capacity, u, beta, out_tasks, out_indices,
                out_weights):
    """`ta-per` batch: quotas (Eq. 5) from the tree totals, `sample_ta_per`, IS weights (Eq. 4).

    The caller has checked n * k_min <= K <= n * k_max. Shapes as in `draw_per`.
    """
    per_task = np.empty(counts.shape[0], np.int64)
    quotas(trees[:, 1], counts, u.shape[0], k_min, k_max, per_task)
    probs = np.empty(u.shape[0], np.float64)
    sample_ta_per(trees, per_task, u, out_tasks, out_indices, probs)
    is_weights(probs, beta, out_weights)
    _to_global(out_tasks, capacity, out_indices)


@njit(cache=True)
def _to_global(tasks, capacity, slots):
    """slots[j] <- tasks[j] * capacity + slots[j], the global slot id (in place)."""
    for j in range(slots.shape[0]):
        slots[j] += tasks[j] * capacity


@njit(cache=True)
def set_priorities(trees, indices, td_errors, counts, capacity, eps, alpha, write):
    """`update_priorities`: p = (|td| + eps)^alpha for global ids, written into the trees
    (Eq. 2 -> Eq. 3) when `write` (the samplers that prioritise) and every input is valid.

    indices: (B,) int64; td_errors: (B,) float64. Returns (position of the first id that is not
    a stored slot or -1, position of the first td error with a non-finite priority or -1, the
    largest priority).
    """
    n = indices.shape[0]
    tasks, slots = np.empty(n, np.int64), np.empty(n, np.int64)
    priorities = np.empty(n, np.float64)
    bad_index = split_indices(indices, counts, capacity, tasks, slots)
    bad_td, largest = td_priorities(td_errors, eps, alpha, priorities)
    if write and bad_index < 0 and bad_td < 0:
        tree_update(trees, tasks, slots, priorities)
    return bad_index, bad_td, largest


@njit(cache=True)
def gather_rows(storage, rows, out):
    """out[j] = storage[rows[j]]: copy K packed transition rows. storage: (R, W) float32;
    rows: (K,) int64; out: (K, W) float32.

    The cache lines of row j + GATHER_AHEAD are prefetched while row j is copied, so the misses
    of several rows overlap instead of one row's at a time.
    """
    width = storage.shape[1]
    n = rows.shape[0]
    for j in range(-GATHER_AHEAD, n):
        if j + GATHER_AHEAD < n:
            for column in range(0, width + 15, 16):  # one address in each 64-byte line
                prefetch(storage, rows[j + GATHER_AHEAD], min(column, width - 1))
        if j >= 0:
            row = rows[j]
            for c in range(width):
                out[j, c] = storage[row, c]
