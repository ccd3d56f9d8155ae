"""SAC learns end to end: Pendulum through `train`, as a user runs it (README, "SAC sanity")."""

from __future__ import annotations

import json

import numpy as np
import pytest

from taper.config import Config
from taper.train import train


@pytest.mark.slow
def test_mtsac_swings_up_pendulum(tmp_path):
    """A random policy scores about -1200 to -1500 on Pendulum, a swung-up one about -150.

    2x64 networks, batch 256 and lr 5e-4 (the README's run: 2x256, lr 3e-4, 15k steps) learn it
    within 10k steps on a CPU. A short SAC run can still have one bad evaluation (a policy that
    fails from a few start states), so the bar is on the median of the last three: -400 lies
    far from both a broken update (near the random policy) and a working one (near -150).
    Without layer norm, as the README's run: with it in the critics (the CPU default, chosen
    on MT10-rand) this run reached -1257 / -545 / -899 / -613 / -720 (README, "SAC sanity").
    """
    cfg = Config(suite="gym:Pendulum-v1", method="mtsac", sampler="uniform", steps_per_env=10_000,
                 episode_length=200, learning_starts=1000, eval_every=2000, eval_episodes=10,
                 log_every=1000, batch_size=256, buffer_size=10_000, hidden_sizes=(64, 64),
                 lr=5e-4, layer_norm="none", device="cpu", out=str(tmp_path / "run"))
    run_dir = train(cfg)
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    means = [row for row in map(json.loads, lines) if row["kind"] == "eval_mean"]
    assert [row["step"] for row in means] == [2000, 4000, 6000, 8000, 10_000]
    assert np.median([row["return"] for row in means[-3:]]) > -400, [
        round(row["return"]) for row in means]
