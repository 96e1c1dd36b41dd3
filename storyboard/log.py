"""The package's root logger ("storyboard"), configured once by whoever runs a stage or the CLI; each module logs
through its own child logger, `logging.getLogger(__name__)`, so a record names the module it came from."""

from __future__ import annotations

import logging
import os
import sys

logger = logging.getLogger("storyboard")


def setup_logging(level: str | None = None) -> None:
    """Log to stderr with timestamps; level from the argument, STORYBOARD_LOG, or INFO."""
    level = level or os.environ.get("STORYBOARD_LOG", "INFO")
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logger.setLevel(level.upper())
    # Libraries that narrate every weight load drown the stage's own messages.
    for noisy in ("httpx", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # peft imports torchao when it is installed, and every stage process then warned of kernels it never uses
    # (torchao's optional C extensions and Triton kernels; torch's deprecation of torchao's enum registration).
    # generate.quantize checks what it needs itself (storyboard/models/quantizing.py).
    for noisy in ("torchao", "torch.utils._pytree"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    # The model libraries read their verbosity when first imported. Importing them here instead would cost the
    # stages that load no model (sample, caption, plan) several seconds of torch; quiet_model_libraries does the rest.
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")  # their warnings repeat per call (e.g. CLIP truncation)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def quiet_model_libraries() -> None:
    """No per-file "Loading weights" bars from the model libraries (they hide the stage's own progress bar), and
    their errors only, also when they were imported before setup_logging. Called before each model load, after
    the loader's own import: a library not imported yet is left unimported (evaluate never needs diffusers)."""
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import logging as hub_logging

        # huggingface_hub prints through a handler of its own and also passes each record up to the root
        # logger's: every retry warning came out twice. Its own handler alone prints it once.
        hub_logging.disable_propagation()
    if "diffusers" in sys.modules:
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.set_verbosity_error()
        diffusers_logging.disable_progress_bar()
    if "transformers" in sys.modules:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
        transformers_logging.set_verbosity_error()
