"""A queued parameter sweep: `dvc exp run --queue -S ...` for a grid, `dvc queue start -j 2`, as docs/team-workflow.md
says.

The grid (two values of a key: one run for each worker) varies a ref_guided knob, so every queued run takes the
other stages from DVC's run cache (the shared tiny run made them) and renders ref_guided and evaluates anew; two
workers run at once, each in its own temp copy.
"""

from __future__ import annotations

import time

import pytest
from dvcrepo import MODES, dvc, dvc_json, experiments

pytestmark = pytest.mark.e2e

GRID = "generate.ip_adapter_scale=0.4,0.9"  # values no other test of the shared run sets


def test_queued_grid_with_two_workers(tiny_repo) -> None:
    root, env = tiny_repo.root, tiny_repo.env
    # One attempt per frame: the grid checks the queue, not the retry loop (a third of the tiny renders).
    queued = dvc("exp", "run", "--queue", "-S", GRID, "-S", "generate.max_retries=0", cwd=root, env=env)
    assert queued.count("Queued experiment") == 2, queued
    dvc("queue", "start", "-j", "2", cwd=root, env=env)

    deadline = time.monotonic() + 900
    idle_since = time.monotonic()
    while time.monotonic() < deadline:
        rows = _status(root, env)
        if all(state in ("Success", "Failed") for state in rows.values()) and len(rows) == 2:
            break
        if "Running" in rows.values() or "Queued" not in rows.values():
            idle_since = time.monotonic()
        elif time.monotonic() - idle_since > 60:
            # DVC's worker can stop with runs still queued (dvc#10562); docs/team-workflow.md's advice: start it again.
            dvc("queue", "start", "-j", "2", cwd=root, env=env)
            idle_since = time.monotonic()
        time.sleep(3)
    failed = [task for task, state in rows.items() if state == "Failed"]
    logs = "".join(dvc("queue", "logs", task, cwd=root, env=env) for task in failed)
    assert not failed and list(rows.values()) == ["Success"] * 2, f"{rows}\n{logs[-6000:]}"
    # Each worker took train and the other modes from what the committed run made, and rendered ref_guided anew.
    some = dvc("queue", "logs", next(iter(rows)), cwd=root, env=env)
    ran = [s for s in ("train", "generate@lora", "generate@ref_guided") if f"Running stage '{s}'" in some]
    assert ran == ["generate@ref_guided"], some[-3000:]

    exps = experiments(dvc_json("exp", "show", "--json", cwd=root, env=env))
    grid = {}
    for data in exps.values():
        generate = data["params"]["params.yaml"]["data"]["generate"]
        if generate["ip_adapter_scale"] in (0.4, 0.9):
            grid[generate["ip_adapter_scale"]] = data["metrics"]["metrics/eval.json"]["data"]
    assert len(grid) == 2, exps.keys()
    for metrics in grid.values():
        assert all(-1 <= metrics[m]["clip_text_score"] <= 1 for m in MODES)


def _status(root, env) -> dict[str, str]:
    """`dvc queue status` as {task id: Queued | Running | Success | Failed}."""
    rows = {}
    for line in dvc("queue", "status", cwd=root, env=env).splitlines():
        parts = line.split()
        if parts and parts[-1] in ("Queued", "Running", "Success", "Failed") and parts[0] != "Task":
            rows[parts[0]] = parts[-1]
    return rows
