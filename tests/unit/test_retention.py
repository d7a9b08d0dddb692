"""Retention selection (like restic's `forget`) over two years of synthetic daily backups: what
each policy keeps, that the newest backup always stays, and that a kept incremental keeps its
whole chain (its full and the incrementals before it)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from backupd.config import Retention
from backupd.retention import BackupRef, select, select_expired

NOW = datetime(2026, 1, 1, 0, 0, tzinfo=UTC)
DAYS = [date(2024, 1, 1) + timedelta(days=n) for n in range((date(2026, 1, 1) - date(2024, 1, 1)).days)]


def _id(day: date, hour: int = 2) -> str:
    return f"{day:%Y%m%d}T{hour:02d}0000Z"


def _daily_fulls() -> list[BackupRef]:
    return [BackupRef(_id(d)) for d in DAYS]


def _weekly_chains() -> list[BackupRef]:
    """A full every Monday, an incremental (based on that Monday's full) every other day."""
    refs, base = [], None
    for day in DAYS:
        if day.weekday() == 0 or base is None:
            base = _id(day)
            refs.append(BackupRef(base))
        else:
            refs.append(BackupRef(_id(day), "incremental", base))
    return refs


def _days(*texts: str) -> set[str]:
    return {t.replace("-", "") + "T020000Z" for t in texts}


MONTH_ENDS_2025 = _days("2025-01-31", "2025-02-28", "2025-03-31", "2025-04-30", "2025-05-31", "2025-06-30",
                        "2025-07-31", "2025-08-31", "2025-09-30", "2025-10-31", "2025-11-30", "2025-12-31")
LAST_7 = _days(*(f"2025-12-{d:02d}" for d in range(25, 32)))

CASES = [
    # (name, backups, policy, kept ids)
    ("keep_last 7", _daily_fulls(), Retention(keep_last=7), LAST_7),
    ("keep_daily 7", _daily_fulls(), Retention(keep_daily=7), LAST_7),
    ("keep_days 3", _daily_fulls(), Retention(keep_days=3), _days("2025-12-29", "2025-12-30", "2025-12-31")),
    # 2025-12-31 is a Wednesday: the newest of its ISO week, then the Sundays before
    ("keep_weekly 4", _daily_fulls(), Retention(keep_weekly=4),
     _days("2025-12-31", "2025-12-28", "2025-12-21", "2025-12-14")),
    ("keep_monthly 12", _daily_fulls(), Retention(keep_monthly=12), MONTH_ENDS_2025),
    ("keep_monthly 100 (more than exist)", _daily_fulls(), Retention(keep_monthly=100),
     MONTH_ENDS_2025 | {_id(date(2024, m + 1, 1) - timedelta(days=1)) for m in range(1, 12)} | _days("2024-12-31")),
    ("GFS 7 daily + 4 weekly + 12 monthly", _daily_fulls(),
     Retention(keep_daily=7, keep_weekly=4, keep_monthly=12),
     LAST_7 | _days("2025-12-21", "2025-12-14") | MONTH_ENDS_2025),
    ("keep_last 1 keeps the newest incremental's chain", _weekly_chains(), Retention(keep_last=1),
     _days("2025-12-29", "2025-12-30", "2025-12-31")),
    ("daily 2 + monthly 2 over chains", _weekly_chains(), Retention(keep_daily=2, keep_monthly=2),
     _days("2025-12-29", "2025-12-30", "2025-12-31", *(f"2025-11-{d}" for d in range(24, 31)))),
]


@pytest.mark.parametrize(("name", "backups", "policy", "kept"), CASES, ids=[c[0] for c in CASES])
def test_selection_over_two_years(name, backups, policy, kept):
    """Exactly the expected ids are kept; everything else expires; the newest is always kept."""
    keep = select(backups, policy, NOW)
    assert set(keep) == kept
    assert select_expired(backups, policy, NOW) == {b.id for b in backups} - kept
    newest = max(b.id for b in backups)
    assert newest in keep and "newest" in keep[newest]


def test_keep_daily_keeps_the_newest_of_each_day():
    """Two backups a day: keep_daily keeps the later one of each of the last N days."""
    backups = [BackupRef(_id(d, h)) for d in DAYS[-10:] for h in (2, 14)]
    keep = select(backups, Retention(keep_daily=3), NOW)
    assert set(keep) == {_id(d, 14) for d in DAYS[-3:]}


def test_newest_survives_a_policy_that_keeps_nothing_recent():
    """keep_days 1 when the only backups are a year old: the newest one still stays."""
    backups = [BackupRef(_id(d)) for d in DAYS[:30]]
    keep = select(backups, Retention(keep_days=1), NOW)
    assert set(keep) == {_id(DAYS[29])}


def test_a_kept_incremental_never_loses_its_full():
    """Whatever the policy, every kept incremental's base full and earlier chain links are kept."""
    backups = _weekly_chains()
    by_id = {b.id: b for b in backups}
    for policy in (Retention(keep_last=3), Retention(keep_daily=10), Retention(keep_weekly=5, keep_monthly=6),
                   Retention(keep_days=45)):
        keep = set(select(backups, policy, NOW))
        for kept in keep:
            ref = by_id[kept]
            if ref.kind == "incremental":
                assert ref.base in keep
                chain = [b.id for b in backups if b.base == ref.base and b.id < kept]
                assert set(chain) <= keep


def test_no_rule_keeps_everything():
    """An empty policy expires nothing."""
    backups = _daily_fulls()
    assert select_expired(backups, Retention(), NOW) == set()


def test_command_made_backups_push_no_other_backup_out():
    """keep_last 3 over three daily backups: ten quick `/backup` runs (command-made) leave all
    three scheduled backups in place; the commands' own backups beyond the rules expire."""
    scheduled = [BackupRef(_id(d)) for d in DAYS[-3:]]
    burst = [BackupRef(f"{DAYS[-1]:%Y%m%d}T12{m:02d}00Z", commanded=True) for m in range(10)]
    kept = select(scheduled + burst, Retention(keep_last=3), NOW)
    assert {b.id for b in scheduled} <= set(kept)
    assert {b.id for b in burst if b.id in kept} == {b.id for b in burst[-3:]}
    # without the mark, the same burst would have pushed every scheduled backup out
    unmarked = [BackupRef(b.id) for b in burst]
    assert not {b.id for b in scheduled} & set(select(scheduled + unmarked, Retention(keep_last=3), NOW))


def test_the_newest_verified_backup_is_never_deleted():
    """A verified backup older than what keep_last keeps stays (the last known good one); an older
    verified one does not."""
    backups = [BackupRef(_id(d), verified=d in (DAYS[-10], DAYS[-20])) for d in DAYS[-30:]]
    expired = select_expired(backups, Retention(keep_last=3), NOW)
    assert _id(DAYS[-10]) not in expired and _id(DAYS[-20]) in expired
    assert len(expired) == 30 - 4
