"""Shared test set-up."""

from __future__ import annotations

import functools

import metaworld
import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Small networks gain nothing from threads and lose much on a shared 2-core CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True, scope="session")
def metaworld_benchmarks_built_once():
    """Each (benchmark, seed) built once per test session.

    Every Meta-World vector env builds its benchmark first: 50 goals per task, found by
    resetting a fresh env of each task 50 times (about half the time of making an MT10 env,
    and most of a short end-to-end test). For a given seed the goals are always the same
    (metaworld seeds numpy's global generator for it and restores it after), so the session
    keeps them; an unseeded benchmark is built anew as before. Runs outside pytest are
    unaffected.
    """
    patch = pytest.MonkeyPatch()
    for name in ("MT1", "MT10", "MT50"):
        patch.setattr(metaworld, name, _built_once(getattr(metaworld, name)))
    yield
    patch.undo()


def _built_once(benchmark):
    cached = functools.cache(benchmark)

    def make(*args, seed=None, **kwargs):
        if seed is None:
            return benchmark(*args, **kwargs)
        return cached(*args, seed=seed, **kwargs)

    return make
