"""The one OpenAI client set-up and error mapping, shared by the caption and plan stages.

`ChatEndpoint` builds the official client from an `OpenAIClient` settings section (model, base URL, key
variable, timeout, retries) and sends chat completions. The client itself retries 429/5xx/timeouts with
exponential backoff and honours Retry-After (`max_retries`); what is left after that becomes one error of the
caller's kind (CaptionError, PlanError) whose message names the setting to fix. A 400/422 is raised as
`RequestRejected` instead: it is about this one request (an image, a response format), and only the caller
knows whether to skip it or ask differently.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from storyboard.errors import StoryboardError
from storyboard.settings import OpenAIClient

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletion

logger = logging.getLogger(__name__)


class RequestRejected(Exception):
    """The endpoint refused this request as invalid (HTTP 400/422); the endpoint and key themselves work."""

    def __init__(self, status_code: int, message: str):
        super().__init__(f"{status_code}: {message}")
        self.status_code = status_code
        self.message = message


@dataclass(frozen=True)
class Purpose:
    """Who calls, for the error messages: "caption" reads caption.openai; `offline` says how to do without a
    key, `later` what a rerun keeps; `error` is the caller's error class."""

    section: str  # the params section: caption, plan
    offline: str
    later: str
    error: type[StoryboardError]


# Sent to a server on this machine or its network when no key is set: llama.cpp, Ollama, LM Studio and vLLM without
# --api-key take any, and the official client refuses to start without one.
NO_KEY = "no-key"
# Names only a local network resolves: mDNS and Kubernetes (.local), Docker's host.docker.internal, home routers.
LOCAL_SUFFIXES = (".local", ".localhost", ".internal", ".lan", ".home.arpa")


def is_local(base_url: str | None) -> bool:
    """Whether `base_url` is a server on this machine or its network: loopback, a private address, `localhost`, a
    local-network name (LOCAL_SUFFIXES), or a name without a dot (a container's service name: http://ollama:11434)."""
    host = urlsplit(base_url).hostname if base_url else None
    if not host:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host == "localhost" or host.endswith(LOCAL_SUFFIXES) or "." not in host
    return address.is_loopback or address.is_private or address.is_link_local


class ChatEndpoint:
    def __init__(self, cfg: OpenAIClient, purpose: Purpose):
        import openai

        self.cfg, self.purpose = cfg, purpose
        base_url = cfg.base_url or os.environ.get("OPENAI_BASE_URL") or None
        key = os.environ.get(cfg.api_key_env)
        self.keyless = not key and is_local(base_url)
        if not key and not self.keyless:
            raise purpose.error(
                f"{purpose.section}.backend is openai but ${cfg.api_key_env} is not set: export your key, "
                f"or {purpose.offline}"
            )
        if self.keyless:
            logger.info(
                "%s: $%s is not set; %s is a local server, sent no key", purpose.section, cfg.api_key_env, base_url
            )
        self.client = openai.OpenAI(
            api_key=key or NO_KEY, base_url=base_url, timeout=cfg.timeout_s, max_retries=cfg.max_retries
        )

    @property
    def what(self) -> str:
        return f"the {self.purpose.section} endpoint {self.client.base_url}"

    def complete(self, messages: list[dict[str, Any]], **options: Any) -> ChatCompletion:
        """One chat completion with the settings' model, temperature and max_tokens; a reply with choices."""
        import openai

        cfg, purpose, fail = self.cfg, self.purpose, self.purpose.error
        not_openai = f"is {purpose.section}.openai.base_url an OpenAI-compatible API?"
        try:
            reply = self.client.chat.completions.create(
                model=cfg.model, temperature=cfg.temperature, max_tokens=cfg.max_tokens, messages=messages, **options
            )
        except (openai.AuthenticationError, openai.PermissionDeniedError) as e:
            if self.keyless:
                raise fail(f"{self.what} asks for a key: export it as ${cfg.api_key_env} ({e})") from None
            raise fail(f"{self.what} rejected the key in ${cfg.api_key_env}: {e}") from None
        except (openai.BadRequestError, openai.UnprocessableEntityError) as e:
            raise RequestRejected(e.status_code, e.message) from None
        except openai.NotFoundError as e:
            raise fail(
                f"model {cfg.model!r} not found at {self.what}; set {purpose.section}.openai.model ({e})"
            ) from None
        except openai.APIConnectionError as e:  # also timeouts
            raise fail(
                f"{self.what} is unreachable or timed out (after {cfg.max_retries} retries: {e}); {purpose.later}"
            ) from None
        except openai.APIStatusError as e:  # 429/5xx left after the client's own retries
            raise fail(
                f"{self.what} answered {e.status_code} after {cfg.max_retries} retries ({e.message}); {purpose.later}"
            ) from None
        except json.JSONDecodeError as e:  # a body that is not JSON, e.g. a proxy's truncated reply
            raise fail(f"{self.what} sent a reply that is not JSON ({e}); {not_openai}") from None
        if not getattr(reply, "choices", None):  # a non-JSON content type comes back as plain text
            raise fail(f"{self.what} sent a reply without choices ({str(reply)[:100]!r}); {not_openai}")
        return reply


def strip_thinking(text: str) -> str:
    """A reply without a reasoning model's `<think>...</think>` block, which some local servers (Ollama, llama.cpp
    with Qwen3 or DeepSeek-R1) leave in the content; an unclosed one (cut at max_tokens) runs to the end."""
    return re.sub(r"<think>.*?(?:</think>|$)", "", text, flags=re.DOTALL | re.IGNORECASE).strip()
