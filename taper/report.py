"""Tables and figures from run folders, by the paper's protocol (REFERENCE.md).

The success of a task at an evaluation point is the fraction of its evaluation episodes that
succeeded (the run's `eval` rows). Runs are grouped by (suite, method, sampler), and a group
pools only runs whose settings differ in nothing but the seed.

- Table 1 form: the highest seed-mean of the task-mean success over the evaluation points,
  ± std across seeds at that point (the paper's final score).
- Table 2 form: at each evaluation point, mean ± std across tasks of the seed-averaged
  per-task success.
- Tables 4-6 form: Table 1's values crossed methods × samplers.

An incomplete run (fewer evaluation points than its config plans) counts only at the points it
reached: every point says how many seeds it holds, and Table 1's best is taken over the points
that every seed of the group reached. Stds are population stds (numpy's ddof=0).

Reads config.json and metrics.jsonl only, so it works on finished, running and killed runs
alike. The t-SNE figure also loads a taper checkpoint and runs its policy; torch, metaworld,
matplotlib and scikit-learn are imported only where they are needed.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from taper.config import Config
from taper.runs import CHECKPOINT, METRICS, evaluations_planned, settings_differ

CONFIG = "config.json"
FORMATS = ("markdown", "csv")


# ---------------------------------------------------------------------- reading runs
def find_runs(paths: Iterable[str | Path]) -> list[Path]:
    """Every run folder (a folder holding config.json and metrics.jsonl) at or under `paths`,
    a sweep folder included; ValueError for a path that holds none."""
    found: dict[Path, None] = {}
    for path in map(Path, paths):
        hits = sorted(p.parent for p in path.rglob(CONFIG) if (p.parent / METRICS).is_file())
        if not hits:
            raise ValueError(f"{str(path)!r} holds no run folder (a folder with {CONFIG} and "
                             f"{METRICS})")
        found.update(dict.fromkeys(hits))
    return list(found)


@dataclass(frozen=True)
class Run:
    """One run folder: its settings and its evaluation curves."""

    path: Path
    cfg: Config
    steps: tuple[int, ...]
    """Evaluation points (steps per env) at which every task was evaluated, ascending."""
    tasks: tuple[str, ...]
    """Task names in task id order."""
    success: np.ndarray
    """(len(steps), len(tasks)) fraction of evaluation episodes that succeeded."""


def _rows(run_dir: Path, kind: str) -> list[dict]:
    path = run_dir / METRICS
    if not path.is_file():
        raise ValueError(f"run_dir={str(run_dir)!r} has no {METRICS}")
    rows = (json.loads(line) for line in path.read_text().splitlines() if line.strip())
    return [r for r in rows if r.get("kind") == kind]


def load_run(run_dir: str | Path) -> Run:
    """A run's `eval` rows as a `Run`; a point whose rows stop part-way through the tasks (a run
    killed while evaluating) is not one of its points."""
    run_dir = Path(run_dir)
    evals = _rows(run_dir, "eval")
    tasks = tuple(name for _, name in sorted({(r["task_id"], r["task"]) for r in evals}))
    by_step: dict[int, dict[int, float]] = {}
    for r in evals:
        by_step.setdefault(r["step"], {})[r["task_id"]] = r["success"]
    steps = tuple(s for s in sorted(by_step) if len(by_step[s]) == len(tasks))
    success = np.array([[by_step[s][i] for i in range(len(tasks))] for s in steps], float)
    return Run(run_dir, Config.load(run_dir), steps, tasks,
               success.reshape(len(steps), len(tasks)))


def per_task_train_metric(run_dir: str | Path, prefix: str) -> tuple[tuple[int, ...], np.ndarray]:
    """(steps, values) of the `train` rows' per-task metric `prefix/<task id>` (`quota`: TA-PER's
    draws per task out of K, Eq. 5; `alpha`: SAC's temperature per task); values is
    (len(steps), tasks), NaN where a row lacks the key (e.g. alpha before the first update)."""
    rows = _rows(Path(run_dir), "train")
    pattern = re.compile(rf"{re.escape(prefix)}/(\d+)$")
    ids = {int(m.group(1)) for r in rows for m in map(pattern.match, r) if m}
    values = np.full((len(rows), max(ids, default=-1) + 1), np.nan)
    for row, r in zip(values, rows):
        for i in ids:
            row[i] = r.get(f"{prefix}/{i}", np.nan)
    return tuple(r["step"] for r in rows), values


# ---------------------------------------------------------------------- grouping
@dataclass(frozen=True)
class Group:
    """The seeds of one (suite, method, sampler), settings otherwise equal."""

    runs: tuple[Run, ...]
    """Sorted by seed."""
    steps: tuple[int, ...]
    """Every evaluation point any of the runs reached."""
    tasks: tuple[str, ...]
    success: np.ndarray
    """(seeds, len(steps), len(tasks)); NaN where a run has not reached that point."""

    @property
    def cfg(self) -> Config:
        return self.runs[0].cfg

    @property
    def key(self) -> tuple[str, str, str]:
        return self.cfg.suite, self.cfg.method, self.cfg.sampler

    @property
    def planned(self) -> int:
        """Evaluation points a finished run of the group has: those its config plans (a run
        still going, or stopped, has fewer), or more where a run reached more."""
        return max(evaluations_planned(self.cfg), len(self.steps))

    @property
    def incomplete(self) -> list[Run]:
        """Runs with fewer evaluation points than `planned`."""
        return [run for run in self.runs if len(run.steps) < self.planned]


def group_runs(runs: Sequence[Run]) -> list[Group]:
    """Runs grouped by (suite, method, sampler), in order of first appearance; ValueError naming
    the setting that differs when two runs of a group differ in more than the seed, or when two
    runs share a seed."""
    keyed: dict[tuple[str, str, str], list[Run]] = {}
    for run in runs:
        keyed.setdefault((run.cfg.suite, run.cfg.method, run.cfg.sampler), []).append(run)
    return [_group(members) for members in keyed.values()]


def _group(members: list[Run]) -> Group:
    first = members[0]
    seen = {}
    for run in members:
        differ = settings_differ(first.cfg, run.cfg)
        if differ:
            values = ", ".join(f"{name} {getattr(first.cfg, name)!r} vs "
                               f"{getattr(run.cfg, name)!r}" for name in differ)
            raise ValueError(f"runs {str(first.path)!r} and {str(run.path)!r} differ in more "
                             f"than the seed ({values}): report them separately")
        if run.cfg.seed in seen:
            raise ValueError(f"runs {str(seen[run.cfg.seed])!r} and {str(run.path)!r} both have "
                             f"seed {run.cfg.seed}: pool each seed once")
        seen[run.cfg.seed] = run.path
    members = sorted(members, key=lambda run: run.cfg.seed)
    tasks = max((run.tasks for run in members), key=len)
    for run in members:
        if run.tasks and run.tasks != tasks:
            raise ValueError(f"run {str(run.path)!r} has tasks {list(run.tasks)}, "
                             f"{str(first.path)!r} {list(tasks)}")
    steps = tuple(sorted({s for run in members for s in run.steps}))
    success = np.full((len(members), len(steps), len(tasks)), np.nan)
    for k, run in enumerate(members):
        for s, row in zip(run.steps, run.success):
            success[k, steps.index(s)] = row
    return Group(tuple(members), steps, tasks, success)


# ---------------------------------------------------------------------- the numbers
def _stats(x: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, std, count) of `x` over `axis` leaving NaN entries out; NaN where count is 0."""
    ok = ~np.isnan(x)
    count = ok.sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(ok, x, 0.0).sum(axis=axis) / count
        centred = np.where(ok, x - np.expand_dims(mean, axis), 0.0)
        std = np.sqrt((centred ** 2).sum(axis=axis) / count)
    return mean, std, count


def success_curve(group: Group) -> tuple[tuple[int, ...], np.ndarray, np.ndarray, np.ndarray]:
    """Fig. 1b: (steps, mean, std, seeds), at each point the mean ± std across seeds of the
    task-mean success and the number of seeds that reached it."""
    return (group.steps, *_stats(_stats(group.success, axis=2)[0], axis=0))


@dataclass(frozen=True)
class Best:
    """Table 1: the best evaluation point of a group."""

    step: int
    mean: float
    """Seed-mean of the task-mean success there."""
    std: float
    """Std across seeds there."""
    seeds: int


def best_point(group: Group) -> Best | None:
    """Table 1: the point, among those every seed reached, with the highest seed-mean success
    (the earliest of equals); None before the first such point."""
    steps, mean, std, seeds = success_curve(group)
    complete = np.flatnonzero(seeds == len(group.runs))
    if complete.size == 0:
        return None
    i = complete[np.argmax(mean[complete])]
    return Best(steps[i], float(mean[i]), float(std[i]), int(seeds[i]))


def across_tasks(group: Group) -> tuple[tuple[int, ...], np.ndarray, np.ndarray, np.ndarray]:
    """Table 2: (steps, mean, std, seeds), at each point mean ± std across tasks of the
    seed-averaged per-task success, and the number of seeds averaged there."""
    steps, per_task, _, seeds = task_curves(group)
    return (steps, *_stats(per_task, axis=1)[:2], seeds)


def task_curves(group: Group) -> tuple[tuple[int, ...], np.ndarray, np.ndarray, np.ndarray]:
    """Fig. 3 and the per-task table: (steps, mean, std, seeds), mean and std (len(steps),
    tasks) across seeds of each task's success, seeds (len(steps),) the seeds at each point."""
    mean, std, _ = _stats(group.success, axis=0)
    return group.steps, mean, std, success_curve(group)[3]


def train_metric_curves(group: Group, prefix: str) -> tuple[tuple[int, ...], np.ndarray]:
    """(steps, values (len(steps), tasks)): the seed-mean of `per_task_train_metric` over the
    group's runs at every step any of them logged."""
    curves = [per_task_train_metric(run.path, prefix) for run in group.runs]
    steps = tuple(sorted({s for run_steps, _ in curves for s in run_steps}))
    width = max(values.shape[1] for _, values in curves)
    stacked = np.full((len(curves), len(steps), width), np.nan)
    for k, (run_steps, values) in enumerate(curves):
        for s, row in zip(run_steps, values):
            stacked[k, steps.index(s), :row.size] = row
    return steps, _stats(stacked, axis=0)[0]


# ---------------------------------------------------------------------- tables
def _percent(fraction: float) -> float:
    return round(100 * float(fraction), 4)


def _pm(mean: float, std: float) -> str:
    return f"{100 * mean:.1f} ± {100 * std:.1f}"


def _label(group: Group, suites: set[str]) -> str:
    suite, method, sampler = group.key
    return f"{method} {sampler}" + (f" ({suite})" if len(suites) > 1 else "")


def _incomplete_note(group: Group) -> str:
    return "; ".join(f"seed {run.cfg.seed}: {len(run.steps)} of {group.planned} points"
                     for run in group.incomplete)


def _markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]], align: str) -> str:
    """A markdown table; `align` has an "l" (text) or "r" (number) per column."""
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join({"l": "---", "r": "---:"}[a] for a in align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def markdown(groups: Sequence[Group]) -> str:
    """Table 1, Table 2, per-task success at the best point and (where the runs of a suite span
    more than one method or sampler) the methods × samplers cross, as markdown."""
    best = [best_point(g) for g in groups]
    out = [_table1(groups, best), _table2(groups)]
    for suite in sorted({g.cfg.suite for g in groups}):
        members = [(g, b) for g, b in zip(groups, best) if g.cfg.suite == suite and b]
        if members:
            out.append(_per_task(suite, members))
        if len({g.cfg.method for g, _ in members}) > 1 or \
                len({g.cfg.sampler for g, _ in members}) > 1:
            out.append(_cross(suite, members))
    return "\n\n".join(out)


def _table1(groups: Sequence[Group], best: Sequence[Best | None]) -> str:
    rows = ([*g.key, *(("no point reached by every seed", "", str(len(g.runs))) if b is None
                       else (_pm(b.mean, b.std), f"{b.step:,}", str(b.seeds))),
             _incomplete_note(g)] for g, b in zip(groups, best))
    return ("**Table 1**: best mean success % over the evaluation points, ± std across seeds "
            "(points every seed reached)\n\n" + _markdown_table(
                ["suite", "method", "sampler", "success %", "at step", "seeds",
                 "incomplete runs"], rows, align="lllrrrl"))


def _table2(groups: Sequence[Group]) -> str:
    suites = {g.cfg.suite for g in groups}
    cells = {}
    for g in groups:
        for s, mean, std, seeds in zip(*across_tasks(g)):
            partial = f" ({seeds} of {len(g.runs)} seeds)" if seeds < len(g.runs) else ""
            cells[g.key, s] = _pm(mean, std) + partial
    steps = sorted({s for g in groups for s in g.steps})
    rows = ([f"{s:,}", *(cells.get((g.key, s), "") for g in groups)] for s in steps)
    return ("**Table 2**: mean success % ± std across tasks (each task averaged over seeds)\n\n"
            + _markdown_table(["step", *(_label(g, suites) for g in groups)], rows,
                              align="r" * (len(groups) + 1)))


def _per_task(suite: str, members: Sequence[tuple[Group, Best]]) -> str:
    columns = []
    for g, b in members:
        _, mean, std, _ = task_curves(g)
        at = g.steps.index(b.step)
        columns.append((mean[at], std[at]))
    tasks = max((g.tasks for g, _ in members), key=len)
    rows = ([task, *(_pm(mean[i], std[i]) for mean, std in columns)]
            for i, task in enumerate(tasks))
    return (f"**Per task** ({suite}): success % at the best point, ± std across seeds\n\n"
            + _markdown_table(["task", *(f"{_label(g, set())} at {b.step:,}"
                                         for g, b in members)], rows,
                              align="l" + "r" * len(members)))


def _cross(suite: str, members: Sequence[tuple[Group, Best]]) -> str:
    """The form of Tables 4-6: Table 1's values, a row per method and a column per sampler."""
    methods = list(dict.fromkeys(g.cfg.method for g, _ in members))
    samplers = list(dict.fromkeys(g.cfg.sampler for g, _ in members))
    table1 = {(g.cfg.method, g.cfg.sampler): f"{_pm(b.mean, b.std)} ({b.seeds})"
              for g, b in members}
    rows = ([m, *(table1.get((m, s), "") for s in samplers)] for m in methods)
    return (f"**Methods × samplers** ({suite}): Table 1's success % (seeds)\n\n"
            + _markdown_table(["method", *samplers], rows, align="l" + "r" * len(samplers)))


CSV_COLUMNS = ("table", "suite", "method", "sampler", "step", "task", "success_mean",
               "success_std", "std_across", "seeds", "note")


def csv_rows(groups: Sequence[Group]) -> list[dict]:
    """The tables' numbers as tidy rows (`CSV_COLUMNS`, success in %): table "1" (one row per
    group; the cross of methods × samplers is these rows), "2" (one per group and point) and
    "per-task" (one per group and task, at the best point)."""
    rows = []
    for g in groups:
        suite, method, sampler = g.key
        base = dict(suite=suite, method=method, sampler=sampler)
        b = best_point(g)
        rows.append(dict(table="1", **base, step=b.step if b else "", task="",
                         success_mean=_percent(b.mean) if b else "",
                         success_std=_percent(b.std) if b else "", std_across="seeds",
                         seeds=len(g.runs), note=_incomplete_note(g)))
        for s, mean, std, seeds in zip(*across_tasks(g)):
            rows.append(dict(table="2", **base, step=s, task="", success_mean=_percent(mean),
                             success_std=_percent(std), std_across="tasks", seeds=seeds,
                             note=""))
        if b:
            _, mean, std, seeds = task_curves(g)
            i = g.steps.index(b.step)
            rows += [dict(table="per-task", **base, step=b.step, task=task,
                          success_mean=_percent(mean[i, t]), success_std=_percent(std[i, t]),
                          std_across="seeds", seeds=seeds[i], note="")
                     for t, task in enumerate(g.tasks)]
    return rows


def render(groups: Sequence[Group], fmt: str = "markdown") -> str:
    """The report in `fmt` (markdown or csv)."""
    if fmt == "markdown":
        return markdown(groups)
    if fmt == "csv":
        text = io.StringIO()
        writer = csv.DictWriter(text, CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(csv_rows(groups))
        return text.getvalue().rstrip("\n")
    raise ValueError(f"fmt={fmt!r} is not one of {', '.join(FORMATS)}")


# ---------------------------------------------------------------------- t-SNE of u (Figs. 4-5)
def collect_states(agent, envs, num_tasks: int, steps: int,
                   seed: int) -> tuple[np.ndarray, np.ndarray]:
    """States met by the deterministic policy: `envs` (env i runs task i) reset with `seed`, then
    `steps` vector steps of `agent.act(obs, task_ids, deterministic=True)`. Returns (states
    (steps * num_tasks, obs_dim), task ids (steps * num_tasks,)), step by step."""
    task_ids = np.arange(num_tasks)
    states = []
    obs, _ = envs.reset(seed=seed)
    for _ in range(steps):
        states.append(np.asarray(obs, np.float32))
        obs, *_ = envs.step(agent.act(obs, task_ids, deterministic=True))
    return np.concatenate(states), np.tile(task_ids, steps)


def unique_features(agent, states: np.ndarray) -> np.ndarray:
    """(M, unique_dim) unique features u = f(s) of `states` (Fig. 2) by the agent's unique MLP;
    ValueError for a method without one."""
    import torch

    from taper.methods.shared_unique import SharedUnique

    if not isinstance(agent.method, SharedUnique):
        raise ValueError(f"method={agent.cfg.method!r} has no unique features u: the t-SNE "
                         "needs a taper run")
    with torch.no_grad():
        u = agent.method.unique(torch.as_tensor(states, dtype=torch.float32,
                                                device=agent.device))
    return u.cpu().numpy()


def tsne(points: np.ndarray, seed: int) -> np.ndarray:
    """(M, 2) t-SNE embedding of (M, d) points (scikit-learn, PCA init, perplexity 30 or
    (M - 1) / 3 if smaller)."""
    try:
        from sklearn.manifold import TSNE
    except ImportError:
        raise ImportError("the t-SNE figure needs scikit-learn: pip install -e \".[report]\"") \
            from None
    perplexity = min(30.0, (len(points) - 1) / 3)
    return TSNE(n_components=2, perplexity=perplexity, init="pca",
                random_state=seed).fit_transform(np.asarray(points, np.float64))


def run_tsne(run_dir: str | Path, episodes: int,
             device: str | None = None) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Figs. 4-5 for a taper run's latest checkpoint: (embedding (M, 2), task ids (M,), task
    names) of u over `episodes` episodes per task of the deterministic policy on the suite's
    envs (the evaluation seed of the checkpoint's step)."""
    from taper import suites, train

    cfg = Config.load(run_dir)
    if cfg.method != "taper":
        raise ValueError(f"method={cfg.method!r} has no unique features u: the t-SNE needs a "
                         "taper run")
    cfg, spec, agent, step = train.load_agent(run_dir, device)
    envs = suites.make_policy_envs(cfg.suite, seed=cfg.seed, episode_length=cfg.episode_length,
                                   reward_version=cfg.reward_version)
    with contextlib.closing(envs):
        states, task_ids = collect_states(
            agent, envs, spec.num_tasks, episodes * spec.episode_length,
            seed=train.env_seed(cfg.seed, step, train.EVAL_STREAM))
    return tsne(unique_features(agent, states), cfg.seed), task_ids, spec.task_names


# ---------------------------------------------------------------------- figures
def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ImportError("plots need matplotlib: pip install -e \".[report]\"") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _slug(*parts: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", "_".join(parts))


def _band(ax, steps, mean, std, label) -> None:
    """A line with a marker at every point (a single point stays visible) and a ± std band."""
    line, = ax.plot(steps, 100 * mean, marker="o", markersize=3, label=label)
    ax.fill_between(steps, 100 * (mean - std), 100 * (mean + std), color=line.get_color(),
                    alpha=0.2, linewidth=0)
    ax.set_ylim(-3, 103)


def _panels(plt, count: int, cols: int):
    rows = -(-count // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.8 * rows), squeeze=False)
    axes = axes.ravel()
    for ax in axes[count:]:
        ax.axis("off")
    return fig, axes


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_plots(groups: Sequence[Group], out_dir: str | Path,
                tsne_episodes: int = 2) -> list[Path]:
    """Write the figures as PNGs into `out_dir`; returns their paths.

    success.png: mean success over steps, band ± std across seeds, per group, a panel per
    suite (Fig. 1b); tasks_<suite>.png: per-task curves (Fig. 3); train_<group>.png: TA-PER's
    quotas and α per task over steps (train rows, seed-mean); tsne_<group>_s<seed>.png for the
    lowest-seed run with a checkpoint of every taper group, if `tsne_episodes` > 0 (Figs. 4-5).
    """
    plt = _pyplot()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    suites = list(dict.fromkeys(g.cfg.suite for g in groups))

    fig, axes = _panels(plt, len(suites), min(len(suites), 3))
    for ax, suite in zip(axes, suites):
        for g in groups:
            if g.cfg.suite == suite:
                steps, mean, std, _ = success_curve(g)
                _band(ax, steps, mean, std, f"{_label(g, set())} ({len(g.runs)} seeds)")
        ax.set(title=f"{suite}: mean over tasks", xlabel="steps per env", ylabel="success %")
        ax.legend(fontsize=7)
    written.append(_save(plt, fig, out / "success.png"))

    for suite in suites:
        members = [g for g in groups if g.cfg.suite == suite]
        tasks = max((g.tasks for g in members), key=len)
        if not tasks:  # no evaluation yet
            continue
        fig, axes = _panels(plt, len(tasks), min(len(tasks), 5))
        for g in members:
            steps, mean, std, _ = task_curves(g)
            for i, ax in enumerate(axes[:len(g.tasks)]):
                _band(ax, steps, mean[:, i], std[:, i], _label(g, set()))
        for ax, task in zip(axes, tasks):
            ax.set_title(task, fontsize=9)
        axes[0].legend(fontsize=7)
        fig.supxlabel("steps per env")
        fig.supylabel("success %")
        written.append(_save(plt, fig, out / f"tasks_{_slug(suite)}.png"))

    for g in groups:
        fig, axes = _panels(plt, 2, 2)
        fig.set_size_inches(11, 3.2)
        for ax, prefix, title in ((axes[0], "quota", "TA-PER quota (draws of K)"),
                                  (axes[1], "alpha", "α")):
            steps, values = train_metric_curves(g, prefix)
            for i in range(values.shape[1]):
                name = g.tasks[i] if i < len(g.tasks) else str(i)
                ax.plot(steps, values[:, i], marker="o", markersize=2, label=name)
            ax.set(title=f"{' '.join(g.key)}: {title}", xlabel="steps per env")
        axes[1].set_yscale("log")
        if axes[1].lines:
            axes[1].legend(fontsize=6, loc="center left", bbox_to_anchor=(1.02, 0.5))
        written.append(_save(plt, fig, out / f"train_{_slug(*g.key)}.png"))

    for g in groups if tsne_episodes > 0 else ():
        run = next((r for r in g.runs if (r.path / CHECKPOINT).is_file()), None)
        if g.cfg.method != "taper" or run is None:
            continue
        embedding, task_ids, names = run_tsne(run.path, tsne_episodes)
        fig, ax = plt.subplots(figsize=(7, 6))
        colours = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
        for i, name in enumerate(names):
            at = task_ids == i
            ax.scatter(embedding[at, 0], embedding[at, 1], s=4, color=colours(i % colours.N),
                       label=name)
        ax.set(title=f"t-SNE of u: {' '.join(g.key)}, seed {run.cfg.seed}",
               xticks=[], yticks=[])
        ax.legend(fontsize=7, markerscale=3)
        written.append(_save(plt, fig, out / f"tsne_{_slug(*g.key)}_s{run.cfg.seed}.png"))
    return written
