"""`taper sweep`: a grid of runs, method x sampler x seed with common options, each a normal run
folder SWEEP_DIR/<method>_<sampler>_s<seed>, and SWEEP_DIR/sweep.json (the grid, the options and
each run's state).

Two backends run the grid. Local: N `taper train` subprocesses at a time, their output in
SWEEP_DIR/logs/. Ray Tune: one trial per run with its CPU and (fractional) GPU resources, a
failed trial retried up to `max_failures` times. Both continue a sweep the same way: a finished
run is skipped, an unfinished one resumes from its run folder's checkpoint (written at every
evaluation), so a killed run or lost worker costs at most one evaluation interval. Ray is
imported only by the Ray backend.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from taper import runs, suites
from taper.config import Config

SWEEP_FILE = "sweep.json"
LOGS = "logs"
BACKENDS = ("local", "ray")
STATES = ("pending", "running", "done", "failed")
"""A run's state in sweep.json; `pending` includes a run stopped part-way that will resume."""


def parse_seeds(text: str) -> tuple[int, ...]:
    """`0-9`, `0,2,5`, `3` (or a mix such as `0-3,7`) -> the seeds in that order, none twice."""
    seeds: list[int] = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not match or (match[2] is not None and int(match[2]) < int(match[1])):
            raise ValueError(f"seeds={text!r}: {part.strip()!r} is not a seed or a range a-b "
                             "with a <= b; e.g. 0-9, 0,2,5 or 3")
        seeds.extend(range(int(match[1]), int(match[2] or match[1]) + 1))
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds={text!r} names a seed twice")
    return tuple(seeds)


def parse_names(text: str, allowed: Sequence[str], what: str) -> tuple[str, ...]:
    """A comma-separated list of names from `allowed`, none twice; ValueError naming the bad one."""
    names = tuple(name.strip() for name in text.split(","))
    for name in names:
        if name not in allowed:
            raise ValueError(f"{what}={text!r}: {name!r} is not one of {', '.join(allowed)}")
    if len(set(names)) != len(names):
        raise ValueError(f"{what}={text!r} names a {what[:-1]} twice")
    return names


def run_name(cfg: Config) -> str:
    """The run folder's name inside a sweep: <method>_<sampler>_s<seed>."""
    return f"{cfg.method}_{cfg.sampler}_s{cfg.seed}"


@dataclass(frozen=True)
class Sweep:
    """One sweep: its folder, the grid, the common options and one Config per run, by name."""

    sweep_dir: Path
    grid: dict
    """{"methods", "samplers" (None: each method's own), "seeds"} as planned."""
    options: dict
    """The train options common to all runs, as given (preset included)."""
    configs: dict[str, Config]

    @classmethod
    def plan(cls, sweep_dir: str | Path, methods: Sequence[str],
             samplers: Sequence[str] | None, seeds: Sequence[int], preset: str,
             **options) -> Sweep:
        """One Config per (method, sampler, seed): the preset, then `options` (None values are
        ignored), out = SWEEP_DIR/<run name>. ValueError, with nothing written, for a config a
        run would refuse, or a run folder already there that holds another config."""
        sweep_dir = Path(sweep_dir).resolve()
        if (sweep_dir.exists() and not sweep_dir.is_dir()):
            raise ValueError(f"out={str(sweep_dir)!r} is a file, not a sweep folder")
        options = {name: value for name, value in options.items() if value is not None}
        for name in ("method", "sampler", "seed", "out"):
            if name in options:
                raise ValueError(f"{name}={options[name]!r}: a sweep sets {name} per run")
        configs: dict[str, Config] = {}
        for method, sampler, seed in itertools.product(methods, samplers or [None], seeds):
            cfg = Config.from_preset(preset, **options, method=method, sampler=sampler,
                                     seed=seed)
            name = run_name(cfg)
            if name in configs:
                raise ValueError(f"samplers={samplers!r} gives run {name} twice")
            configs[name] = dataclasses.replace(cfg, out=str(sweep_dir / name))
        settings = (dataclasses.replace(cfg, out=None, seed=0) for cfg in configs.values())
        for cfg in dict.fromkeys(settings):         # once per setting: seeds check alike
            runs.check(cfg)
        for cfg in configs.values():
            _check_run_folder(cfg)
        grid = {"methods": list(methods), "samplers": None if samplers is None else list(samplers),
                "seeds": list(seeds)}
        return cls(sweep_dir, grid, {"preset": preset, **options}, configs)

    def finished(self, name: str) -> bool:
        return runs.progress(self.configs[name].out)["finished"]

    def write(self, states: dict[str, str], backend: str) -> None:
        """sweep.json: the grid, the common options, and each run's state and evaluations done
        (read from its metrics.jsonl now); written atomically."""
        record = {"suite": next(iter(self.configs.values())).suite, "grid": self.grid,
                  "options": _jsonable(self.options), "backend": backend,
                  "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "runs": {}}
        for name, cfg in self.configs.items():
            record["runs"][name] = {
                "method": cfg.method, "sampler": cfg.sampler, "seed": cfg.seed,
                "state": states[name], "evaluations": runs.progress(cfg.out)["evaluations"],
                "of": runs.evaluations_planned(cfg)}
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.sweep_dir / f"{SWEEP_FILE}.tmp"
        tmp.write_text(json.dumps(record, indent=1))
        os.replace(tmp, self.sweep_dir / SWEEP_FILE)


def read_sweep(sweep_dir: str | Path) -> dict:
    """A sweep folder's sweep.json; its run folders are SWEEP_DIR/<name> for each name in
    "runs". ValueError if there is none."""
    path = Path(sweep_dir) / SWEEP_FILE
    if not path.is_file():
        raise ValueError(f"{str(sweep_dir)!r} has no {SWEEP_FILE}; is it a sweep folder?")
    return json.loads(path.read_text())


def train_args(cfg: Config) -> list[str]:
    """The `taper train` options that rebuild `cfg` field for field."""
    args = []
    for f in dataclasses.fields(Config):
        value, flag = getattr(cfg, f.name), "--" + f.name.replace("_", "-")
        if value is None:
            continue
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, tuple):
            args += [flag, ",".join(map(str, value))]
        else:
            args += [flag, str(value)]
    return args


def start_or_resume(cfg: Config, command: list[str] | None = None) -> Path:
    """Train `cfg` in this process: resume its run folder from the checkpoint there, or start it
    afresh. The command recorded in provenance.json is `command`, or else the `taper train`
    command line that does the same."""
    from taper.train import train

    resume = _resume_point(cfg)
    args = ["--resume", cfg.out] if resume else train_args(cfg)
    return train(cfg, resume=resume, command=command or ["taper", "train", *args])


# ---------------------------------------------------------------------- local backend
def run_local(sweep: Sweep, jobs: int = 1, cpus_per_run: int | None = None,
              echo: Callable[[str], None] = print, poll: float = 0.5) -> dict[str, str]:
    """Run the unfinished runs of `sweep` as `taper train` subprocesses, `jobs` at a time, each
    with `cpus_per_run` torch threads (None: the CPUs shared out over the jobs); the final state
    of each run. Output goes to SWEEP_DIR/logs/<run>.log. On Ctrl-C or SIGTERM (or any error
    here) the running runs are sent SIGTERM, so they checkpoint before they stop."""
    states = {name: "done" if sweep.finished(name) else "pending" for name in sweep.configs}
    queue = [name for name, state in states.items() if state == "pending"]
    threads = cpus_per_run or max(1, suites.available_cpus() // jobs)
    running: dict[str, subprocess.Popen] = {}
    sweep.write(states, "local")
    (sweep.sweep_dir / LOGS).mkdir(exist_ok=True)
    try:
        with _terminate_as_interrupt():
            _run_queue(sweep, states, queue, running, jobs, threads, echo, poll)
    finally:
        for process in running.values():
            process.terminate()
        for name, process in running.items():
            process.wait()
            states[name] = "pending"
        sweep.write(states, "local")
    return states


def _run_queue(sweep, states, queue, running, jobs, threads, echo, poll) -> None:
    """Start runs from `queue` while fewer than `jobs` are `running`, until all have ended."""
    while queue or running:
        while queue and len(running) < jobs:
            name = queue.pop(0)
            running[name] = _spawn(sweep.configs[name], sweep.sweep_dir / LOGS, threads)
            _change(sweep, states, name, "running", "local", echo)
        time.sleep(poll)
        for name, process in list(running.items()):
            if process.poll() is not None:
                del running[name]
                done = process.returncode == 0 and sweep.finished(name)
                _change(sweep, states, name, "done" if done else "failed", "local", echo)


@contextlib.contextmanager
def _terminate_as_interrupt():
    """SIGTERM raises KeyboardInterrupt here (in the main thread), so it stops the runs too."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _spawn(cfg: Config, logs: Path, threads: int) -> subprocess.Popen:
    resume = _resume_point(cfg)
    args = ["--resume", cfg.out] if resume else train_args(cfg)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TQDM_MININTERVAL": "10"}
    with open(logs / f"{Path(cfg.out).name}.log", "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "taper", "train", *args], env=env,
                                stdout=log, stderr=subprocess.STDOUT)


# ---------------------------------------------------------------------- Ray backend
def run_ray(sweep: Sweep, jobs: int | None = None, address: str | None = None,
            cpus_per_run: float = 1.0, gpus_per_run: float = 0.0, max_failures: int = 3,
            echo: Callable[[str], None] = print) -> dict[str, str]:
    """Run the unfinished runs of `sweep` as Ray Tune trials; the final state of each run.

    One trial per run with {"cpu": cpus_per_run, "gpu": gpus_per_run} (`tune.with_resources`),
    at most `jobs` at a time (None: as the resources allow); a failed trial (an error, a killed
    worker) is retried up to `max_failures` times (`FailureConfig`), and a retry resumes from
    the run folder's checkpoint. Joins the cluster at `address`, or starts Ray here when none
    is running in this process; on a cluster SWEEP_DIR must be on storage every node shares.
    Tune's own records go to SWEEP_DIR/ray.
    """
    import ray
    from ray import tune

    states = {name: "done" if sweep.finished(name) else "pending" for name in sweep.configs}
    todo = [name for name, state in states.items() if state == "pending"]
    sweep.write(states, "ray")
    if not todo:
        return states
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)

    class Record(tune.Callback):
        """Keeps sweep.json's states in step with the trials."""

        def on_trial_start(self, iteration, trials, trial, **info):
            _change(sweep, states, trial.config["run"], "running", "ray", echo)

        def on_trial_recover(self, iteration, trials, trial, **info):
            echo(f"{trial.config['run']}: trial failed, retrying from its checkpoint")

        def on_trial_complete(self, iteration, trials, trial, **info):
            name = trial.config["run"]
            _change(sweep, states, name, "done" if sweep.finished(name) else "failed", "ray",
                    echo)

        def on_trial_error(self, iteration, trials, trial, **info):
            _change(sweep, states, trial.config["run"], "failed", "ray", echo)

    configs = {name: sweep.configs[name].to_json() for name in todo}
    trainable = tune.with_resources(tune.with_parameters(_ray_trial, configs=configs),
                                    {"cpu": cpus_per_run, "gpu": gpus_per_run})
    tuner = tune.Tuner(
        trainable, param_space={"run": tune.grid_search(todo)},
        tune_config=tune.TuneConfig(max_concurrent_trials=jobs),
        run_config=tune.RunConfig(name="ray", storage_path=str(sweep.sweep_dir), verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=max_failures),
                                  callbacks=[Record()]))
    tuner.fit()
    for name in todo:
        states[name] = "done" if sweep.finished(name) else "failed"
    sweep.write(states, "ray")
    return states


def _ray_trial(params: dict, configs: dict[str, str]) -> None:
    """One Ray Tune trial: train its run (resuming where a failed attempt left off)."""
    from ray import tune

    cfg = Config.from_json(configs[params["run"]])
    start_or_resume(cfg)
    tune.report(runs.progress(cfg.out))


# ---------------------------------------------------------------------- shared
def _check_run_folder(cfg: Config) -> None:
    """ValueError if the run's folder holds something else than a run of `cfg`."""
    path = Path(cfg.out)
    if not path.exists() or not any(path.iterdir()):
        return
    saved = Config.load(path) if (path / "config.json").is_file() else None
    if saved is None:
        raise ValueError(f"{str(path)!r} is not empty and holds no run (no config.json); "
                         "move it away or choose another sweep folder")
    changed = [f.name for f in dataclasses.fields(Config)
               if f.name != "out" and getattr(saved, f.name) != getattr(cfg, f.name)]
    if changed:
        raise ValueError(f"{str(path)!r} was run with another config ({', '.join(changed)} "
                         f"differ); give the sweep the options in its {SWEEP_FILE} again, or "
                         "choose another sweep folder")


def _resume_point(cfg: Config) -> Path | None:
    """The run folder if it has a checkpoint to resume from; else None, after clearing a folder
    left by a run stopped before its first checkpoint (`_check_run_folder` vouched for it)."""
    path = Path(cfg.out)
    if (path / runs.CHECKPOINT).is_file():
        return path
    if path.exists():
        shutil.rmtree(path)
    return None


def _change(sweep: Sweep, states: dict[str, str], name: str, state: str, backend: str,
            echo: Callable[[str], None]) -> None:
    states[name] = state
    sweep.write(states, backend)
    count = {s: list(states.values()).count(s) for s in STATES}
    progress = runs.progress(sweep.configs[name].out)["evaluations"]
    echo(f"[{count['done']}/{len(states)} done, {count['running']} running, "
         f"{count['failed']} failed] {name} {state} ({progress}/"
         f"{runs.evaluations_planned(sweep.configs[name])} evaluations)")


def _jsonable(options: dict) -> dict:
    return {name: list(value) if isinstance(value, tuple) else value
            for name, value in options.items()}
