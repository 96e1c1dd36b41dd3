"""What each loaded thing must be, checked as it loads: `from_pretrained` succeeds on incomplete folders.

With transformers 5 a tokenizer folder without its vocabulary loads as a tokenizer of 2 tokens that turns every
prompt into `[0, 2, 2, ...]`, and a model whose weights file lacks some tensors loads with those initialised at
random (reported only in a log line the stages silence). Nothing raises, so a LoRA would train on empty captions.
One check per kind: a tokenizer against the embedding table of the model that reads its ids, a processor for its
image processor and tokenizer, a model for every weight it expects. A failed check raises IncompleteModel, which
the loader turns into the one-line ModelLoadError (hub_errors.explain) that names the key, the folder and the fix.
"""

from __future__ import annotations

from pathlib import Path

# Models pad their embedding table to a multiple of 64 or 128 rows (faster matrix products), so a tokenizer may
# produce fewer ids than the table has rows; never more, and never fewer than all but the padding (of a small
# table, an eighth at most).
EMBEDDING_PADDING = 128
FAST_TOKENIZER = "tokenizer.json"  # the tokenizers library's file: holds the whole vocabulary on its own
PROCESSOR_CONFIGS = "processor_config.json (or preprocessor_config.json)"


class IncompleteModel(ValueError):
    """Loaded without an error, but not what its files should give: `found` says what came out, `missing` names
    the files (relative to the id or folder) whose absence explains it; None: the files are there but do not fit."""

    def __init__(self, found: str, *, missing: str | None = None) -> None:
        super().__init__(found)
        self.found, self.missing = found, missing


def check_tokenizer(
    tokenizer,
    embeddings: int,
    *,
    source: str,
    subfolder: str = "",
    reader: str,
    padding: int = EMBEDDING_PADDING,
) -> None:
    """Every id `tokenizer` produces must index the `embeddings` rows of `reader` (e.g. "text_encoder/"), and
    the tokenizer must cover them but for `padding` rows (of a small table, an eighth at most)."""
    size = len(tokenizer)
    if embeddings - min(padding, embeddings // 8) <= size <= embeddings:
        return
    found = f"it loads as a tokenizer of {size} tokens, but {reader} reads {embeddings}"
    prefix = f"{subfolder.strip('/')}/" if subfolder else ""
    needed = [name for name in type(tokenizer).vocab_files_names.values() if name != FAST_TOKENIZER]
    folder = Path(source).expanduser() / subfolder
    if folder.is_dir() and ((folder / FAST_TOKENIZER).is_file() or all((folder / n).is_file() for n in needed)):
        raise IncompleteModel(f"{found}: the tokenizer and the model come from different models")
    slow = " and ".join(prefix + name for name in needed)
    them = "them" if len(needed) > 1 else "it"
    missing = f"{slow} (or {prefix}{FAST_TOKENIZER}, which replaces {them})" if slow else prefix + FAST_TOKENIZER
    raise IncompleteModel(found, missing=missing)


def check_processor(processor, embeddings: int | None, *, source: str, reader: str = "config.json") -> None:
    """A processor needs its image processor and, when it has one, a tokenizer that fits `embeddings` (the text
    model's vocabulary size in `reader`)."""
    if getattr(processor, "image_processor", None) is None:
        raise IncompleteModel("the processor has no image processor", missing=PROCESSOR_CONFIGS)
    tokenizer = getattr(processor, "tokenizer", None)
    if embeddings is not None:
        if tokenizer is None:
            raise IncompleteModel("the processor has no tokenizer", missing=FAST_TOKENIZER)
        check_tokenizer(tokenizer, embeddings, source=source, reader=reader)


def check_weights(info: dict, *, subfolder: str = "") -> None:
    """`info`, from `from_pretrained(..., output_loading_info=True)` (transformers and diffusers alike), must list
    no weight that the model expects and its files lack: those would be random."""
    missing = sorted(info.get("missing_keys") or ())
    if missing:
        where = f"the weights in {subfolder.strip('/')}/" if subfolder else "its weights file"
        shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        found = f"{where} lack {len(missing)} of the model's tensors ({shown}), which would load as random numbers"
        raise IncompleteModel(f"{found}: a file from another model or cut short")
