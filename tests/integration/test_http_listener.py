"""The `[http] listen` endpoint against DNS rebinding and idle clients (issue #17 item 7): the real
server on a loopback port, spoken to over real sockets."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest

from backupd.metrics import IDLE_TIMEOUT_SECONDS, HealthServer


@pytest.fixture
def server() -> Iterator[HealthServer]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    served = HealthServer(f"127.0.0.1:{port}", lambda: ({}, timedelta(hours=48)))
    served.start()
    try:
        yield served
    finally:
        served.stop()


def _request(port: int, raw: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(raw)
        reply = b""
        while chunk := conn.recv(65536):
            reply += chunk
    return reply


def _status(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1])


def test_only_the_listen_address_or_localhost_as_host_is_answered(server):
    """Every route answers for Host 127.0.0.1:<port>, localhost and localhost:<port>; a foreign
    Host (what a browser sends after DNS rebinding), a wrong port and no Host at all get 421."""
    port = server.port
    for host in (f"127.0.0.1:{port}", "localhost", f"LOCALHOST:{port}", "127.0.0.1"):
        reply = _request(port, f"GET /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        assert _status(reply) == 503 and b'"never"' in reply, host  # no run yet
    for path in ("/healthz", "/status", "/metrics", "/", "/nowhere"):
        for host in (f"rebind.attacker.example:{port}", "evil.example", f"127.0.0.1:{port + 1}"):
            reply = _request(port, f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            assert _status(reply) == 421, (path, host)
            assert b"backupd_" not in reply and b"health" not in reply
    assert _status(_request(port, b"GET /metrics HTTP/1.0\r\n\r\n")) == 421


def test_idle_and_half_sent_connections_are_dropped(server):
    """A connection that sends nothing, and one that stalls half-way through its request line's
    headers, are closed by the server after about IDLE_TIMEOUT_SECONDS."""
    idle = socket.create_connection(("127.0.0.1", server.port), timeout=IDLE_TIMEOUT_SECONDS + 10)
    stalled = socket.create_connection(("127.0.0.1", server.port), timeout=IDLE_TIMEOUT_SECONDS + 10)
    began = time.monotonic()
    try:
        stalled.sendall(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n")
        assert idle.recv(1024) == b""
        assert stalled.recv(1024) == b""
        waited = time.monotonic() - began
        assert IDLE_TIMEOUT_SECONDS - 1 <= waited <= IDLE_TIMEOUT_SECONDS + 5, waited
    finally:
        idle.close()
        stalled.close()
