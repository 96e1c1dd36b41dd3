"""The DVC contract through real dvc on the tiny profile: a new story is rendered alone, a ref_guided knob reruns
ref_guided and evaluate alone, an evaluation edit or knob reruns select and evaluate and never train, an edited plan
frame is rendered without planning again, a generate run killed after its first story resumes with the rest and
ends as an uninterrupted run would."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from dvcrepo import MODES, dvc, dvc_json, ran_stages, run

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def repo(tiny_repo, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A copy of the shared committed tiny run, with two stories added: the added ones are planned and rendered,
    the first is kept in every mode."""
    root = tmp_path_factory.mktemp("contract") / "repo"
    shutil.copytree(tiny_repo.root, root, symlinks=True)
    env = tiny_repo.env
    run(["git", "checkout", "-qf", tiny_repo.commit], root, env)  # whatever other tests left in the workspace
    dvc("checkout", "--force", cwd=root, env=env)
    params = yaml.safe_load((root / "params.yaml").read_text())
    first = params["stories"][0]["id"]
    params["stories"] += [
        {"id": "bazaar", "text": "Aldar Kose haggles with a spice seller and laughs as he leaves with a bargain."},
        {"id": "night", "text": "Aldar Kose shares the money with poor villagers at night."},
    ]
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    output = dvc("repro", cwd=root, env=env)
    assert ran_stages(output) == {"plan", *(f"generate@{m}" for m in MODES), "evaluate"}
    assert "plans: 2 made, 1 kept" in output, output
    assert all(f"{mode}/{first}: kept" in output for mode in MODES), output
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "three stories"], root, env)
    return root, env


def _metadata(root: Path, mode: str, story: str) -> dict:
    return json.loads((root / "outputs" / mode / story / "metadata.json").read_text())


def _inputs(root: Path, mode: str, story: str) -> str | None:
    """The story's inputs hash; None in the instant its folder is being replaced."""
    try:
        return _metadata(root, mode, story)["inputs_sha256"]
    except FileNotFoundError:
        return None


def _stories(root: Path) -> list[str]:
    return [s["id"] for s in yaml.safe_load((root / "params.yaml").read_text())["stories"]]


def _without_timings(folder: Path) -> dict[str, bytes]:
    """A mode's outputs file by file; metadata.json without its seconds, which differ from run to run."""
    out = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if path.name == "metadata.json":
            meta = json.loads(data)
            for record in [meta, *meta["frames"], *(a for f in meta["frames"] for a in f["attempts"])]:
                for key in [k for k in record if k.startswith("seconds")]:
                    del record[key]
            data = json.dumps(meta, sort_keys=True).encode()
        out[path.relative_to(folder).as_posix()] = data
    return out


def test_a_ref_guided_knob_reruns_ref_guided_and_evaluate_only(repo):
    root, env = repo
    output = dvc("exp", "run", "-S", "generate.ip_adapter_scale=0.7", cwd=root, env=env)
    assert ran_stages(output) == {"generate@ref_guided", "evaluate"}, output
    again = dvc("repro", cwd=root, env=env)
    assert ran_stages(again) == set(), again
    run(["git", "checkout", "-q", "--", "."], root, env)
    dvc("checkout", "-q", cwd=root, env=env)


@pytest.fixture
def scored(tiny_repo, tmp_path) -> tuple[Path, dict[str, str]]:
    """A copy of the shared committed tiny run, as it was committed."""
    root = tmp_path / "repo"
    shutil.copytree(tiny_repo.root, root, symlinks=True)
    run(["git", "checkout", "-qf", tiny_repo.commit], root, tiny_repo.env)
    dvc("checkout", "--force", cwd=root, env=tiny_repo.env)
    return root, tiny_repo.env


def _train_fingerprint(root: Path, env: dict[str, str]) -> str:
    script = (
        "from storyboard.closure import code_fingerprint; "
        "from storyboard.train.checkpoints import CODE, NOT_SHAPING_CODE; "
        "print(code_fingerprint(CODE, leave_out=NOT_SHAPING_CODE))"
    )
    return run([sys.executable, "-c", script], root, {**env, "PYTHONPATH": str(root)}, stdout_only=True).strip()


def test_an_evaluation_edit_reruns_select_and_evaluate_never_train(scored):
    root, env = scored
    fingerprint = _train_fingerprint(root, env)
    scores = root / "storyboard/evaluate/scores.py"
    scores.write_text(scores.read_text() + "\n# a one-line fix to an evaluation formula\n")
    status = dvc_json("status", "--json", cwd=root, env=env)
    assert {"select", "evaluate"} <= set(status) and "train" not in status, status
    assert _train_fingerprint(root, env) == fingerprint  # a rerun resumes training's final checkpoint
    output = dvc("repro", cwd=root, env=env)
    assert ran_stages(output) == {"select", "evaluate"}, output  # the same step chosen: the LoRA is unchanged
    run(["git", "checkout", "-q", "--", "."], root, env)


def test_an_evaluate_knob_reruns_select_and_evaluate_only(scored):
    root, env = scored
    output = dvc("exp", "run", "-S", "evaluate.face_min_score=0.6", cwd=root, env=env)
    assert ran_stages(output) == {"select", "evaluate"}, output


def test_an_edited_plan_frame_is_rendered_without_planning_again(repo):
    root, env = repo
    story = _stories(root)[1]
    others = {s: _metadata(root, "lora", s)["inputs_sha256"] for s in _stories(root) if s != story}
    path = root / "data" / "plans" / f"{story}.json"
    plan = json.loads(path.read_text())
    plan["frames"][1].update(scene="Aldar Kose hides behind a carpet stall", shot="wide", pose="sneaking")
    path.write_text(json.dumps(plan, indent=2))

    output = dvc("repro", cwd=root, env=env)
    assert ran_stages(output) == {"plan", *(f"generate@{m}" for m in MODES), "evaluate"}
    assert "plans: 0 made" in output, output  # the planner was not asked
    assert json.loads(path.read_text())["frames"][1]["scene"] == "Aldar Kose hides behind a carpet stall"
    for mode in MODES:
        frame = _metadata(root, mode, story)["frames"][1]
        assert (frame["scene"], frame["shot"], frame["pose"]) == (
            "Aldar Kose hides behind a carpet stall",
            "wide",
            "sneaking",
        )
    assert {s: _metadata(root, "lora", s)["inputs_sha256"] for s in others} == others  # the others were kept
    assert f"lora/{next(iter(others))}: kept" in output
    assert ran_stages(dvc("repro", cwd=root, env=env)) == set()


def test_a_killed_generate_run_resumes_with_the_stories_it_had_not_finished(repo, tmp_path):
    root, env = repo
    stories = _stories(root)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["generate"]["seed"] += 1
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    old = {s: _metadata(root, "baseline", s)["inputs_sha256"] for s in stories}

    # Killed (-9, the whole process group) as soon as the first story's folder is in place.
    log = (tmp_path / "killed.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "dvc", "repro", "generate@baseline"],
        cwd=root,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 600
    while _inputs(root, "baseline", stories[0]) in (old[stories[0]], None):
        assert proc.poll() is None, (tmp_path / "killed.log").read_text()
        assert time.monotonic() < deadline, "the first story was never written"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    first = _metadata(root, "baseline", stories[0])["inputs_sha256"]
    unfinished = [s for s in stories if _inputs(root, "baseline", s) in (old[s], None)]
    assert unfinished, "the run finished before it was killed: nothing left to resume"

    resumed = dvc("repro", "generate@baseline", cwd=root, env=env)
    assert f"baseline/{stories[0]}: kept" in resumed, resumed
    assert _metadata(root, "baseline", stories[0])["inputs_sha256"] == first
    after_resume = _without_timings(root / "outputs" / "baseline")

    # The same outputs as a run that was never interrupted.
    for story in stories:
        subprocess.run(["rm", "-rf", str(root / "outputs" / "baseline" / story)], check=True)
    dvc("repro", "-f", "generate@baseline", cwd=root, env=env)
    assert _without_timings(root / "outputs" / "baseline") == after_resume
