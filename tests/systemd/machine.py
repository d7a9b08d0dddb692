"""A real systemd 252 (and journald) as PID 1 of a new PID + mount namespace, for the tests that
drive backupd the way its users do: `systemctl`, `journalctl`, `systemd-analyze`.

boot.sh (beside this file) does the dangerous part: before systemd starts, every mount is made
private, /tmp, /var/tmp, /run, /var/log/journal and /var/lib/systemd get fresh tmpfs, the tmpfiles
units are masked, /etc, /opt, /var, /usr/local, /srv, /home and /root get overlays (so `make
install`'s useradd and files never reach the machine) and /dev is its own. Without that, systemd's
boot would empty the machine's /tmp. Every boot is checked with a canary file in the machine's /tmp;
a missing canary stops the whole test session. The namespace ends with SIGKILL to its systemd.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.conftest import wait_for

BOOT = Path(__file__).with_name("boot.sh")
INSIDE = Path("/run/backupd-test")  # where the work folder appears inside


def unavailable() -> str | None:
    """Why no such namespace can be had here, or None."""
    if os.geteuid() != 0:
        return "needs root to boot systemd in a namespace"
    for tool in ("unshare", "nsenter"):
        if shutil.which(tool) is None:
            return f"no {tool}"
    if not Path("/lib/systemd/systemd").exists():
        return "systemd is not installed (/lib/systemd/systemd)"
    probe = subprocess.run(["unshare", "--pid", "--fork", "--mount", "--mount-proc", "true"], capture_output=True,
                           text=True)
    if probe.returncode != 0:
        return f"unshare --pid --mount is not permitted: {probe.stderr.strip()}"
    return None


class Machine:
    """One booted namespace. `run` executes a command inside it (as root, with the namespace's
    mounts and PIDs); `work` (a host folder) is `INSIDE` in there."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.work.mkdir(parents=True, exist_ok=True)
        self.work.chmod(0o755)  # the service user reaches its files through INSIDE
        self.canary = Path("/tmp") / f"backupd-canary-{uuid.uuid4().hex}"
        self.pid = 0
        self.process: subprocess.Popen[bytes] | None = None

    def boot(self) -> None:
        self.canary.write_text("if this file disappears, a systemd boot emptied the machine's /tmp\n")
        log = (self.work / "boot.log").open("wb")
        self.process = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--mount", "--uts", "--ipc", "--mount-proc", "sh", str(BOOT), str(self.work)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = wait_for(self._systemd_pid, 30, "systemd to start in the namespace")
        wait_for(lambda: self.run("systemctl", "is-system-running", check=False).stdout.strip()
                 in ("running", "degraded"), 60, "the namespace's systemd to finish booting")
        if not self.canary.exists():
            self.kill()
            pytest.exit("DANGER: the systemd boot removed a file in the machine's /tmp; stop and fix boot.sh", 3)

    def _systemd_pid(self) -> int:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"the namespace ended at boot: {(self.work / 'boot.log').read_text()[-2000:]}")
        try:
            children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
            for child in children:
                if Path(f"/proc/{child}/cmdline").read_bytes().startswith(b"/lib/systemd/systemd"):
                    return int(child)
        except OSError:
            pass
        return 0

    def run(self, *argv: str, check: bool = True, input: str | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """`argv` inside the namespace, as root; output captured as text."""
        result = subprocess.run(["nsenter", "-t", str(self.pid), "-m", "-p", "-u", "-i", "--", *argv],
                                capture_output=True, text=True, input=input, timeout=timeout,
                                env={"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                                     "LANG": "C.UTF-8", "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0"})
        if check and result.returncode != 0:
            journal = subprocess.run(["nsenter", "-t", str(self.pid), "-m", "-p", "-u", "-i", "--", "journalctl",
                                      "--no-pager", "-n", "30"], capture_output=True, text=True, timeout=60).stdout
            raise AssertionError(f"{' '.join(argv)} exited {result.returncode}:\n{result.stdout[-3000:]}"
                                 f"\n{result.stderr[-3000:]}\njournal:\n{journal}")
        return result

    def sh(self, script: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return self.run("sh", "-ec", script, check=check, timeout=timeout)

    def put(self, path: str, text: str, mode: str = "0644", owner: str = "root:root") -> None:
        """Write a file inside the namespace."""
        self.run("sh", "-ec", 'mkdir -p "$(dirname "$1")"; cat > "$1"; chmod "$2" "$1"; chown "$3" "$1"',
                 "_", path, mode, owner, input=text)

    def read(self, path: str) -> str:
        return self.run("cat", path).stdout

    def show(self, unit: str, prop: str) -> str:
        """`systemctl show -P PROP UNIT`."""
        return self.run("systemctl", "show", "-P", prop, unit).stdout.strip()

    def journal(self, *args: str) -> str:
        """`journalctl --no-pager ARGS` (journald flushed first)."""
        self.run("journalctl", "--sync", check=False)
        return self.run("journalctl", "--no-pager", *args, check=False).stdout

    def kill(self) -> None:
        if self.pid:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.process is not None:
            self.process.wait(timeout=30)
        self.canary.unlink(missing_ok=True)
