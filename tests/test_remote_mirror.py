"""The remote mirror against a real S3 server (SeaweedFS on 127.0.0.1), configured the way users configure DVC."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import pytest
from s3_server import S3Server

from storyboard.remote import RemoteMirror


def _dvc_repo(root: Path, url: str | None = None, endpoint: str | None = None) -> Path:
    """What `dvc init`, `dvc remote add -d storage URL`, `dvc remote modify storage endpointurl E` write."""
    (root / ".dvc").mkdir(parents=True)
    config = "[core]\n    analytics = false\n"
    if url:
        config += f"    remote = storage\n['remote \"storage\"']\n    url = {url}\n    endpointurl = {endpoint}\n"
    (root / ".dvc" / "config").write_text(config)
    return root


@pytest.fixture
def project(tmp_path: Path, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A DVC repo whose default remote is the test server, set up with docs/team-workflow.md's commands."""
    root = _dvc_repo(tmp_path / "project", f"s3://storyboard/{uuid.uuid4().hex}", s3_server.endpoint)
    for key, value in s3_server.credentials().items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(root)
    return root


def test_no_remote_is_a_no_op(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert RemoteMirror.from_project(tmp_path) is None  # outside any DVC repo
    assert RemoteMirror.from_project(_dvc_repo(tmp_path / "project")) is None


def test_files_and_folders_round_trip(project: Path, tmp_path: Path) -> None:
    mirror = RemoteMirror.from_project()
    assert mirror is not None and "s3://storyboard/" in mirror.label
    src = tmp_path / "step-0000002"
    (src / "sub").mkdir(parents=True)
    (src / "state.pt").write_bytes(b"weights" * 1000)
    (src / "sub" / "x.png").write_bytes(b"png")
    (src / "COMPLETE").write_text("2")
    assert mirror.put_dir(src, "checkpoints/abc/step-0000002", "COMPLETE")
    assert mirror.complete_dirs("checkpoints/abc", "COMPLETE") == ["step-0000002"]

    dest = tmp_path / "fetched" / "step-0000002"
    assert mirror.get_dir("checkpoints/abc/step-0000002", dest, "COMPLETE")
    assert (dest / "state.pt").read_bytes() == b"weights" * 1000 and (dest / "sub" / "x.png").read_bytes() == b"png"
    assert not mirror.get_file("checkpoints/none.json", tmp_path / "none.json")
    assert not (tmp_path / "none.json").exists() and mirror.broken is None  # absent is not a failure

    mirror.remove("checkpoints/abc/step-0000002")
    assert mirror.complete_dirs("checkpoints/abc", "COMPLETE") == []


def test_incomplete_folder_is_not_fetched(project: Path, tmp_path: Path) -> None:
    mirror = RemoteMirror.from_project()
    src = tmp_path / "half"
    src.mkdir()
    (src / "state.pt").write_bytes(b"half")
    assert mirror.put_file(src / "state.pt", "checkpoints/abc/step-0000004/state.pt")  # marker never sent
    assert not mirror.get_dir("checkpoints/abc/step-0000004", tmp_path / "out", "COMPLETE")
    assert mirror.complete_dirs("checkpoints/abc", "COMPLETE") == []
    assert not (tmp_path / "out").exists()


def test_wrong_secret_warns_once_and_never_shows_it(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-value")
    mirror = RemoteMirror.from_project()
    (tmp_path / "a.json").write_text("{}")
    with caplog.at_level(logging.WARNING, logger="storyboard"):
        assert not mirror.put_file(tmp_path / "a.json", "captions/a.json")
        assert not mirror.put_file(tmp_path / "a.json", "captions/b.json")  # switched off: no second try
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "captions/a.json" in warnings[0], warnings
    assert "wrong-secret-value" not in caplog.text
    assert mirror.broken


def test_server_down_is_a_warning_not_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server = S3Server(tmp_path / "s3").start()
    try:
        _dvc_repo(tmp_path / "project", "s3://storyboard/x", server.endpoint)
        for key, value in server.credentials().items():
            monkeypatch.setenv(key, value)
        mirror = RemoteMirror.from_project(tmp_path / "project")
        server.kill()
        (tmp_path / "a.json").write_text("{}")
        assert not mirror.put_file(tmp_path / "a.json", "captions/a.json")
        assert "EndpointConnectionError" in str(mirror.broken)
    finally:
        server.stop()


def test_checkpoints_travel_to_a_new_pod(project: Path, tmp_path: Path) -> None:
    """What the train stage does: each saved checkpoint is mirrored; a new pod fetches the latest complete one."""
    from storyboard.train.checkpoints import fetch_latest, latest_checkpoint, save_checkpoint

    mirror = RemoteMirror.from_project()
    run_dir = tmp_path / "pod1" / "checkpoints" / "fingerprint0"
    (run_dir / "validation").mkdir(parents=True)
    for step in (2, 4, 6):
        (run_dir / "validation" / f"step{step:06d}_0.png").write_bytes(b"png")
        save_checkpoint(run_dir, {"step": step, "history": [{"step": step}]}, keep=2, mirror=mirror)
    mirror.wait()
    assert mirror.broken is None
    assert mirror.complete_dirs("checkpoints/fingerprint0", "COMPLETE") == ["step-0000004", "step-0000006"]

    new_pod = tmp_path / "pod2" / "checkpoints" / "fingerprint0"
    fetch_latest(new_pod, RemoteMirror.from_project())
    assert latest_checkpoint(new_pod).name == "step-0000006"
    assert sorted(p.name for p in (new_pod / "validation").iterdir()) == [f"step{s:06d}_0.png" for s in (2, 4, 6)]
    fetch_latest(run_dir, RemoteMirror.from_project())  # the local one is as new: nothing fetched, nothing broken
