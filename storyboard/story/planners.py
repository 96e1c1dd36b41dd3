"""Planners: a one-line story split into 6-10 frames, by an LLM (any OpenAI-compatible endpoint) or offline.

Scenes stay within `plan.scene_tokens` tokens of the real CLIP tokenizer: the LLM is told the budget, a reply
with longer scenes is asked again with the measured counts, and what is still too long is cut at a word. Frame
prompts reach the text encoders whole however long they are; the budget keeps the scene, the part that differs
per frame, inside what CLIP's text scores (generate's check, evaluate) read, and each frame's prompt short.
"""

from __future__ import annotations

import logging
import re
from typing import Protocol

from pydantic import BaseModel, ConfigDict

from storyboard.models.bpe import count_tokens
from storyboard.openai_client import ChatEndpoint, Purpose, RequestRejected
from storyboard.settings import Character, Plan, Story
from storyboard.story.plan import Frame, PlanError, Shot, StoryPlan
from storyboard.story.poses import POSE_NAMES, normalise_pose_label
from storyboard.story.reply import ReplyError, read_frames, shorten, summarise

logger = logging.getLogger(__name__)


class FrameList(BaseModel):
    """What the LLM is asked to return (the schema sent as structured output; replies are read by
    storyboard.story.reply, which also takes what servers that don't enforce it send)."""

    model_config = ConfigDict(extra="forbid")
    frames: list[Frame]


class Planner(Protocol):
    name: str

    def frames(self, story: Story, character: Character) -> list[Frame]: ...


# "and" before a noun phrase joins things ("buys bread and a melon"), not events: not a boundary.
_AND = r"\band\b(?!\s+(?:a|an|the|some|his|her|its|their|my|our|two|three)\b)"


def _beats(story: str) -> list[str]:
    """The story's events, split at clause boundaries ("A, B and then C" -> A | B | C)."""
    parts = re.split(rf",|;|\.|\band then\b|\bthen\b|{_AND}|\bbut\b|\bwhile\b", story)
    parts = [re.sub(r"^(?:and|but|so)\s+", "", p.strip(), flags=re.IGNORECASE) for p in parts]  # ", and the camel"
    return [p for p in parts if len(p) > 2]


def _chunks(items: list[str], n: int) -> list[list[str]]:
    """Split items into n contiguous, near-equal groups (n <= len(items)); none when n is 0."""
    if n <= 0:  # a 2-frame budget (plan.max_frames: 2) leaves no room between the close-up and the end
        return []
    bounds = [round(i * len(items) / n) for i in range(n + 1)]
    return [items[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


class OfflinePlanner:
    """A deterministic planner that needs no key.

    Arc: a front-facing close-up (the identity reference), one frame per story event (events merged when the
    story has more than the frame budget; an establishing wide shot and reaction shots added when it has fewer),
    and a closing shot. The frame count grows with the number of events, within plan.min/max_frames. Settings
    carry over from the last event that names one. An LLM writes richer scenes; this one only rearranges the
    story's own words.
    """

    name = "offline"

    def __init__(self, settings: Plan):
        self.settings = settings

    def frames(self, story: Story, character: Character) -> list[Frame]:
        return fit_scenes(self._frames(story, character), self.settings.scene_tokens)

    def _frames(self, story: Story, character: Character) -> list[Frame]:
        name = character.name
        beats = _beats(story.text) or [story.text]
        count = max(self.settings.min_frames, min(self.settings.max_frames, len(beats) + 2))
        middle = count - 2
        subjectless = [_strip_subject(b, character, previous) for b, previous in zip(beats, ["", *beats], strict=False)]
        events = [", then ".join(group) for group in _chunks(subjectless, min(middle, len(beats)))]
        setting = next((s for b in beats if (s := _find_setting(b))), DEFAULT_SETTING)
        frames = [
            Frame(
                scene=f"{name} faces the viewer, face clearly visible, in {setting}",
                shot="close-up",
                pose="standing",
                setting=setting,
            )
        ]
        fillers = middle - len(events)
        if fillers > 0:
            frames.append(
                Frame(
                    scene=f"{name} arrives in {setting}, seen from afar", shot="wide", pose="walking", setting=setting
                )
            )
            fillers -= 1
        shots: tuple[Shot, ...] = ("medium", "wide", "medium", "close-up")
        reactions = ("grins, pleased with himself", "glances around, plotting his next move", "nods to himself")
        for i, event in enumerate(events):
            setting = _find_setting(event) or setting
            frames.append(
                Frame(
                    scene=f"{name} {event}",
                    shot=shots[i % len(shots)],
                    pose=normalise_pose_label(event),
                    setting=setting,
                )
            )
            if fillers > 0 and i < len(events) - 1:
                reaction = reactions[fillers % len(reactions)]
                frames.append(Frame(scene=f"{name} {reaction}", shot="close-up", pose="talking", setting=setting))
                fillers -= 1
        while fillers > 0:
            frames.append(
                Frame(
                    scene=f"{name} {reactions[fillers % len(reactions)]}",
                    shot="medium",
                    pose="talking",
                    setting=setting,
                )
            )
            fillers -= 1
        frames.append(Frame(scene=f"{name} laughs, the story's end", shot="medium", pose="laughing", setting=setting))
        return frames


def _strip_subject(beat: str, character: Character, previous: str = "") -> str:
    """The beat without its subject when that is the character (the name, a pronoun, or the description's head noun:
    "The trickster meets a camel" for "a cheerful folk trickster with a hat"), for the name to go in front; "they"
    after "meets a camel" becomes "and the camel"."""
    text = re.sub(rf"^\s*{re.escape(character.name)}\s*", "", beat, flags=re.IGNORECASE)
    if head := _head_noun(character.description):
        text = re.sub(rf"^\s*(?:the|our|this)\s+(?:\w+\s+)?{re.escape(head)}\s+", "", text, flags=re.IGNORECASE)
    if (they := re.match(r"they\s+", text, flags=re.IGNORECASE)) and (
        other := re.search(r"\b(a|an|the|his|her)\s+(\w+)", _strip_subject(previous, character))
    ):
        determiner = "the" if other.group(1).lower() in ("a", "an") else other.group(1)
        return f"and {determiner} {other.group(2)} {text[they.end() :]}"
    text = re.sub(r"^(he|she|they)\s+", "", text, flags=re.IGNORECASE) or beat
    # A clause with a subject of its own ("the camel laughs"): the character is in the frame, watching it.
    own_subject = re.match(r"(?:the|a|an)\s", text, flags=re.IGNORECASE)
    return f"watches as {text[0].lower()}{text[1:]}" if own_subject else text


def _head_noun(description: str) -> str | None:
    """The last word before the description's first qualifier: "trickster" in "a cheerful Kazakh folk trickster
    with a thin black moustache, ..."."""
    phrase = re.split(r",|;|\b(?:with|who|in|wearing|from|and)\b", description, maxsplit=1, flags=re.IGNORECASE)[0]
    words = re.findall(r"[a-z]+", phrase.lower())
    return words[-1] if words and words[-1] not in {"a", "an", "the"} else None


DEFAULT_SETTING = "the open steppe"
_SETTINGS = {
    "bazaar": "a busy bazaar",
    "market": "a busy bazaar",
    "steppe": "the open steppe",
    "yurt": "a yurt camp",
    "mountain": "the mountains",
    "river": "a river bank",
    "night": "a moonlit night",
    "desert": "desert dunes",
    "village": "a village street",
    "palace": "a khan's palace",
    "sunrise": "the steppe at sunrise",
}


def fit_scene(scene: str, budget: int) -> str:
    """`scene` cut at the last whole word that keeps it within `budget` CLIP tokens (unchanged if it fits)."""
    if count_tokens(scene) <= budget:
        return scene
    words = scene.split()
    while len(words) > 1 and count_tokens(" ".join(words)) > budget:
        words.pop()
    return " ".join(words).rstrip(",;:")


def long_scenes(frames: list[Frame], budget: int) -> dict[int, int]:
    """Frame index -> token count of each scene over `budget` tokens."""
    counts = {i: count_tokens(f.scene) for i, f in enumerate(frames)}
    return {i: n for i, n in counts.items() if n > budget}


def fit_scenes(frames: list[Frame], budget: int) -> list[Frame]:
    return [f.model_copy(update={"scene": fit_scene(f.scene, budget)}) for f in frames]


def _find_setting(text: str) -> str | None:
    """The setting the text names first, as a whole word or its plural ("markets"): "knight" names no night,
    "driver" no river, "villagers" no village street."""
    found = [
        (m.start(), setting) for word, setting in _SETTINGS.items() if (m := re.search(rf"\b{word}s?\b", text, re.I))
    ]
    return min(found)[1] if found else None


PLAN_INSTRUCTIONS = (
    "You plan storyboards for an animated film. Split the story into {min_frames}-{max_frames} frames (more "
    "frames for stories with more events). Frame 1 is a close-up, front-facing view of {name}'s face, clearly "
    "visible. For each frame give: scene (one sentence of what is visible, naming {name}; at most {scene_tokens} "
    "CLIP tokens, about {scene_words} words), shot (close-up, medium or wide), pose (exactly one of: {poses}), "
    "setting (a few words). Reply with JSON: "
    '{{"frames": [{{"scene": ..., "shot": ..., "pose": ..., "setting": ...}}]}}.'
)


PLAN_ENDPOINT = Purpose(
    section="plan",
    offline="plan offline with `-S plan.backend=offline`",
    later="rerun later, or plan offline with `-S plan.backend=offline`",
    error=PlanError,
)


FAILURE_CHARS = 300  # the planner's final error: one line a person reads whole


class OpenAIPlanner:
    """Any OpenAI-compatible chat endpoint (client and errors: storyboard.openai_client).

    The reply is read as servers that don't enforce the schema send it (storyboard.story.reply) and validated
    against the plan's schema; a reply that still fails is asked again once, quoting a short summary of what
    was wrong, and a second failure is a PlanError of one short line naming the story and the fixes.
    """

    name = "openai"

    def __init__(self, settings: Plan):
        self.settings = settings
        self.endpoint = ChatEndpoint(settings.openai, PLAN_ENDPOINT)
        # Response formats still to try, the first in use: one an endpoint rejects is dropped for every story.
        self._formats: list[str | None] = ["json_schema", "json_object", None] if settings.structured_output else [None]

    def frames(self, story: Story, character: Character) -> list[Frame]:
        s = self.settings
        system = PLAN_INSTRUCTIONS.format(
            min_frames=s.min_frames,
            max_frames=s.max_frames,
            name=character.name,
            poses=", ".join(POSE_NAMES),
            scene_tokens=s.scene_tokens,
            scene_words=s.scene_tokens * 3 // 4,  # English prose: about 4 tokens per 3 words
        )
        messages = [
            {"role": "system", "content": system},
            {"role": "user", "content": f"Character: {character.name}, {character.description}.\nStory: {story.text}"},
        ]
        problem, text, cut_off = "", "", False
        for attempt in range(2):
            choice = self._ask(messages).choices[0]
            text, cut_off = choice.message.content or "", choice.finish_reason == "length"
            try:
                frames = read_frames(
                    text,
                    cut_off=cut_off,
                    find_setting=_find_setting,
                    default_setting=DEFAULT_SETTING,
                )
            except ReplyError as e:
                problem = str(e)  # the model is told what was wrong, in a line it can act on
            else:
                if not s.min_frames <= len(frames) <= s.max_frames:
                    problem = f"{len(frames)} frames; need {s.min_frames}-{s.max_frames}"
                elif not (long := long_scenes(frames, s.scene_tokens)):
                    return frames
                elif attempt == 1:
                    logger.warning(
                        "planner scenes of %s over %d tokens after asking again: frames %s cut at a word",
                        story.id,
                        s.scene_tokens,
                        ", ".join(str(i + 1) for i in long),
                    )
                    return fit_scenes(frames, s.scene_tokens)
                else:
                    problem = summarise(
                        [(f"scene is {n} tokens, over the budget of {s.scene_tokens}", i + 1) for i, n in long.items()]
                    )
            if attempt == 0:
                logger.warning("planner reply for %s was invalid (%s); asking again", story.id, problem)
                reask = f"That reply was invalid: {problem}. Reply again with valid JSON only."
                messages += [{"role": "assistant", "content": text}, {"role": "user", "content": reask}]
        logger.warning("the planner's last reply for %s began: %r", story.id, text[:300])
        raise PlanError(self._failure(story, problem, cut_off=cut_off))

    def _failure(self, story: Story, problem: str, *, cut_off: bool) -> str:
        """At most FAILURE_CHARS: the story, what was wrong (shortened to fit) and what to change."""
        fixes = ["another plan.openai.model", "`-S plan.backend=offline`"]
        if self._formats[0] is not None:  # the server was asked for a format; without one it may do better
            fixes.insert(0, "`-S plan.structured_output=false`")
        if cut_off:
            fixes.insert(0, "a larger plan.openai.max_tokens")
        head = f"the planner gave no valid plan for story {shorten(story.id, 40)!r} after 2 tries ("
        tail = f"); try {', '.join(fixes[:-1])} or {fixes[-1]}"
        return head + shorten(problem, FAILURE_CHARS - len(head) - len(tail)) + tail

    def _ask(self, messages: list[dict]):
        """Structured output (the JSON schema enforced by the endpoint) where it is supported, else JSON mode,
        else a plain request (servers that take neither, or plan.structured_output false); the reply is read
        and validated here either way."""
        while True:
            kind = self._formats[0]
            options = {} if kind is None else {"response_format": _response_format(kind)}
            try:
                return self.endpoint.complete(messages, **options)
            except RequestRejected as e:
                if kind is None:
                    raise PlanError(
                        f"the plan endpoint refused the request ({shorten(str(e), 150)}); {PLAN_ENDPOINT.later}"
                    ) from None
                self._formats.pop(0)
                logger.info("the planner endpoint takes no %s response format (%s); trying the next", kind, e)


def _response_format(kind: str) -> dict:
    if kind == "json_schema":
        schema = {"name": "storyboard_plan", "schema": FrameList.model_json_schema(), "strict": False}
        return {"type": "json_schema", "json_schema": schema}
    return {"type": kind}


def make_planner(settings: Plan) -> Planner:
    return OpenAIPlanner(settings) if settings.backend == "openai" else OfflinePlanner(settings)


def plan_story(planner: Planner, story: Story, character: Character, *, notice: str | None = None) -> StoryPlan:
    frames = planner.frames(story, character)
    # The identity reference must show the face, whatever the planner said.
    frames[0] = frames[0].model_copy(update={"shot": "close-up"})
    return StoryPlan(story_id=story.id, story=story.text, planner=planner.name, frames=frames, notice=notice)
