"""The notifier registry: config `type` -> implementation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

NOTIFIER_TYPES: dict[str, Callable[[Any], Any]] = {}
