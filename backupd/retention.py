"""Which backups expire: a pure selection (like restic's `forget`), and `apply_retention` to act on it.

Rules combine: a backup kept by any rule stays. Whatever the rules say, the newest complete
backup is never deleted, and neither is a full that a kept incremental builds on.

Backups made on command (Telegram `/backup`, see docs/alerts.md) cannot push others out: every
other backup's fate is decided as if command-made backups did not exist, and a command-made
backup is itself kept or let go by the rules over all backups. So no burst of `/backup` deletes a
backup the schedule alone would keep, and in particular never the newest verified backup (the
newest that passed `backupd verify` at this destination) nor any backup younger than it; the
newest verified backup is never deleted at all.

Backups with an id more than a day in the future, and (with a signing key) backups whose
signature does not verify, are neither counted nor pruned (backupd.signing.counted_for_retention):
a planted `20991231T235959Z` can push nothing out and is never "the newest".
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from backupd.config import Retention
from backupd.manifest import Manifest, id_time
from backupd.signing import counted_for_retention
from backupd.status import StatusStore

if TYPE_CHECKING:
    from backupd.destinations.base import Destination

log = structlog.get_logger("backupd.retention")


@dataclass(frozen=True)
class BackupRef:
    """What the selection needs to know of a backup."""

    id: str
    kind: str = "full"
    base: str | None = None
    # made by a command (Telegram /backup), not by the schedule or an operator's `backupd backup`
    commanded: bool = False
    # passed `backupd verify` (or a drill) at this destination
    verified: bool = False

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


def _rules(newest_first: list[BackupRef], policy: Retention, now: datetime) -> dict[str, list[str]]:
    reasons: dict[str, list[str]] = {}
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
    return reasons


def select(backups: Sequence[BackupRef], policy: Retention, now: datetime) -> dict[str, list[str]]:
    """Backups to keep, each with the reasons it is kept; every other id expires."""
    newest_first = sorted(backups, key=lambda b: b.id, reverse=True)
    if policy.is_unlimited():
        return {b.id: ["no retention rule"] for b in newest_first}
    if any(b.commanded for b in newest_first):
        # command-made backups take no rule's place: the others are judged without them
        reasons = _rules([b for b in newest_first if not b.commanded], policy, now)
        for kept_id, why in _rules(newest_first, policy, now).items():
            if kept_id not in reasons and any(b.id == kept_id and b.commanded for b in newest_first):
                reasons[kept_id] = [*why, "made by a command"]
    else:
        reasons = _rules(newest_first, policy, now)
    verified = next((b for b in newest_first if b.verified), None)
    if verified is not None:
        reasons.setdefault(verified.id, []).append("newest verified")
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


def refs(manifests: Sequence[Manifest], commanded: Collection[str] = (),
         verified: Collection[str] = ()) -> list[BackupRef]:
    """BackupRefs of listed manifests; `commanded` and `verified` name the ids made by a command
    and those that passed verification (both from the state dir, never from the store)."""
    return [BackupRef(m.id, m.kind, m.base, m.id in commanded, m.id in verified) for m in manifests]


def apply_retention(dest: Destination, policy: Retention, now: datetime, dry_run: bool = False,
                    state_dir: Path | None = None, commanded: Collection[str] = (),
                    key: bytes | None = None) -> tuple[dict[str, list[str]], list[str]]:
    """Remove what `policy` lets go at `dest`; returns (kept with reasons, removed ids). With
    `state_dir`, its history (command-made backups) and verify.json (verified ones) count;
    `commanded` names more command-made ids (the run still in progress). Only the backups it may
    count are considered: none in the future, and with `key` only those whose signature verifies."""
    manifests = counted_for_retention(dest.backups(), key, now, dest.name)
    verified: set[str] = set()
    commanded = set(commanded)
    if state_dir is not None:
        store = StatusStore(state_dir)
        commanded |= store.command_backups()
        verified = store.verified_backups(dest.name)
    backup_refs = refs(manifests, commanded, verified)
    keep = select(backup_refs, policy, now)
    # newest first: a run interrupted half-way never leaves an incremental whose full is gone
    expired = sorted((b.id for b in backup_refs if b.id not in keep), reverse=True)
    for backup_id in expired:
        if not dry_run:
            dest.remove(backup_id)
        log.info("backup_pruned" if not dry_run else "backup_would_prune",
                 destination=dest.name, backup_id=backup_id)
    return keep, expired
