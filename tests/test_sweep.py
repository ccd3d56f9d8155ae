"""`taper sweep` and run provenance: the grid, sweep.json, the local and Ray backends continuing
killed runs, provenance.json, and which settings keep runs poolable."""

from __future__ import annotations

import dataclasses
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from taper import runs, sweep
from taper import train as train_module
from taper.cli import main
from taper.config import Config
from taper.runs import CHECKPOINT
from taper.train import train
from tests.test_train import REPO, cli, env, rows

# Runs of a few seconds: one cheap task, tiny networks, one thread, no env worker process.
TINY = dict(suite="mt1:reach-v3", steps_per_env=150, learning_starts=20, eval_every=50,
            eval_episodes=1, episode_length=50, log_every=50, batch_size=16, buffer_size=2000,
            hidden_sizes=(16,), unique_hidden_sizes=(16,), unique_dim=8, num_param_sets=2,
            deterministic=True, device="cpu", overlap_envs=False)
TINY_ARGS = ["--suite", "mt1:reach-v3", "--steps-per-env", "150", "--learning-starts", "20",
             "--eval-every", "50", "--eval-episodes", "1", "--episode-length", "50",
             "--log-every", "50", "--batch-size", "16", "--buffer-size", "2000",
             "--hidden-sizes", "16", "--unique-hidden-sizes", "16", "--unique-dim", "8",
             "--num-param-sets", "2", "--deterministic", "--device", "cpu",
             "--no-overlap-envs"]


@pytest.mark.parametrize("text, seeds", [("0-9", tuple(range(10))), ("0,2,5", (0, 2, 5)),
                                         ("3", (3,)), ("0-2, 7", (0, 1, 2, 7))])
def test_seeds_syntax(text, seeds):
    assert sweep.parse_seeds(text) == seeds


@pytest.mark.parametrize("text, named", [("3-1", "'3-1'"), ("0,x", "'x'"), ("", "''"),
                                         ("-1", "'-1'"), ("0-2,1", "twice")])
def test_bad_seeds_name_the_bad_part(text, named):
    with pytest.raises(ValueError, match=named):
        sweep.parse_seeds(text)


def test_plan_one_config_per_method_sampler_seed(tmp_path):
    plan = sweep.Sweep.plan(tmp_path / "sw", ["mtsac", "taper"], None, [0, 1], "cpu-small",
                            **TINY, lr=1e-3)
    assert list(plan.configs) == ["mtsac_uniform_s0", "mtsac_uniform_s1", "taper_ta-per_s0",
                                  "taper_ta-per_s1"]
    cfg = plan.configs["taper_ta-per_s1"]
    assert (cfg.method, cfg.sampler, cfg.seed, cfg.lr, cfg.preset) == ("taper", "ta-per", 1,
                                                                       1e-3, "cpu-small")
    assert cfg.out == str((tmp_path / "sw" / "taper_ta-per_s1").resolve())
    assert cfg.batch_size == 16, "options win over the preset"
    assert not (tmp_path / "sw").exists(), "planning writes nothing"

    grid = sweep.Sweep.plan(tmp_path / "sw", ["paco"], ["uniform", "per"], [4], "cpu-small",
                            **TINY)
    assert list(grid.configs) == ["paco_uniform_s4", "paco_per_s4"]
    with pytest.raises(ValueError, match="gives run taper_ta-per_s0 twice"):
        sweep.Sweep.plan(tmp_path / "sw", ["taper"], ["ta-per", "ta-per"], [0], "cpu-small")


def test_plan_refuses_a_run_folder_of_another_config(tmp_path):
    plan = sweep.Sweep.plan(tmp_path, ["mtsac"], None, [0], "cpu-small", **TINY)
    run_dir = Path(plan.configs["mtsac_uniform_s0"].out)
    run_dir.mkdir()
    dataclasses.replace(plan.configs["mtsac_uniform_s0"], lr=1e-3).save(run_dir)
    with pytest.raises(ValueError, match=r"another config \(lr differ\)"):
        sweep.Sweep.plan(tmp_path, ["mtsac"], None, [0], "cpu-small", **TINY)
    (run_dir / "config.json").unlink()
    (run_dir / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="holds no run"):
        sweep.Sweep.plan(tmp_path, ["mtsac"], None, [0], "cpu-small", **TINY)


def test_train_args_rebuild_the_config(tmp_path, monkeypatch):
    configs = []
    monkeypatch.setattr(train_module, "train",
                        lambda cfg, resume=None: configs.append(cfg) or cfg.out)
    cfg = Config.from_preset("cpu-small", **{**TINY, "deterministic": False},
                             method="paco", sampler="per", seed=7, lr=1.5e-4, k_min=1,
                             unique_sac_grad=False, out=str(tmp_path / "run"))
    result = CliRunner().invoke(main, ["train", *sweep.train_args(cfg)])
    assert result.exit_code == 0, result.output
    assert configs == [cfg]


@pytest.mark.parametrize("args, named", [
    (["--seeds", "2-1"], "'2-1'"),
    (["--methods", "taper,sac"], "'sac'"),
    (["--samplers", "per,rank"], "'rank'"),
    (["--methods", "taper,taper"], "twice"),
    (["--suite", "mt11"], "mt11"),
    (["--lr", "-1"], "lr=-1.0"),
    (["--backend", "slurm"], "slurm"),
    (["--address", "auto"], "--address"),
    (["--gpus-per-run", "0.5"], "--gpus-per-run"),
    (["--jobs", "0"], "--jobs"),
    (["--seed", "3"], "--seed"),
])
def test_bad_values_exit_2_name_the_value_and_write_nothing(tmp_path, args, named):
    result = CliRunner().invoke(main, ["sweep", "--out", str(tmp_path / "sw"), *TINY_ARGS,
                                       *args])
    assert result.exit_code == 2, result.output
    assert named in result.output and result.output.count("Error") == 1
    assert not (tmp_path / "sw").exists()


def test_settings_differ_ignores_seed_folder_and_where_it_runs():
    a = Config.from_preset("cpu-hour", suite="mt10-rand", seed=0, out="a")
    b = dataclasses.replace(a, seed=3, out="b", preset="paper", device="cuda",
                            deterministic=True)
    assert runs.settings_differ(a, b) == []
    c = dataclasses.replace(b, lr=1e-3, hidden_sizes=(64,), sampler="per")
    assert runs.settings_differ(a, c) == ["sampler", "hidden_sizes", "lr"]
    assert set(runs.NOT_SETTINGS) < {f.name for f in dataclasses.fields(Config)}


def test_provenance_records_versions_commit_device_and_command(tmp_path):
    assert runs.read_provenance(tmp_path) == []
    runs.write_provenance(tmp_path, "start", "cpu", ["taper", "train", "--out", "a b"])
    runs.write_provenance(tmp_path, "resume", "cpu")
    start, resume = runs.read_provenance(tmp_path)
    assert (start["event"], resume["event"]) == ("start", "resume")
    assert start["command"] == "taper train --out 'a b'"
    assert resume["command"] == shlex.join(sys.argv)
    assert set(start["versions"]) == set(runs.PACKAGES)
    assert start["versions"]["torch"] == torch.__version__
    assert start["versions"]["taper"] and start["versions"]["metaworld"]
    assert start["device"]["type"] == "cpu" and start["device"]["count"] >= 1
    assert start["pid"] == os.getpid()
    if (REPO / ".git").exists():
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"],
                              capture_output=True, text=True).stdout.strip()
        assert start["git"]["commit"] == head and isinstance(start["git"]["dirty"], bool)


def test_reading_sweeps_and_runs_loads_neither_torch_nor_ray():
    code = ("import sys, taper.cli, taper.runs, taper.sweep; "
            "print(sorted(m for m in ('numba', 'torch', 'ray') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=env())
    assert out.stdout.strip() == "[]"


def _evals(run_dir: Path) -> list[dict]:
    return [r for r in rows(run_dir) if r["kind"] in ("eval", "eval_mean")]


def _kill_after_first_checkpoint(run_dir: Path, timeout: float = 900.0) -> int:
    """SIGKILL the process training `run_dir` once its first checkpoint is written."""
    deadline = time.monotonic() + timeout
    while not (run_dir / CHECKPOINT).exists():
        assert time.monotonic() < deadline, f"no checkpoint in {run_dir}"
        time.sleep(0.02)
    pid = runs.read_provenance(run_dir)[0]["pid"]
    os.kill(pid, signal.SIGKILL)
    return pid


@pytest.mark.slow
def test_local_sweep_continues_a_killed_run_to_the_uninterrupted_result(tmp_path):
    """Two methods x two seeds; one run killed after its first evaluation. The sweep reports it
    unfinished, the same command again skips the three finished runs and resumes the killed
    one, which ends with the evaluation rows of an uninterrupted run."""
    sweep_dir = tmp_path / "sw"
    command = cli("sweep", "--out", str(sweep_dir), "--methods", "mtsac,taper", "--seeds",
                  "0-1", "--jobs", "2", *TINY_ARGS)
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen(command, env=env(), stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    victim = sweep_dir / "mtsac_uniform_s1"
    try:
        _kill_after_first_checkpoint(victim)
        assert first.wait(timeout=900) == 1
    finally:
        if first.poll() is None:                    # a failed wait: stop the sweep and its runs
            os.killpg(first.pid, signal.SIGKILL)
    output = (tmp_path / "first.log").read_text()
    assert "1 of 4 runs did not finish (mtsac_uniform_s1)" in output
    record = sweep.read_sweep(sweep_dir)
    assert record["grid"] == {"methods": ["mtsac", "taper"], "samplers": None, "seeds": [0, 1]}
    assert record["options"]["steps_per_env"] == 150 and record["backend"] == "local"
    assert {name: run["state"] for name, run in record["runs"].items()} == {
        "mtsac_uniform_s0": "done", "mtsac_uniform_s1": "failed", "taper_ta-per_s0": "done",
        "taper_ta-per_s1": "done"}
    assert record["runs"]["taper_ta-per_s0"]["evaluations"] == 3
    assert record["runs"]["taper_ta-per_s0"]["of"] == 3
    assert torch.load(victim / CHECKPOINT, weights_only=False)["step"] < 150

    finished = {name: (sweep_dir / name / "metrics.jsonl").read_bytes()
                for name in record["runs"] if name != victim.name}
    second = subprocess.run(command, env=env(), capture_output=True, text=True)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "3 finished, 1 to run" in second.stdout
    record = sweep.read_sweep(sweep_dir)
    assert {run["state"] for run in record["runs"].values()} == {"done"}
    for name, metrics in finished.items():
        assert (sweep_dir / name / "metrics.jsonl").read_bytes() == metrics, f"{name} re-ran"
        assert len(runs.read_provenance(sweep_dir / name)) == 1
    start, resume = runs.read_provenance(victim)
    assert (start["event"], resume["event"]) == ("start", "resume")
    assert f"train --resume {victim}" in resume["command"]

    cfg = Config.load(victim)
    reference = train(dataclasses.replace(cfg, out=str(tmp_path / "reference")))
    assert _evals(victim) == _evals(reference)
    assert [r["step"] for r in rows(victim, "eval_mean")] == [50, 100, 150]


@pytest.mark.slow
def test_ray_sweep_retries_a_killed_worker_from_its_checkpoint(tmp_path):
    """Two trials on a local Ray with 2 CPUs; the worker of one is killed after its first
    evaluation, and its retry resumes the run folder to the uninterrupted result."""
    ray = pytest.importorskip("ray", reason="the Ray backend needs ray[tune] (extra 'sweep')")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        plan = sweep.Sweep.plan(tmp_path / "sw", ["mtsac"], None, [0, 1], "cpu-small", **TINY)
        victim = Path(plan.configs["mtsac_uniform_s0"].out)
        killed = []
        killer = threading.Thread(
            target=lambda: killed.append(_kill_after_first_checkpoint(victim)), daemon=True)
        killer.start()
        lines = []
        states = sweep.run_ray(plan, cpus_per_run=1, max_failures=2, echo=lines.append)
        killer.join(timeout=1)
    finally:
        ray.shutdown()
    assert states == {"mtsac_uniform_s0": "done", "mtsac_uniform_s1": "done"}
    assert "mtsac_uniform_s0: trial failed, retrying from its checkpoint" in lines
    record = sweep.read_sweep(tmp_path / "sw")
    assert record["backend"] == "ray"
    assert {run["state"] for run in record["runs"].values()} == {"done"}
    start, resume = runs.read_provenance(victim)
    assert start["pid"] == killed[0] and resume["pid"] != killed[0]
    assert resume["command"] == f"taper train --resume {victim}"
    assert start["command"].startswith("taper train --suite mt1:reach-v3 --method mtsac")
    assert len(runs.read_provenance(tmp_path / "sw" / "mtsac_uniform_s1")) == 1

    reference = train(dataclasses.replace(Config.load(victim), out=str(tmp_path / "ref")))
    assert _evals(victim) == _evals(reference)
