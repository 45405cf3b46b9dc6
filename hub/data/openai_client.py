"""The smallest client for any OpenAI-compatible endpoint (``adapterhub serve`` included): one chat
completion per call, over the standard library, so ``adapterhub data`` loads no model and no SDK."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from ..errors import EndpointError

__all__ = ["ChatClient", "EndpointError"]


@dataclass(frozen=True)
class ChatClient:
    """``POST {base_url}/chat/completions`` with ``model`` and an optional bearer ``api_key``."""

    base_url: str
    model: str
    api_key: str | None = None
    timeout_s: float = 120.0

    def chat(self, messages: list[dict[str, str]], **options: Any) -> str:
        """The first choice's text; ``options`` are the request's sampling fields (temperature, max_tokens...)."""
        body = json.dumps({"model": self.model, "messages": messages, **options}).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        url = self.base_url.rstrip("/") + "/chat/completions"
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                doc = json.load(response)
        except urllib.error.HTTPError as e:
            raise EndpointError(f"{url}: HTTP {e.code} {_error_message(e)}") from e
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise EndpointError(f"cannot reach {url} ({reason})") from e
        except json.JSONDecodeError as e:
            raise EndpointError(f"{url}: the answer is not JSON") from e
        try:
            return doc["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError) as e:
            raise EndpointError(f"{url}: the answer has no choices[0].message.content") from e


def _error_message(e: urllib.error.HTTPError) -> str:
    try:
        doc = json.loads(e.read().decode("utf-8", "replace"))
        return str(doc.get("error", {}).get("message", "")).splitlines()[0]
    except (ValueError, AttributeError, IndexError):
        return str(e.reason)
