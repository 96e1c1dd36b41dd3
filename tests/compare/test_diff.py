"""Both sides from a real git repo through real `dvc params/metrics diff`, dvc.lock and dvclive's step times."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from compare_sides import tiny_eval, with_changes
from PIL import Image

from storyboard.cli import main
from storyboard.compare import CompareError, compare, outside_details
from storyboard.compare.diff import run_of, training_seconds

DVC_YAML = {
    "stages": {
        "evaluate": {
            "cmd": "true",
            "params": ["generate.ip_adapter_scale"],
            "metrics": [{"metrics/eval.json": {"cache": False}}],
        }
    }
}


def _lock(profile: str) -> str:
    params = {"profile": profile, "models.sdxl.base": "stabilityai/stable-diffusion-xl-base-1.0"}
    params["models.tiny"] = {"root": ".cache/tiny-models", "seed": 0}
    return yaml.safe_dump({"schema": "2.0", "stages": {"evaluate": {"cmd": "true", "params": {"params.yaml": params}}}})


def _side(root: Path, *, scale: float, metrics: dict, profile: str, step_s: float) -> None:
    (root / "params.yaml").write_text(yaml.safe_dump({"generate": {"ip_adapter_scale": scale}}))
    (root / "metrics").mkdir(exist_ok=True)
    (root / "metrics/eval.json").write_text(json.dumps(metrics))
    (root / "dvc.lock").write_text(_lock(profile))
    log = root / "dvclive/train/plots/metrics"
    log.mkdir(parents=True, exist_ok=True)
    (log / "step_time_s.tsv").write_text("step\tstep_time_s\n" + "".join(f"{i}\t{step_s}\n" for i in range(10)))


def _git(root: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A committed tiny run (the base) and, in the workspace, the same run with one knob changed."""
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "config", "user.email", "t@example.com")
    _git(tmp_path, "config", "user.name", "t")
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML))
    base = tiny_eval()
    _side(tmp_path, scale=0.6, metrics=base, profile="tiny", step_s=0.05)
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "commit", "-qm", "base")
    cids = base["ref_guided"]["vistorybench_self_cids"] + 0.0213
    moved = with_changes(base, {"ref_guided.vistorybench_self_cids": cids, "ref_guided.seconds_per_frame": 0.61})
    _side(tmp_path, scale=0.8, metrics=moved, profile="tiny", step_s=0.06)
    return tmp_path


def test_cli_writes_report_and_chart_from_dvc_diffs(repo: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(repo)
    main(["compare", "HEAD", "--out", "report/compare.md", "--no-plots"])
    md = (repo / "report/compare.md").read_text()
    assert md == capsys.readouterr().out  # printed as well as written
    outside = "\n".join(outside_details(md))
    assert "| `params.yaml:generate.ip_adapter_scale` | 0.6 | 0.8 |" in outside
    assert "- **ref_guided**: **moved beyond tolerance**: Self-CIDS ↑ (+0.0213)." in outside
    assert "Training time (timing): 0.5 s → 0.6 s (+0.1 s)." in outside
    assert "different profiles" not in md and "plumbing, not quality" in md
    chart = repo / "report/compare.png"
    assert "](compare.png)" in outside and Image.open(chart).format == "PNG"


def test_profile_from_dvc_lock_warns(repo: Path) -> None:
    (repo / "dvc.lock").write_text(_lock("sdxl"))
    result = compare("HEAD", cwd=repo)
    assert result.runs["profile"].old == "tiny" and result.runs["profile"].new == "sdxl"
    assert result.runs["base model"].new == "stabilityai/stable-diffusion-xl-base-1.0"


def test_run_of_reads_the_recorded_params_not_params_yaml() -> None:
    assert run_of(_lock("tiny")) == {"profile": "tiny", "base model": "tiny random weights, seed 0"}
    assert run_of(None) == {} and run_of(": not yaml [") == {}
    assert training_seconds("step\tstep_time_s\n0\t1.25\n1\t1.25\n") == 2.5 and training_seconds(None) is None


def test_unknown_base_is_one_line_naming_it(tmp_path: Path) -> None:
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    with pytest.raises(CompareError, match="BASE=nope is not a commit, branch or tag") as e:
        compare("nope", cwd=tmp_path)
    assert "\n" not in str(e.value)
