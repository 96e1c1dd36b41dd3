"""The caption stage: user images -> dataset folder, manifest and metrics; paid captions cached and resumed."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from openai_server import (
    Completion,
    Delay,
    OpenAIServer,
    RecordedRequest,
    bad_key,
    caption_everything,
    rate_limited,
    server_error,
    unknown_model,
)
from PIL import Image

from storyboard.caption.backends import CaptionError, make_backend
from storyboard.caption.dataset import CaptionStats, caption_images
from storyboard.dataset import read_manifest
from storyboard.settings import Caption, Settings

MakeCaption = Callable[..., Caption]
WriteImage = Callable[..., Path]

TRIGGER = "aldar_kose_man"
COLORS = [(220, 30, 30), (30, 160, 40), (40, 60, 200), (230, 200, 40), (120, 40, 160), (20, 180, 190)]


def color_of(request: RecordedRequest) -> tuple[int, int, int]:
    """Which test picture a request carried: each is one solid colour."""
    [image] = request.images()
    return image.getpixel((5, 5))


def run(settings: Caption, params: Settings, out: Path) -> CaptionStats:
    backend = make_backend(settings, params.character)
    return caption_images(settings.input_dir, out, backend, settings, params.character)


def manifest_by_source(out: Path) -> dict[str, dict]:
    lines = (out / "manifest.jsonl").read_text(encoding="utf-8").splitlines()
    return {r["source"]: r for r in map(json.loads, lines)}


def no_staging_left(out: Path) -> bool:
    return not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


# --- a normal run ---


def test_openai_run_writes_dataset_and_metrics(
    openai_key: str,
    openai_server: OpenAIServer,
    make_caption: MakeCaption,
    write_image: WriteImage,
    params: Settings,
    tmp_path: Path,
) -> None:
    for i, color in enumerate(COLORS[:3]):
        write_image(f"frame_{i}.png", color)
    settings = make_caption(openai_server)
    out = tmp_path / "dataset"

    stats = run(settings, params, out)

    assert stats == CaptionStats(
        images_seen=3,
        captioned=3,
        requests=3,
        tokens_in=3000,
        tokens_out=300,
        cost_usd=pytest.approx(3 * (1.0 * 0.0025 + 0.1 * 0.01)),
        backend="openai",
    )
    assert len(openai_server.requests) == 3
    assert {color_of(r) for r in openai_server.requests} == set(COLORS[:3])
    for request in openai_server.requests:
        assert request.model == settings.openai.model
        assert request.texts == [settings.prompt]
        assert request.image_urls[0].startswith("data:image/png;base64,")

    records = manifest_by_source(out)
    assert sorted(records) == ["frame_0.png", "frame_1.png", "frame_2.png"]
    images = sorted((out / "images").glob("*.png"))
    captions = sorted((out / "images").glob("*.txt"))
    assert len(images) == len(captions) == 3
    for source, record in records.items():
        assert record["status"] == "ok" and record["reason"] == ""
        assert (record["width"], record["height"]) == (320, 320)
        image = out / "images" / record["image"]
        assert image.exists() and record["image"] == f"{record['sha256'][:16]}.png"
        text = image.with_suffix(".txt").read_text(encoding="utf-8")
        assert text == record["caption"] + "\n"
        assert text.startswith(f"{TRIGGER}, A cheerful man in a striped robe")
        with Image.open(image) as im:
            assert im.getpixel((0, 0)) == Image.open(settings.input_dir / source).convert("RGB").getpixel((0, 0))
    assert len({r["caption"] for r in records.values()}) == 3  # each image its own caption
    assert [r.source for r in read_manifest(out)] == ["frame_0.png", "frame_1.png", "frame_2.png"]
    assert no_staging_left(out)


def test_images_are_normalised_before_sending(
    openai_key: str,
    openai_server: OpenAIServer,
    make_caption: MakeCaption,
    write_image: WriteImage,
    params: Settings,
    tmp_path: Path,
) -> None:
    write_image("wide.png", (30, 160, 40), size=(900, 450))
    write_image("transparent.png", (0, 0, 0, 0), size=(300, 300), mode="RGBA")
    write_image("photo.jpg", (40, 60, 200), size=(400, 300))
    settings = make_caption(openai_server, max_side=600, background=(255, 255, 255))
    out = tmp_path / "dataset"

    stats = run(settings, params, out)

    assert stats.captioned == 3 and stats.requests == 3
    sent = {r.images()[0].size: r.images()[0] for r in openai_server.requests}
    assert set(sent) == {(600, 300), (300, 300), (400, 300)}  # the wide one downscaled to max_side
    assert sent[(300, 300)].getpixel((150, 150)) == (255, 255, 255)  # transparency flattened on the background
    records = manifest_by_source(out)
    assert (records["wide.png"]["width"], records["wide.png"]["height"]) == (600, 300)
    with Image.open(out / "images" / records["wide.png"]["image"]) as im:
        assert im.size == (600, 300) and im.mode == "RGB"


# --- refusals ---


def test_refusal_then_success_is_captioned(
    openai_key: str,
    openai_server: OpenAIServer,
    make_caption: MakeCaption,
    write_image: WriteImage,
    params: Settings,
    tmp_path: Path,
) -> None:
    write_image("only.png", COLORS[0])
    settings = make_caption(openai_server)
    openai_server.push(Completion(None, refusal="I can't identify people."), Completion("A man rides a horse."))

    stats = run(settings, params, tmp_path / "dataset")

    assert (stats.captioned, stats.refused, stats.requests) == (1, 0, 2)
    assert (stats.tokens_in, stats.tokens_out) == (2000, 200)
    assert [r.texts for r in openai_server.requests] == [[settings.prompt], [settings.refusal_prompt]]
    [record] = manifest_by_source(tmp_path / "dataset").values()
    assert record["caption"] == f"{TRIGGER}, A man rides a horse."


@pytest.mark.parametrize(
    "refusal",
    [
        Completion(None, refusal="I can't help with identifying people."),
        Completion("I'm sorry, I can't help with that."),
    ],
    ids=["refusal-field", "refusal-text"],
)
def test_refused_twice_is_excluded_and_others_kept(
    openai_key: str,
    openai_server: OpenAIServer,
    make_caption: MakeCaption,
    write_image: WriteImage,
    params: Settings,
    tmp_path: Path,
    refusal: Completion,
) -> None:
    for i, color in enumerate(COLORS[:4]):
        write_image(f"frame_{i}.png", color)
    refused_color = COLORS[2]

    def refuse_one(request: RecordedRequest) -> Completion:
        return refusal if color_of(request) == refused_color else caption_everything(request)

    openai_server.script(default=refuse_one)
    out = tmp_path / "dataset"

    stats = run(make_caption(openai_server), params, out)

    assert (stats.images_seen, stats.captioned, stats.refused, stats.excluded) == (4, 3, 1, 1)
    assert stats.requests == 5 == len(openai_server.requests)  # 2 for the refused picture, 1 for each other
    assert stats.tokens_in == 5000
    assert [color_of(r) for r in openai_server.requests].count(refused_color) == 2
    records = manifest_by_source(out)
    refused = records["frame_2.png"]
    assert refused["status"] == "excluded" and refused["image"] is None and refused["caption"] is None
    assert refused["reason"].startswith("refused by the caption model: ")
    assert (refusal.refusal or refusal.content) in refused["reason"]
    assert [s for s, r in records.items() if r["status"] == "ok"] == ["frame_0.png", "frame_1.png", "frame_3.png"]
    assert len(list((out / "images").glob("*.png"))) == 3


def test_all_refused_writes_nothing(
    openai_key: str,
    openai_server: OpenAIServer,
    make_caption: MakeCaption,
    write_image: WriteImage,
    params: Settings,
    tmp_path: Path,
) -> None:
    write_image("a.png", COLORS[0])
    openai_server.script(default=lambda request: Completion("I'm sorry, I can't help with that."))
    out = tmp_path / "dataset"

    with pytest.raises(CaptionError, match="none of the 1 images"):
        run(make_caption(openai_server), params, out)

    assert len(openai_server.requests) == 2
    assert not out.exists() and no_staging_left(out)


# --- transient failures inside a run ---


@pytest.mark.parametrize(
    "failure",
    ["rate-limit", "server-error", "timeout"],
)
def test_transient_failure_is_retried_and_run_completes(
    openai_key: str,
    openai_server: OpenAIServer,
    make_caption: MakeCaption,
    write_image: WriteImage,
    params: Settings,
    tmp_path: Path,
    failure: str,
) -> None:
    for i, color in enumerate(COLORS[:2]):
        write_image(f"frame_{i}.png", color)
    first = {"rate-limit": rate_limited(0.05), "server-error": server_error(), "timeout": Delay(3.0)}[failure]
    openai_server.push(first)
    settings = make_caption(openai_server, concurrency=1, openai={"timeout_s": 0.8})

    stats = run(settings, params, tmp_path / "dataset")

    assert stats.captioned == 2
    assert len(openai_server.requests) == 3  # one retry by the client, then one request for the other image
    assert stats.requests == 2  # logical caption requests; the client's retry is not a second caption
    assert color_of(openai_server.requests[0]) == color_of(openai_server.requests[1])
    assert openai_server.requests[1].headers["x-stainless-retry-count"] == "1"


# --- fatal failures ---


def test_bad_key_stops_the_run_fast_and_writes_nothing(
    openai_key: str,
    openai_server: OpenAIServer,
    make_caption: MakeCaption,
    write_image: WriteImage,
    params: Settings,
    tmp_path: Path,
) -> None:
    for i, color in enumerate(COLORS):
        write_image(f"frame_{i}.png", color)
    openai_server.script(default=lambda request: bad_key())
    out = tmp_path / "dataset"

    with pytest.raises(CaptionError, match=r"rejected the key in \$OPENAI_API_KEY"):
        run(make_caption(openai_server, concurrency=2, openai={"max_retries": 4}), params, out)

    # 401 is not retried, and queued images are not sent once one has failed: at most one per worker.
    assert 1 <= len(openai_server.requests) <= 2
    assert not out.exists() and no_staging_left(out)


def test_unknown_model_stops_the_run_naming_the_model(
    openai_key: str,
    openai_server: OpenAIServer,
    make_caption: MakeCaption,
    write_image: WriteImage,
    params: Settings,
    tmp_path: Path,
) -> None:
    write_image("a.png", COLORS[0])
    openai_server.push(unknown_model("gpt-4o-typo"))

    with pytest.raises(CaptionError, match="'gpt-4o-typo' not found"):
        run(make_caption(openai_server, openai={"model": "gpt-4o-typo"}), params, tmp_path / "dataset")

    assert len(openai_server.requests) == 1


def test_missing_key_stops_before_any_request(
    monkeypatch: pytest.MonkeyPatch, make_caption: MakeCaption, params: Settings
) -> None:
    """A hosted endpoint needs the key (a local server does not: tests/test_openai_client.py); the stage stops
    before sending anything, here to a name that would not even resolve."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)

    with pytest.raises(CaptionError, match="sidecar.*template"):
        make_backend(make_caption(openai={"base_url": "https://llm.example.invalid/v1"}), params.character)


# --- pay once: cache, new images, duplicates, resume after a kill ---


def test_second_run_sends_no_requests_and_new_images_cost_one_each(
    openai_key: str,
    openai_server: OpenAIServer,
    make_caption: MakeCaption,
    write_image: WriteImage,
    params: Settings,
    tmp_path: Path,
) -> None:
    for i, color in enumerate(COLORS[:3]):
        write_image(f"frame_{i}.png", color)
    settings = make_caption(openai_server)
    out = tmp_path / "dataset"
    first = run(settings, params, out)
    first_manifest = manifest_by_source(out)
    assert first.requests == 3 and first.cached == 0

    openai_server.clear_requests()
    second = run(settings, params, out)

    assert openai_server.requests == []
    assert (second.captioned, second.cached, second.requests, second.tokens_in, second.cost_usd) == (3, 3, 0, 0, 0.0)
    assert manifest_by_source(out) == first_manifest  # same captions, same files

    write_image("frame_3.png", COLORS[3])
    write_image("frame_4.png", COLORS[4])
    third = run(settings, params, out)

    assert len(openai_server.requests) == 2
    assert {color_of(r) for r in openai_server.requests} == {COLORS[3], COLORS[4]}
    assert (third.captioned, third.cached, third.requests, third.tokens_in) == (5, 3, 2, 2000)
    assert len(list((out / "images").glob("*.txt"))) == 5


def test_renamed_image_is_not_paid_again_but_another_model_is(
    openai_key: str,
    openai_server: OpenAIServer,
    make_caption: MakeCaption,
    write_image: WriteImage,
    params: Settings,
    tmp_path: Path,
) -> None:
    path = write_image("frame.png", COLORS[0])
    settings = make_caption(openai_server)
    run(settings, params, tmp_path / "dataset")
    path.rename(path.with_name("renamed.png"))

    stats = run(settings, params, tmp_path / "dataset")

    assert (stats.cached, stats.requests) == (1, 0) and len(openai_server.requests) == 1
    assert list(manifest_by_source(tmp_path / "dataset")) == ["renamed.png"]

    other_model = make_caption(openai_server, openai={"model": "gpt-4.1-mini"})
    stats = run(other_model, params, tmp_path / "dataset")

    assert (stats.cached, stats.requests) == (0, 1)
    assert [r.model for r in openai_server.requests] == [settings.openai.model, "gpt-4.1-mini"]


def test_duplicate_image_is_captioned_once(
    openai_key: str,
    openai_server: OpenAIServer,
    make_caption: MakeCaption,
    write_image: WriteImage,
    params: Settings,
    tmp_path: Path,
) -> None:
    original = write_image("a.png", COLORS[0])
    write_image("b.png", COLORS[1])
    (original.parent / "sub").mkdir()
    (original.parent / "sub" / "copy of a.png").write_bytes(original.read_bytes())
    out = tmp_path / "dataset"

    stats = run(make_caption(openai_server), params, out)

    assert (stats.images_seen, stats.captioned, stats.duplicates, stats.requests) == (3, 2, 1, 2)
    assert len(openai_server.requests) == 2
    records = manifest_by_source(out)
    dup = records["sub/copy of a.png"]
    assert dup["status"] == "duplicate" and "a.png" in dup["reason"] and dup["image"] is None
    assert dup["sha256"] == records["a.png"]["sha256"]
    assert len(list((out / "images").glob("*.png"))) == 2


@pytest.mark.parametrize("concurrency, answered", [(1, 3), (4, 2)], ids=["serial", "concurrent"])
def test_killed_run_resumes_without_paying_twice(
    openai_key: str,
    openai_server: OpenAIServer,
    make_caption: MakeCaption,
    write_image: WriteImage,
    params: Settings,
    tmp_path: Path,
    concurrency: int,
    answered: int,
) -> None:
    for i, color in enumerate(COLORS):
        write_image(f"frame_{i}.png", color)
    settings = make_caption(openai_server, concurrency=concurrency)
    out = tmp_path / "dataset"
    # A few captions arrive, then the endpoint turns fatal and the stage stops midway.
    openai_server.script(*(caption_everything_reply() for _ in range(answered)), default=lambda request: bad_key())

    with pytest.raises(CaptionError):
        run(settings, params, out)

    first = list(openai_server.requests)
    paid = {h for r in first[:answered] for h in r.image_hashes}
    assert len(paid) == answered and not out.exists()
    if concurrency == 1:
        assert len(first) == answered + 1  # the paid captions, then the fatal 401; the rest were never sent

    openai_server.clear_requests()
    openai_server.script(default=caption_everything)
    stats = run(settings, params, out)

    again = [h for r in openai_server.requests for h in r.image_hashes]
    assert paid.isdisjoint(again)  # nothing paid for is asked again
    assert len(again) == len(openai_server.requests) == len(COLORS) - answered
    assert (stats.captioned, stats.cached, stats.requests) == (len(COLORS), answered, len(COLORS) - answered)


def caption_everything_reply() -> Completion:
    return Completion("A man in a striped robe haggles at a spice stall under a bright awning.")


# --- offline backends and odd inputs ---


def test_sidecar_run_uses_the_users_captions(
    make_caption: MakeCaption, write_image: WriteImage, params: Settings, tmp_path: Path
) -> None:
    a = write_image("a.png", COLORS[0])
    b = write_image("b.jpg", COLORS[1])
    a.with_suffix(".txt").write_text("a man waves from a yurt door\n", encoding="utf-8")
    b.with_suffix(".txt").write_text(f"{TRIGGER}, a man rides at dusk", encoding="utf-8")
    out = tmp_path / "dataset"

    stats = run(make_caption(backend="sidecar"), params, out)

    assert (stats.captioned, stats.requests, stats.cost_usd, stats.backend) == (2, 0, 0.0, "sidecar")
    records = manifest_by_source(out)
    assert records["a.png"]["caption"] == f"{TRIGGER}, a man waves from a yurt door"
    assert records["b.jpg"]["caption"] == f"{TRIGGER}, a man rides at dusk"  # trigger not doubled
    assert not (tmp_path / "cache").exists()  # free captions are not cached


def test_sidecar_missing_caption_names_the_file(
    make_caption: MakeCaption, write_image: WriteImage, params: Settings, tmp_path: Path
) -> None:
    write_image("a.png", COLORS[0]).with_suffix(".txt").write_text("a man", encoding="utf-8")
    write_image("b.png", COLORS[1])

    with pytest.raises(CaptionError, match=r"b\.png: no caption file b\.txt"):
        run(make_caption(backend="sidecar"), params, tmp_path / "dataset")

    assert not (tmp_path / "dataset").exists()


def test_template_run(make_caption: MakeCaption, write_image: WriteImage, params: Settings, tmp_path: Path) -> None:
    write_image("a.png", COLORS[0])
    write_image("b.png", COLORS[1])
    settings = make_caption(backend="template", template="{trigger}, {name}, {description}")
    out = tmp_path / "dataset"

    stats = run(settings, params, out)

    assert (stats.captioned, stats.requests, stats.backend) == (2, 0, "template")
    expected = f"{TRIGGER}, {params.character.name}, {params.character.description}"
    assert {r["caption"] for r in manifest_by_source(out).values()} == {expected}


def test_empty_folder_is_an_error(make_caption: MakeCaption, raw_dir: Path, params: Settings, tmp_path: Path) -> None:
    (raw_dir / "notes.txt").write_text("not an image", encoding="utf-8")

    with pytest.raises(CaptionError, match="holds no images"):
        run(make_caption(backend="template"), params, tmp_path / "dataset")


def test_missing_folder_is_an_error(make_caption: MakeCaption, params: Settings, tmp_path: Path) -> None:
    settings = make_caption(backend="template", input_dir=tmp_path / "nowhere")

    with pytest.raises(CaptionError, match=r"nowhere does not exist"):
        run(settings, params, tmp_path / "dataset")


def test_bad_images_are_excluded_and_good_ones_kept(
    openai_key: str,
    openai_server: OpenAIServer,
    make_caption: MakeCaption,
    write_image: WriteImage,
    raw_dir: Path,
    params: Settings,
    tmp_path: Path,
) -> None:
    write_image("good.png", COLORS[0])
    write_image("tiny.png", COLORS[1], size=(100, 400))
    (raw_dir / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    (raw_dir / "empty.jpg").write_bytes(b"")
    (raw_dir / "text.webp").write_text("this is not a picture", encoding="utf-8")
    truncated = raw_dir / "truncated.png"
    Image.new("RGB", (300, 300), COLORS[2]).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:60])
    out = tmp_path / "dataset"

    stats = run(make_caption(openai_server), params, out)

    assert (stats.images_seen, stats.captioned, stats.excluded, stats.refused) == (6, 1, 5, 0)
    assert len(openai_server.requests) == 1 and color_of(openai_server.requests[0]) == COLORS[0]
    records = manifest_by_source(out)
    assert records["good.png"]["status"] == "ok"
    assert "100x400 px is below caption.min_side=256" in records["tiny.png"]["reason"]
    assert "empty file (0 bytes)" in records["empty.jpg"]["reason"]
    for name in ("corrupt.png", "text.webp", "truncated.png"):
        assert records[name]["status"] == "excluded", name
        assert name in records[name]["reason"] and "remove it" in records[name]["reason"], records[name]
    assert all(r["image"] is None for s, r in records.items() if s != "good.png")


def test_min_side_is_a_setting(
    make_caption: MakeCaption, write_image: WriteImage, params: Settings, tmp_path: Path
) -> None:
    write_image("small.png", COLORS[0], size=(128, 128))

    stats = run(make_caption(backend="template", min_side=64), params, tmp_path / "dataset")

    assert (stats.captioned, stats.excluded) == (1, 0)


# --- one image the endpoint rejects, refusals asked again on request, the report a person reads ---


def test_rejected_image_is_excluded_not_cached_and_others_go_on(
    openai_key: str,
    openai_server: OpenAIServer,
    make_caption: MakeCaption,
    write_image: WriteImage,
    params: Settings,
    tmp_path: Path,
) -> None:
    from openai_server import HTTPError

    for i, color in enumerate(COLORS[:3]):
        write_image(f"frame_{i}.png", color)

    def reject_one(request: RecordedRequest) -> Completion | HTTPError:
        if color_of(request) == COLORS[1]:
            return HTTPError(400, "Invalid image.", "invalid_request_error", "invalid_image")
        return caption_everything(request)

    openai_server.script(default=reject_one)
    out = tmp_path / "dataset"
    stats = run(make_caption(openai_server), params, out)

    assert (stats.captioned, stats.failed, stats.excluded) == (2, 1, 1)
    assert len(openai_server.requests) == 3  # a 400 is not retried
    rejected = manifest_by_source(out)["frame_1.png"]
    assert rejected["status"] == "excluded" and "rejected this image (400)" in rejected["reason"]
    report = (out / "REPORT.md").read_text()
    assert "2 of 3 images are in the dataset" in report and "| frame_1.png | excluded |" in report

    # not cached: the rerun asks for that one image again, and only for it
    openai_server.clear_requests()
    openai_server.script(default=caption_everything)
    stats = run(make_caption(openai_server), params, out)
    assert [color_of(r) for r in openai_server.requests] == [COLORS[1]]
    assert (stats.captioned, stats.cached, stats.failed) == (3, 2, 0)


def test_refusals_are_cached_unless_retry_refused(
    openai_key: str,
    openai_server: OpenAIServer,
    make_caption: MakeCaption,
    write_image: WriteImage,
    params: Settings,
    tmp_path: Path,
) -> None:
    write_image("ok.png", COLORS[0])
    write_image("refused.png", COLORS[1])

    def refuse_one(request: RecordedRequest) -> Completion:
        return (
            Completion("I'm sorry, I can't help with that.")
            if color_of(request) == COLORS[1]
            else caption_everything(request)
        )

    openai_server.script(default=refuse_one)
    out = tmp_path / "dataset"
    assert run(make_caption(openai_server), params, out).refused == 1
    assert len(openai_server.requests) == 3

    openai_server.clear_requests()
    again = run(make_caption(openai_server), params, out)
    assert (again.refused, again.cached, len(openai_server.requests)) == (1, 2, 0)  # paid for once

    openai_server.script(default=caption_everything)
    retried = run(make_caption(openai_server, retry_refused=True), params, out)
    assert [color_of(r) for r in openai_server.requests] == [COLORS[1]]
    assert (retried.captioned, retried.refused) == (2, 0)


def test_odd_inputs_all_end_in_a_correct_dataset(
    make_caption: MakeCaption, raw_dir: Path, params: Settings, tmp_path: Path
) -> None:
    """A corpus of every odd input the caption stage meets; the template backend, so only inputs matter."""
    import io

    from PIL import Image as PILImage

    def save(name: str, image: PILImage.Image, **kw) -> None:
        path = raw_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, **kw)

    save("plain (1).png", PILImage.new("RGB", (400, 300), (200, 10, 10)))
    save("{braces} & spaces.jpg", PILImage.new("RGB", (500, 500), (10, 200, 10)))
    save("ünïcødé 角色.webp", PILImage.new("RGB", (600, 400), (10, 10, 200)), format="WEBP")
    save("cmyk.jpg", PILImage.new("CMYK", (300, 300), (0, 255, 255, 0)))
    palette = PILImage.new("RGB", (300, 300), (250, 250, 0)).convert("P")
    save("palette.png", palette)
    rgba = PILImage.new("RGBA", (300, 300), (0, 0, 0, 0))
    save("transparent.png", rgba)
    save("sixteen.png", PILImage.new("I;16", (300, 300), 40000))
    frames = [PILImage.new("RGB", (300, 300), c) for c in ((1, 2, 3), (90, 90, 90))]
    frames[0].save(raw_dir / "animated.gif", save_all=True, append_images=frames[1:])
    save("huge.png", PILImage.new("RGB", (3000, 1500), (120, 30, 60)))
    exif = PILImage.new("RGB", (400, 300), (30, 30, 30)).getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    save("rotated.jpg", PILImage.new("RGB", (400, 300), (30, 30, 30)), exif=exif)
    save("tiny.png", PILImage.new("RGB", (64, 64), (1, 1, 1)))
    (raw_dir / "zero.png").write_bytes(b"")
    (raw_dir / "notes.png").write_text("not an image")
    buf = io.BytesIO()
    PILImage.new("RGB", (300, 300), (5, 5, 5)).save(buf, "PNG")
    (raw_dir / "truncated.png").write_bytes(buf.getvalue()[:100])
    (raw_dir / "z copy of plain.png").write_bytes((raw_dir / "plain (1).png").read_bytes())
    (raw_dir / "sub").mkdir()
    save("sub/nested.PNG", PILImage.new("RGB", (300, 300), (44, 44, 44)))

    out = tmp_path / "dataset"
    settings = make_caption(backend="template", background=(255, 0, 255))
    stats = run(settings, params, out)
    records = manifest_by_source(out)

    ok = {
        "plain (1).png",
        "{braces} & spaces.jpg",
        "ünïcødé 角色.webp",
        "cmyk.jpg",
        "palette.png",
        "transparent.png",
        "sixteen.png",
        "animated.gif",
        "huge.png",
        "rotated.jpg",
        "sub/nested.PNG",
    }
    assert {s for s, r in records.items() if r["status"] == "ok"} == ok
    assert records["z copy of plain.png"]["status"] == "duplicate"
    for bad in ("tiny.png", "zero.png", "notes.png", "truncated.png"):
        assert records[bad]["status"] == "excluded" and records[bad]["reason"], bad
    assert (stats.images_seen, stats.captioned, stats.excluded, stats.duplicates) == (16, 11, 4, 1)
    # output names are safe and stable, and map back to the user's names through the manifest
    for source in ok:
        r = records[source]
        assert r["image"] == f"{r['sha256'][:16]}.png"
        image = Image.open(out / "images" / r["image"])
        assert image.mode == "RGB" and max(image.size) <= settings.max_side
        assert (out / "images" / r["image"]).with_suffix(".txt").read_text().startswith(TRIGGER)
    assert Image.open(out / "images" / records["huge.png"]["image"]).size == (1024, 512)
    assert Image.open(out / "images" / records["rotated.jpg"]["image"]).size == (300, 400)
    assert Image.open(out / "images" / records["transparent.png"]["image"]).getpixel((5, 5)) == (255, 0, 255)
    assert Image.open(out / "images" / records["animated.gif"]["image"]).getpixel((5, 5)) == (1, 2, 3)
