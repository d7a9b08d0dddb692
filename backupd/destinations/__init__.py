"""The destination registry: config `type` -> implementation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from backupd.config import DestinationConfig
from backupd.destinations.base import Destination


def _local(config: Any) -> Destination:
    from backupd.destinations.local import LocalDestination

    return LocalDestination(config)


def _s3(config: Any) -> Destination:
    from backupd.destinations.s3 import S3Destination

    return S3Destination(config)


def _supabase(config: Any) -> Destination:
    from backupd.destinations.supabase_storage import SupabaseDestination

    return SupabaseDestination(config)


def _rclone(config: Any) -> Destination:
    from backupd.destinations.rclone import RcloneDestination

    return RcloneDestination(config)


def _git(config: Any) -> Destination:
    from backupd.destinations.git import GitDestination

    return GitDestination(config)


DESTINATION_TYPES: dict[str, Callable[[Any], Destination]] = {
    "local": _local,
    "s3": _s3,
    "supabase": _supabase,
    "rclone": _rclone,
    "git": _git,
}


def build(config: DestinationConfig) -> Destination:
    """The Destination for one configured destination."""
    return DESTINATION_TYPES[config.type](config)
