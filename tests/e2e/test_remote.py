"""The team workflow through real dvc and dvc-s3 against a real S3 server (SeaweedFS on 127.0.0.1).

One tiny run is pushed once (module fixture) and shared: a fresh clone pulls it and finds nothing to rerun, an
experiment travels through `dvc exp push`/`pull`, and `make compare` reports it against the pushed commit.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from dvcrepo import MODES, copy_checkout, dvc, dvc_env, dvc_json, experiments, ran_stages, run, tiny_flags
from openai_server import OpenAIServer
from s3_server import SECRET_KEY, S3Server

pytestmark = pytest.mark.e2e


@dataclass
class Pushed:
    root: Path  # the repo that ran and pushed
    origin: Path  # its git remote (a bare repo): what teammates clone
    commit: str  # the pushed commit with the tiny run's dvc.lock and metrics
    env: dict[str, str]  # with the S3 credentials
    server: S3Server


def setup_remote(root: Path, url: str, server: S3Server, env: dict[str, str]) -> None:
    """docs/team-workflow.md's remote setup, exactly: a default remote and the endpoint of an S3-compatible store."""
    dvc("remote", "add", "-d", "storage", url, cwd=root, env=env)
    dvc("remote", "modify", "storage", "endpointurl", server.endpoint, cwd=root, env=env)


def clone(pushed: Pushed, dest: Path, env: dict[str, str] | None = None) -> Path:
    run(["git", "clone", "-q", str(pushed.origin), str(dest)], dest.parent, env or pushed.env)
    return dest


@pytest.fixture(scope="module")
def s3(tmp_path_factory) -> S3Server:
    server = S3Server(tmp_path_factory.mktemp("seaweedfs")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def pushed(tiny_repo, s3: S3Server) -> Pushed:
    """The shared tiny run, pushed: DVC outputs to the S3 remote, git to a bare `origin`."""
    root, env = tiny_repo.root, {**tiny_repo.env, **s3.credentials()}
    setup_remote(root, f"s3://storyboard/{uuid.uuid4().hex}", s3, env)
    run(["git", "commit", "-qam", "the team's S3 remote"], root, env)
    origin = root.parent / "origin.git"
    run(["git", "init", "-q", "--bare", "-b", "main", str(origin)], root.parent, env)
    run(["git", "remote", "add", "origin", str(origin)], root, env)
    dvc("push", cwd=root, env=env)
    run(["git", "push", "-q", "origin", "main"], root, env)
    commit = run(["git", "rev-parse", "HEAD"], root, env, stdout_only=True).strip()
    return Pushed(root, origin, commit, env, s3)


def test_round_trip_fresh_clone_pulls_and_reruns_nothing(pushed: Pushed, tmp_path: Path) -> None:
    other = clone(pushed, tmp_path / "clone")
    pulled = dvc("pull", cwd=other, env=pushed.env)
    assert (other / "models/lora/pytorch_lora_weights.safetensors").exists(), pulled
    assert (other / "models/steps/steps.json").exists(), pulled  # every saved step travels too
    for mode in MODES:
        assert list((other / "outputs" / mode).glob("*/contact_sheet.png"))
    assert (other / "reports/index.html").exists() and (other / "data/dataset/manifest.jsonl").exists()
    again = dvc("repro", cwd=other, env=pushed.env)
    assert ran_stages(again) == set(), again
    assert dvc_json("metrics", "diff", pushed.commit, "--json", cwd=other, env=pushed.env) == {}
    assert "in sync" in dvc("status", "--cloud", cwd=other, env=pushed.env)


def test_experiment_push_and_pull_between_clones(pushed: Pushed, tmp_path: Path) -> None:
    root, env = pushed.root, pushed.env
    # A ref_guided knob: one mode renders again, the rest of the run comes from the commit.
    out = dvc("exp", "run", "-n", "weak-reference", "-S", "generate.ip_adapter_scale=0.3", cwd=root, env=env)
    assert ran_stages(out) == {"evaluate", "generate@ref_guided"}, out
    dvc("exp", "push", "origin", "weak-reference", cwd=root, env=env)

    other = clone(pushed, tmp_path / "clone")
    dvc("exp", "pull", "origin", "weak-reference", cwd=other, env=env)
    shown = dvc_json("exp", "show", "--json", cwd=other, env=env)
    exps = experiments(shown)
    assert "weak-reference" in exps, shown
    data = exps["weak-reference"]
    assert data["params"]["params.yaml"]["data"]["generate"]["ip_adapter_scale"] == 0.3
    metrics = data["metrics"]["metrics/eval.json"]["data"]
    assert all("clip_text_score" in metrics[m] for m in MODES)
    dvc("exp", "apply", "weak-reference", cwd=other, env=env)
    dvc("pull", cwd=other, env=env)  # the experiment's outputs came to the remote with it
    assert list((other / "outputs/ref_guided").glob("*/contact_sheet.png"))


def test_make_compare_reports_params_metrics_and_plots(pushed: Pushed) -> None:
    """Against the pushed commit: the workspace holds the weak-reference run (or makes it, run alone)."""
    root, env = pushed.root, pushed.env
    dvc("exp", "run", "-S", "generate.ip_adapter_scale=0.3", cwd=root, env=env)
    out = run(["make", "-s", "-o", "install", "compare", f"BASE={pushed.commit}"], root, env)
    report = (root / "compare.md").read_text()
    assert report in out  # printed as well as written
    assert "`params.yaml:generate.ip_adapter_scale` | 0.6 | 0.3 |" in report
    assert "### Headline" in report and "<summary>story <code>greeting</code>" in report
    assert "`clip_text_score`" in report and "→ **" in report  # a metric changed between the runs
    assert (root / "compare.png").read_bytes()[:4] == b"\x89PNG"  # the chart, beside the report
    html = (root / "compare-plots/index.html").read_text()
    assert pushed.commit[:7] in html and "workspace" in html


def test_lost_pod_resumes_training_and_pays_no_caption_twice(s3: S3Server, tmp_path: Path) -> None:
    """Pod 1 captions through the paid API and is lost mid-training (SIGKILL, workspace and DVC cache deleted,
    nothing `dvc push`ed); pod 2 clones, runs the same: 0 caption requests, training resumes from pod 1's
    checkpoint. Both come from the DVC remote, mirrored as they were written."""
    with OpenAIServer() as api:
        env = {**dvc_env(), **s3.credentials(), "OPENAI_API_KEY": "test-key"}
        tiny = tiny_flags()
        flags = [
            f for pair in zip(tiny[::2], tiny[1::2], strict=True) if "caption.backend=" not in pair[1] for f in pair
        ]
        flags += ["-S", "caption.backend=openai", "-S", f"caption.openai.base_url={api.base_url}"]
        flags += ["-S", "train.max_steps=30", "-S", "train.checkpoint_every=3"]
        # The tiny models as a hub cache would be: already there on both pods (rebuilding them tests nothing here).
        flags += ["-S", f"models.tiny.root={tmp_path / 'tiny-models'}"]
        pod1 = copy_checkout(tmp_path / "pod1", env)
        prefix = f"storyboard/{uuid.uuid4().hex}"
        setup_remote(pod1, f"s3://{prefix}", s3, env)
        run(["git", "commit", "-qam", "the team's S3 remote"], pod1, env)
        origin = tmp_path / "origin.git"
        run(["git", "clone", "-q", "--bare", str(pod1), str(origin)], tmp_path, env)

        proc = subprocess.Popen(
            [sys.executable, "-m", "dvc", "exp", "run", *flags, "train"],
            cwd=pod1,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        fs, deadline = s3.filesystem(), time.monotonic() + 600
        while time.monotonic() < deadline and proc.poll() is None:
            if any(p.endswith("/COMPLETE") for p in fs.find(f"{prefix}/storyboard/checkpoints")):
                break
            time.sleep(0.1)
        assert proc.poll() is None, "training ended before its first checkpoint reached the remote"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        paid = len(api.chat_requests)
        assert paid >= 12, paid  # pod 1 paid for every sample image
        shutil.rmtree(pod1)  # the pod is gone: workspace, DVC cache, caption cache, local checkpoints

        api.clear_requests()
        pod2 = tmp_path / "pod2"
        run(["git", "clone", "-q", str(origin), str(pod2)], tmp_path, env)
        out = dvc("exp", "run", *flags, "train", cwd=pod2, env=env)
        assert {"caption", "train"} <= ran_stages(out), out
        assert api.chat_requests == [], "pod 2 paid again for captions pod 1 had"
        caption = json.loads((pod2 / "metrics/caption.json").read_text())
        assert caption["cached"] == paid and caption["requests"] == 0, caption
        trained = json.loads((pod2 / "models/steps/steps.json").read_text())["training"]
        assert trained["resumed_from"] >= 3 and trained["steps"] == 30, trained
        loss = (pod2 / "dvclive/train/plots/metrics/loss.tsv").read_text().splitlines()
        assert len(loss) == 31, "the loss curve covers pod 1's steps too"


def test_wrong_secret_is_a_403_and_writes_nothing(pushed: Pushed, tmp_path: Path) -> None:
    other = clone(pushed, tmp_path / "clone")
    env = {**pushed.env, "AWS_SECRET_ACCESS_KEY": SECRET_KEY + "-wrong"}
    proc = subprocess.run([sys.executable, "-m", "dvc", "pull"], cwd=other, env=env, capture_output=True, text=True)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("ERROR")]
    # DVC says it in one line (then a count of what failed): "failed to connect to s3 (...) - Forbidden: ... (403)"
    assert errors and "403" in errors[0] and "Forbidden" in errors[0], proc.stderr
    assert SECRET_KEY not in proc.stdout + proc.stderr
    for out in ("data/dataset", "models/lora", "outputs/lora", "reports"):
        assert not (other / out).exists(), f"{out} half-pulled"
    assert run(["git", "status", "--porcelain"], other, env) == ""


def test_missing_bucket_names_it(pushed: Pushed, tmp_path: Path) -> None:
    other = clone(pushed, tmp_path / "clone")
    dvc("remote", "modify", "--local", "storage", "url", "s3://no-such-bucket/storyboard", cwd=other, env=pushed.env)
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", "pull"], cwd=other, env=pushed.env, capture_output=True, text=True
    )
    assert proc.returncode != 0
    assert "bucket does not exist" in proc.stderr, proc.stderr
    assert not (other / "models/lora").exists()


def interrupt_until_done(proc: subprocess.Popen, *, wait_s: float = 20, presses: int = 4) -> str:
    """What a user does with a push stuck on a dead endpoint: wait, then Ctrl-C, again if it does not stop.

    s3fs and botocore retry every object against the dead endpoint for minutes, and dvc's upload threads finish
    their retries after the first Ctrl-C: on a loaded machine that takes longer than any one fixed wait.
    """
    for _ in range(presses):
        try:
            return proc.communicate(timeout=wait_s)[0]
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)
            wait_s = 60
    proc.kill()
    raise AssertionError(f"dvc push still running after {presses} Ctrl-C: {proc.communicate()[0][-2000:]}")


def test_server_down_mid_push_then_push_again_completes(tmp_path: Path) -> None:
    """Kill the server while a push uploads, restart it on the same data: the second push sends the rest."""
    server = S3Server(tmp_path / "s3").start()
    try:
        env = {**dvc_env(), **server.credentials()}
        root = tmp_path / "repo"
        root.mkdir()
        run(["git", "init", "-q", "-b", "main"], root, env)
        dvc("init", "-q", cwd=root, env=env)
        setup_remote(root, "s3://storyboard/mid-push", server, env)
        big = root / "data/big"
        big.mkdir(parents=True)
        for i in range(100):
            (big / f"{i:03d}.bin").write_bytes(uuid.uuid4().bytes * 16384)  # 256 KiB each, all distinct
        dvc("add", "data/big", cwd=root, env=env)
        run(["git", "add", "-A"], root, env)
        run(["git", "commit", "-qm", "big"], root, env)

        push = subprocess.Popen(
            [sys.executable, "-m", "dvc", "push", "-j", "2"],
            cwd=root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        fs = server.filesystem()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(fs.find("storyboard/mid-push")) < 20:
            time.sleep(0.05)
        server.kill()
        first = interrupt_until_done(push)
        assert push.returncode != 0, first
        errors = [line for line in first.splitlines() if line.startswith("ERROR")]
        assert errors and all(len(e) < 300 for e in errors), first
        # Nothing in the workspace changed: a push only reads it.
        assert run(["git", "status", "--porcelain"], root, env) == ""
        assert "up to date" in dvc("status", cwd=root, env=env)

        server.start()
        second = dvc("push", cwd=root, env=env)
        assert "pushed" in second, second
        assert "in sync" in dvc("status", "--cloud", cwd=root, env=env)
        # What a teammate pulls is complete and intact.
        other = tmp_path / "clone"
        run(["git", "clone", "-q", str(root), str(other)], tmp_path, env)
        dvc("pull", cwd=other, env=env)
        for f in big.iterdir():
            assert (other / "data/big" / f.name).read_bytes() == f.read_bytes()
    finally:
        server.stop()


def test_no_traffic_beyond_loopback(s3: S3Server) -> None:
    """Every port the test server opened listens on 127.0.0.1 only (read from the kernel's socket table)."""
    listening = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if state == "0A":  # LISTEN
                addr, port = local.split(":")
                listening.add((addr, int(port, 16)))
    ours = {(addr, port) for addr, port in listening if port in s3.ports.values()}
    assert {port for _, port in ours} == set(s3.ports.values()), ours
    assert all(addr == "0100007F" for addr, _ in ours), ours  # 127.0.0.1, little-endian hex
