"""Config: presets, per-method sampler defaults, quota bounds (Eq. 5), validation, JSON."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from taper.config import BEFORE_FIELD, PRESETS, Config, preset_for


def test_sampler_defaults_follow_the_method():
    assert Config(method="taper").sampler == "ta-per"
    assert Config(method="paco").sampler == "uniform"
    assert Config(method="mtsac").sampler == "uniform"
    assert Config(method="paco", sampler="ta-per").sampler == "ta-per"


def test_presets_apply_then_overrides_win():
    cfg = Config.from_preset("paper", batch_size=640, seed=None)
    assert cfg.hidden_sizes == (400, 400, 400) and cfg.batch_size == 640 and cfg.seed == 0
    assert Config() == Config.from_preset("cpu-hour"), "the defaults are the cpu-hour preset"
    assert Config.from_preset("paper").steps_per_env == PRESETS["paper"]["steps_per_env"]


def test_pacos_reset_is_off_by_default_and_on_for_the_paper_and_cpu_small():
    assert Config().extreme_loss_threshold == float("inf")
    assert Config.from_preset("paper").extreme_loss_threshold == 3e3
    assert Config.from_preset("cpu-small").extreme_loss_threshold == 3e3
    assert Config.from_json(Config().to_json()) == Config(), "inf survives config.json"
    with pytest.raises(ValueError, match="extreme_loss_threshold=0.0 must be > 0"):
        Config(extreme_loss_threshold=0.0)


def test_layer_norm_defaults_to_the_critics_except_for_softmod_and_the_paper():
    assert Config().layer_norm == "critic" == Config(method="mtsac").layer_norm
    assert Config.from_preset("cpu-hour", method="paco").layer_norm == "critic"
    assert Config(method="softmod").layer_norm == "none"
    assert Config.from_preset("cpu-hour", method="softmod").layer_norm == "none"
    assert Config.from_preset("paper").layer_norm == "none"
    assert Config.from_preset("cpu-small").layer_norm == "none"
    assert Config.from_preset("paper", layer_norm="all").layer_norm == "all"
    with pytest.raises(ValueError, match="layer_norm='critic' is not available for "
                                         "method='softmod'"):
        Config(method="softmod", layer_norm="critic")


def test_quota_bounds_default_to_a_quarter_and_four_times_the_even_share():
    assert Config.from_preset("paper").quota_bounds(10) == (32, 512)
    assert Config(batch_size=100).quota_bounds(3) == (8, 100)
    assert Config(batch_size=100, sampler="uniform").quota_bounds(3) == (0, 100)
    assert Config(batch_size=100, k_min=5, k_max=40).quota_bounds(3) == (5, 40)
    with pytest.raises(ValueError, match="k_min=40, k_max=50 are infeasible for batch_size=100"):
        Config(batch_size=100, k_min=40, k_max=50).quota_bounds(3)
    with pytest.raises(ValueError, match="k_max=20"):
        Config(batch_size=100, k_max=20).quota_bounds(3)


@pytest.mark.parametrize("overrides, named", [
    (dict(method="sac"), "method='sac'"), (dict(sampler="rank"), "sampler='rank'"),
    (dict(steps_per_env=-1), "steps_per_env=-1"), (dict(gamma=1.0), "gamma=1.0"),
    (dict(per_beta=2.0), "per_beta=2.0"), (dict(hidden_sizes=(64, 0)), "hidden_sizes"),
    (dict(k_min=-1), "k_min=-1"), (dict(device="tpu"), "device='tpu'"),
    (dict(triplet_margin=0.0), "triplet_margin=0.0"),
    (dict(log_std_head="exp"), "log_std_head='exp' is not one of tanh, clamp")])
def test_bad_values_raise_naming_the_value(overrides, named):
    with pytest.raises(ValueError, match=named.replace("(", r"\(").replace(".", r"\.")):
        Config(**overrides)


def test_json_round_trip(tmp_path):
    cfg = Config.from_preset("paper", suite="mt50-rand", method="paco", k_min=3)
    cfg.save(tmp_path)
    assert Config.load(tmp_path) == cfg


def test_an_older_config_json_loads_with_defaults_and_an_unknown_field_is_named(tmp_path):
    cfg = Config(method="paco", hidden_sizes=(32, 32), seed=3)
    values = json.loads(cfg.to_json())
    del values["context_hidden_sizes"], values["num_modules"]     # fields a later taper added
    (tmp_path / "config.json").write_text(json.dumps(values))
    assert Config.load(tmp_path) == cfg
    values["from_the_future"] = 1
    (tmp_path / "config.json").write_text(json.dumps(values))
    with pytest.raises(ValueError, match="from_the_future"):
        Config.load(tmp_path)


def test_an_older_config_json_resumes_as_it_ran_where_a_default_changed_since(tmp_path):
    """A config.json from before log_std_head, unique_sac_grad and layer_norm existed meant the
    tanh head, u detached from SAC and no layer norm, whatever today's defaults are."""
    values = json.loads(Config(method="taper", seed=1).to_json())
    for name in BEFORE_FIELD:
        del values[name]
    (tmp_path / "config.json").write_text(json.dumps(values))
    loaded = Config.load(tmp_path)
    assert (loaded.log_std_head, loaded.unique_sac_grad, loaded.layer_norm) == \
        ("tanh", False, "none")
    assert dataclasses.replace(loaded, **{k: getattr(Config(), k) for k in BEFORE_FIELD}) == \
        Config(method="taper", seed=1)


def test_importing_the_config_loads_neither_numba_nor_torch():
    """`taper --help` and `taper report` start fast: the package imports its heavy parts lazily."""
    code = ("import sys, taper.config, taper.cli; "
            "print(sorted(m for m in ('numba', 'torch', 'taper.replay') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    import taper
    from taper.replay import ReplayBuffer

    assert taper.ReplayBuffer is ReplayBuffer and taper.Config is Config
    with pytest.raises(AttributeError, match="no attribute 'Sampler'"):
        taper.Sampler


def test_the_cpu_default_keeps_the_whole_run_and_learns_alpha_within_it():
    cpu = Config.from_preset(preset_for("cpu"))
    assert cpu.preset == "cpu-hour" and preset_for("cuda") == "paper"
    assert cpu.buffer_size >= cpu.steps_per_env * 10, "MT10's whole run fits in the replay"
    assert cpu.alpha_lr == 3e-4 and Config.from_preset("paper").alpha_lr == 1e-4
