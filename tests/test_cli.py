"""`taper train` and `taper eval`: options onto Config, presets by machine, one-line errors."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from click.testing import CliRunner

from taper import train as train_module
from taper.cli import main
from taper.config import PRESETS, Config

TINY = ["--suite", "mt1:reach-v3", "--steps-per-env", "100", "--learning-starts", "20",
        "--eval-every", "50", "--eval-episodes", "2", "--episode-length", "25",
        "--batch-size", "16", "--buffer-size", "1000", "--hidden-sizes", "16"]


@pytest.fixture
def captured(monkeypatch):
    """Replace the run itself: record the Config the command would train."""
    configs = []
    monkeypatch.setattr(train_module, "train",
                        lambda cfg, resume=None: configs.append(cfg) or cfg.out)
    return configs


@pytest.mark.parametrize("args, named", [
    (["--suite", "mt11"], "mt11"),
    (["--suite", "gym:"], "gym:"),
    (["--method", "sac"], "sac"),
    (["--sampler", "rank"], "rank"),
    (["--steps-per-env", "-5"], "-5"),
    (["--batch-size", "0"], "batch_size=0"),
    (["--batch-size", "64", "--k-min", "10"], "k_min=10"),
    (["--batch-size", "64", "--k-max", "3"], "k_max=3"),
    (["--eval-every", "-1"], "eval_every=-1"),
    (["--hidden-sizes", "400,x"], "400,x"),
    (["--preset", "huge"], "huge"),
    (["--log-alpha-min", "1", "--log-alpha-max", "0"], "log_alpha_min=1.0"),
    (["--reward-version", "v3"], "v3"),
    (["--unique-hidden-sizes", "0"], "unique_hidden_sizes=(0,)"),
    (["--gamma", "1"], "gamma=1.0"),
    (["--priority-scale", "value"], "value"),
    (["--log-std-head", "softplus"], "softplus"),
    (["--method", "care", "--suite", "gym:Pendulum-v1"], "gym:Pendulum-v1"),
])
def test_bad_values_exit_2_name_the_value_and_write_nothing(tmp_path, monkeypatch, args, named):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["train", "--suite", "mt10-rand", *args])
    assert result.exit_code == 2, result.output
    assert named in result.output
    assert result.output.count("Error") == 1
    assert not list(tmp_path.iterdir())


def test_resume_takes_no_other_options(tmp_path):
    result = CliRunner().invoke(main, ["train", "--resume", str(tmp_path), "--seed", "3"])
    assert result.exit_code == 2 and "--seed" in result.output
    result = CliRunner().invoke(main, ["train", "--resume", str(tmp_path)])
    assert result.exit_code == 2 and "config.json" in result.output


def test_suite_alone_picks_the_preset_of_the_machine(tmp_path, monkeypatch, captured):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = CliRunner().invoke(main, ["train", "--suite", "mt10-rand"])
    assert result.exit_code == 0, result.output
    cfg = captured[-1]
    small = PRESETS["cpu-hour"]
    assert (cfg.preset, cfg.batch_size, cfg.hidden_sizes) == ("cpu-hour", small["batch_size"],
                                                               small["hidden_sizes"])
    assert "preset cpu-hour" in result.output and "device cpu" in result.output
    assert cfg.out.startswith("runs/mt10-rand_taper_ta-per_s0_") and cfg.out in result.output

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    result = CliRunner().invoke(main, ["train", "--suite", "mt10-rand", "--seed", "4"])
    assert result.exit_code == 0, result.output
    assert (captured[-1].preset, captured[-1].batch_size, captured[-1].seed) == ("paper", 1280, 4)
    assert "preset paper" in result.output and "device cuda" in result.output


def test_options_map_onto_config(tmp_path, captured):
    args = ["train", *TINY, "--method", "paco", "--sampler", "average", "--seed", "7",
            "--k-min", "1", "--k-max", "16", "--gradient-steps", "2", "--log-every", "5",
            "--deterministic", "--device", "cpu", "--preset", "paper", "--out", str(tmp_path / "r")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    cfg = captured[-1]
    assert (cfg.suite, cfg.method, cfg.sampler, cfg.seed, cfg.preset) == (
        "mt1:reach-v3", "paco", "average", 7, "paper")
    assert (cfg.steps_per_env, cfg.learning_starts, cfg.eval_every, cfg.eval_episodes) == (
        100, 20, 50, 2)
    assert (cfg.episode_length, cfg.batch_size, cfg.buffer_size, cfg.hidden_sizes) == (
        25, 16, 1000, (16,))
    assert (cfg.k_min, cfg.k_max, cfg.gradient_steps, cfg.log_every, cfg.deterministic) == (
        1, 16, 2, 5, True)
    assert (cfg.device, cfg.out) == ("cpu", str(tmp_path / "r"))


@pytest.mark.slow
def test_train_then_eval_prints_per_task_success(tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", *TINY, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "config.json").is_file() and (out / "checkpoint.pt").is_file()
    assert "timing over" in result.output

    result = CliRunner().invoke(main, ["eval", str(out)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "step 100" in lines[0]
    assert lines[2].split()[0] == "reach-v3" and lines[3].split()[0] == "mean"
    last = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()
            if json.loads(line)["kind"] == "eval"][-1]
    assert float(lines[2].split()[1]) == pytest.approx(last["success"])
    assert float(lines[2].split()[2]) == pytest.approx(last["return"], abs=0.05)

    result = CliRunner().invoke(main, ["eval", str(out), "--episodes", "0"])
    assert result.exit_code == 2 and "0" in result.output


def test_out_folder_in_use_is_refused(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text("{}")
    result = CliRunner().invoke(main, ["train", *TINY, "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "not empty" in result.output


def test_method_and_sampler_options_map_one_to_one_onto_config(tmp_path, captured):
    args = ["train", "--preset", "cpu-small", "--device", "cpu", "--out", str(tmp_path / "r"),
            "--method", "paco", "--sampler", "per", "--per-alpha", "0.7", "--per-beta", "0.5",
            "--num-param-sets", "3", "--unique-dim", "8", "--triplet-margin", "0.5",
            "--no-unique-sac-grad", "--unique-normalize", "--extreme-loss-threshold", "100",
            "--k-min", "2", "--k-max", "40", "--hidden-sizes", "32,32,32"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    cfg = captured[-1]
    assert (cfg.method, cfg.sampler, cfg.per_alpha, cfg.per_beta) == ("paco", "per", 0.7, 0.5)
    assert (cfg.num_param_sets, cfg.unique_dim, cfg.triplet_margin) == (3, 8, 0.5)
    assert not cfg.unique_sac_grad and Config().unique_sac_grad
    assert cfg.extreme_loss_threshold == 100
    assert cfg.unique_normalize and not Config().unique_normalize
    assert (cfg.k_min, cfg.k_max, cfg.hidden_sizes) == (2, 40, (32, 32, 32))


def test_every_config_field_is_a_train_option(tmp_path, captured):
    """The CLI maps options onto Config 1:1: each field has its option, and the value lands."""
    from taper.cli import train_command

    options = {p.name for p in train_command.params}
    assert {f.name for f in dataclasses.fields(Config)} <= options
    args = ["train", *TINY, "--lr", "1e-3", "--alpha-lr", "2e-3", "--gamma", "0.9", "--tau",
            "0.01", "--init-temperature", "0.5", "--log-alpha-min", "-7", "--log-alpha-max",
            "1", "--reward-version", "v1", "--per-eps", "1e-4", "--unique-hidden-sizes", "8,8",
            "--unique-lr", "5e-4", "--priority-scale", "task", "--num-encoders", "6",
            "--encoder-dim", "8", "--encoder-hidden-sizes", "16,16", "--context-dim", "12",
            "--context-hidden-sizes", "32", "--log-std-head", "tanh", "--layer-norm", "all",
            "--out", str(tmp_path / "r")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    cfg = captured[-1]
    assert cfg.log_std_head == "tanh" and Config().log_std_head == "clamp"
    assert cfg.layer_norm == "all" and Config().layer_norm == "critic"
    assert (cfg.lr, cfg.alpha_lr, cfg.gamma, cfg.tau, cfg.init_temperature) == (
        1e-3, 2e-3, 0.9, 0.01, 0.5)
    assert (cfg.log_alpha_min, cfg.log_alpha_max, cfg.reward_version, cfg.per_eps) == (
        -7, 1, "v1", 1e-4)
    assert (cfg.unique_hidden_sizes, cfg.unique_lr, cfg.priority_scale) == ((8, 8), 5e-4, "task")
    assert (cfg.num_encoders, cfg.encoder_dim, cfg.encoder_hidden_sizes) == (6, 8, (16, 16))
    assert (cfg.context_dim, cfg.context_hidden_sizes) == (12, (32,))
