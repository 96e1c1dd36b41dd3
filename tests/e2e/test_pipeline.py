"""The whole pipeline through real dvc on the tiny profile, in a temp git repo made from this checkout."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
import yaml
from dvcrepo import MODES, copy_checkout, dvc_env, dvc_json, ran_stages, run, tiny_flags
from PIL import Image

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    env = dvc_env()
    return copy_checkout(tmp_path_factory.mktemp("e2e") / "repo", env), env


def test_tiny_pipeline_end_to_end(repo):
    root, env = repo
    started = time.perf_counter()
    output = run([sys.executable, "-m", "dvc", "exp", "run", *tiny_flags()], root, env)
    seconds = time.perf_counter() - started
    print(f"tiny pipeline: {seconds:.0f} s")
    stages = {"sample", "caption", "train", "select", "plan", "evaluate", *(f"generate@{m}" for m in MODES)}
    assert stages <= ran_stages(output)

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

    # train: every saved step and a loss curve of max_steps points; select: the chosen step's LoRA weights
    assert (root / "models/steps/steps.json").exists()
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
        # ViStoryBench's CIDS, the same on each frame's first attempt, both detection rates
        for key in ("vistorybench_self_cids", "vistorybench_cross_cids"):
            assert -1 <= m[key] <= 1 and -1 <= m[f"{key}_first_attempt"] <= 1
        assert 0 <= m["vistorybench_occm"] <= 100
        assert 0 <= m["character_detection_rate"] <= 1 and 0 <= m["face_in_box_rate"] <= 1
        assert m["character_whole_frame_fallbacks"] >= 0 and m["face_whole_frame_fallbacks"] >= 0
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
    shown = run([sys.executable, "-m", "dvc", "metrics", "show", "--json"], root, env)
    assert "clip_text_score" in shown and "face_detection_rate" in shown and "character_detection_rate" in shown
    assert "vistorybench_self_cids" in shown and "vistorybench_self_cids_first_attempt" in shown
    shown_plots = dvc_json("plots", "show", "--json", cwd=root, env=env)
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
    again = run([sys.executable, "-m", "dvc", "repro"], root, env)
    assert ran_stages(again) == set(), again
    status = run([sys.executable, "-m", "dvc", "status"], root, env)
    assert "up to date" in status, status

    # changing a LoRA param retrains and reruns what uses the LoRA, and nothing else (not the baseline); fewer steps
    # than the run's, so the retraining is short. (What each generate knob reruns: tests/test_dvc_contract.py.)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "tiny run"], root, env)
    retrained = run([sys.executable, "-m", "dvc", "exp", "run", "-S", "train.max_steps=20"], root, env)
    assert ran_stages(retrained) == {"train", "select", "generate@lora", "generate@ref_guided", "evaluate"}, retrained
    # and the metrics diff shows it, first attempts included
    changed_metrics = dvc_json("metrics", "diff", "--json", cwd=root, env=env)["metrics/eval.json"]
    assert any(k.startswith("lora.") and k.endswith("clip_text_score") for k in changed_metrics), changed_metrics
    assert any(k.endswith("vistorybench_self_cids_first_attempt") for k in changed_metrics), changed_metrics
    assert not any(k.startswith(("baseline.", "multiref.")) for k in changed_metrics), changed_metrics
