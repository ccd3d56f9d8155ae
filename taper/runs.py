"""A run folder: its layout, where a new one goes, and whether a config may start or resume there.

A run folder is the unit of exchange (config.json, metrics.jsonl, checkpoint.pt, tensorboard/):
training writes it, evaluation, reports and notebooks read it.
"""

from __future__ import annotations

import dataclasses
import re
import time
from pathlib import Path

from taper import suites
from taper.config import Config
from taper.sac import resolve_device
from taper.task_descriptions import task_embeddings

METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.pt"
TENSORBOARD = "tensorboard"


def check(cfg: Config, resume: str | Path | None = None) -> suites.SuiteSpec:
    """ValueError naming the bad value for anything a run would trip over; nothing is written.

    Checks the suite, the quota bounds (Eq. 5) against K and N, the per-task capacity, the
    device, that care has a description of every task, and that a new run's folder is free /
    a resumed run's folder matches `cfg`.
    """
    spec = suites.suite_spec(cfg.suite, cfg.episode_length)
    cfg.quota_bounds(spec.num_tasks)
    if cfg.buffer_size < spec.num_tasks:
        raise ValueError(f"buffer_size={cfg.buffer_size} leaves no room per task: need at least "
                         f"one transition for each of {spec.num_tasks} tasks")
    resolve_device(cfg.device)
    if cfg.method == "care":
        task_embeddings(spec.task_names)
    if resume is None:
        if cfg.out is not None and Path(cfg.out).exists() and any(Path(cfg.out).iterdir()):
            raise ValueError(f"out={cfg.out!r} is not empty; continue it with resume "
                             "(taper train --resume) or choose another folder")
        return spec
    saved = Config.load(resume)
    changed = [f.name for f in dataclasses.fields(Config) if f.name != "out"
               and getattr(saved, f.name) != getattr(cfg, f.name)]
    if changed:
        raise ValueError(f"resume={str(resume)!r} was run with another config "
                         f"({', '.join(changed)} differ); resume with Config.load(resume)")
    if not (Path(resume) / CHECKPOINT).is_file():
        raise ValueError(f"resume={str(resume)!r} has no {CHECKPOINT} to continue from")
    return spec


def run_dir_for(cfg: Config) -> Path:
    """`cfg.out`, or a new folder under runs/ named by suite, method, sampler, seed and time."""
    if cfg.out is not None:
        return Path(cfg.out)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-",
                  f"{cfg.suite}_{cfg.method}_{cfg.sampler}_s{cfg.seed}_"
                  f"{time.strftime('%Y%m%d-%H%M%S')}")
    path, n = Path("runs") / stem, 1
    while path.exists():
        path, n = Path("runs") / f"{stem}-{n}", n + 1
    return path
