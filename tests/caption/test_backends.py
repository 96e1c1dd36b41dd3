"""Caption backends: the OpenAI backend through the real `openai` client against a local server; sidecar; template."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from openai_server import (
    DATA_URL_PREFIX,
    Completion,
    OpenAIServer,
    server_error,
    unknown_model,
)
from PIL import Image

from storyboard.caption.backends import (
    CaptionError,
    OpenAIBackend,
    SidecarBackend,
    TemplateBackend,
    is_refusal,
    make_backend,
    with_trigger,
)
from storyboard.settings import Caption, Settings

MakeCaption = Callable[..., Caption]

TRIGGER = "aldar_kose_man"
GOOD = "A man in a patched striped robe and a fur-trimmed hat bows in a dusty courtyard at noon."


@pytest.fixture
def picture() -> Image.Image:
    return Image.new("RGB", (300, 200), (200, 40, 40))


def backend(make_caption: MakeCaption, server: OpenAIServer, **client: object) -> OpenAIBackend:
    return OpenAIBackend(make_caption(server, openai=client))


# --- the request and a normal reply ---


def test_caption_request_carries_model_prompt_and_image(
    openai_key: str, openai_server: OpenAIServer, make_caption: MakeCaption, picture: Image.Image
) -> None:
    settings = make_caption(openai_server)
    openai_server.push(Completion(f"  {GOOD}\n", prompt_tokens=812, completion_tokens=47))

    result = OpenAIBackend(settings).caption(picture, Path("frame.png"))

    assert result.text == GOOD and not result.refused
    assert (result.tokens_in, result.tokens_out, result.requests) == (812, 47, 1)
    [request] = openai_server.requests
    assert request.path == "/v1/chat/completions" and request.method == "POST"
    assert request.headers["authorization"] == "Bearer test-key"
    assert request.model == settings.openai.model
    assert request.body["temperature"] == settings.openai.temperature
    assert request.body["max_tokens"] == settings.openai.max_tokens
    assert request.texts == [settings.prompt]
    [url] = request.image_urls
    assert url.startswith(DATA_URL_PREFIX)
    [sent] = request.images()
    assert sent.size == (300, 200) and sent.getpixel((10, 10)) == (200, 40, 40)


@pytest.mark.parametrize(
    "reply",
    [f'"{GOOD}"', f"\u201c{GOOD}\u201d\n", f"'{GOOD}'"],
    ids=["double", "typographic", "single"],
)
def test_quoted_reply_is_cleaned(
    openai_key: str, openai_server: OpenAIServer, make_caption: MakeCaption, picture: Image.Image, reply: str
) -> None:
    openai_server.push(Completion(reply))

    assert backend(make_caption, openai_server).caption(picture, Path("frame.png")).text == GOOD


def test_quoted_refusal_is_still_a_refusal(
    openai_key: str, openai_server: OpenAIServer, make_caption: MakeCaption, picture: Image.Image
) -> None:
    openai_server.push(Completion("\"I'm sorry, I can't help with that.\""), Completion(GOOD))

    result = backend(make_caption, openai_server).caption(picture, Path("frame.png"))

    assert result.text == GOOD and result.requests == 2


# --- what chat models put around a caption (local servers' models more than most) ---


@pytest.mark.parametrize(
    "reply",
    [
        f"Sure! Here is the caption: {GOOD}",
        f"Here's a description of the image:\n\n{GOOD}\n\nLet me know if you'd like it shorter!",
        f'**Caption:** "{GOOD}"',
        f"Certainly. {GOOD} I hope this helps!",
        f"<think>A man, a robe, a courtyard. Keep it to one sentence.</think>\n{GOOD}",
    ],
    ids=["sure-here-is", "paragraphs", "markdown-label", "courtesy-sentences", "think-block"],
)
def test_prose_around_the_caption_is_taken_off(
    openai_key: str, openai_server: OpenAIServer, make_caption: MakeCaption, picture: Image.Image, reply: str
) -> None:
    openai_server.push(Completion(reply))

    result = backend(make_caption, openai_server).caption(picture, Path("frame.png"))

    assert result.text == GOOD and result.requests == 1


@pytest.mark.parametrize(
    "reply",
    [
        "Here is Aldar Kose, bowing in a dusty courtyard at noon.",
        "A man asks if you would like tea. He smiles.",
        "Okay is written on his hat.",
    ],
    ids=["here-is-in-the-scene", "closing-words-in-the-scene", "courtesy-word-in-the-scene"],
)
def test_captions_that_only_look_like_prose_keep_their_words(
    openai_key: str, openai_server: OpenAIServer, make_caption: MakeCaption, picture: Image.Image, reply: str
) -> None:
    openai_server.push(Completion(reply))

    assert backend(make_caption, openai_server).caption(picture, Path("frame.png")).text == reply


# --- refusals: asked once more with the refusal prompt, then given up ---


@pytest.mark.parametrize(
    "first",
    [
        Completion(None, refusal="I'm sorry, but I can't assist with identifying people in images."),
        Completion("I'm sorry, I can't help with that."),
        Completion("I\u2019m sorry, I can\u2019t help with that."),
        Completion("I cannot describe this image."),
        Completion("Unfortunately, I am not able to help with this request."),
        Completion(""),
        Completion("I apologize, but I don't describe people in images."),
        Completion("As an AI, I do not identify or describe real people."),
        Completion("Sure! Unfortunately, I can\u2019t help with this one."),
        Completion("I won't be able to caption this image."),
        Completion("I'm not able to view images in this conversation."),
        Completion("I don't see an image attached to your message."),  # a text-only model behind the endpoint
        Completion("**Caption:** "),
    ],
    ids=[
        "refusal-field",
        "sorry-text",
        "curly-apostrophe",
        "cannot",
        "unfortunately",
        "empty",
        "apologize",
        "as-an-ai",
        "after-a-courtesy-word",
        "won't",
        "not-able",
        "no-image-seen",
        "only-a-label",
    ],
)
def test_refusal_then_success_uses_the_refusal_prompt(
    openai_key: str,
    openai_server: OpenAIServer,
    make_caption: MakeCaption,
    picture: Image.Image,
    first: Completion,
) -> None:
    settings = make_caption(openai_server)
    openai_server.push(first, Completion(GOOD, prompt_tokens=900, completion_tokens=50))

    result = OpenAIBackend(settings).caption(picture, Path("frame.png"))

    assert result.text == GOOD and not result.refused
    assert result.requests == 2
    assert (result.tokens_in, result.tokens_out) == (1000 + 900, 100 + 50)  # the refusal is paid for too
    first_req, second_req = openai_server.requests
    assert first_req.texts == [settings.prompt]
    assert second_req.texts == [settings.refusal_prompt]
    assert settings.refusal_prompt != settings.prompt
    assert first_req.image_urls == second_req.image_urls  # the same picture both times


def test_refused_twice_gives_up_with_both_reasons(
    openai_key: str, openai_server: OpenAIServer, make_caption: MakeCaption, picture: Image.Image
) -> None:
    openai_server.push(
        Completion(None, refusal="I can't help with identifying real people."),
        Completion("I'm sorry, I can't help with that."),
    )

    result = backend(make_caption, openai_server).caption(picture, Path("frame.png"))

    assert result.refused and result.text is None
    assert result.requests == 2 and len(openai_server.requests) == 2
    assert "identifying real people" in result.reason and "I'm sorry, I can't help with that." in result.reason
    assert (result.tokens_in, result.tokens_out) == (2000, 200)


def test_empty_twice_gives_up_saying_why(
    openai_key: str, openai_server: OpenAIServer, make_caption: MakeCaption, picture: Image.Image
) -> None:
    # a reasoning model on a local server: its thinking fills max_tokens, the content is empty
    openai_server.push(Completion(None), Completion("<think>The image shows", finish_reason="length"))

    result = backend(make_caption, openai_server).caption(picture, Path("frame.png"))

    assert result.refused and result.text is None and result.requests == 2
    assert result.reason == (
        "empty reply | empty reply, cut at caption.openai.max_tokens (raise it for a reasoning model)"
    )


def test_apology_inside_a_caption_is_not_a_refusal(
    openai_key: str, openai_server: OpenAIServer, make_caption: MakeCaption, picture: Image.Image
) -> None:
    text = "A trickster in a striped robe says I'm sorry to a merchant, grinning, in a bazaar."
    openai_server.push(Completion(text))

    result = backend(make_caption, openai_server).caption(picture, Path("frame.png"))

    assert result.text == text and result.requests == 1 and len(openai_server.requests) == 1


@pytest.mark.parametrize(
    ("text", "field", "refused"),
    [
        ("Sorry, I can't do that.", None, True),
        ("I am unable to describe this.", None, True),
        ("i'm sorry", None, True),
        (None, None, True),
        ("   ", None, True),
        ("A man who is sorry for nothing laughs.", None, False),
        ("A man laughs.", "policy", True),
        ("I apologise, I can't.", None, True),
        ("As an AI model I cannot describe people.", None, True),
        ("As a man in a robe walks by, a dog barks.", None, False),
        ("Sorry-looking merchant frowns at a trickster.", None, False),
    ],
)
def test_is_refusal(text: str | None, field: str | None, refused: bool) -> None:
    assert is_refusal(text, field) is refused


# --- the endpoint's failures (mapped in storyboard/openai_client.py, tested in tests/test_openai_client.py) ---


def test_persistent_errors_are_caption_errors_that_keep_the_cache(
    openai_key: str, openai_server: OpenAIServer, make_caption: MakeCaption, picture: Image.Image
) -> None:
    openai_server.script(default=lambda request: server_error())

    with pytest.raises(CaptionError, match=r"answered 500 after 1 retries.*captions received so far are cached"):
        backend(make_caption, openai_server, max_retries=1).caption(picture, Path("frame.png"))


def test_unknown_model_names_the_caption_setting(
    openai_key: str, openai_server: OpenAIServer, make_caption: MakeCaption, picture: Image.Image
) -> None:
    openai_server.push(unknown_model("gpt-4o-visionary"))

    with pytest.raises(CaptionError, match=r"model 'gpt-4o-visionary' not found.*caption\.openai\.model"):
        backend(make_caption, openai_server, model="gpt-4o-visionary").caption(picture, Path("frame.png"))


def test_missing_key_points_to_the_offline_backends(monkeypatch: pytest.MonkeyPatch, make_caption: MakeCaption) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)

    with pytest.raises(CaptionError, match=r"\$OPENAI_API_KEY is not set") as err:
        OpenAIBackend(make_caption())

    assert "caption.backend=sidecar" in str(err.value) and "caption.backend=template" in str(err.value)


# --- offline backends ---


def test_sidecar_reads_the_txt_beside_the_image(tmp_path: Path, picture: Image.Image) -> None:
    source = tmp_path / "pose_01.png"
    source.with_suffix(".txt").write_text("\n  aldar_kose_man waves from a yurt door  \n", encoding="utf-8")

    result = SidecarBackend().caption(picture, source)

    assert result.text == "aldar_kose_man waves from a yurt door"
    assert (result.requests, result.tokens_in, result.tokens_out) == (0, 0, 0)


@pytest.mark.parametrize(
    "content",
    [
        b'"aldar_kose_man leaning toward a merchant, market stalls behind"\n',
        b'\xef\xbb\xbf"aldar_kose_man leaning toward a merchant, market stalls behind"\r\n',  # BOM + CRLF
        b"  'aldar_kose_man leaning toward a merchant,\n market stalls behind'  ",
        b"aldar_kose_man leaning toward a merchant, market stalls behind",
    ],
    ids=["double-quotes", "bom-crlf", "single-quotes-two-lines", "plain"],
)
def test_quoted_sidecar_files_train_on_the_text_not_the_quotes(
    tmp_path: Path, picture: Image.Image, content: bytes
) -> None:
    source = tmp_path / "pose_04.png"
    source.with_suffix(".txt").write_bytes(content)

    result = SidecarBackend().caption(picture, source)

    assert result.text == "aldar_kose_man leaning toward a merchant, market stalls behind"
    assert with_trigger(result.text, TRIGGER) == f"{TRIGGER} leaning toward a merchant, market stalls behind"


def test_quoted_sidecar_with_nothing_inside_is_empty(tmp_path: Path, picture: Image.Image) -> None:
    (tmp_path / "pose_05.txt").write_text(' " " \n', encoding="utf-8")

    with pytest.raises(CaptionError, match=r"pose_05\.txt: empty caption file"):
        SidecarBackend().caption(picture, tmp_path / "pose_05.png")


def test_sidecar_missing_file_names_it(tmp_path: Path, picture: Image.Image) -> None:
    with pytest.raises(CaptionError, match=r"pose_02\.png: no caption file pose_02\.txt \(or \.caption\) beside it"):
        SidecarBackend().caption(picture, tmp_path / "pose_02.png")


def test_sidecar_reads_kohyas_caption_extension(tmp_path: Path, picture: Image.Image) -> None:
    """kohya's sd-scripts reads `<image>.caption` by default; a dataset made for it trains here unchanged."""
    (tmp_path / "pose_04.caption").write_text("aldar_kose_man, 1boy, striped robe, smiling\n", encoding="utf-8")

    assert (
        SidecarBackend().caption(picture, tmp_path / "pose_04.png").text
        == "aldar_kose_man, 1boy, striped robe, smiling"
    )


def test_sidecar_empty_file_is_an_error(tmp_path: Path, picture: Image.Image) -> None:
    (tmp_path / "pose_03.txt").write_text("  \n", encoding="utf-8")

    with pytest.raises(CaptionError, match=r"pose_03\.txt: empty caption file"):
        SidecarBackend().caption(picture, tmp_path / "pose_03.png")


def test_template_fills_character_fields(params: Settings, picture: Image.Image) -> None:
    backend = TemplateBackend("{trigger}, {name}, {description}", params.character)

    result = backend.caption(picture, Path("any.png"))

    assert result.text == f"{TRIGGER}, Aldar Kose, {params.character.description}"
    assert backend.paid is False


def test_make_backend_picks_by_setting(
    openai_key: str, params: Settings, make_caption: MakeCaption, openai_server: OpenAIServer
) -> None:
    character = params.character
    assert isinstance(make_backend(make_caption(openai_server), character), OpenAIBackend)
    assert isinstance(make_backend(make_caption(backend="sidecar"), character), SidecarBackend)
    assert isinstance(make_backend(make_caption(backend="template"), character), TemplateBackend)
    assert openai_server.requests == []  # building a backend sends nothing


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a man waves", f"{TRIGGER}, a man waves"),
        (f"{TRIGGER}, a man waves", f"{TRIGGER}, a man waves"),
        (f"{TRIGGER} waves", f"{TRIGGER} waves"),
        ("  a man\n waves\tat   dawn ", f"{TRIGGER}, a man waves at dawn"),
        (f"{TRIGGER}ly walks", f"{TRIGGER}, {TRIGGER}ly walks"),  # a longer word is not the trigger
        (f"a man, {TRIGGER}", f"{TRIGGER}, a man, {TRIGGER}"),
        # quoted captions, as exported datasets and chat models write them: quotes go, the trigger stays single
        (f'"{TRIGGER} leaning toward a merchant"', f"{TRIGGER} leaning toward a merchant"),
        (f'"{TRIGGER}, leaning toward a merchant', f"{TRIGGER}, leaning toward a merchant"),
        (f"  \u201c{TRIGGER.title()}, smiling\u201d ", f"{TRIGGER}, smiling"),
        (f"*{TRIGGER}* waves", f"{TRIGGER} waves"),
        (f"- {TRIGGER}: waves", f"{TRIGGER}: waves"),
        ("'a man in a fur hat'", f"{TRIGGER}, a man in a fur hat"),
        ("the merchants'", f"{TRIGGER}, the merchants'"),  # an apostrophe, not a quote pair
        ('""', TRIGGER),
    ],
)
def test_with_trigger(text: str, expected: str) -> None:
    assert with_trigger(text, TRIGGER) == expected
