"""The study commands as a user runs them: invite links printed once, a server killed with kill -9 loses no
rating it acknowledged, and the summary."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from study_outputs import make_outputs

from storyboard.cli import main
from storyboard.evaluate.study.store import RatingStore

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def outputs(tmp_path: Path) -> Path:
    return make_outputs(tmp_path / "outputs", ["s1", "s2"])


def test_invite_prints_each_link_once_and_stores_only_a_hash(tmp_path, capsys):
    db = tmp_path / "ratings.sqlite"
    main(["study-invite", "Ann Lee", "bob", "--db", str(db), "--url", "http://10.0.0.5:8765"])
    lines = capsys.readouterr().out.splitlines()
    links = dict(line.split("\t") for line in lines)
    assert list(links) == ["Ann Lee", "bob"]
    tokens = {}
    for name, link in links.items():
        assert link.startswith("http://10.0.0.5:8765/#")
        tokens[name] = link.split("#", 1)[1]
        assert len(tokens[name]) >= 40  # 32 random bytes
    store = RatingStore(db)
    assert store.rater_for(tokens["bob"]) == "bob" and store.rater_for(tokens["Ann Lee"]) == "Ann Lee"
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("ratings.sqlite*"))
    assert not any(token.encode() in raw for token in tokens.values())


@pytest.mark.timeout(120)
def test_a_killed_server_loses_no_acknowledged_rating(outputs, tmp_path):
    db = tmp_path / "ratings.sqlite"
    token = RatingStore(db).invite(["ann"])["ann"]
    command = [sys.executable, "-m", "storyboard.cli", "study-serve", "--outputs", str(outputs), "--db", str(db)]
    command += ["--story", "s1", "--story", "s2", "--port", "0"]
    process = subprocess.Popen(command, cwd=REPO_ROOT, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline, url = time.monotonic() + 90, None
        while url is None and time.monotonic() < deadline:
            line = process.stderr.readline()
            assert line or process.poll() is None, "study-serve exited early"
            if found := re.search(r"study server: (http://127\.0\.0\.1:\d+/)", line):
                url = found.group(1)
        assert url, "study-serve never printed its address"
        auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        with urllib.request.urlopen(urllib.request.Request(url + "api/items", headers=auth), timeout=10) as r:
            items = json.loads(r.read())["items"]
        for n, item in enumerate(items[:4]):
            body = json.dumps({"item": item["item"], "rating": 1 + n, "same_character": "yes"}).encode()
            with urllib.request.urlopen(urllib.request.Request(url + "api/rate", body, auth), timeout=10) as r:
                assert json.loads(r.read())["ok"] is True
        os.kill(process.pid, signal.SIGKILL)  # no shutdown, no flush, no atexit
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        process.stderr.close()
    assert sorted(row.rating for row in RatingStore(db).rows()) == [1, 2, 3, 4]


def test_summarise_prints_and_writes_json(tmp_path, capsys):
    db = tmp_path / "r.sqlite"
    store = RatingStore(db)
    for rater, rating in (("a", 4), ("b", 5)):
        store.save(rater, "s1", "lora", rating, True)
    out = tmp_path / "study.json"
    main(["study-summarise", "--db", str(db), "--out", str(out)])
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text()) and printed["ratings"] == 2
    assert printed["modes"]["lora"]["rating_mean"] == 4.5
