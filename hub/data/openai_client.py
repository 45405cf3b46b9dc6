"""The smallest client for any OpenAI-compatible endpoint (``adapterhub serve`` included): one chat
completion per call, so ``adapterhub data`` loads no model and no SDK. It speaks HTTP through
``httpx2``, the client library ``hub.remote`` uses, with the same transient errors: one library, one
retry policy. A 429 or 503 (the server did not act) is asked again as ``hub.retry`` decides; a
completion is a POST, so a connection error is not (the endpoint may have generated, and billed,
the answer)."""

from __future__ import annotations

import http.client
import json
from dataclasses import dataclass
from typing import Any

import httpx2

from ..errors import EndpointError
from ..retry import DEFAULT_RETRY, HTTP_TRANSIENT, RetryPolicy, send_with_retries, tries_note

__all__ = ["ChatClient", "EndpointError"]


@dataclass(frozen=True)
class ChatClient:
    """``POST {base_url}/chat/completions`` with ``model`` and an optional bearer ``api_key``;
    ``retry`` bounds how often and how long a refused request is sent again."""

    base_url: str
    model: str
    api_key: str | None = None
    timeout_s: float = 120.0
    retry: RetryPolicy = DEFAULT_RETRY

    def chat(self, messages: list[dict[str, str]], **options: Any) -> str:
        """The first choice's text; ``options`` are the request's sampling fields (temperature, max_tokens...)."""
        body = json.dumps({"model": self.model, "messages": messages, **options}).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        url = self.base_url.rstrip("/") + "/chat/completions"
        try:
            with httpx2.Client(timeout=self.timeout_s) as client:
                outcome = send_with_retries(lambda: client.post(url, content=body, headers=headers),
                                            policy=self.retry, idempotent=False, transient=HTTP_TRANSIENT)
        except httpx2.HTTPError as e:  # a malformed URL or answer: not a connection to retry
            raise EndpointError(f"cannot reach {url} ({e})") from e
        if outcome.error is not None:
            raise EndpointError(f"cannot reach {url} ({outcome.error}){tries_note(outcome.tries)}") from outcome.error
        reply = outcome.answer
        if reply.status_code >= 400:
            raise EndpointError(f"{url}: HTTP {reply.status_code} {_error_message(reply)}{tries_note(outcome.tries)}")
        try:
            doc = json.loads(reply.content)
        except ValueError as e:
            raise EndpointError(f"{url}: the answer is not JSON") from e
        try:
            return doc["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError) as e:
            raise EndpointError(f"{url}: the answer has no choices[0].message.content") from e


def _error_message(reply: httpx2.Response) -> str:
    try:
        doc = json.loads(reply.content.decode("utf-8", "replace"))
        return str(doc.get("error", {}).get("message", "")).splitlines()[0]
    except (ValueError, AttributeError, IndexError):
        return http.client.responses.get(reply.status_code, "")
