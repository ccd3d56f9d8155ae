"""Success curves from run folders: per-task tables and an optional figure.

Reads only `config.json` and `metrics.jsonl` (the `eval` rows), so it works on finished,
running and killed runs alike.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from taper.config import Config


def eval_curves(run_dir: str | Path) -> tuple[list[int], list[str], np.ndarray, np.ndarray]:
    """(steps, task names, success, return) from a run's `eval` rows; the last two are
    (len(steps), len(tasks)) arrays."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise ValueError(f"run_dir={str(run_dir)!r} has no metrics.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("kind") == "eval"]
    steps = sorted({r["step"] for r in rows})
    tasks = [name for _, name in sorted({(r["task_id"], r["task"]) for r in rows})]
    success, returns = (np.full((len(steps), len(tasks)), np.nan) for _ in range(2))
    for r in rows:
        at = steps.index(r["step"]), r["task_id"]
        success[at], returns[at] = r["success"], r["return"]
    return steps, tasks, success, returns


def markdown_table(run_dir: str | Path) -> str:
    """Success % per task (columns) at every evaluation step (rows), with the task mean and
    the mean episode return."""
    steps, tasks, success, returns = eval_curves(run_dir)
    cfg = Config.load(run_dir)
    lines = [f"{cfg.suite}, method {cfg.method}, sampler {cfg.sampler}, seed {cfg.seed} "
             f"({cfg.eval_episodes} episodes per task)", "",
             "| step | " + " | ".join(tasks) + " | mean | mean return |",
             "|---:|" + "---:|" * (len(tasks) + 2)]
    for step, row, ret in zip(steps, success, returns):
        cells = " | ".join(f"{100 * v:.0f}" for v in row)
        lines.append(f"| {step:,} | {cells} | {100 * np.nanmean(row):.1f} | "
                     f"{np.nanmean(ret):.1f} |")
    return "\n".join(lines)


def plot(run_dirs: list[str | Path], path: str | Path) -> None:
    """One panel per task plus the mean: success against steps per env, one line per run."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError("plots need matplotlib: pip install -e \".[report]\"") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = [eval_curves(d) for d in run_dirs]
    tasks = curves[0][1]
    for run_dir, (_, other, _, _) in zip(run_dirs, curves):
        if other != tasks:
            raise ValueError(f"run_dir={str(run_dir)!r} has tasks {other}, the first run "
                             f"{tasks}: plot runs of one suite together")
    cols = 4
    rows = -(-(len(tasks) + 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.6 * rows), sharex=True, sharey=True)
    axes = axes.ravel()
    for run_dir, (steps, _, success, _) in zip(run_dirs, curves):
        cfg = Config.load(run_dir)
        label = f"{cfg.method}+{cfg.sampler} s{cfg.seed}"
        for i, ax in enumerate(axes[:len(tasks)]):
            ax.plot(steps, 100 * success[:, i], label=label)
            ax.set_title(tasks[i], fontsize=9)
        axes[len(tasks)].plot(steps, 100 * np.nanmean(success, axis=1), label=label)
    axes[len(tasks)].set_title("mean over tasks", fontsize=9)
    axes[len(tasks)].legend(fontsize=7)
    for ax in axes[len(tasks) + 1:]:
        ax.axis("off")
    fig.supxlabel("steps per env")
    fig.supylabel("success %")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
