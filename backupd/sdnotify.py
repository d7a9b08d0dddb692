"""sd_notify(3) without libsystemd: one AF_UNIX datagram per message to `$NOTIFY_SOCKET`.

systemd gives a `Type=notify` service the socket path (a file, or an abstract name written with a
leading `@`) and, with `WatchdogSec=`, `WATCHDOG_USEC` (and `WATCHDOG_PID`). The variables are
taken out of the environment once read, so that pg_dump, git and friends never inherit them.
Sending never raises: a service must keep working when the manager is not listening.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, MutableMapping

import structlog

log = structlog.get_logger("backupd.sdnotify")


class Notifier:
    """Talks to the service manager; every method is a no-op when `NOTIFY_SOCKET` was not set."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self.address = address
        self.watchdog_usec = watchdog_usec
        self._socket: socket.socket | None = None
        self._lock = threading.Lock()
        self._last_status = ""

    @classmethod
    def from_environment(cls, environ: MutableMapping[str, str] | None = None) -> Notifier:
        """Read (and remove) NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID.

        The watchdog is on only when WATCHDOG_USEC is a positive integer and WATCHDOG_PID, when
        set, names this process (sd_watchdog_enabled(3)).
        """
        env = os.environ if environ is None else environ
        address = env.pop("NOTIFY_SOCKET", None) or None
        usec_text = env.pop("WATCHDOG_USEC", None)
        pid_text = env.pop("WATCHDOG_PID", None)
        watchdog: int | None = None
        if usec_text and usec_text.isdigit() and int(usec_text) > 0:
            if not pid_text or (pid_text.isdigit() and int(pid_text) == os.getpid()):
                watchdog = int(usec_text)
        return cls(address, watchdog)

    @property
    def enabled(self) -> bool:
        """True when a service manager listens."""
        return bool(self.address)

    def _target(self) -> str | bytes:
        assert self.address is not None
        if self.address.startswith("@"):
            return b"\0" + self.address[1:].encode()  # Linux abstract namespace
        return self.address

    def send(self, *fields: str) -> bool:
        """Send `KEY=value` fields as one datagram; returns False (and logs at debug) on failure."""
        if not self.address:
            return False
        message = "\n".join(fields).encode("utf-8", "replace")
        with self._lock:
            try:
                if self._socket is None:
                    self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                    # never block: a listener that does not read (its queue holds only
                    # net.unix.max_dgram_qlen datagrams) must not stall a backup or the shutdown
                    self._socket.setblocking(False)
                self._socket.sendto(message, self._target())
                return True
            except BlockingIOError:
                log.debug("sd_notify_dropped", reason="the listener's queue is full")
                return False
            except OSError as exc:
                log.debug("sd_notify_failed", error=str(exc))
                return False

    def ready(self, status: str | None = None) -> None:
        """READY=1 (and a STATUS= line): startup or a reload is finished."""
        if status:
            self._last_status = status
        self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> None:
        """STATUS=text, shown by `systemctl status`; repeated texts are sent once."""
        if text != self._last_status:
            self._last_status = text
            self.send(f"STATUS={text}")

    def reloading(self) -> None:
        """RELOADING=1 with MONOTONIC_USEC (systemd 253+ wants it, older ones ignore it)."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> None:
        """STOPPING=1: the service is shutting down."""
        self.send("STOPPING=1", "STATUS=Stopping")

    def watchdog(self) -> None:
        """WATCHDOG=1: still alive."""
        self.send("WATCHDOG=1")

    def close(self) -> None:
        """Close the socket."""
        with self._lock:
            if self._socket is not None:
                self._socket.close()
                self._socket = None


class WatchdogThread(threading.Thread):
    """Pings WATCHDOG=1 every half `WATCHDOG_USEC` while `alive()` says the service is healthy.

    It runs beside the main loop, so a backup that keeps the main thread busy for hours does not
    get the service killed; `alive()` is how a truly stuck main loop still gets caught.
    """

    def __init__(self, notifier: Notifier, alive: Callable[[], bool]) -> None:
        super().__init__(name="sd-watchdog", daemon=True)
        self.notifier = notifier
        self.alive = alive
        self._stop_event = threading.Event()
        usec = notifier.watchdog_usec or 0
        self.interval = usec / 2 / 1_000_000

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            if self.alive():
                self.notifier.watchdog()
            else:
                log.warning("watchdog_ping_skipped", reason="main loop not responding")

    def stop(self) -> None:
        """Stop pinging."""
        self._stop_event.set()
