"""The blind user study: summary statistics, request validation, blinding, per-rater order and a real browser run."""

from __future__ import annotations

import io
import json
import sqlite3
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from browser import chromium, keep_artifact
from PIL import Image, ImageDraw, PngImagePlugin

from storyboard.evaluate.study import (
    DEFAULT_MODES,
    StudyError,
    StudyServer,
    label_for,
    mean_ci95,
    summarise_study,
    t_quantile_975,
    wilson_ci95,
    write_study_metrics,
)

MODES = DEFAULT_MODES
COLOURS = {"baseline": (200, 80, 80), "lora": (80, 160, 80), "ref_guided": (80, 80, 200)}


def frame_colour(mode: str, frame: int) -> tuple[int, int, int]:
    return tuple(min(255, c + 30 * frame) for c in COLOURS[mode])


def make_outputs(root: Path, story_ids: list[str]) -> Path:
    """outputs/<mode>/<story>/ as the generate stage leaves it: frame_01..03.png, metadata.json and a contact
    sheet whose title names the mode (as the real one does). Frames also carry the mode in a PNG text chunk,
    as a careless renderer might, so the tests can check the server never passes either on."""
    for mode in MODES:
        for n, story in enumerate(story_ids):
            folder = root / mode / story
            folder.mkdir(parents=True)
            info = PngImagePlugin.PngInfo()
            info.add_text("mode", mode)
            records = []
            sheet = Image.new("RGB", (240, 100), "white")
            ImageDraw.Draw(sheet).text((5, 2), f"{story} | {mode} | CLIP 0.31", fill="black")
            for frame in range(1, 4):
                image = Image.new("RGB", (64, 64), frame_colour(mode, frame))
                image.save(folder / f"frame_{frame:02d}.png", pnginfo=info)
                sheet.paste(image.resize((70, 70)), (5 + 80 * (frame - 1), 20))
                records.append({"index": frame, "file": f"frame_{frame:02d}.png", "scene": f"scene {frame}"})
            sheet.save(folder / "contact_sheet.png", pnginfo=info)
            meta = {
                "story_id": story,
                "story": f"The trickster fools merchant number {n} at the market.",
                "mode": mode,
                "frames": records,
            }
            (folder / "metadata.json").write_text(json.dumps(meta))
    return root


@pytest.fixture
def outputs(tmp_path) -> Path:
    return make_outputs(tmp_path / "outputs", ["s1", "s2"])


@pytest.fixture
def server(outputs, tmp_path) -> Iterator[StudyServer]:
    with StudyServer(outputs, tmp_path / "study.sqlite", story_ids=["s1", "s2"]) as s:
        yield s


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def post(url: str, body: bytes, content_type: str = "application/json") -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def post_json(url: str, data: object) -> tuple[int, dict]:
    return post(url, json.dumps(data).encode())


# -- statistics ----------------------------------------------------------------------------------------------

ROWS = [  # rater, story, mode, rating, same_character
    ("r1", "s1", "baseline", 2, 0),
    ("r2", "s1", "baseline", 3, 0),
    ("r3", "s1", "baseline", 4, 1),
    ("r1", "s2", "baseline", 1, 0),
    ("r1", "s1", "lora", 5, 1),
    ("r2", "s1", "lora", 5, 1),
    ("r1", "s2", "lora", 4, 1),
    ("r1", "s1", "ref_guided", 3, 1),
]


def make_db(path: Path, rows: list[tuple]) -> Path:
    with sqlite3.connect(path) as con:
        con.execute(
            "CREATE TABLE ratings(rater TEXT, story_id TEXT, mode TEXT, rating INTEGER, same_character INTEGER, "
            "created_at TEXT, PRIMARY KEY(rater, story_id, mode))"
        )
        con.executemany("INSERT INTO ratings VALUES (?, ?, ?, ?, ?, '2025-01-01T00:00:00+00:00')", rows)
    con.close()
    return path


def test_summary_on_a_known_database(tmp_path):
    summary = summarise_study(make_db(tmp_path / "r.sqlite", ROWS))
    assert summary["raters"] == 3 and summary["ratings"] == 8
    base, lora, ref = (summary["modes"][m] for m in MODES)

    # baseline: ratings 2, 3, 4, 1 -> mean 2.5, sd sqrt(5/3), t(0.975, 3) = 3.182446
    assert (base["n"], base["raters"], base["rating_mean"]) == (4, 3, 2.5)
    half = 3.182446 * (5 / 3) ** 0.5 / 2
    assert base["rating_ci95_low"] == pytest.approx(2.5 - half, abs=1e-4)
    assert base["rating_ci95_high"] == pytest.approx(2.5 + half, abs=1e-4)
    # 1 of 4 "same character": Wilson 95% interval (0.0456, 0.6994)
    assert base["same_character_yes"] == 1 and base["same_character_share"] == 0.25
    assert base["same_character_ci95_low"] == pytest.approx(0.0456, abs=1e-4)
    assert base["same_character_ci95_high"] == pytest.approx(0.6994, abs=1e-4)

    # lora: 5, 5, 4 -> mean 4.6667, sd sqrt(1/3), t(0.975, 2) = 4.302653; the bound may pass 5 (not clipped)
    assert lora["rating_mean"] == pytest.approx(4.6667, abs=1e-4)
    assert lora["rating_ci95_low"] == pytest.approx(4.6667 - 1.4342, abs=1e-3)
    assert lora["rating_ci95_low"] < lora["rating_mean"] < lora["rating_ci95_high"]
    # 3 of 3: Wilson (0.4385, 1.0)
    assert lora["same_character_share"] == 1.0
    assert lora["same_character_ci95_low"] == pytest.approx(0.4385, abs=1e-4)
    assert lora["same_character_ci95_high"] == 1.0

    # ref_guided: one rating -> no spread, so null bounds; Wilson still defined for 1/1 (0.2065, 1.0)
    assert ref["n"] == 1 and ref["rating_mean"] == 3.0
    assert ref["rating_ci95_low"] is None and ref["rating_ci95_high"] is None
    assert ref["same_character_ci95_low"] == pytest.approx(0.2065, abs=1e-4)

    # items rated by >= 2 raters: (s1, baseline) by 3 -> pairs |2-3|, |2-4|, |3-4| = 1, 2, 1 and yes/no
    # agreement 1 of 3; (s1, lora) by 2 -> |5-5| = 0, agreeing. Pooled over 4 pairs: 1.0 and 0.5.
    assert summary["agreement"] == {
        "items": 2,
        "pairs": 4,
        "rating_mean_abs_diff": 1.0,
        "same_character_agreement": 0.5,
    }


def test_summary_keeps_unrated_modes_and_writes_json(tmp_path):
    db = make_db(tmp_path / "r.sqlite", [("r1", "s1", "lora", 4, 1)])
    out = tmp_path / "metrics" / "study.json"
    summary = write_study_metrics(db, out)
    assert json.loads(out.read_text()) == summary
    assert list(summary["modes"]) == list(MODES)  # stable keys for `dvc metrics diff`
    assert summary["modes"]["baseline"] == {
        "n": 0,
        "raters": 0,
        "rating_mean": None,
        "rating_ci95_low": None,
        "rating_ci95_high": None,
        "same_character_yes": 0,
        "same_character_share": None,
        "same_character_ci95_low": None,
        "same_character_ci95_high": None,
    }
    assert summary["agreement"]["pairs"] == 0 and summary["agreement"]["rating_mean_abs_diff"] is None
    with pytest.raises(StudyError, match="not found"):
        summarise_study(tmp_path / "missing.sqlite")


def test_interval_helpers():
    assert mean_ci95([]) == (None, None, None)
    assert mean_ci95([4, 4, 4]) == (4.0, 4.0, 4.0)  # no spread: a zero-width interval, not an error
    assert wilson_ci95(0, 0) == (None, None, None)
    share, low, high = wilson_ci95(0, 5)
    assert share == 0 and low == 0 and 0 < high < 1
    assert [label_for(i) for i in (0, 1, 25, 26, 27, 701, 702)] == ["A", "B", "Z", "AA", "AB", "ZZ", "AAA"]
    stats = pytest.importorskip("scipy.stats")  # only to check the table and the expansion; not a dependency
    for df in (1, 2, 5, 10, 29, 30, 31, 45, 100, 1000):
        assert t_quantile_975(df) == pytest.approx(stats.t.ppf(0.975, df), abs=1e-5)


# -- the server ------------------------------------------------------------------------------------------------


def test_bad_ratings_are_refused_with_400(server):
    url = server.url + "rate"
    token = server.items[0].token
    good = {"rater": "ann", "token": token, "rating": 3, "same_character": "yes"}
    bad = [
        ({**good, "rating": 0}, "rating"),
        ({**good, "rating": 6}, "rating"),
        ({**good, "rating": "3.5"}, "rating"),
        ({**good, "rating": True}, "rating"),
        ({**good, "rating": None}, "rating"),
        ({**good, "same_character": "maybe"}, "same_character"),
        ({**good, "same_character": True}, "same_character"),
        ({**good, "token": "not-a-token"}, "unknown storyboard"),
        ({**good, "rater": "   "}, "rater"),
        ({k: v for k, v in good.items() if k != "rater"}, "rater"),
        ({**good, "rater": "x" * 101}, "rater"),
    ]
    for body, message in bad:
        status, reply = post_json(url, body)
        assert status == 400 and message in reply["error"], (body, reply)
    assert post(url, b"{not json")[0] == 400
    assert post(url, b"[1, 2]")[0] == 400
    assert get(server.url + "count") == (200, b'{"ratings": 0, "raters": 0}')

    status, reply = post_json(url, good)
    assert status == 200 and reply == {"ok": True, "rated": 1, "total": 6, "ratings": 1, "raters": 1}
    # A form post works too, and re-rating the same storyboard replaces the row instead of adding one.
    status, reply = post(
        url, f"rater=ann&token={token}&rating=5&same_character=no".encode(), "application/x-www-form-urlencoded"
    )
    assert status == 200 and reply["ratings"] == 1
    with sqlite3.connect(server.db_path) as con:
        rows = con.execute("SELECT rater, story_id, mode, rating, same_character FROM ratings").fetchall()
    con.close()
    item = server.items[0]
    assert rows == [("ann", item.story_id, item.mode, 5, 0)]
    assert get(server.url + "nowhere")[0] == 404
    assert get(server.url + "img/" + "0" * 24)[0] == 404


def test_mode_names_never_reach_the_browser(server):
    status, page = get(server.url)
    assert status == 200
    status, listing = get(server.url + "items?rater=" + urllib.request.quote("Zoë"))
    assert status == 200
    data = json.loads(listing)
    assert [it["label"] for it in data["items"]] == [f"Storyboard {c}" for c in "ABCDEF"]
    served = [page, listing]
    by_token = {item.token: item for item in server.items}
    for it in data["items"]:
        assert it["image"] == f"/img/{it['token']}"
        status, body = get(server.url + it["image"].lstrip("/"))
        assert status == 200 and body.startswith(b"\x89PNG")
        served.append(body)
        # Not the contact sheet (its title names the mode) but a sheet of the frames: 3 frames of 64 px shown
        # at 256 px in one row, each cell starting with its frame's colour; and no text chunk from the frames.
        image = Image.open(io.BytesIO(body))
        assert image.width == 3 * 256 + 4 * 10 and image.height > 256 and not getattr(image, "text", {})
        mode = by_token[it["token"]].mode
        assert [image.getpixel((10 + k * 266 + 128, 10 + 128)) for k in range(3)] == [
            frame_colour(mode, f) for f in (1, 2, 3)
        ]
    for mode in MODES:
        for body in served:
            assert mode.encode() not in body.lower()


def test_order_is_stable_per_rater_and_differs_between_raters(tmp_path):
    stories = [f"s{i}" for i in range(4)]  # 12 storyboards: 12! orders, so a coincidence is out of the question
    outputs = make_outputs(tmp_path / "outputs", stories)

    def order(server: StudyServer, rater: str) -> list[tuple[str, str]]:
        by_token = {item.token: (item.story_id, item.mode) for item in server.items}
        status, body = get(server.url + "items?rater=" + rater)
        assert status == 200
        return [by_token[it["token"]] for it in json.loads(body)["items"]]

    with StudyServer(outputs, tmp_path / "a.sqlite", story_ids=stories) as first:
        ann, bob, cat = order(first, "ann"), order(first, "bob"), order(first, "cat")
        assert order(first, "ann") == ann  # a reload
    # A restart draws new tokens, yet the order a rater sees is the same.
    with StudyServer(outputs, tmp_path / "b.sqlite", story_ids=stories) as second:
        assert order(second, "ann") == ann
        assert first.items[0].token != second.items[0].token
    assert len({tuple(ann), tuple(bob), tuple(cat)}) == 3
    assert sorted(ann) == sorted(bob)  # the same storyboards, only reordered


def test_server_refuses_missing_sheets_and_public_hosts(outputs, tmp_path):
    with pytest.raises(StudyError, match="without frames"):
        StudyServer(outputs, tmp_path / "x.sqlite", story_ids=["s1", "nope"])
    (outputs / "lora" / "s1" / "frame_02.png").unlink()  # listed in metadata.json but gone
    with pytest.raises(StudyError, match="lora/s1"):
        StudyServer(outputs, tmp_path / "x.sqlite", story_ids=["s1"])
    with pytest.raises(StudyError, match="loopback"):
        StudyServer(outputs, tmp_path / "x.sqlite", story_ids=["s1"], host="0.0.0.0")


def test_foreign_host_header_is_refused(server):
    request = urllib.request.Request(server.url + "count", headers={"Host": "evil.example:80"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=5)
    assert err.value.code == 403


# -- a real browser ------------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_a_rater_completes_the_study_in_chromium(outputs, tmp_path, monkeypatch):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    db = tmp_path / "study.sqlite"
    answers: dict[str, tuple[int, str]] = {}  # label -> what we clicked
    with StudyServer(outputs, db, story_ids=["s1", "s2"]) as server:
        with chromium(tmp_path, window=(1100, 1000)) as driver:
            wait = WebDriverWait(driver, 10)
            driver.get(server.url)
            driver.find_element(By.ID, "rater").send_keys("Alice")
            driver.find_element(By.ID, "start-button").click()
            wait.until(ec.visibility_of_element_located((By.ID, "item")))
            assert driver.find_element(By.ID, "progress").text == "0 of 6 rated"
            # Submitting with nothing chosen is stopped on the page, not stored.
            driver.find_element(By.ID, "submit").click()
            assert "Please choose" in driver.find_element(By.ID, "error").text
            for i in range(6):
                label = driver.find_element(By.ID, "label").text
                wait.until(lambda d: d.execute_script("return document.getElementById('sheet').naturalWidth") > 0)
                rating, same = 1 + i % 5, ("yes" if i % 2 == 0 else "no")
                driver.find_element(By.ID, f"rating-{rating}").click()
                driver.find_element(By.ID, f"same-{same}").click()
                if i == 0:
                    shot = tmp_path / "study_rating.png"
                    driver.save_screenshot(str(shot))
                    keep_artifact(shot)
                driver.find_element(By.ID, "submit").click()
                wait.until(ec.text_to_be_present_in_element((By.ID, "progress"), f"{i + 1} of 6 rated"))
                wait.until(ec.text_to_be_present_in_element((By.ID, "count"), f"{i + 1} rating"))
                answers[label] = (rating, same)
            wait.until(ec.visibility_of_element_located((By.ID, "done")))
            assert "Thank you" in driver.find_element(By.ID, "done").text
            assert not driver.find_element(By.ID, "item").is_displayed()
            assert driver.find_element(By.ID, "count").text == "So far: 6 ratings from 1 rater."
            for mode in MODES:
                assert mode not in driver.page_source
            shot = tmp_path / "study_done.png"
            driver.save_screenshot(str(shot))
            keep_artifact(shot)
        # Map what the page showed back to (story, mode) through the rater's order, as the server sees it.
        expected = {
            (item.story_id, item.mode): answers[f"Storyboard {label_for(i)}"]
            for i, item in enumerate(server.order_for("Alice"))
        }
    assert len(answers) == 6
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT rater, story_id, mode, rating, same_character FROM ratings").fetchall()
    con.close()
    assert len(rows) == 6 and {r[0] for r in rows} == {"Alice"}
    assert {(r[1], r[2]): (r[3], "yes" if r[4] else "no") for r in rows} == expected
    assert {(r[1], r[2]) for r in rows} == {(s, m) for s in ("s1", "s2") for m in MODES}
    summary = summarise_study(db)
    assert summary["raters"] == 1 and summary["ratings"] == 6
    assert all(summary["modes"][m]["n"] == 2 for m in MODES)
    assert summary["agreement"]["pairs"] == 0


def test_cli_hooks_summarise(tmp_path, capsys):
    import argparse

    from storyboard.evaluate.study import add_summarise_arguments, summarise_study_cmd

    parser = argparse.ArgumentParser()
    add_summarise_arguments(parser)
    out = tmp_path / "study.json"
    summarise_study_cmd(parser.parse_args(["--db", str(make_db(tmp_path / "r.sqlite", ROWS)), "--out", str(out)]))
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text()) and printed["ratings"] == 8
