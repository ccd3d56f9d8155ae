"""What a run's last checkpoint holds: TA-PER's quotas and IS weights, and the unique features' scale.

    python benchmarks/inspect_run.py RUN_DIR [RUN_DIR ...] [--batches 50]

Per run folder, from the replay and the agent of its `checkpoint.pt`:
- quotas k_i of a batch of K (Eq. 5; for uniform and per the expected counts);
- IS weights (Eq. 4) of `--batches` batches at beta = 0.4, 0.7, 1.0: their mean and the
  effective sample size (sum w)^2 / sum w^2 of a batch, out of K;
- for --method taper: the scale of the unique feature u against the state it is concatenated
  with (mean per-dimension std over 1,000 stored states), the distance between task centres of u
  and the spread of u around its task's centre.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from taper import suites
from taper.config import Config
from taper.train import load_checkpoint, make_agent, make_buffer


def inspect(run_dir: Path, batches: int) -> None:
    cfg = Config.load(run_dir)
    spec = suites.suite_spec(cfg.suite, cfg.episode_length)
    agent, buf = make_agent(cfg, spec, torch.device("cpu")), make_buffer(cfg, spec)
    step = load_checkpoint(run_dir, agent, buf).step         # one read of checkpoint.pt
    k = cfg.batch_size
    print(f"{run_dir} ({cfg.method} + {cfg.sampler}, step {step})")
    print(f"  quotas of K = {k}: {buf.quotas(k).tolist()}")
    if cfg.sampler in ("per", "ta-per"):
        for beta in (0.4, 0.7, 1.0):
            weights = [buf.sample(k, beta).weights.astype(np.float64) for _ in range(batches)]
            ess = np.mean([w.sum() ** 2 / np.square(w).sum() for w in weights])
            print(f"  beta {beta}: mean IS weight {np.mean(np.concatenate(weights)):.3f}, "
                  f"effective sample size {ess:.0f} of {k}")
    if cfg.method == "taper":
        batch = buf.sample(1000, 1.0)
        obs, ids = torch.as_tensor(batch.observations), torch.as_tensor(batch.task_ids)
        with torch.no_grad():
            u = agent.method.features(obs, None)[1]
        centres = torch.stack([u[ids == t].mean(0) for t in ids.unique()])
        apart = torch.cdist(centres, centres)[~torch.eye(len(centres), dtype=torch.bool)]
        spread = np.mean([(u[ids == t] - c).norm(dim=1).mean().item()
                          for t, c in zip(ids.unique(), centres)])
        print(f"  per-dimension std: state {obs.std(0).mean():.3f}, u {u.std(0).mean():.3f} "
              f"(|u| {u.norm(dim=1).mean():.2f}); task centres of u {apart.min():.2f} to "
              f"{apart.max():.2f} apart, spread around them {spread:.2f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--batches", type=int, default=50)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    for run_dir in args.runs:
        inspect(run_dir, args.batches)


if __name__ == "__main__":
    main()
