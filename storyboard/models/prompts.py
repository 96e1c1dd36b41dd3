"""Prompts of any length through both SDXL text encoders, with compel.

Each CLIP text encoder reads 77 tokens; past that, diffusers drops the end of a prompt. compel's CompelForSDXL
splits a longer prompt into 75-token chunks at word or phrase boundaries, encodes every chunk through both
encoders (penultimate hidden states, as SDXL conditions) and concatenates the chunks along the sequence, which
the UNet's cross-attention reads whole. The pooled embedding (SDXL's added condition) comes from the second
encoder on the prompt's first 77 tokens, as in diffusers and other long-prompt tools; the negative prompt is padded
with empty-prompt chunks to the positive's length. A prompt within 77 tokens gives diffusers' own embeddings.

The text is read in compel's syntax: "(word)1.3" or "word++" weigh a word; plain parentheses weigh their words
by 1.1. Text that is meant literally (a planner's scene) goes through `literal` first.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

import pyparsing
import torch

# compel parses each prompt with pyparsing, once per text encoder: about 0.15 s a prompt of ~100 tokens, most of
# encoding a story (2.4 s for 8 frames on the H200 machine, bench_prompts.py). Packrat memoisation, which pyparsing
# offers for grammars like compel's, halves it (CPU, tiny encoders: 1.9 -> 0.94 s); the embeddings are the same.
pyparsing.ParserElement.enable_packrat()


# Text in which compel's grammar sees nothing but words: no weights, groups, escapes or quotes, a hyphen only inside
# a word ("word-" weighs it down), already in the form the parser writes back (single spaces, ", " after commas).
_PLAIN = re.compile(r"(?:[\w,.;:!?'/&%#@*=<>~$ ]|(?<=\w)-(?=\w))*")
_UNNORMAL = re.compile(r"^ | $|  |,(?=[^ ])| ,")


def is_plain(text: str) -> bool:
    """Whether compel would parse `text` into itself, one fragment of weight 1."""
    return _PLAIN.fullmatch(text) is not None and _UNNORMAL.search(text) is None


@lru_cache(maxsize=4096)
def _parsed(text: str):
    """compel's parse of `text`, kept: CompelForSDXL parses every prompt once per text encoder, a retry or a rerun
    parses it again, and a parse costs more than encoding the prompt on a GPU. Plain text (most planned scenes:
    `literal` leaves no syntax) is the one fragment the parser would return, built without running it."""
    from compel import Compel
    from compel.prompt_parser import Conjunction, FlattenedPrompt, Fragment

    if is_plain(text):
        return Conjunction([FlattenedPrompt([Fragment(text, 1.0)])])
    return Compel.parse_prompt_string(text)


def parse_ahead(texts: Iterable[str]) -> threading.Thread:
    """Parse `texts` on a background thread, so the stories' prompts are parsed while models load and earlier
    stories render (the GPU waits on nothing of it); `encode_prompts` then finds them parsed."""

    # compel imports diffusers, whose lazy modules are not safe to import from two threads at once (the loader
    # imports them meanwhile); importing it here, before the thread starts, leaves the thread only parsing.
    import compel  # noqa: F401

    def work() -> None:
        for text in dict.fromkeys(texts):
            _parsed(text)

    thread = threading.Thread(target=work, name="prompt-parser", daemon=True)
    thread.start()
    return thread


def literal(text: str) -> str:
    """`text` with compel's grouping parentheses escaped, so they are read as plain characters."""
    return re.sub(r"([()])", r"\\\1", text)


@dataclass(frozen=True)
class PromptEmbeds:
    """A batch's text conditioning, in the pipeline's argument names; rows follow the prompts' order."""

    embeds: torch.Tensor  # (N, 77 x chunks, both encoders' widths)
    pooled: torch.Tensor  # (N, second encoder's projection width)
    negative: torch.Tensor
    negative_pooled: torch.Tensor

    def rows(self, index: list[int]) -> PromptEmbeds:
        """The conditioning of some of the prompts (a retry batch), without encoding them again."""
        return PromptEmbeds(*(t[index] for t in (self.embeds, self.pooled, self.negative, self.negative_pooled)))

    def pipeline_kwargs(self) -> dict[str, torch.Tensor]:
        return {
            "prompt_embeds": self.embeds,
            "pooled_prompt_embeds": self.pooled,
            "negative_prompt_embeds": self.negative,
            "negative_pooled_prompt_embeds": self.negative_pooled,
        }


@torch.no_grad()
def encode_prompts(pipe, prompts: list[str], negative_prompt: str = "") -> PromptEmbeds:
    """Every word of `prompts` (and of the one `negative_prompt`) through `pipe`'s two text encoders, once.

    `pipe` is any SDXL pipeline; with model CPU offload its hooks move the encoders to the device as usual.
    """
    if not prompts:
        raise ValueError("no prompts to encode")
    if all(is_plain(text) and _fits(pipe, text) for text in [*prompts, negative_prompt]):
        return _encode_short(pipe, list(prompts), negative_prompt)
    return _encode_compel(pipe, list(prompts), negative_prompt)


def _encode_compel(pipe, prompts: list[str], negative_prompt: str) -> PromptEmbeds:
    from compel import CompelForSDXL

    compel = CompelForSDXL(pipe, device=pipe._execution_device)
    for encoder in (compel.compel_1, compel.compel_2):
        # Both encoders read the same parse (compel's own classmethod, memoised): one parse a prompt, not two.
        encoder.parse_prompt_string = _parsed
    # One negative, repeated by compel for every prompt: encoded once, not once per frame.
    out = compel(prompts, negative_prompt=[negative_prompt])
    negative, negative_pooled = out.negative_embeds, out.negative_pooled_embeds
    if not negative_prompt and pipe.config.get("force_zeros_for_empty_prompt", False):
        # What SDXL's pipelines do for no negative prompt: zeros, not the embedding of "".
        negative, negative_pooled = torch.zeros_like(negative), torch.zeros_like(negative_pooled)
    return PromptEmbeds(out.embeds, out.pooled_embeds, negative, negative_pooled)


def _fits(pipe, text: str) -> bool:
    """Whether `text` fits in one window of both tokenizers (77 tokens with the start and end markers)."""
    return all(
        len(tokenizer(text).input_ids) <= tokenizer.model_max_length for tokenizer in (pipe.tokenizer, pipe.tokenizer_2)
    )


def _encode_short(pipe, prompts: list[str], negative_prompt: str) -> PromptEmbeds:
    """Plain prompts of one window: the embeddings compel gives them (diffusers' own), in one batched pass of each
    encoder; compel encodes each prompt, and its pooled embedding, in passes of their own."""
    embeds, negative, pooled, negative_pooled = pipe.encode_prompt(
        prompt=prompts,
        device=pipe._execution_device,
        num_images_per_prompt=1,
        do_classifier_free_guidance=True,
        # None, not "": SDXL's pipelines then use zeros where the config says so, as encode_prompts does.
        negative_prompt=[negative_prompt] * len(prompts) if negative_prompt else None,
    )
    return PromptEmbeds(embeds, pooled, negative, negative_pooled)
