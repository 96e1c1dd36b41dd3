"""Ask once whether the Hugging Face Hub answers; if it does not, load from the local cache only, as under
HF_HUB_OFFLINE=1, for the rest of the process.

Without network, huggingface_hub retries each file's metadata request 5 times with backoff (about 23 s a file when
connections are refused, minutes when they hang), and a tokenizer asks for ten files: a stage spent minutes on its
first tokenizer before any error. One request with huggingface_hub's own session (its proxies, its client factory)
and its metadata timeout (HF_HUB_ETAG_TIMEOUT) decides instead; any HTTP answer, even an error status, means the
hub is reachable. Offline, huggingface_hub and the model libraries serve what the cache holds and raise at once for
the rest, which hub_errors.explain words as "the hub could not be reached".
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

logger = logging.getLogger(__name__)


# Why this process went offline (the probe's error), once it has; None while the hub answers or was never asked.
_went_offline: str | None = None


def go_offline_if_unreachable(source: str) -> None:
    """Before loading `source` from the hub (an id, not a folder), make sure the hub answers, or go offline."""
    global _went_offline
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or Path(source).expanduser().exists() or looks_like_path(source):
        return
    reason = _probe(constants.ENDPOINT)
    if reason is None:
        return
    logger.warning(
        "the Hugging Face Hub %s cannot be reached (%s): models load from the Hugging Face cache (%s) only, as "
        "with HF_HUB_OFFLINE=1, for the rest of this run",
        constants.ENDPOINT,
        reason,
        constants.HF_HUB_CACHE,
    )
    # huggingface_hub reads the flag at every request (constants.is_offline_mode), and so do transformers and
    # diffusers through it: from here on the cache answers, and what it lacks fails at once.
    constants.HF_HUB_OFFLINE = True
    _went_offline = reason


def unreachable_reason() -> str | None:
    """Why this process went offline: the hub's probe error; None if it did not (the hub answered, or the user
    set HF_HUB_OFFLINE)."""
    return _went_offline


def looks_like_path(source: str) -> bool:
    """A hub id is `name` or `org/name`; anything else the user meant as a folder."""
    return source.startswith(("/", ".", "~")) or source.count("/") > 1 or "\\" in source


@functools.cache
def _probe(endpoint: str) -> str | None:
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    try:
        get_session().head(endpoint, timeout=constants.HF_HUB_ETAG_TIMEOUT)
    except Exception as e:
        if not _is_transport_error(e):
            raise
        return f"{type(e).__name__}: {str(e).strip() or 'no answer'}"[:200]
    return None


def _is_transport_error(error: Exception) -> bool:
    # huggingface_hub 1.x sends with httpx, 2.x with httpx2: both raise subclasses of their TransportError
    # (refused, timed out, DNS, proxy) for a request that got no HTTP answer.
    return isinstance(error, OSError) or any(c.__name__ == "TransportError" for c in type(error).__mro__)
