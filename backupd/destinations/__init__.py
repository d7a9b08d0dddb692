"""The destination registry: config `type` -> implementation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from backupd.config import DestinationConfig
from backupd.destinations.base import Destination


def _local(config: Any) -> Destination:
    from backupd.destinations.local import LocalDestination

    return LocalDestination(config)


DESTINATION_TYPES: dict[str, Callable[[Any], Destination]] = {
    "local": _local,
}


def build(config: DestinationConfig) -> Destination:
    """The Destination for one configured destination."""
    return DESTINATION_TYPES[config.type](config)
