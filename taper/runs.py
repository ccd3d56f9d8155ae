"""A run folder: its layout, where a new one goes, whether a config may start or resume there,
how far it got, and what it was run with (provenance).

A run folder is the unit of exchange (config.json, metrics.jsonl, checkpoint.pt, tensorboard/,
provenance.json): training writes it, evaluation, reports, sweeps and notebooks read it.
This module imports torch and the suites only inside `check`, so reports and sweeps that only
read run folders stay light.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import platform
import re
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from taper.config import Config

if TYPE_CHECKING:
    from taper import suites

METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.pt"
TENSORBOARD = "tensorboard"
PROVENANCE = "provenance.json"
PACKAGES = ("taper", "torch", "numpy", "numba", "metaworld", "mujoco", "gymnasium")
"""Whose versions provenance.json records."""
NOT_SETTINGS = ("seed", "out", "preset", "device", "deterministic")
"""Config fields that `settings_differ` ignores: the seed (what pooled runs differ in), where
the run folder is, the preset's name (its sizes are fields of their own) and where and how the
same computation runs (device; deterministic kernels and one thread)."""


def check(cfg: Config, resume: str | Path | None = None) -> suites.SuiteSpec:
    """ValueError naming the bad value for anything a run would trip over; nothing is written.

    Checks the suite, the quota bounds (Eq. 5) against K and N, the per-task capacity, the
    device, that care has a description of every task, and that a new run's folder is free /
    a resumed run's folder matches `cfg`.
    """
    from taper import suites
    from taper.sac import resolve_device
    from taper.task_descriptions import task_embeddings

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


def settings_differ(a: Config, b: Config) -> list[str]:
    """The Config fields in which `a` and `b` differ, in field order, `NOT_SETTINGS` ignored:
    empty where runs may be pooled as seeds of one setting."""
    return [f.name for f in dataclasses.fields(Config) if f.name not in NOT_SETTINGS
            and getattr(a, f.name) != getattr(b, f.name)]


def progress(run_dir: str | Path) -> dict:
    """How far a run folder got, from its metrics.jsonl alone (no checkpoint is loaded):
    {"evaluations": eval_mean rows, "step": the last row's step or 0, "finished": whether the
    loop ended (its closing `timing` row, written after the last checkpoint)}."""
    path = Path(run_dir) / METRICS
    evaluations, step, finished = 0, 0, False
    if path.is_file():
        with open(path) as f:
            for line in f:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:      # a line cut short by a kill
                    continue
                evaluations += row["kind"] == "eval_mean"
                finished = row["kind"] == "timing"
                step = row.get("step", step)
    return {"evaluations": evaluations, "step": step, "finished": finished}


def evaluations_planned(cfg: Config) -> int:
    """Evaluation points of a whole run: every eval_every steps, and at the last step."""
    return cfg.steps_per_env // cfg.eval_every + bool(cfg.steps_per_env % cfg.eval_every)


def write_provenance(run_dir: str | Path, event: str, device: str,
                     command: list[str] | None = None) -> dict:
    """Append an entry to the run folder's provenance.json and return it.

    `event` is "start" or "resume"; `device` the device the run computes on ("cpu", "cuda");
    `command` the command line, recorded as one shell-quoted string (None: `sys.argv`). The
    entry holds the versions of `PACKAGES`, the git commit of the taper checkout (None when not
    run from one), python, the device described (GPU name or CPU count), host, process id and
    the time.
    """
    path = Path(run_dir) / PROVENANCE
    entries = read_provenance(run_dir)
    entry = {"event": event, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
             "command": shlex.join(sys.argv if command is None else command),
             "versions": {name: _version(name) for name in PACKAGES},
             "python": platform.python_version(), "git": _git(),
             "device": _describe(device), "host": socket.gethostname(), "pid": os.getpid()}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps([*entries, entry], indent=1))
    os.replace(tmp, path)
    return entry


def read_provenance(run_dir: str | Path) -> list[dict]:
    """The entries of a run folder's provenance.json, first the start, then one per resume;
    [] for a run folder written before provenance was recorded."""
    path = Path(run_dir) / PROVENANCE
    return json.loads(path.read_text()) if path.is_file() else []


def _version(package: str) -> str | None:
    if package == "taper":        # the code running, which may not be the one installed
        from taper import __version__
        return __version__
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git() -> dict | None:
    """{"commit", "dirty"} of the checkout this taper was imported from; None outside one."""
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return None
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], check=True,
                                capture_output=True, text=True).stdout.strip()
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain",
                                 "--untracked-files=no"], check=True, capture_output=True,
                                text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return {"commit": commit, "dirty": bool(status.strip())}


def _describe(device: str) -> dict:
    """The device as recorded: its type, and the GPU's name or the CPUs this process may use."""
    import torch

    from taper.suites import available_cpus

    if device.startswith("cuda") and torch.cuda.is_available():
        return {"type": "cuda", "name": torch.cuda.get_device_name(),
                "count": torch.cuda.device_count()}
    return {"type": "cpu", "name": platform.processor() or platform.machine(),
            "count": available_cpus()}
