"""Caption backends: OpenAI-compatible vision model, a sidecar .txt beside the image, or a template."""

from __future__ import annotations

import base64
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from PIL import Image

from storyboard.errors import StoryboardError
from storyboard.openai_client import ChatEndpoint, Purpose, RequestRejected, strip_thinking
from storyboard.settings import Caption, Character


class CaptionError(StoryboardError):
    """Captioning can't go on; the message says why and what to do."""


class ImageRejected(Exception):
    """The endpoint refused one request as invalid (HTTP 400/422): that image fails, the others go on."""


@dataclass(frozen=True)
class CaptionResult:
    text: str | None  # None when refused or failed
    refused: bool = False
    failed: bool = False  # the endpoint rejected this one image (4xx other than auth/model): not cached
    reason: str = ""
    tokens_in: int = 0
    tokens_out: int = 0
    requests: int = 0


class CaptionBackend(Protocol):
    name: str
    paid: bool  # whether each call costs money (and so is cached per image)

    def caption(self, image: Image.Image, source: Path) -> CaptionResult: ...


# Straight, typographic and guillemet quotes: exported datasets and chat models wrap captions in any of them.
QUOTES = "\"'`\u201c\u201d\u2018\u2019\u00ab\u00bb\u201e"


def clean_caption(text: str) -> str:
    """One line, without the quotes or whitespace around it: `  "a man waves"\n` -> `a man waves`.

    A trailing quote is taken off only together with a leading one, so "the merchants'" keeps its apostrophe.
    """
    text = " ".join(text.split())
    while text and text[0] in QUOTES:
        text = text[1:].strip()
        if text and text[-1] in QUOTES:
            text = text[:-1].strip()
    return text


def with_trigger(text: str, trigger: str) -> str:
    """The cleaned caption, starting with the trigger token exactly once: added by us, never left to the model.

    A caption that already opens with the trigger (in any case, after punctuation or quotes: `"aldar_kose_man,
    ...`, `*Aldar_Kose_Man* waves`) keeps it where it is, spelled as the trigger and without those marks.
    """
    text = clean_caption(text)
    quotes = re.escape(QUOTES)
    opening = re.match(rf"^[\W_]*?{re.escape(trigger)}(?!\w)[{quotes}*_]*", text, flags=re.IGNORECASE)
    if opening:
        return trigger + text[opening.end() :]
    return f"{trigger}, {text}" if text else trigger


class TemplateBackend:
    name = "template"
    paid = False

    def __init__(self, template: str, character: Character):
        self.text = template.format(trigger=character.trigger, name=character.name, description=character.description)

    def caption(self, image: Image.Image, source: Path) -> CaptionResult:
        return CaptionResult(self.text)


# Most datasets ship .txt captions; kohya's sd-scripts reads .caption by default (its --caption_extension).
SIDECAR_SUFFIXES = (".txt", ".caption")


class SidecarBackend:
    """Use the caption file the user already has: `<image stem>.txt` (or kohya's `.caption`) beside the image."""

    name = "sidecar"
    paid = False

    def caption(self, image: Image.Image, source: Path) -> CaptionResult:
        sidecar = next((p for s in SIDECAR_SUFFIXES if (p := source.with_suffix(s)).exists()), None)
        if sidecar is None:
            raise CaptionError(
                f"{source}: no caption file {source.stem}.txt (or .caption) beside it (caption.backend is sidecar); "
                "write one, or use caption.backend: template or openai"
            )
        # utf-8-sig: a byte-order mark (Windows editors, some exporters) is not part of the caption
        text = clean_caption(sidecar.read_text(encoding="utf-8-sig", errors="replace"))
        if not text:
            raise CaptionError(f"{sidecar}: empty caption file; write a caption into it or delete it")
        return CaptionResult(text)


# What vision models say when they decline (or, served without the image, that they see none); matched at the
# start of the reply only, so a caption that mentions an apology in the scene ("a man saying sorry") is not taken
# for a refusal.
REFUSAL = re.compile(
    r"^\s*(?:i'?m sorry|i am sorry|sorry[,.!]|my apologies|i apologi[sz]e|i can'?t|i cannot|i can not"
    r"|i'?m unable|i am unable|i'?m not able|i am not able|i won'?t|i will not|i must decline|i'?m afraid"
    r"|i do(?:n'?t| not) feel|i'?m not comfortable|i'?d rather not|i'?m not going to|as an ai\b"
    r"|unfortunately,? i\b|i do(?:n'?t| not) see an? image|there is no image|no image (?:was|is) )",
    re.IGNORECASE,
)
# What chat models put around a caption: an opening ("Sure! Here is the caption:", "Certainly.", "Caption:") and
# a closing sentence ("Let me know if you'd like changes!"). Openings are only taken off before a colon or line
# break, or as a lone courtesy word, so a caption that starts "Here is Aldar..." keeps its words.
_OPENING = re.compile(
    r"^\s*(?:(?:sure|certainly|of course|absolutely|okay|ok|alright|great)\s*[,.!:]\s*)?"
    r"(?:(?:here(?:'s| is| are)|below is)\b[^:\n]*(?::|\n)\s*)?"
    r"(?:#*\s*(?:image )?(?:caption|description)\s*:\s*)?",
    re.IGNORECASE,
)
_CLOSING = re.compile(
    r"(?:^|(?<=[.!?])\s+|\n\s*)(?:let me know|i hope (?:this|that)|hope this|feel free|if you(?:'d| would)? like"
    r"|would you like|is there anything)\b.*$",
    re.IGNORECASE | re.DOTALL,
)


def caption_from_reply(text: str) -> str:
    """The caption in a chat model's reply: without a reasoning block, markdown emphasis, the opening and
    closing words around it, and its quotes (`Sure! Here is the caption: **"A man waves."** Enjoy!` -> `A man
    waves.`); empty when the reply held nothing else."""
    text = re.sub(r"\*\*|__", "", strip_thinking(text.replace("\u2019", "'")))
    text = _CLOSING.sub("", _OPENING.sub("", text, count=1))
    return clean_caption(text)


def is_refusal(text: str | None, refusal_field: str | None) -> bool:
    # A blank reply ("" or only whitespace) carries no caption: treated as a refusal, so it is asked again.
    return bool(refusal_field) or not (text and text.strip()) or bool(REFUSAL.match(text.replace("\u2019", "'")))


def image_data_url(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


CAPTION_ENDPOINT = Purpose(
    section="caption",
    offline="caption offline with `-S caption.backend=sidecar` (a .txt beside each image) or "
    "`-S caption.backend=template`",
    later="captions received so far are cached, rerun later",
    error=CaptionError,
)


class OpenAIBackend:
    """Any OpenAI-compatible chat-completions endpoint with image input (client and errors: storyboard.openai_client).

    A bad key or a missing model stops the stage at once; a 400/422 fails this one image and the others go on.
    """

    name = "openai"
    paid = True

    def __init__(self, settings: Caption):
        self.settings = settings
        self.endpoint = ChatEndpoint(settings.openai, CAPTION_ENDPOINT)

    def _ask(self, prompt: str, url: str) -> tuple[str | None, str | None, bool, int, int]:
        """content, refusal, whether the reply was cut at max_tokens, tokens in, tokens out."""
        content = [{"type": "text", "text": prompt}, {"type": "image_url", "image_url": {"url": url}}]
        try:
            response = self.endpoint.complete([{"role": "user", "content": content}])
        except RequestRejected as e:
            # This image, not the setup: exclude it with the reason and go on with the others.
            raise ImageRejected(f"the caption endpoint rejected this image ({e.status_code}): {e.message}") from None
        choice = response.choices[0]
        usage = response.usage
        return (
            choice.message.content,
            getattr(choice.message, "refusal", None),
            choice.finish_reason == "length",
            usage.prompt_tokens if usage else 0,
            usage.completion_tokens if usage else 0,
        )

    def caption(self, image: Image.Image, source: Path) -> CaptionResult:
        """A refusal, in the `refusal` field or in words, or an empty reply is asked once more with the refusal
        prompt; a second one gives the image up as refused (excluded, cached, `caption.retry_refused` asks again)."""
        url = image_data_url(image)
        tokens_in = tokens_out = 0
        reasons = []
        for attempt, prompt in enumerate((self.settings.prompt, self.settings.refusal_prompt), start=1):
            try:
                text, refusal, cut, t_in, t_out = self._ask(prompt, url)
            except ImageRejected as e:
                return CaptionResult(
                    None, failed=True, reason=str(e), tokens_in=tokens_in, tokens_out=tokens_out, requests=attempt
                )
            tokens_in, tokens_out = tokens_in + t_in, tokens_out + t_out
            text = caption_from_reply(text) if text else text  # a quoted "I'm sorry..." is still a refusal
            if not is_refusal(text, refusal):
                return CaptionResult(text, tokens_in=tokens_in, tokens_out=tokens_out, requests=attempt)
            reasons.append((refusal or text or _EMPTY[cut]).strip()[:200])
        return CaptionResult(
            None, refused=True, reason=" | ".join(reasons), tokens_in=tokens_in, tokens_out=tokens_out, requests=2
        )


# An empty reply cut at max_tokens is most often a reasoning model that spent them all before answering.
_EMPTY = {False: "empty reply", True: "empty reply, cut at caption.openai.max_tokens (raise it for a reasoning model)"}


def make_backend(settings: Caption, character: Character) -> CaptionBackend:
    if settings.backend == "openai":
        return OpenAIBackend(settings)
    if settings.backend == "sidecar":
        return SidecarBackend()
    return TemplateBackend(settings.template, character)
