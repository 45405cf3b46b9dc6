"""The smallest client for any OpenAI-compatible endpoint (``adapterhub serve`` included): one chat
completion per call, over the standard library, so ``adapterhub data`` loads no model and no SDK.
A 429 or 503 (the server did not act) is asked again as ``hub.retry`` decides; a completion is a
POST, so a connection error is not (the endpoint may have generated, and billed, the answer)."""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from email.message import Message
from typing import Any

from ..errors import EndpointError
from ..retry import DEFAULT_RETRY, RetryPolicy, send_with_retries, tries_note

__all__ = ["ChatClient", "EndpointError"]

# What urllib raises when the connection fails or times out (an error status comes as HTTPError).
_TRANSIENT = (urllib.error.URLError, http.client.HTTPException, OSError)


@dataclass(frozen=True)
class _Reply:
    """One answer, read whole while its connection was open: what ``send_with_retries`` looks at."""

    status_code: int
    headers: Message
    body: bytes

    def close(self) -> None:
        """Nothing to release: the body was read and the connection closed."""


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
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")

        def send() -> _Reply:
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    return _Reply(response.status, response.headers, response.read())
            except urllib.error.HTTPError as e:
                with e:
                    return _Reply(e.code, e.headers, e.read())

        outcome = send_with_retries(send, policy=self.retry, idempotent=False, transient=_TRANSIENT)
        if outcome.error is not None:
            reason = getattr(outcome.error, "reason", outcome.error)
            raise EndpointError(f"cannot reach {url} ({reason}){tries_note(outcome.tries)}") from outcome.error
        reply = outcome.answer
        if reply.status_code >= 400:
            raise EndpointError(f"{url}: HTTP {reply.status_code} {_error_message(reply)}{tries_note(outcome.tries)}")
        try:
            doc = json.loads(reply.body)
        except ValueError as e:
            raise EndpointError(f"{url}: the answer is not JSON") from e
        try:
            return doc["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError) as e:
            raise EndpointError(f"{url}: the answer has no choices[0].message.content") from e


def _error_message(reply: _Reply) -> str:
    try:
        doc = json.loads(reply.body.decode("utf-8", "replace"))
        return str(doc.get("error", {}).get("message", "")).splitlines()[0]
    except (ValueError, AttributeError, IndexError):
        return http.client.responses.get(reply.status_code, "")
