"""Metrics and health for monitoring: a Prometheus text file, and an optional loopback HTTP endpoint.

`<state.dir>/backupd.prom` (or `[state] metrics_file`) is rendered from status.json and replaced
atomically after every run (node_exporter's textfile collector reads it). With `[http] listen = "127.0.0.1:9468"` the daemon
also serves `/healthz` (200 when healthy, else 503), `/status` (status.json with health computed
now), `/metrics` (the same text as the file) and `/` (the status page, backupd/statuspage.py).
Every response carries the same security headers (`SECURITY_HEADERS`).

Every request to the endpoint, whatever its route, passes `_Handler.parse_request`: one whose
`Host` header is not the listen address or `localhost` (with the listened port, or none) gets
`421 Misdirected Request`, so a web page cannot read it through DNS rebinding; a connection idle
for `IDLE_TIMEOUT_SECONDS` is dropped, so idle clients cannot hold the server's threads.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import threading
from collections.abc import Callable
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import structlog

from backupd import ownership
from backupd.redact import redact_obj
from backupd.errors import StorageFull
from backupd.status import StatusStore, health, parse_time, write_all
from backupd.statuspage import CONTENT_SECURITY_POLICY

log = structlog.get_logger("backupd.metrics")

METRICS_NAME = "backupd.prom"
IDLE_TIMEOUT_SECONDS = 10.0
HEALTH_STATES = ("healthy", "stale", "failing", "never")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class _Family:
    def __init__(self, name: str, kind: str, help_text: str) -> None:
        self.name = name
        self.kind = kind
        self.help = help_text
        self.samples: list[tuple[dict[str, str], float]] = []

    def add(self, value: float, **labels: str) -> None:
        self.samples.append((labels, value))

    def render(self) -> str:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]
        for labels, value in self.samples:
            label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
            number = repr(float(value)) if value != int(value) else str(int(value))
            lines.append(f"{self.name}{{{label_text}}} {number}" if label_text else f"{self.name} {number}")
        return "\n".join(lines)


def _timestamp(text: Any) -> float:
    moment = parse_time(text if isinstance(text, str) else None)
    return moment.timestamp() if moment else 0.0


def render(status: dict[str, Any], stale_after: timedelta) -> str:
    """The Prometheus text exposition of a status (timestamps in Unix seconds, 0 meaning never)."""
    state = health(status, stale_after)
    last_run: dict[str, Any] = status.get("last_run") or {}
    families: list[_Family] = []

    def family(name: str, kind: str, help_text: str) -> _Family:
        created = _Family(f"backupd_{name}", kind, help_text)
        families.append(created)
        return created

    family("last_success_timestamp_seconds", "gauge",
           "Unix time the last successful or partial backup finished (0: never).").add(
        _timestamp((status.get("last_success") or {}).get("finished")))
    family("last_run_timestamp_seconds", "gauge", "Unix time the last backup run finished (0: never).").add(
        _timestamp(last_run.get("finished")))
    family("last_run_duration_seconds", "gauge", "Wall time of the last backup run.").add(
        float(last_run.get("duration_seconds") or 0))
    family("last_run_bytes", "gauge", "Stored bytes of the last backup run (all artifacts).").add(
        float(last_run.get("bytes") or 0))
    family("last_run_rows", "gauge", "Rows exported by the last backup run.").add(float(last_run.get("rows") or 0))
    run_kind = family("last_run_kind", "gauge", "1 for the kind of the last backup run (full, incremental), else 0.")
    for name in ("full", "incremental"):
        run_kind.add(1.0 if last_run and last_run.get("kind", "full") == name else 0.0, kind=name)
    outcome = family("last_run_outcome", "gauge", "1 for the outcome of the last backup run, else 0.")
    for name in ("success", "partial", "failed"):
        outcome.add(1.0 if last_run.get("outcome") == name else 0.0, outcome=name)
    family("consecutive_failures", "gauge", "Failed runs since the last successful or partial one.").add(
        float(status.get("consecutive_failures") or 0))
    table_rows = family("last_run_table_rows", "gauge", "Rows of each table in the last backup run.")
    for table, rows in sorted((last_run.get("tables") or {}).items()):
        table_rows.add(float(rows or 0), table=str(table))
    run_destinations: dict[str, Any] = last_run.get("destinations") or {}
    known: dict[str, Any] = status.get("destinations") or {}
    names = sorted(set(known) | set(run_destinations))
    stored = family("destination_last_run_success", "gauge",
                    "1 when the last run stored its backup at this destination, else 0.")
    last_ok = family("destination_last_success_timestamp_seconds", "gauge",
                     "Unix time a backup was last stored at this destination (0: never).")
    failures = family("destination_consecutive_failures", "gauge",
                      "Runs in a row that failed to store at this destination.")
    for name in names:
        entry = known.get(name) or {}
        stored.add(1.0 if (run_destinations.get(name) or {}).get("ok") else 0.0, destination=name)
        last_ok.add(_timestamp(entry.get("last_success")), destination=name)
        failures.add(float(entry.get("consecutive_failures") or 0), destination=name)
    health_family = family("health", "gauge", "1 for the current health state (healthy, stale, failing, never).")
    for name in HEALTH_STATES:
        health_family.add(1.0 if state["health"] == name else 0.0, state=name)
    family("stale_after_seconds", "gauge", "[state] stale_after: a backup older than this is stale.").add(
        stale_after.total_seconds())
    family("next_run_timestamp_seconds", "gauge", "Unix time of the next scheduled run (0: none).").add(
        _timestamp(status.get("next_run")))
    drill: dict[str, Any] = status.get("last_drill") or {}
    family("last_drill_timestamp_seconds", "gauge",
           "Unix time the last verification or restore drill finished (0: never).").add(
        _timestamp(drill.get("finished")))
    family("last_drill_duration_seconds", "gauge", "Wall time of the last verification or restore drill.").add(
        float(drill.get("seconds") or 0))
    family("last_drill_restore_seconds", "gauge",
           "Restore time (RTO) measured by the last restore drill (0: no restore test).").add(
        float(drill.get("rto_seconds") or 0))
    drill_outcome = family("last_drill_outcome", "gauge", "1 for the outcome of the last drill, else 0.")
    for name in ("passed", "failed"):
        drill_outcome.add(1.0 if drill.get("outcome") == name else 0.0, outcome=name)
    drill_level = family("last_drill_level", "gauge",
                         "1 for the kind of the last verification: stored (sha256 of the stored bytes only, "
                         "no private key), decoded (every artifact decoded), restored (a restore drill).")
    for name in ("stored", "decoded", "restored"):
        drill_level.add(1.0 if drill.get("verify_level") == name else 0.0, level=name)
    family("last_drill_restore_test", "gauge",
           "1 when the last verification included a restore test (a restore drill), else 0.").add(
        1.0 if drill.get("restore_test") else 0.0)
    verify_failed = family("destination_verify_failed", "gauge",
                           "1 when the latest verification of this destination's backups failed, else 0.")
    for name, entry in sorted((status.get("drills") or {}).items()):
        verify_failed.add(1.0 if (entry or {}).get("outcome") == "failed" else 0.0, destination=str(name))
    return "\n".join(f.render() for f in families) + "\n"


def write_metrics(state_dir: Path, stale_after: timedelta, status: dict[str, Any] | None = None,
                  path: Path | None = None) -> Path:
    """Render (from `status`, else status.json) and replace `path` (default
    `<state_dir>/backupd.prom`) atomically; returns the path.

    The file is 0640: readable by the group of its folder, where a setgid folder of a monitoring
    group (install.sh: /var/lib/backupd-metrics, group backupd-metrics) lets node_exporter read it
    without any access to the config or the state. Raises StorageFull when it cannot be written.
    """
    if status is None:
        status = StatusStore(state_dir).load()
    path = path or state_dir / METRICS_NAME
    temp = path.with_name(f".{path.name}.tmp")
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        try:
            os.fchmod(fd, 0o640)  # the process umask (077) would otherwise hide it from the group
            write_all(fd, render(status, stale_after).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        ownership.adopt(temp)
        os.replace(temp, path)
    except OSError as exc:
        temp.unlink(missing_ok=True)
        raise StorageFull(f"cannot write {path}: {exc.strerror or exc}") from None
    return path


def parse_listen(value: str) -> tuple[str, int]:
    """`127.0.0.1:9468`, `[::1]:9468`, `localhost:9468` -> (host, port).

    Raises ValueError unless the host is a loopback address: the endpoint has no authentication.
    """
    host, sep, port_text = value.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError("expected host:port, e.g. 127.0.0.1:9468")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if host != "localhost":
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"{host[:60]!r} is not an IP address or localhost") from None
        if not address.is_loopback:
            raise ValueError("must be a loopback address (127.0.0.1, ::1 or localhost): "
                             "the endpoint has no authentication")
    return host, int(port_text)


StatusSource = Callable[[], tuple[dict[str, Any], timedelta]]
PageSource = Callable[[], str]
SECURITY_HEADERS = (
    ("Cache-Control", "no-store"),
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
)


def allowed_hosts(host: str, bound: str, port: int) -> frozenset[str]:
    """The `Host` header values the endpoint answers (lowercase): the listen address as given and
    as bound, and localhost, each bare or with the port."""
    names = {"localhost", host.lower(), bound.lower()}
    spelled = {f"[{n}]" if ":" in n else n for n in names}
    return frozenset(spelled | {f"{n}:{port}" for n in spelled})


class _Handler(BaseHTTPRequestHandler):
    server_version = "backupd"
    source: StatusSource
    page: PageSource | None = None
    allowed_hosts: frozenset[str] = frozenset()
    timeout = IDLE_TIMEOUT_SECONDS  # socket timeout: an idle connection is dropped

    def parse_request(self) -> bool:
        """The stdlib's parsing, then the Host check every route goes through (421 otherwise)."""
        if not super().parse_request():
            return False
        host = (self.headers.get("Host") or "").strip().lower()
        if host not in self.allowed_hosts:
            log.warning("http_request_refused", client=self.client_address[0], host=host[:100],
                        reason="Host is not the listen address or localhost")
            self.close_connection = True
            self._reply(421, "text/plain", b"misdirected request: use the listen address or localhost as Host\n")
            return False
        return True

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        status, stale_after = self.source()
        state = health(status, stale_after)
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            code = 200 if state["health"] == "healthy" else 503
            self._reply(code, "application/json", json.dumps(state).encode() + b"\n")
        elif path == "/status":
            body = json.dumps(redact_obj({**status, **state}), indent=2).encode() + b"\n"
            self._reply(200, "application/json", body)
        elif path == "/metrics":
            self._reply(200, "text/plain; version=0.0.4; charset=utf-8", render(status, stale_after).encode())
        elif path == "/" and self.page is not None:
            try:
                page = self.page()
            except Exception as exc:  # noqa: BLE001 - a damaged state file must not kill the endpoint
                log.error("status_page_failed", error=f"{type(exc).__name__}: {exc}")
                self._reply(500, "text/plain", b"the status page could not be rendered: see the log; "
                                               b"/status and /metrics still answer\n")
                return
            self._reply(200, "text/html; charset=utf-8", page.encode())
        else:
            self._reply(404, "text/plain", b"not found: try /, /healthz, /status or /metrics\n")

    def _reply(self, code: int, content_type: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in SECURITY_HEADERS:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
        log.debug("http_request", client=self.client_address[0], request=format % args)


class HealthServer:
    """The optional `/`, `/healthz`, `/status`, `/metrics` endpoint, served from a background thread
    (`/` only with a `page` source)."""

    def __init__(self, listen: str, source: StatusSource, page: PageSource | None = None) -> None:
        self.listen = listen
        host, port = parse_listen(listen)
        handler: type[_Handler] = type("Handler", (_Handler,), {"source": staticmethod(source),
                                                                "page": staticmethod(page) if page else None})
        bind = "127.0.0.1" if host == "localhost" else host
        server_class = _Server6 if ":" in bind else _Server
        self.server: ThreadingHTTPServer = server_class((bind, port), handler)
        handler.allowed_hosts = allowed_hosts(host, bind, self.port)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.5},
                                       name="http", daemon=True)

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        return int(self.server.server_address[1])

    def start(self) -> None:
        """Serve in the background."""
        self.thread.start()
        log.info("http_listening", listen=self.listen, port=self.port)

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self.server.shutdown()
        self.server.server_close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class _Server6(_Server):
    address_family = socket.AF_INET6
