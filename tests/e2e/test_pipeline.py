"""The whole pipeline through real dvc on the tiny profile, in a temp git repo made from this checkout."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
MODES = ("baseline", "lora", "ref_guided")

pytestmark = pytest.mark.e2e


def _env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env.update(
        DVC_NO_ANALYTICS="1",
        GIT_AUTHOR_NAME="e2e",
        GIT_AUTHOR_EMAIL="e2e@storyboard.invalid",
        GIT_COMMITTER_NAME="e2e",
        GIT_COMMITTER_EMAIL="e2e@storyboard.invalid",
        OPENAI_API_KEY="",  # the tiny run must not need one
        HF_HUB_OFFLINE="1",  # and must not reach for the hub
    )
    env.pop("OPENAI_API_KEY")
    return env


def _run(args: list[str], cwd: Path, env: dict[str, str], stdout_only: bool = False) -> str:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(args)} failed ({proc.returncode}):\n{output[-6000:]}"
    return proc.stdout if stdout_only else output


def _json(args: list[str], cwd: Path, env: dict[str, str]):
    return json.loads(_run(args, cwd, env, stdout_only=True))


def _ran_stages(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A fresh git repo holding what this checkout tracks (and untracked files git doesn't ignore)."""
    root = tmp_path_factory.mktemp("e2e") / "repo"
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    for rel in files:
        if (REPO / rel).is_file():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, root / rel)
    env = _env(root)
    _run(["git", "init", "-q", "-b", "main"], root, env)
    _run(["git", "add", "-A"], root, env)
    _run(["git", "commit", "-qm", "e2e"], root, env)
    return root, env


def _tiny_flags() -> list[str]:
    """The README's tiny command takes its flags from the Makefile; test exactly those."""
    out = subprocess.run(["make", "-s", "print-tiny-flags"], cwd=REPO, capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_tiny_pipeline_end_to_end(repo):
    root, env = repo
    started = time.perf_counter()
    output = _run([sys.executable, "-m", "dvc", "exp", "run", *_tiny_flags()], root, env)
    seconds = time.perf_counter() - started
    print(f"tiny pipeline: {seconds:.0f} s")
    assert {"sample", "caption", "train", "plan", "evaluate", *(f"generate@{m}" for m in MODES)} <= _ran_stages(output)

    params = yaml.safe_load((root / "params.yaml").read_text())
    assert params["profile"] == "tiny"
    stories = [s["id"] for s in params["stories"]]

    # caption: one trigger-token caption per sample image
    manifest = [json.loads(line) for line in (root / "data/dataset/manifest.jsonl").read_text().splitlines()]
    ok = [r for r in manifest if r["status"] == "ok"]
    assert len(ok) == params["sample"]["count"]
    for r in ok:
        txt = (root / "data/dataset/images" / r["image"]).with_suffix(".txt").read_text()
        assert txt.startswith(params["character"]["trigger"])

    # train: loadable LoRA weights and a loss curve of max_steps points
    assert (root / "models/lora/pytorch_lora_weights.safetensors").stat().st_size > 0
    loss_rows = (root / "dvclive/train/plots/metrics/loss.tsv").read_text().splitlines()
    assert len(loss_rows) == params["train"]["max_steps"] + 1

    # plan + generate: every story x mode has its frames, metadata and contact sheet, marked as tiny
    for story in stories:
        plan = json.loads((root / f"data/plans/{story}.json").read_text())
        assert params["plan"]["min_frames"] <= len(plan["frames"]) <= params["plan"]["max_frames"]
        for mode in MODES:
            folder = root / "outputs" / mode / story
            meta = json.loads((folder / "metadata.json").read_text())
            assert meta["profile"] == "tiny" and "plumbing" in meta["notice"]
            assert len(meta["frames"]) == len(plan["frames"])
            for frame in meta["frames"]:
                assert Image.open(folder / frame["file"]).size[0] > 0
                assert 1 <= len(frame["attempts"]) <= params["generate"]["max_retries"] + 1
            assert Image.open(folder / "contact_sheet.png").size[0] > 0

    # evaluate: metrics per mode that dvc reads, per-frame CSVs for plots
    metrics = json.loads((root / "metrics/eval.json").read_text())
    assert metrics["profile"] == "tiny" and "plumbing" in metrics["notice"]
    for mode in MODES:
        m = metrics[mode]
        assert -1 <= m["clip_text_score"] <= 1 and -1 <= m["clip_image_to_first"] <= 1
        assert 0 <= m["face_detection_rate"] <= 1
        assert "face_similarity_to_first" in m and "face_pairwise" in m
        assert -1 <= m["character_to_first"] <= 1 and -1 <= m["character_to_references"] <= 1
        assert set(m["stories"]) == set(stories)
        assert (root / f"metrics/frames/{mode}.csv").exists()
    html = (root / "reports/index.html").read_text()
    train_metrics = json.loads((root / "metrics/train.json").read_text())
    every, last = params["train"]["checkpoint_every"], params["train"]["max_steps"]
    assert train_metrics["select"] == "best"
    assert [s["step"] for s in train_metrics["steps"]] == sorted({*range(every, last, every), last})
    checkpoint_samples = sum(len(paths) for paths in train_metrics["samples"].values())
    assert (
        "plumbing" in html
        and 'id="checkpoints"' in html
        and html.count("<img")
        == sum(len(json.loads((root / f"data/plans/{s}.json").read_text())["frames"]) for s in stories) * len(MODES)
        + checkpoint_samples
    )
    shown = _run([sys.executable, "-m", "dvc", "metrics", "show", "--json"], root, env)
    assert "clip_text_score" in shown and "face_detection_rate" in shown
    shown_plots = _json([sys.executable, "-m", "dvc", "plots", "show", "--json"], root, env)
    assert not shown_plots.get("errors"), shown_plots["errors"]
    plots = shown_plots["data"]
    loss_points = plots["training loss"][0]["content"]["data"]["values"]
    assert len(loss_points) == params["train"]["max_steps"] and "loss" in loss_points[0]
    assert "CLIP text score per frame" in plots
    sweep_points = plots["checkpoint sweep"][0]["content"]["data"]["values"]
    assert {p["step"] for p in sweep_points} == {s["step"] for s in train_metrics["steps"]}
    assert any(name.endswith(".png") for name in plots)  # validation samples from training

    # nothing reached for a hub: the tiny models were built here
    assert list((root / ".cache/tiny-models").glob("*/BUILT.json"))

    # a second repro is a no-op
    again = _run([sys.executable, "-m", "dvc", "repro"], root, env)
    assert _ran_stages(again) == set(), again
    status = _run([sys.executable, "-m", "dvc", "status"], root, env)
    assert "up to date" in status, status

    # changing one generate param reruns only generate and evaluate, and the metrics diff shows it
    _run(["git", "add", "-A"], root, env)
    _run(["git", "commit", "-qm", "tiny run"], root, env)
    changed = _run([sys.executable, "-m", "dvc", "exp", "run", "-S", "generate.guidance_scale=2.0"], root, env)
    assert _ran_stages(changed) == {"evaluate", *(f"generate@{m}" for m in MODES)}, changed
    changed_metrics = _json([sys.executable, "-m", "dvc", "metrics", "diff", "--json"], root, env)["metrics/eval.json"]
    assert any(k.endswith("clip_text_score") for k in changed_metrics), changed_metrics

    # changing a LoRA param retrains and reruns what uses the LoRA, and nothing else (not the baseline)
    retrained = _run([sys.executable, "-m", "dvc", "exp", "run", "-S", "train.rank=8"], root, env)
    assert _ran_stages(retrained) == {"train", "generate@lora", "generate@ref_guided", "evaluate"}, retrained
