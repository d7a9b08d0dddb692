"""One bounded HTTP POST for the webhook-style notifiers, honouring a 429 once.

Error messages never carry the URL (webhook and ping URLs are secrets): only the status code and
the service's own short reason.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx

from backupd import __version__
from backupd.redact import redact

USER_AGENT = f"backupd/{__version__}"


class DeliveryError(Exception):
    """A service refused or failed a delivery; the message names the status, never the URL."""


def retry_after_seconds(response: httpx.Response) -> float | None:
    """The wait a 429 asks for: Discord's JSON `retry_after` (seconds), else the Retry-After header."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        value = body.get("retry_after", (body.get("parameters") or {}).get("retry_after"))
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
            return float(value)
    header = response.headers.get("retry-after")
    if header:
        try:
            return max(0.0, float(header))
        except ValueError:
            return None
    return None


def _reason(response: httpx.Response) -> str:
    text = response.text.strip()
    try:
        body = response.json()
        if isinstance(body, dict):
            text = str(body.get("message") or body.get("error") or body.get("description") or text)
    except ValueError:
        pass
    text = " ".join(text.split())[:200]
    return redact(f"HTTP {response.status_code}" + (f": {text}" if text else ""))


def post(url: str, *, timeout: float, json_body: Any = None, content: bytes | None = None,
         headers: dict[str, str] | None = None, max_wait: float | None = None) -> httpx.Response:
    """POST once; on 429 wait what the service asks (if <= `max_wait`, default `timeout`) and retry once.

    Returns the 2xx response. Raises DeliveryError on any other status, httpx errors on network
    failures and timeouts (each attempt bounded by `timeout`).
    """
    all_headers = {"User-Agent": USER_AGENT, **(headers or {})}
    if json_body is not None:
        content = json.dumps(json_body, separators=(",", ":")).encode()
        all_headers.setdefault("Content-Type", "application/json")
    limit = timeout if max_wait is None else max_wait
    with httpx.Client(timeout=httpx.Timeout(timeout), follow_redirects=False) as client:
        for attempt in (1, 2):
            try:
                response = client.post(url, content=content, headers=all_headers)
            except httpx.HTTPError as exc:
                # httpx puts the URL into some messages; the URL is a secret here
                raise DeliveryError(redact(f"{type(exc).__name__}: {_strip_url(str(exc), url)}")) from None
            if response.status_code == 429 and attempt == 1:
                wait = retry_after_seconds(response)
                if wait is not None and wait <= limit:
                    time.sleep(wait)
                    continue
                raise DeliveryError(f"HTTP 429: rate limited (retry after {wait}s exceeds the {limit:.0f}s bound)")
            if 200 <= response.status_code < 300:
                return response
            raise DeliveryError(_reason(response))
    raise DeliveryError("HTTP 429: still rate limited after one retry")


def _strip_url(text: str, url: str) -> str:
    text = text.replace(url, "<url>")
    return text or "no detail"
