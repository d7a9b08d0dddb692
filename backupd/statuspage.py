"""The status page served at `GET /` by the daemon's loopback listener ([http] listen): one HTML
document for people, rendered by the server from status.json, the tail of history.jsonl and the
config. No JavaScript, no external asset: the two charts are inline SVG, the style one inline
`<style>` allowed by its hash in the Content-Security-Policy (`STYLE_CSP`; `img-src data:` only
for the empty favicon, so a browser does not ask for /favicon.ico). Every value from the
state files or the config goes through `html.escape`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from html import escape
from pathlib import Path
from typing import Any

from backupd.config import Config
from backupd.status import StatusStore, health, parse_time

CHART_RUNS = 30
TABLE_RUNS = 15
HISTORY_TAIL_BYTES = 1 << 20  # the last MiB of history.jsonl holds far more than 30 runs

STYLE = """
:root{color-scheme:light dark;--bg:#fff;--fg:#1d232a;--muted:#5b6570;--line:#d8dde3;--card:#f5f7f9;
--ok:#1f7a3a;--warn:#a35a00;--bad:#b3261e;--info:#1f5fa8;--bar:#3b7dd8}
@media (prefers-color-scheme:dark){:root{--bg:#111418;--fg:#e4e8ec;--muted:#9aa5b1;--line:#2c333b;
--card:#1a1f25;--ok:#4cc470;--warn:#f0a53a;--bad:#ff6b61;--info:#6aa8ff;--bar:#5b9bf0}}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);font:15px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif}
main{max-width:1100px;margin:0 auto;padding:16px}
h1{font-size:1.4em;margin:0 0 4px}h2{font-size:1.1em;margin:24px 0 8px}
.muted{color:var(--muted)}
.badge{display:inline-block;padding:2px 10px;border-radius:12px;font-weight:600;color:#fff}
.healthy,.success,.passed{background:var(--ok)}.stale,.partial{background:var(--warn)}
.failing,.failed{background:var(--bad)}.never{background:var(--info)}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(200px,1fr));gap:10px}
.card{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:10px 12px}
.card b{display:block;font-size:.8em;color:var(--muted);font-weight:500}
.scroll{overflow-x:auto;border:1px solid var(--line);border-radius:8px}
table{border-collapse:collapse;width:100%;font-size:.92em}
th,td{text-align:left;padding:6px 10px;border-bottom:1px solid var(--line);white-space:nowrap;vertical-align:top}
th{background:var(--card);font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums}
td.err{white-space:normal;min-width:16em;overflow-wrap:anywhere;color:var(--bad)}
td.wrap{white-space:normal;min-width:14em;overflow-wrap:anywhere}
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(300px,1fr));gap:10px;margin-bottom:10px}
svg{width:100%;height:auto;display:block}
svg text{fill:var(--muted);font-size:13px}
figure{margin:0}
svg .axis{stroke:var(--line)}svg .bar{fill:var(--bar)}svg .bar.failed{fill:var(--bad)}
svg .bar.partial{fill:var(--warn)}
.ok{color:var(--ok)}.no{color:var(--bad)}
"""
STYLE_CSP = "'sha256-" + base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode() + "'"
CONTENT_SECURITY_POLICY = (f"default-src 'none'; style-src {STYLE_CSP}; img-src data:; "
                           "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


@dataclass(frozen=True)
class DestinationView:
    """What the page shows of a configured destination."""

    name: str
    type: str
    retention: str


def destinations_of(config: Config) -> list[DestinationView]:
    """The configured destinations with their retention in words."""
    views = []
    for destination in config.destinations:
        rules = {k: v for k, v in destination.retention.model_dump().items() if v is not None}
        text = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in rules.items()) or "keep everything"
        views.append(DestinationView(destination.name, destination.type, text))
    return views


def recent_runs(state_dir: Path, limit: int = CHART_RUNS) -> list[dict[str, Any]]:
    """The last `limit` backup runs of history.jsonl, oldest first (only its tail is read)."""
    path = state_dir / "history.jsonl"
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            handle.seek(max(0, size - HISTORY_TAIL_BYTES))
            tail = handle.read()
    except OSError:
        return []
    lines = tail.split(b"\n")
    if len(tail) == HISTORY_TAIL_BYTES:
        lines = lines[1:]  # the first line may be cut
    runs = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("event", "backup") == "backup" and record.get("id"):
            runs.append(record)
    return runs[-limit:]


def render_page(config: Config, now: datetime | None = None) -> str:
    """The status page of `config`'s state dir, as HTML text."""
    now = now or datetime.now(UTC)
    status = StatusStore(config.state.dir).load()
    runs = recent_runs(config.state.dir)
    return _Page(status, config.state.stale_after, destinations_of(config), runs, now).render()


def _when(text: Any, now: datetime) -> str:
    moment = parse_time(text if isinstance(text, str) else None)
    if moment is None:
        return "never"
    seconds = (now - moment).total_seconds()
    ago = abs(seconds)
    span = (f"{int(ago)} s" if ago < 120 else f"{int(ago // 60)} min" if ago < 7200
            else f"{ago / 3600:.1f} h" if ago < 172800 else f"{ago / 86400:.1f} days")
    relative = f"{span} ago" if seconds >= 0 else f"in {span}"
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M} UTC ({relative})"


def _size(count: Any) -> str:
    value = float(count or 0)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"


def _seconds(value: Any) -> str:
    number = float(value or 0)
    return f"{number:.1f} s" if number < 120 else f"{number / 60:.1f} min"


def health_reason(status: dict[str, Any], state: str, stale_after: timedelta, now: datetime) -> str:
    """Why the health is what it is, in one sentence."""
    last_run: dict[str, Any] = status.get("last_run") or {}
    success = (status.get("last_success") or {})
    if state == "never":
        return "No backup has run yet."
    if state == "failing":
        if last_run.get("outcome") == "failed":
            return f"The last backup run ({last_run.get('id')}) failed: {last_run.get('error') or 'no error recorded'}"
        drills = [d for d in (status.get("drills") or {}).values() if (d or {}).get("outcome") == "failed"]
        drill = drills[0] if drills else (status.get("last_drill") or {})
        return (f"The last verification of {drill.get('id')} at {drill.get('destination')} failed: "
                f"{drill.get('error') or 'no error recorded'}")
    if state == "stale":
        return (f"No successful backup within stale_after ({stale_after}); the last one finished "
                f"{_when(success.get('finished'), now)}.")
    return f"The last successful backup ({success.get('id')}) finished {_when(success.get('finished'), now)}."


def bar_chart(title: str, runs: Sequence[dict[str, Any]], value: Callable[[dict[str, Any]], float],
              label: Callable[[float], str]) -> str:
    """An inline SVG bar chart, one bar per run (oldest left), coloured by outcome, with a <title>
    per bar (the run id and its value)."""
    width, height, left, bottom, top = 600, 180, 64, 22, 12
    values = [max(0.0, value(run)) for run in runs]
    peak = max(values, default=0.0) or 1.0
    slot = (width - left - 8) / max(len(runs), 1)
    parts = [f'<svg viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">',
             f"<title>{escape(title)}</title>",
             f'<line class="axis" x1="{left}" y1="{height - bottom}" x2="{width - 4}" y2="{height - bottom}"/>',
             f'<line class="axis" x1="{left}" y1="{top}" x2="{width - 4}" y2="{top}"/>',
             f'<text x="{left - 6}" y="{top + 4}" text-anchor="end">{escape(label(peak))}</text>',
             f'<text x="{left - 6}" y="{height - bottom}" text-anchor="end">0</text>']
    for index, (run, amount) in enumerate(zip(runs, values, strict=True)):
        bar_height = (height - bottom - top) * amount / peak
        x = left + index * slot + slot * 0.15
        outcome = str(run.get("outcome", ""))
        css = "bar " + (outcome if outcome in ("failed", "partial") else "")
        parts.append(f'<rect class="{css.strip()}" x="{x:.1f}" y="{height - bottom - bar_height:.1f}" '
                     f'width="{slot * 0.7:.1f}" height="{max(bar_height, 0.5):.1f}">'
                     f"<title>{escape(str(run.get('id')))} ({escape(outcome)}): {escape(label(amount))}</title></rect>")
    if runs:
        parts.append(f'<text x="{left}" y="{height - 6}">{escape(str(runs[0].get("id")))}</text>')
        parts.append(f'<text x="{width - 4}" y="{height - 6}" text-anchor="end">'
                     f'{escape(str(runs[-1].get("id")))}</text>')
    else:
        parts.append(f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle">no run yet</text>')
    parts.append("</svg>")
    return "".join(parts)


class _Page:
    def __init__(self, status: dict[str, Any], stale_after: timedelta, destinations: list[DestinationView],
                 runs: list[dict[str, Any]], now: datetime) -> None:
        self.status = status
        self.stale_after = stale_after
        self.destinations = destinations
        self.runs = runs
        self.now = now

    def render(self) -> str:
        state = health(self.status, self.stale_after, self.now)["health"]
        reason = health_reason(self.status, state, self.stale_after, self.now)
        last_run: dict[str, Any] = self.status.get("last_run") or {}
        host = str(last_run.get("host") or "")
        return "".join([
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            '<meta name="color-scheme" content="light dark">',
            '<link rel="icon" href="data:,">',
            f"<title>backupd: {escape(state)}</title><style>{STYLE}</style></head><body><main>",
            f"<h1>backupd{' on ' + escape(host) if host else ''} "
            f'<span class="badge {escape(state)}" id="health">{escape(state)}</span></h1>',
            f'<p id="reason">{escape(reason)}</p>',
            self._cards(),
            "<h2>Last runs</h2>", self._charts(), self._runs_table(),
            "<h2>Last drill</h2>", self._drill(),
            "<h2>Destinations</h2>", self._destinations_table(),
            f'<p class="muted">Rendered {escape(_when(self.now.isoformat(), self.now))}. '
            "Also: <a href=\"/status\">/status</a> (JSON), <a href=\"/metrics\">/metrics</a>, "
            "<a href=\"/healthz\">/healthz</a>.</p>",
            "</main></body></html>\n",
        ])

    def _cards(self) -> str:
        success = self.status.get("last_success") or {}
        drill = self.status.get("last_drill") or {}
        cards = [
            ("Last success", f"{success.get('id') or '-'}", _when(success.get("finished"), self.now)),
            ("Next run", "", _when(self.status.get("next_run"), self.now) if self.status.get("next_run")
             else "not scheduled"),
            ("Failed runs in a row", str(self.status.get("consecutive_failures") or 0), ""),
            ("Last drill RTO", _seconds(drill.get("rto_seconds")) if drill.get("rto_seconds") else "-",
             _when(drill.get("finished"), self.now) if drill else "no drill yet"),
        ]
        body = "".join(f'<div class="card"><b>{escape(title)}</b>{escape(main)}'
                       f'{"<br>" if main and detail else ""}<span class="muted">{escape(detail)}</span></div>'
                       for title, main, detail in cards)
        return f'<div class="cards" id="summary">{body}</div>'

    def _charts(self) -> str:
        runs = self.runs[-CHART_RUNS:]
        duration = bar_chart(f"Duration of the last {len(runs)} runs", runs,
                             lambda run: float(run.get("duration_seconds") or 0), _seconds)
        size = bar_chart(f"Stored size of the last {len(runs)} runs", runs,
                         lambda run: float(run.get("bytes") or 0), _size)
        return (f'<div class="charts"><figure class="card" id="chart-duration"><b>Duration</b>{duration}</figure>'
                f'<figure class="card" id="chart-size"><b>Size</b>{size}</figure></div>')

    def _runs_table(self) -> str:
        rows = []
        for run in reversed(self.runs[-TABLE_RUNS:]):
            destinations = run.get("destinations") or {}
            where = "<br>".join(
                f'<span class="{"ok" if (result or {}).get("ok") else "no"}">{escape(str(name))}: '
                f'{"stored" if (result or {}).get("ok") else escape(str((result or {}).get("error") or "failed"))}</span>'
                for name, result in destinations.items()) or "-"
            outcome = str(run.get("outcome", ""))
            rows.append(
                f"<tr><td>{escape(str(run.get('id')))}</td><td>{escape(str(run.get('kind', 'full')))}</td>"
                f'<td><span class="badge {escape(outcome)}">{escape(outcome)}</span></td>'
                f'<td class="num">{escape(_seconds(run.get("duration_seconds")))}</td>'
                f'<td class="num">{escape(_size(run.get("bytes")))}</td>'
                f'<td class="num">{int(run.get("rows") or 0):,}</td><td class="wrap">{where}'
                + (f'<br><span class="no">{escape(str(run.get("error")))}</span>' if run.get("error") else "")
                + "</td></tr>")
        if not rows:
            rows.append('<tr><td colspan="7" class="muted">no run yet</td></tr>')
        return ('<div class="scroll"><table id="runs"><thead><tr><th>id</th><th>kind</th><th>outcome</th>'
                '<th>duration</th><th>size</th><th>rows</th><th>destinations</th></tr></thead><tbody>'
                + "".join(rows) + "</tbody></table></div>")

    def _drill(self) -> str:
        drill = self.status.get("last_drill") or {}
        if not drill:
            return '<p id="drill" class="muted">No verification or restore drill yet (backupd verify latest --restore-test).</p>'
        outcome = str(drill.get("outcome", ""))
        what = "restore drill" if drill.get("restore_test") else "verification"
        rto = f", restore time (RTO) {_seconds(drill.get('rto_seconds'))}" if drill.get("rto_seconds") else ""
        error = f'<br><span class="no">{escape(str(drill.get("error")))}</span>' if drill.get("error") else ""
        return (f'<p id="drill"><span class="badge {escape(outcome)}">{escape(outcome)}</span> '
                f"{escape(what)} of {escape(str(drill.get('id')))} at {escape(str(drill.get('destination')))}, "
                f"{escape(_when(drill.get('finished'), self.now))}, took {escape(_seconds(drill.get('seconds')))}"
                f"{escape(rto)}{error}</p>")

    def _newest_stored(self, name: str) -> str:
        for run in reversed(self.runs):
            if ((run.get("destinations") or {}).get(name) or {}).get("ok"):
                return str(run.get("id"))
        return ""

    def _destinations_table(self) -> str:
        known: dict[str, Any] = self.status.get("destinations") or {}
        drills: dict[str, Any] = self.status.get("drills") or {}
        rows = []
        for view in self.destinations:
            entry = known.get(view.name) or {}
            drill = drills.get(view.name) or {}
            newest = self._newest_stored(view.name) or (
                (self.status.get("last_success") or {}).get("id") if entry.get("last_success") else "") or "-"
            failures = int(entry.get("consecutive_failures") or 0)
            error = entry.get("last_error") if failures else None
            rows.append(
                f"<tr><td>{escape(view.name)}</td><td>{escape(view.type)}</td><td>{escape(str(newest))}</td>"
                f"<td>{escape(_when(entry.get('last_success'), self.now))}</td>"
                f"<td>{escape(view.retention)}</td>"
                f'<td>{escape(str(drill.get("outcome") or "-"))}</td>'
                f'<td class="num">{failures}</td>'
                + (f'<td class="err">{escape(str(error))}</td>' if error else "<td>-</td>") + "</tr>")
        return ('<div class="scroll"><table id="destinations"><thead><tr><th>name</th><th>type</th>'
                "<th>newest backup</th><th>last stored</th><th>retention</th><th>last verify</th>"
                "<th>failures</th><th>last error</th></tr></thead><tbody>"
                + "".join(rows) + "</tbody></table></div>")
