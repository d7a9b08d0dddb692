"""The Prometheus rules and the Grafana dashboard in monitoring/, checked by the real tools against
metrics that backupd really wrote: a real backup to two destinations (one of them broken), a real
failed restore drill, a real failed run. Each metrics file is turned into promtool's test input;
nothing in the input series is written by hand."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, PgServer, run_cli, write_config

RULES = REPO / "monitoring" / "prometheus" / "backupd-rules.yml"
DASHBOARD = REPO / "monitoring" / "grafana" / "backupd.json"
OPERATIONS = REPO / "docs" / "operations.md"
OFFSET = 3600.0  # promtool's clock starts at 0: the metrics' "now" is put at 1h
LABELS = {"instance": "db1:9100", "job": "node"}
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian package prometheus; "
                                                               "scripts/ensure-tools.sh installs it)")
SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})?\s+(\S+)$')


@dataclass
class MetricsFile:
    """One real backupd.prom and the moment it was written."""

    text: str
    written: float

    def samples(self) -> list[tuple[str, dict[str, str], float]]:
        found = []
        for line in self.text.splitlines():
            if not line or line.startswith("#"):
                continue
            match = SAMPLE.match(line)
            assert match, f"not a sample line: {line!r}"
            labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
            found.append((match.group(1), labels, float(match.group(3))))
        return found

    def names(self) -> set[str]:
        return {line.split()[2] for line in self.text.splitlines() if line.startswith("# TYPE ")}


def _snapshot(state: Path) -> MetricsFile:
    path = state / "backupd.prom"
    return MetricsFile(path.read_text(), path.stat().st_mtime)


@pytest.fixture(scope="module")
def real_metrics(pg: PgServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, MetricsFile]:
    """Metrics files of real runs: `partial` (a backup stored at `local`, refused by `broken`),
    `drill_failed` (then a restore drill of that backup after one of its bytes flipped),
    `failed` (then a backup of a database that does not exist)."""
    root = tmp_path_factory.mktemp("monitoring")
    (root / "not-a-dir").write_text("a file where the broken destination wants a folder\n")
    sections: dict[str, Any] = {
        "source": {"dsn": pg.fresh_db("mon")},
        "state": {"dir": str(root / "state"), "stale_after": "2h"},
        "destinations": [
            {"name": "local", "type": "local", "path": str(root / "backups")},
            {"name": "broken", "type": "local", "path": str(root / "not-a-dir" / "backups"), "retries": 0},
        ],
    }
    config = write_config(root / "backupd.toml", sections)
    files: dict[str, MetricsFile] = {}
    result = run_cli("--config", str(config), "-q", "backup")
    assert result.returncode == 3, result.stderr
    files["partial"] = _snapshot(root / "state")
    backup = next(p for p in (root / "backups").iterdir() if p.is_dir())
    data = bytearray((backup / "data.sql.zst").read_bytes())
    data[len(data) // 2] ^= 0x01
    (backup / "data.sql.zst").write_bytes(bytes(data))
    result = run_cli("--config", str(config), "-q", "verify", "latest", "--from", "local", "--restore-test")
    assert result.returncode == 1, result.stderr
    files["drill_failed"] = _snapshot(root / "state")
    sections["source"] = {"dsn": pg.dsn("no_such_database")}
    write_config(config, sections)
    result = run_cli("--config", str(config), "-q", "backup")
    assert result.returncode == 1, result.stderr
    files["failed"] = _snapshot(root / "state")
    return files


def input_series(metrics: MetricsFile, steps: int = 600) -> list[dict[str, str]]:
    """promtool input series from a real metrics file: every sample held constant for `steps`,
    with `instance`/`job` as a scrape adds them, and Unix timestamps moved so that the file's
    write time is promtool's OFFSET (0 stays 0: never)."""
    series = []
    for name, labels, value in metrics.samples():
        if name.endswith("_timestamp_seconds") and value > 0:
            value = value - metrics.written + OFFSET
        label_text = ",".join(f'{k}="{v}"' for k, v in {**labels, **LABELS}.items())
        series.append({"series": f"{name}{{{label_text}}}", "values": f"{value:f}+0x{steps}"})
    return series


def _rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def _render(template: str, labels: dict[str, str], value: str) -> str:
    """The subset of Prometheus' templating the rules use: {{ $labels.x }} and {{ $value }}."""
    text = re.sub(r"\{\{\s*\$labels\.(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), template)
    return re.sub(r"\{\{\s*\$value\s*\}\}", value, text)


def expected_alert(name: str, labels: dict[str, str], value: str = "1") -> dict[str, Any]:
    """What promtool should see firing: the series' labels plus the rule's own, and its
    annotations rendered."""
    rule = next(r for r in _rules() if r["alert"] == name)
    all_labels = {**labels, **rule["labels"]}
    return {"exp_labels": all_labels,
            "exp_annotations": {k: _render(v, all_labels, value) for k, v in rule["annotations"].items()}}


Case = tuple[list[dict[str, str]], str, dict[str, list[dict[str, Any]]]]


def promtool_test(tmp_path: Path, cases: list[Case], interval: str = "1m") -> subprocess.CompletedProcess[str]:
    """Run `promtool test rules` on generated cases: (input series, eval time, {alert: expected}),
    one sample and one rule evaluation per `interval`; every rule is checked at each eval time
    (unlisted: none firing)."""
    tests = []
    for series, eval_time, expected in cases:
        checks = [{"eval_time": eval_time, "alertname": rule["alert"], "exp_alerts": expected.get(rule["alert"], [])}
                  for rule in _rules()]
        tests.append({"interval": interval, "input_series": series, "alert_rule_test": checks})
    spec = tmp_path / "backupd-rules.test.yml"
    spec.write_text(yaml.safe_dump({"rule_files": [str(RULES)], "evaluation_interval": interval, "tests": tests}))
    assert PROMTOOL
    return subprocess.run([PROMTOOL, "test", "rules", str(spec)], capture_output=True, text=True, timeout=120)


@needs_promtool
def test_rules_pass_promtool_check():
    """`promtool check rules` accepts the file; every rule has for:, a severity and a runbook
    link to an anchor that exists in docs/operations.md."""
    assert PROMTOOL
    result = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    headings = {re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
                for line in OPERATIONS.read_text().splitlines() if line.startswith("#")}
    for rule in _rules():
        assert rule.get("for"), rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        path, _, anchor = rule["annotations"]["runbook_url"].partition("#")
        assert path == "docs/operations.md" and anchor in headings, f"{rule['alert']}: no heading for #{anchor}"


@pytest.mark.slow
@needs_promtool
def test_alerts_fire_on_real_runs_metrics(real_metrics, tmp_path):
    """promtool evaluates the rules over series generated from each real metrics file: a broken
    destination while `local` stored the run, staleness once stale_after (2h) has passed, no
    drill ever, a failed restore drill and verification, a failed run, and no metrics at all."""
    partial, drill_failed, failed = (input_series(real_metrics[k]) for k in ("partial", "drill_failed", "failed"))
    scrape = dict(LABELS)
    cases = [
        # 20 minutes after the partial run: only the broken destination and the drill never run alert
        (partial, "80m", {
            "BackupdDestinationFailing": [expected_alert("BackupdDestinationFailing",
                                                         {"destination": "broken", **scrape}, "1")],
            "BackupdRestoreDrillTooOld": [expected_alert("BackupdRestoreDrillTooOld", scrape)]}),
        # 2h + 20min after it, with no other run: stale too
        (partial, "200m", {
            "BackupdDestinationFailing": [expected_alert("BackupdDestinationFailing",
                                                         {"destination": "broken", **scrape}, "1")],
            "BackupdBackupStale": [expected_alert("BackupdBackupStale", scrape)],
            "BackupdRestoreDrillTooOld": [expected_alert("BackupdRestoreDrillTooOld", scrape)]}),
        # after the failed drill: the drill and the destination's verification alert, the drill is recent
        (drill_failed, "80m", {
            "BackupdDestinationFailing": [expected_alert("BackupdDestinationFailing",
                                                         {"destination": "broken", **scrape}, "1")],
            "BackupdRestoreDrillFailed": [expected_alert("BackupdRestoreDrillFailed", {"outcome": "failed", **scrape})],
            "BackupdVerifyFailed": [expected_alert("BackupdVerifyFailed", {"destination": "local", **scrape})]}),
        # after the failed run: failing; the destination alert stops (no destination stored this run)
        (failed, "80m", {
            "BackupdBackupFailing": [expected_alert("BackupdBackupFailing", {"outcome": "failed", **scrape})],
            "BackupdRestoreDrillFailed": [expected_alert("BackupdRestoreDrillFailed", {"outcome": "failed", **scrape})],
            "BackupdVerifyFailed": [expected_alert("BackupdVerifyFailed", {"destination": "local", **scrape})]}),
        # node_exporter scraped, but no backupd series at all
        ([{"series": 'up{instance="db1:9100",job="node"}', "values": "1+0x60"}], "30m",
         {"BackupdMetricsAbsent": [expected_alert("BackupdMetricsAbsent", {})]}),
    ]
    result = promtool_test(tmp_path, cases)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "SUCCESS" in result.stdout
    # a week and a day (plus 2h) after the failed drill, nothing else having happened: too old
    # as well (a sample every 4 minutes: within Prometheus' 5-minute lookback)
    series = input_series(real_metrics["drill_failed"], steps=3000)
    week = [(series, "195h", {
        "BackupdDestinationFailing": [expected_alert("BackupdDestinationFailing",
                                                     {"destination": "broken", **scrape}, "1")],
        "BackupdBackupStale": [expected_alert("BackupdBackupStale", scrape)],
        "BackupdRestoreDrillTooOld": [expected_alert("BackupdRestoreDrillTooOld", scrape)],
        "BackupdRestoreDrillFailed": [expected_alert("BackupdRestoreDrillFailed", {"outcome": "failed", **scrape})],
        "BackupdVerifyFailed": [expected_alert("BackupdVerifyFailed", {"destination": "local", **scrape})]})]
    result = promtool_test(tmp_path, week, interval="4m")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]


def _expressions(panel: dict[str, Any]) -> list[str]:
    found = [target["expr"] for target in panel.get("targets", []) if target.get("expr")]
    for inner in panel.get("panels", []):
        found += _expressions(inner)
    return found


PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
                "offset", "inf", "nan", "time", "max", "min", "sum", "avg", "count", "topk", "bottomk",
                "max_over_time", "min_over_time", "avg_over_time", "last_over_time", "changes", "increase",
                "clamp_min", "vector", "label_replace", "sort", "sort_desc", "abs", "absent", "timestamp",
                "rate", "delta", "resets", "scalar", "round"}


def metric_names(expr: str) -> set[str]:
    """The metric names an expression reads: identifiers that are not PromQL words, labels, label
    values, ranges or Grafana variables."""
    stripped = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)      # label values
    stripped = re.sub(r"\{[^}]*\}", "", stripped)             # label matchers
    stripped = re.sub(r"\[[^\]]*\]", "", stripped)            # ranges
    stripped = re.sub(r"\$\w+|\$\{[^}]*\}", "", stripped)     # Grafana variables
    stripped = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", stripped)
    names = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", stripped))
    return {name for name in names if name not in PROMQL_WORDS and not re.fullmatch(r"\d+[smhdwy]?|e\d+", name)}


def test_dashboard_reads_only_metrics_backupd_writes(real_metrics, tmp_path):
    """Every expression of the Grafana dashboard reads metric names present in a real metrics
    file (labels too), promtool's parser accepts each, and every panel the issue names is there."""
    dashboard = json.loads(DASHBOARD.read_text())
    written = real_metrics["drill_failed"].names()
    labels = {key for _name, sample_labels, _value in real_metrics["drill_failed"].samples() for key in sample_labels}
    titles = []
    expressions = []
    for panel in dashboard["panels"]:
        titles.append(panel["title"].lower())
        expressions += _expressions(panel)
    assert len(expressions) >= 8
    for expr in expressions:
        names = metric_names(expr)
        assert names, f"no metric in {expr!r}"
        assert names <= written, f"{expr!r} reads {sorted(names - written)}, not in backupd.prom"
        for matcher in re.findall(r"\{([^}]*)\}", expr):
            for label in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matcher):
                assert label in labels | {"instance", "job"}, f"{expr!r}: label {label} is not exported"
    for wanted in ("health", "since last success", "duration", "size", "rows per table", "rto", "errors"):
        assert any(wanted in title for title in titles), f"no panel about {wanted}: {titles}"

    if PROMTOOL:  # PromQL syntax, by Prometheus' own parser: each expression as a recording rule
        rules = [{"record": f"dashboard:expr_{n}", "expr": expr.replace("$instance", ".*")}
                 for n, expr in enumerate(expressions)]
        path = tmp_path / "dashboard-exprs.yml"
        path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
        result = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
