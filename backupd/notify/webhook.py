"""A generic JSON webhook: the event itself (schema `backupd.event/1`), optionally HMAC-signed.

Headers: `X-Backupd-Event` (the event name), `X-Backupd-Timestamp: <unix seconds>` (when it was
sent), and `X-Backupd-Signature: sha256=<hex>` when a `secret` is set: HMAC-SHA256, keyed by the
secret, of `<timestamp>.<body>` (the timestamp's digits, a dot, the exact body bytes), so a
receiver that also checks the timestamp's age refuses a replayed request (see docs/alerts.md).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

from backupd.notify import Event
from backupd.notify.http import post

SIGNATURE_HEADER = "X-Backupd-Signature"
TIMESTAMP_HEADER = "X-Backupd-Timestamp"


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The signature header's value: `sha256=` and the hex HMAC-SHA256 of `<timestamp>.<body>`
    keyed by `secret`."""
    return "sha256=" + hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()


class WebhookNotifier:
    """POSTs events as JSON to one URL."""

    def __init__(self, config: Any) -> None:
        self.config = config
        self.name = "webhook"

    def send(self, event: Event) -> None:
        """POST the event; any 2xx is success. Raises DeliveryError or an httpx error otherwise."""
        body = json.dumps(event, separators=(",", ":"), sort_keys=True).encode()
        timestamp = int(time.time())
        headers = {"Content-Type": "application/json", "X-Backupd-Event": str(event["event"]),
                   "X-Backupd-Schema": str(event["schema"]), TIMESTAMP_HEADER: str(timestamp)}
        if self.config.secret is not None:
            headers[SIGNATURE_HEADER] = signature(self.config.secret.get_secret_value(), timestamp, body)
        post(self.config.url.get_secret_value(), content=body, headers=headers,
             timeout=float(self.config.timeout.total_seconds()))
