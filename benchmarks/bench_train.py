"""Training throughput of the presets on MT10-rand, overlapped and sequential loops.

Runs `taper.train.train` for a short warm-up plus `--steps` vector steps with updates per
(preset, loop) (evaluation at the end only, one episode per task) and reports, from the run's
own metrics: vector steps/s once updates run, updates/s of `Agent.update` alone, and the share
of the loop spent in the replay buffer (add + sample + update_priorities), in the SAC update and
in the env phase (sequential: stepping; overlapped: waiting for the worker), evaluation and
checkpoint excluded.

    python benchmarks/bench_train.py                      # every preset, both loops, 300 steps
    python benchmarks/bench_train.py --presets cpu-hour --loops overlapped sequential
    python benchmarks/bench_train.py --presets paper --steps 100 --device cuda --json
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path

from taper.config import PRESETS, Config
from taper.train import train


LOOPS = {"overlapped": True, "sequential": False}


def measure(preset: str, loop_name: str, steps: int, warmup: int, method: str, sampler: str,
            device: str, seed: int) -> dict:
    """One short MT10-rand run of `preset`; throughput and time shares from its metrics."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Config.from_preset(preset, suite="mt10-rand", method=method, sampler=sampler,
                                 device=device, seed=seed, learning_starts=warmup,
                                 steps_per_env=warmup + steps, log_every=math.gcd(warmup, steps),
                                 eval_every=warmup + steps, eval_episodes=1,
                                 overlap_envs=LOOPS[loop_name], out=str(Path(tmp) / "run"))
        run_dir = train(cfg)
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    timing = next(r for r in rows if r["kind"] == "timing")
    seconds = {key.split("/", 1)[1]: value for key, value in timing.items()
               if key.startswith("seconds/")}
    loop = seconds["total"] - seconds["eval"] - seconds["checkpoint"]
    after_warmup = [r["sps"] for r in rows if r["kind"] == "train" and r["step"] > warmup]
    return {"preset": preset, "loop": loop_name, "method": method, "sampler": sampler, "device": device,
            "batch_size": cfg.batch_size, "hidden_sizes": list(cfg.hidden_sizes),
            "steps_with_updates": steps, "updates": timing["updates"],
            "vector_steps_per_s": len(after_warmup) / sum(1 / sps for sps in after_warmup),
            "updates_per_s": timing["updates_per_s"],
            "share_replay": sum(seconds[p] for p in ("replay_add", "replay_sample",
                                                     "replay_update")) / loop,
            "share_update": seconds["update"] / loop,
            "share_env": seconds["env"] / loop,
            "share_act": seconds["act"] / loop}


def format_table(results: list[dict]) -> str:
    header = (f"{'preset':<10}{'loop':<12}{'K':>6}{'steps/s':>9}{'upd/s':>8}"
              f"{'replay':>8}{'update':>8}{'env':>7}{'act':>7}")
    lines = [header]
    for r in results:
        lines.append(f"{r['preset']:<10}{r['loop']:<12}{r['batch_size']:>6}"
                     f"{r['vector_steps_per_s']:>9.1f}{r['updates_per_s']:>8.1f}"
                     f"{100 * r['share_replay']:>7.1f}%{100 * r['share_update']:>7.1f}%"
                     f"{100 * r['share_env']:>6.1f}%{100 * r['share_act']:>6.1f}%")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    parser.add_argument("--loops", nargs="+", default=list(LOOPS), choices=list(LOOPS))
    parser.add_argument("--steps", type=int, default=300, help="vector steps with updates")
    parser.add_argument("--warmup", type=int, default=200, help="vector steps of random actions")
    parser.add_argument("--method", default="taper")
    parser.add_argument("--sampler", default="ta-per")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args()
    results = [measure(preset, loop, args.steps, args.warmup, args.method, args.sampler,
                       args.device, args.seed) for preset in args.presets for loop in args.loops]
    print(json.dumps(results, indent=1) if args.json else format_table(results))


if __name__ == "__main__":
    main()
