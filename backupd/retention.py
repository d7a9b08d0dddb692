"""Which backups expire: a pure selection (like restic's `forget`), and `apply_retention` to act on it.

Rules combine: a backup kept by any rule stays. Whatever the rules say, the newest complete
backup is never deleted, and neither is a full that a kept incremental builds on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import structlog

from backupd.config import Retention
from backupd.manifest import Manifest, id_time

if TYPE_CHECKING:
    from backupd.destinations.base import Destination

log = structlog.get_logger("backupd.retention")


@dataclass(frozen=True)
class BackupRef:
    """What the selection needs to know of a backup."""

    id: str
    kind: str = "full"
    base: str | None = None

    @property
    def time(self) -> datetime:
        """The UTC start the id stands for."""
        return id_time(self.id)


def _bucket_keep(backups: list[BackupRef], count: int | None, bucket: str, reasons: dict[str, list[str]]) -> None:
    if not count:
        return
    seen: list[str] = []
    for ref in backups:  # newest first
        t = ref.time
        if bucket == "daily":
            key = t.strftime("%Y-%m-%d")
        elif bucket == "weekly":
            year, week, _ = t.isocalendar()
            key = f"{year}-W{week:02d}"
        else:
            key = t.strftime("%Y-%m")
        if key in seen:
            continue
        seen.append(key)
        if len(seen) > count:
            break
        reasons.setdefault(ref.id, []).append(f"{bucket} {key}")


def select(backups: Sequence[BackupRef], policy: Retention, now: datetime) -> dict[str, list[str]]:
    """Backups to keep, each with the reasons it is kept; every other id expires."""
    newest_first = sorted(backups, key=lambda b: b.id, reverse=True)
    reasons: dict[str, list[str]] = {}
    if policy.is_unlimited():
        return {b.id: ["no retention rule"] for b in newest_first}
    if newest_first:
        reasons.setdefault(newest_first[0].id, []).append("newest")
    if policy.keep_last:
        for ref in newest_first[: policy.keep_last]:
            reasons.setdefault(ref.id, []).append(f"last {policy.keep_last}")
    if policy.keep_days:
        horizon = now - timedelta(days=policy.keep_days)
        for ref in newest_first:
            if ref.time >= horizon:
                reasons.setdefault(ref.id, []).append(f"within {policy.keep_days}d")
    _bucket_keep(newest_first, policy.keep_daily, "daily", reasons)
    _bucket_keep(newest_first, policy.keep_weekly, "weekly", reasons)
    _bucket_keep(newest_first, policy.keep_monthly, "monthly", reasons)
    by_id = {b.id: b for b in newest_first}
    # an incremental needs its whole chain: keep every backup it builds on
    for kept in list(reasons):
        ref = by_id[kept]
        while ref.kind == "incremental" and ref.base and ref.base in by_id:
            chain_ids = _chain_between(newest_first, ref)
            for needed in chain_ids:
                reasons.setdefault(needed, []).append(f"base of {kept}")
            break
    return reasons


def _chain_between(newest_first: list[BackupRef], ref: BackupRef) -> list[str]:
    """The full `ref` builds on and every incremental of that chain older than `ref`."""
    assert ref.base is not None
    return [b.id for b in newest_first
            if b.id < ref.id and (b.id == ref.base or (b.kind == "incremental" and b.base == ref.base))]


def select_expired(backups: Sequence[BackupRef], policy: Retention, now: datetime) -> set[str]:
    """Ids that the policy lets go."""
    keep = select(backups, policy, now)
    return {b.id for b in backups if b.id not in keep}


def refs(manifests: Sequence[Manifest]) -> list[BackupRef]:
    """BackupRefs of listed manifests."""
    return [BackupRef(m.id, m.kind, m.base) for m in manifests]


def apply_retention(dest: Destination, policy: Retention, now: datetime, dry_run: bool = False
                    ) -> tuple[dict[str, list[str]], list[str]]:
    """Remove what `policy` lets go at `dest`; returns (kept with reasons, removed ids)."""
    manifests = dest.backups()
    backup_refs = refs(manifests)
    keep = select(backup_refs, policy, now)
    # newest first: a run interrupted half-way never leaves an incremental whose full is gone
    expired = sorted((b.id for b in backup_refs if b.id not in keep), reverse=True)
    for backup_id in expired:
        if not dry_run:
            dest.remove(backup_id)
        log.info("backup_pruned" if not dry_run else "backup_would_prune",
                 destination=dest.name, backup_id=backup_id)
    return keep, expired
