"""The git destination over SSH, as an operator sets it up: a deploy key (`ssh_key_file`), a pinned
host key (`host_key`), against a real OpenSSH server (Debian's openssh-server) on a loopback port
with its own host key, its own sshd_config and authorized_keys, and a bare repository behind it."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import run_cli, wait_for, write_config

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def _keygen(path: Path, comment: str) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
                   check=True, capture_output=True)
    return path


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _banner(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
            return conn.recv(64).startswith(b"SSH-2.0-")
    except OSError:
        return False


@dataclass
class SshServer:
    """A running sshd: its port, its host public key line, and client keys (one authorized, one
    authorized behind a forced command that pauses a second before git runs, one never authorized)."""

    port: int
    host_key_line: str
    key: Path
    slow_key: Path
    unknown_key: Path
    other_host_key_line: str
    log: Path

    def url(self, repository: Path) -> str:
        return f"ssh://root@127.0.0.1:{self.port}{repository}"


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    """sshd -D -e -f CONFIG on 127.0.0.1 (root may log in with a key only); stopped by its pid."""
    if not Path(SSHD).exists():
        pytest.skip("openssh-server is not installed (scripts/ensure-tools.sh installs it)")
    base = tmp_path_factory.mktemp("sshd")
    host_key = _keygen(base / "host_ed25519", "test-host")
    other_host = _keygen(base / "other_host_ed25519", "impostor-host")
    key, slow_key, unknown_key = (_keygen(base / name, name) for name in ("deploy", "slow", "unknown"))
    authorized = base / "authorized_keys"
    authorized.write_text(
        key.with_suffix(".pub").read_text()
        + 'command="sleep 1; eval \\"$SSH_ORIGINAL_COMMAND\\"" ' + slow_key.with_suffix(".pub").read_text())
    port = _free_port()
    config = base / "sshd_config"
    config.write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {host_key}", f"PidFile {base / 'sshd.pid'}",
        f"AuthorizedKeysFile {authorized}", "PermitRootLogin prohibit-password", "PubkeyAuthentication yes",
        "PasswordAuthentication no", "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no",
        "LogLevel VERBOSE", "",
    ]))
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
    log = base / "sshd.log"
    with open(log, "wb") as log_file:
        server = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=log_file, stderr=log_file)
    try:
        wait_for(lambda: _banner(port) or server.poll() is not None, 20, "sshd to listen")
        assert server.poll() is None, log.read_text()
        yield SshServer(port, host_key.with_suffix(".pub").read_text().strip(), key, slow_key, unknown_key,
                        other_host.with_suffix(".pub").read_text().strip(), log)
    finally:
        server.terminate()
        server.wait(timeout=10)


def _bare(path: Path) -> Path:
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(path)], check=True)
    return path


def _git_destination(name: str, tmp_path: Path, sshd: SshServer, **settings: object) -> dict[str, object]:
    return {"name": name, "type": "git", "path": str(tmp_path / f"{name}-work"),
            "remote": sshd.url(_bare(tmp_path / f"{name}.git")), **settings}


def _key_body(key: Path) -> list[str]:
    """The base64 lines of a private key: none of them may show up anywhere."""
    return [line for line in key.read_text().splitlines() if line and not line.startswith("-----")]


def _config(tmp_path: Path, source_dsn: str, destinations: list[dict[str, object]]) -> Path:
    return write_config(tmp_path / "backupd.toml", {
        "source": {"dsn": source_dsn}, "state": {"dir": str(tmp_path / "state")}, "destinations": destinations})


def _command_lines() -> list[str]:
    lines = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                lines.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace"))
            except OSError:
                continue
    return lines


def test_push_over_ssh_key_and_host_key_checked_secret_kept(tmp_path, source_dsn, sshd):
    """One backup to three git remotes behind a real sshd: with the deploy key and the pinned host
    key the push works and the remote holds the commit; with another server's host key pinned the
    destination fails naming host-key verification (hint: host_key); with a key the server does not
    know it fails naming publickey (hint: ssh_key_file). Meanwhile no process's command line ever
    holds the key's content (ssh's does hold the temp key's path), and neither the output, the log
    lines nor status.json do afterwards; the failed destinations keep no commit."""
    good = _git_destination("good", tmp_path, sshd, ssh_key_file=str(sshd.slow_key), host_key=sshd.host_key_line)
    impostor = _git_destination("impostor", tmp_path, sshd, ssh_key_file=str(sshd.key),
                                host_key=sshd.other_host_key_line)
    stranger = _git_destination("stranger", tmp_path, sshd, ssh_key_file=str(sshd.unknown_key),
                                host_key=sshd.host_key_line)
    config = _config(tmp_path, source_dsn, [good, impostor, stranger])
    secrets = _key_body(sshd.slow_key) + _key_body(sshd.key) + _key_body(sshd.unknown_key)

    seen: list[str] = []
    leaked: list[str] = []
    backup = subprocess.Popen([sys.executable, "-m", "backupd", "--config", str(config), "backup", "-v"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            for line in _command_lines():
                if "ssh" in line and "backupd-ssh-" in line:
                    seen.append(line)
                leaked.extend(line for secret in secrets if secret in line)
            done.wait(0.02)  # an ssh process lives a second or more here (the forced command sleeps 1 s)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        out, err = backup.communicate(timeout=300)
    finally:
        done.set()
        watcher.join()
    assert backup.returncode == 3, err  # partial: one destination of three stored it
    assert not leaked
    ssh_lines = [line for line in seen if line.split()[0].endswith("ssh")]
    assert ssh_lines, "no ssh process was seen while the push ran"
    assert all("-i /" in line and "BatchMode=yes" in line and "StrictHostKeyChecking=yes" in line
               for line in ssh_lines), ssh_lines

    status = json.loads((tmp_path / "state" / "status.json").read_text())
    results = status["last_run"]["destinations"]
    assert results["good"]["ok"] is True, results
    subject = subprocess.run(["git", "--git-dir", str(tmp_path / "good.git"), "log", "-1", "--format=%s", "main"],
                             capture_output=True, text=True, check=True).stdout
    assert subject.startswith(f"backupd backup {status['last_run']['id']}")

    host_key_error = results["impostor"]["error"]
    assert "Host key verification failed." in host_key_error and "host_key" in host_key_error, host_key_error
    auth_error = results["stranger"]["error"]
    assert "Permission denied (publickey)" in auth_error and "ssh_key_file" in auth_error, auth_error
    assert "Could not read from remote repository" not in host_key_error + auth_error
    for name in ("impostor", "stranger"):
        assert subprocess.run(["git", "--git-dir", str(tmp_path / f"{name}.git"), "rev-parse", "-q", "--verify",
                               "main"], capture_output=True).returncode != 0
        assert subprocess.run(["git", "-C", str(tmp_path / f"{name}-work"), "rev-parse", "-q", "--verify", "main"],
                              capture_output=True).returncode != 0
    written = out + err + "".join(p.read_text() for p in (tmp_path / "state").rglob("*")
                                  if p.is_file() and p.suffix in (".json", ".jsonl", ".log", ""))
    assert "command_started" in err and "git" in err  # the debug log lines (each argv) were written too
    assert not [secret for secret in secrets if secret in written]
    assert not list(Path(os.environ.get("TMPDIR", "/tmp")).glob("backupd-ssh-*/key"))


def test_doctor_tells_host_key_and_authentication_apart(tmp_path, source_dsn, sshd):
    """`doctor` reaches each ssh remote with `git ls-remote` before any backup: the pinned key and an
    accepted deploy key (here the systemd credential `ssh_key`) pass; a changed host key, an unpinned host and a refused key each get their
    own FAIL line saying which (host key verification vs authentication) and which setting to fix."""
    config = _config(tmp_path, source_dsn, [
        _git_destination("good", tmp_path, sshd, host_key=f"[127.0.0.1]:{sshd.port} {sshd.host_key_line}"),
        _git_destination("impostor", tmp_path, sshd, ssh_key_file=str(sshd.key), host_key=sshd.other_host_key_line),
        _git_destination("unpinned", tmp_path, sshd, ssh_key_file=str(sshd.key)),
        _git_destination("stranger", tmp_path, sshd, ssh_key_file=str(sshd.unknown_key),
                         known_hosts_file=str(_known_hosts(tmp_path, sshd))),
    ])
    credentials = tmp_path / "credentials"  # systemd's LoadCredential=ssh_key:... gives "good" its key
    credentials.mkdir()
    shutil.copy(sshd.key, credentials / "ssh_key")
    result = run_cli("--config", str(config), "doctor", env={"CREDENTIALS_DIRECTORY": str(credentials)},
                     timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = {line.split()[2]: line for line in result.stdout.splitlines() if " destination " in line}
    assert lines["good"].startswith("ok") and "host key" in lines["good"] and "key accepted" in lines["good"]
    assert lines["impostor"].startswith("FAIL") and "host key verification failed" in lines["impostor"]
    assert "changed" in lines["impostor"] and "host_key" in lines["impostor"]
    assert lines["unpinned"].startswith("FAIL") and "host key verification failed" in lines["unpinned"]
    assert f"no host key is pinned for [127.0.0.1]:{sshd.port}" in lines["unpinned"]
    assert lines["stranger"].startswith("FAIL") and "authentication refused" in lines["stranger"]
    assert "Permission denied (publickey)" in lines["stranger"] and "ssh_key_file" in lines["stranger"]
    assert "host key verification" not in lines["stranger"]


def _known_hosts(tmp_path: Path, sshd: SshServer) -> Path:
    path = tmp_path / "pinned keys %d" / "known_hosts"  # a space and a %: quoted for sh and for ssh
    path.parent.mkdir()
    path.write_text(f"[127.0.0.1]:{sshd.port} {sshd.host_key_line}\n")
    return path


def test_unsafe_or_wrong_ssh_settings_are_refused_at_load(tmp_path, sshd):
    """Turning host-key checking off through ssh_command, a public key given as ssh_key_file, a
    host_key that is no key line, or both host_key and known_hosts_file: `check-config` exits 2
    with one line naming the key, and never echoes the private key."""
    public = sshd.key.with_suffix(".pub")
    cases = {
        "ssh_command": ({"ssh_command": "ssh -o StrictHostKeyChecking=no"}, "must not set StrictHostKeyChecking"),
        "ssh_key_file": ({"ssh_key_file": str(public)}, "not a private key"),
        "host_key": ({"host_key": "github.com SHA256:+DiY3wvvV6TuJJhbpZisF"}, "expected a public key line"),
        "both": ({"host_key": sshd.host_key_line, "known_hosts_file": str(tmp_path / "kh")},
                 "either host_key or known_hosts_file"),
    }
    for name, (settings, words) in cases.items():
        config = _config(tmp_path, "postgresql://backup@127.0.0.1/db", [{
            "name": "git", "type": "git", "path": str(tmp_path / "work"),
            "remote": f"ssh://git@127.0.0.1:{sshd.port}/x.git", **settings}])
        result = run_cli("--config", str(config), "check-config")
        assert result.returncode == 2, (name, result.stdout, result.stderr)
        errors = [line for line in result.stderr.splitlines() if "error" in line]
        assert len(errors) == 1 and "destinations[0]" in errors[0] and words in errors[0], (name, result.stderr)
    key_file = _config(tmp_path, "postgresql://backup@127.0.0.1/db", [{
        "name": "git", "type": "git", "path": str(tmp_path / "work"), "ssh_key_file": str(sshd.key),
        "host_key": "ssh-ed25519 AAAA", "remote": f"ssh://git@127.0.0.1:{sshd.port}/x.git"}])
    result = run_cli("--config", str(key_file), "check-config")
    assert result.returncode == 0, result.stderr
    assert not [line for line in _key_body(sshd.key) if line in result.stdout + result.stderr]
