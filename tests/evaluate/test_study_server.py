"""The rating server: invite tokens, per-rater isolation, request validation, blinding, and two raters in Chromium."""

from __future__ import annotations

import io
import json
import logging
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from browser import chromium, keep_artifact
from PIL import Image
from study_outputs import frame_colour, make_outputs

from storyboard.evaluate.study.server import MAX_BODY_BYTES, StudyServer, bind_host
from storyboard.evaluate.study.sheets import DEFAULT_MODES, label_for
from storyboard.evaluate.study.stats import summarise_study
from storyboard.evaluate.study.store import StudyError

MODES = DEFAULT_MODES


@pytest.fixture
def outputs(tmp_path: Path) -> Path:
    return make_outputs(tmp_path / "outputs", ["s1", "s2"])


@pytest.fixture
def server(outputs: Path, tmp_path: Path) -> Iterator[StudyServer]:
    with StudyServer(outputs, tmp_path / "study.sqlite", story_ids=["s1", "s2"]) as s:
        yield s


def call(url: str, token: str | None = None, body: bytes | None = None, headers: dict | None = None):
    """(status, body bytes) of one request; the invite token goes where the page puts it."""
    headers = dict(headers or {})
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if body is not None:
        headers.setdefault("Content-Type", "application/json")
    request = urllib.request.Request(url, data=body, headers=headers, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def rate(server: StudyServer, token: str, **fields) -> tuple[int, dict]:
    status, body = call(server.url + "api/rate", token, json.dumps(fields).encode())
    return status, json.loads(body)


def test_only_an_invited_token_opens_the_study(server):
    tokens = server.store.invite(["ann"])
    assert call(server.url + "api/items", tokens["ann"])[0] == 200
    for wrong in (None, "", "x" * 43, tokens["ann"][:-1] + ("A" if tokens["ann"][-1] != "A" else "B")):
        status, body = call(server.url + "api/items", wrong)
        assert status == 401 and "invite link is not valid" in json.loads(body)["error"]
    assert (
        rate(server, "not-a-real-token-at-all-000", item=server.items[0].item_id, rating=3, same_character="yes")[0]
        == 401
    )
    # A new invite for the same name replaces the link: the old one stops working.
    new = server.store.invite(["ann"])["ann"]
    assert call(server.url + "api/items", tokens["ann"])[0] == 401 and call(server.url + "api/items", new)[0] == 200
    assert server.store.counts() == {"ratings": 0, "raters": 0}


def test_a_rater_reads_and_writes_only_their_own_ratings(server):
    tokens = server.store.invite(["ann", "bob"])
    first = server.items[0].item_id
    assert rate(server, tokens["ann"], item=first, rating=2, same_character="no") == (
        200,
        {"ok": True, "rated": 1, "total": 6},
    )
    assert rate(server, tokens["bob"], item=first, rating=5, same_character="yes")[0] == 200
    for name, expected in (("ann", (2, "no")), ("bob", (5, "yes"))):
        data = json.loads(call(server.url + "api/items", tokens[name])[1])
        assert data["rater"] == name
        mine = {it["item"]: (it["rating"], it["same_character"]) for it in data["items"]}
        assert mine[first] == expected and sum(r is not None for r, _ in mine.values()) == 1
    # The rater comes from the token alone: a body naming another rater is refused, not obeyed.
    status, reply = rate(server, tokens["ann"], item=first, rating=1, same_character="no", rater="bob")
    assert status == 400 and "rater" in reply["error"]
    rows = {(r.rater, r.rating) for r in server.store.rows()}
    assert rows == {("ann", 2), ("bob", 5)}


def test_bad_ratings_are_refused_with_400(server):
    token = server.store.invite(["ann"])["ann"]
    good = {"item": server.items[0].item_id, "rating": 3, "same_character": "yes"}
    bad = [
        ({**good, "rating": 0}, "rating"),
        ({**good, "rating": 6}, "rating"),
        ({**good, "rating": "3"}, "rating"),
        ({**good, "rating": 3.5}, "rating"),
        ({**good, "rating": True}, "rating"),
        ({**good, "rating": None}, "rating"),
        ({**good, "same_character": "maybe"}, "same_character"),
        ({**good, "same_character": True}, "same_character"),
        ({**good, "item": "not-an-item"}, "unknown storyboard"),
        ({k: v for k, v in good.items() if k != "rating"}, "rating"),
    ]
    for body, message in bad:
        status, reply = rate(server, token, **body)
        assert status == 400 and message in reply["error"], (body, reply)
    for raw in (b"{not json", b"[1, 2]", b""):
        assert call(server.url + "api/rate", token, raw)[0] == 400
    status, body = call(server.url + "api/rate", token, b"{" + b" " * MAX_BODY_BYTES + b"}")
    assert status == 413 and "error" in json.loads(body)
    assert server.store.counts()["ratings"] == 0
    assert rate(server, token, **good)[0] == 200
    assert rate(server, token, **{**good, "rating": 5})[0] == 200  # a re-rating replaces the row
    assert [(r.rating, r.same_character) for r in server.store.rows()] == [(5, 1)]
    assert call(server.url + "nowhere")[0] == 404
    assert call(server.url + "img/" + "0" * 24)[0] == 404


def test_mode_names_never_reach_the_browser(server):
    token = server.store.invite(["Zoë"])["Zoë"]
    status, page = call(server.url)
    assert status == 200 and b"<script>" in page
    status, listing = call(server.url + "api/items", token)
    data = json.loads(listing)
    assert [it["label"] for it in data["items"]] == [f"Storyboard {c}" for c in "ABCDEF"]
    served = [page, listing]
    by_id = {item.item_id: item for item in server.items}
    for it in data["items"]:
        status, body = call(server.url + it["image"].lstrip("/"))
        assert status == 200 and body.startswith(b"\x89PNG")
        served.append(body)
        # A sheet of the frames, not the contact sheet (its title names the mode): 3 frames of 64 px shown at
        # 256 px in one row, each cell starting with its frame's colour; and no text chunk from the frames.
        image = Image.open(io.BytesIO(body))
        assert image.width == 3 * 256 + 4 * 10 and image.height > 256 and not getattr(image, "text", {})
        mode = by_id[it["item"]].mode
        assert [image.getpixel((10 + k * 266 + 128, 138)) for k in range(3)] == [
            frame_colour(mode, f) for f in (1, 2, 3)
        ]
    for mode in MODES:
        for body in served:
            assert mode.encode() not in body.lower()


def test_order_is_stable_per_rater_and_differs_between_raters(tmp_path):
    stories = [f"s{i}" for i in range(4)]  # 12 storyboards: 12! orders, so a coincidence is out of the question
    outputs = make_outputs(tmp_path / "outputs", stories)
    with StudyServer(outputs, tmp_path / "a.sqlite", story_ids=stories) as first:
        ann, bob = first.order_for("ann"), first.order_for("bob")
    with StudyServer(outputs, tmp_path / "b.sqlite", story_ids=stories) as second:
        # A restart draws new item ids, yet the order a rater sees is the same.
        assert [(i.story_id, i.mode) for i in second.order_for("ann")] == [(i.story_id, i.mode) for i in ann]
        assert first.items[0].item_id != second.items[0].item_id
    assert [(i.story_id, i.mode) for i in ann] != [(i.story_id, i.mode) for i in bob]


def test_server_refuses_missing_sheets_and_binds_loopback_unless_told(outputs, tmp_path, caplog):
    with pytest.raises(StudyError, match="without frames"):
        StudyServer(outputs, tmp_path / "x.sqlite", story_ids=["s1", "nope"])
    with pytest.raises(StudyError, match="--allow-remote"):
        StudyServer(outputs, tmp_path / "x.sqlite", story_ids=["s1"], host="0.0.0.0")
    with pytest.raises(StudyError, match="IP address"):
        bind_host("example.com", allow_remote=True)
    # Tests never listen beyond loopback: the policy is checked without binding.
    with caplog.at_level(logging.WARNING, logger="storyboard"):
        assert bind_host("0.0.0.0", allow_remote=True) == "0.0.0.0"
    assert "plain HTTP" in caplog.text
    assert bind_host("::1", allow_remote=False) == "::1" and bind_host("localhost", False) == "127.0.0.1"
    (outputs / "lora" / "s1" / "frame_02.png").unlink()  # listed in metadata.json but gone
    with pytest.raises(StudyError, match="lora/s1"):
        StudyServer(outputs, tmp_path / "x.sqlite", story_ids=["s1"])


def test_foreign_host_header_is_refused(server, outputs, tmp_path):
    assert call(server.url, headers={"Host": "evil.example:80"})[0] == 403
    assert call(server.url)[0] == 200
    # IPv6 loopback: the Host header carries the address in brackets, as the URL does.
    try:
        with StudyServer(outputs, tmp_path / "v6.sqlite", story_ids=["s1"], host="::1") as v6:
            assert v6.url.startswith("http://[::1]:") and call(v6.url)[0] == 200
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")


# -- a real browser ------------------------------------------------------------------------------------------


def complete_study(driver, url: str, shots: Path | None = None) -> dict[str, tuple[int, str]]:
    """Rate every storyboard on the page at `url`; label -> (rating, yes/no) as clicked."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, 10)
    driver.get(url)
    wait.until(ec.visibility_of_element_located((By.ID, "item")))
    total = int(driver.find_element(By.ID, "progress").text.split(" of ")[1].split()[0])
    driver.find_element(By.ID, "submit").click()  # nothing chosen: stopped on the page, not stored
    assert "Please choose" in driver.find_element(By.ID, "error").text
    answers = {}
    for i in range(total):
        label = driver.find_element(By.ID, "label").text
        wait.until(lambda d: d.execute_script("return document.getElementById('sheet').naturalWidth") > 0)
        rating, same = 1 + (i + len(url)) % 5, ("yes" if i % 2 == 0 else "no")
        driver.find_element(By.ID, f"rating-{rating}").click()
        driver.find_element(By.ID, f"same-{same}").click()
        if i == 0 and shots:
            driver.save_screenshot(str(shots))
            keep_artifact(shots)
        driver.find_element(By.ID, "submit").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "progress"), f"{i + 1} of {total} rated"))
        answers[label] = (rating, same)
    wait.until(ec.visibility_of_element_located((By.ID, "done")))
    assert "Thank you" in driver.find_element(By.ID, "done").text
    for mode in MODES:
        assert mode not in driver.page_source
    return answers


@pytest.mark.timeout(90)
def test_two_raters_complete_the_study_through_their_invite_links(outputs, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    db = tmp_path / "study.sqlite"
    with StudyServer(outputs, db, story_ids=["s1", "s2"]) as server:
        tokens = server.store.invite(["Alice", "Bob"])
        answers = {}
        with chromium(tmp_path, window=(1100, 1000)) as driver:
            for name in ("Alice", "Bob"):
                answers[name] = complete_study(driver, server.invite_url(tokens[name]), tmp_path / f"study_{name}.png")
                assert driver.find_element(By.ID, "who").text == f"Rating as {name}"
            # A link with a wrong token shows why, and no storyboard.
            driver.get(server.url + "#" + "W" * 43)
            WebDriverWait(driver, 10).until(ec.visibility_of_element_located((By.ID, "denied")))
            assert "not valid" in driver.find_element(By.ID, "denied").text
            assert not driver.find_element(By.ID, "study").is_displayed()
            shot = tmp_path / "study_denied.png"
            driver.save_screenshot(str(shot))
            keep_artifact(shot)
        expected = {
            (name, item.story_id, item.mode): answers[name][f"Storyboard {label_for(i)}"]
            for name in ("Alice", "Bob")
            for i, item in enumerate(server.order_for(name))
        }
    rows = {(r.rater, r.story_id, r.mode): (r.rating, "yes" if r.same_character else "no") for r in server.store.rows()}
    assert rows == expected and len(rows) == 12
    summary = summarise_study(db)
    assert summary["raters"] == 2 and all(summary["modes"][m]["n"] == 4 for m in MODES)
    assert summary["agreement"]["items"] == 6
