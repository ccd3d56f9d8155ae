"""`taper bench-replay` reports every (impl, op) with consistent statistics and ratios."""

from __future__ import annotations

import json

from click.testing import CliRunner

from taper.cli import main
from taper.replay import SAMPLERS


def test_bench_replay_json_rows_cover_every_sampler_and_op():
    result = CliRunner().invoke(main, ["bench-replay", "--num-tasks", "3", "--capacity", "500",
                                       "--batch-size", "48", "--repeats", "20", "--no-peers",
                                       "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert {(r["impl"], r["op"]) for r in rows} == {(s, op) for s in SAMPLERS
                                                    for op in ("sample", "update", "add")}
    base = next(r for r in rows if r["impl"] == "uniform" and r["op"] == "sample")
    assert base["ratio_to_uniform"] == 1.0
    for r in rows:
        assert 0 < r["p10_us"] <= r["median_us"] <= r["p90_us"]
        # medians are rounded to 0.1 us, ratios computed before rounding (to 0.001)
        rounding = 0.05 / (r["median_us"] - 0.05) + 0.05 / (base["median_us"] - 0.05)
        assert abs(r["ratio_to_uniform"] - r["median_us"] / base["median_us"]) <= (
            rounding * r["ratio_to_uniform"] + 5e-4)


def test_bench_replay_table_names_the_targets_and_rejects_too_few_repeats():
    runner = CliRunner()
    result = runner.invoke(main, ["bench-replay", "--num-tasks", "2", "--capacity", "200",
                                  "--batch-size", "16", "--repeats", "20", "--no-peers"])
    assert result.exit_code == 0, result.output
    assert "ta-per sample+update / uniform sample" in result.output
    bad = runner.invoke(main, ["bench-replay", "--repeats", "3"])
    assert bad.exit_code == 2 and "3" in bad.output


def test_bench_run_times_extra_implementations_built_from_the_others():
    from taper import bench

    seen = {}

    class Counting:
        def __init__(self, impls):
            seen.update(impls)
            self.calls = {"sample": 0, "update": 0, "add": 0}

        def sample(self):
            self.calls["sample"] += 1

        def update(self):
            self.calls["update"] += 1

        def add(self):
            self.calls["add"] += 1

    made = {}
    result = bench.run(num_tasks=2, capacity=64, batch_size=8, repeats=20, peers=False,
                       extra={"counting": lambda impls: made.setdefault("it", Counting(impls))})
    assert set(seen) == set(SAMPLERS)
    assert made["it"].calls == {op: 20 + bench.WARMUP for op in ("sample", "update", "add")}
    rows = {(r["impl"], r["op"]) for r in result.rows}
    assert {("counting", op) for op in ("sample", "update", "add")} <= rows
