"""A queued parameter sweep: `dvc exp run --queue -S ...` for a grid, `dvc queue start -j 2`, as the README says.

The grid varies only generate params, so every queued run takes sample/caption/train from DVC's run cache (the
shared tiny run made them) and renders and evaluates anew; two workers run at once, each in its own temp copy.
"""

from __future__ import annotations

import time

import pytest
from dvcrepo import MODES, dvc, dvc_json, experiments

pytestmark = pytest.mark.e2e

GRID = "generate.guidance_scale=2.0,4.0"
SEEDS = "generate.seed=1,2"


def test_queued_grid_with_two_workers(tiny_repo) -> None:
    root, env = tiny_repo.root, tiny_repo.env
    queued = dvc("exp", "run", "--queue", "-S", GRID, "-S", SEEDS, cwd=root, env=env)
    assert queued.count("Queued experiment") == 4, queued
    dvc("queue", "start", "-j", "2", cwd=root, env=env)

    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        status = dvc("queue", "status", cwd=root, env=env)
        if not any(state in status for state in ("Queued", "Running")):
            break
        time.sleep(3)
    assert "Failed" not in status, status + dvc("queue", "logs", status.split()[-3], cwd=root, env=env)
    assert status.count("Success") == 4, status

    exps = experiments(dvc_json("exp", "show", "--json", cwd=root, env=env))
    grid = {}
    for data in exps.values():
        generate = data["params"]["params.yaml"]["data"]["generate"]
        if (generate["guidance_scale"], generate["seed"]) in {(g, s) for g in (2.0, 4.0) for s in (1, 2)}:
            grid[(generate["guidance_scale"], generate["seed"])] = data["metrics"]["metrics/eval.json"]["data"]
    assert len(grid) == 4, exps.keys()
    for metrics in grid.values():
        assert all(-1 <= metrics[m]["clip_text_score"] <= 1 for m in MODES)
    dvc("queue", "stop", cwd=root, env=env)
