"""Reaching a git destination's remote: the ssh command backupd builds, and why a push failed.

For an ssh remote (`ssh://[user@]host[:port]/path` or scp-like `[user@]host:path`) backupd sets
GIT_SSH_COMMAND itself: `ssh_command` (default `ssh`) followed by `-i KEY -o IdentitiesOnly=yes`
(the key from `ssh_key`, written to a private temp file: its content is never on a command line),
`-o UserKnownHostsFile=FILE -o GlobalKnownHostsFile=/dev/null` (the pinned `host_key` lines in a
private temp known_hosts file, or `known_hosts_file`), `-o BatchMode=yes` (never a prompt that
hangs the daemon), `-o StrictHostKeyChecking=yes` (an unknown or changed host key is refused,
never accepted) and `-o ConnectTimeout=30` (ssh_command's own options come first, and ssh keeps
the first value it is given, so `ssh -o ConnectTimeout=60` there wins). git runs that string through `sh -c`: every path in it is shell-quoted, and
quoted again for ssh's own option parser.

When git fails, its last line is often the generic `fatal: Could not read from remote
repository.`; `diagnose` picks the line that says why (ssh's `Host key verification failed.`,
`Permission denied (publickey).`, `Connection refused`, an HTTPS `Authentication failed`...) and
names the setting to fix.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from backupd.config import GitDestinationConfig
from backupd.errors import CommandError

ProblemKind = Literal["host-key", "auth", "not-found", "tls", "unreachable", "rejected", "other"]

_SSH_URL = re.compile(r"^(ssh|git\+ssh|ssh\+git)://", re.IGNORECASE)
# scp-like syntax: a colon before the first slash ([user@]host:path, [user@][v6addr]:path)
_SCP_LIKE = re.compile(r"^(?:[^@/]+@)?(\[[^\]/]+\]|[^:/\[\]]+):")

# (kind, patterns most specific first): the first kind whose pattern matches a line wins
_RULES: tuple[tuple[ProblemKind, tuple[str, ...]], ...] = (
    ("host-key", (r"host key is known for .* and you have requested strict checking",
                  r"Host key for .* has changed and you have requested strict checking",
                  r"Host key verification failed")),
    ("auth", (r"Permission denied \(",
              r"^Load key .*:",
              r"UNPROTECTED PRIVATE KEY FILE",
              r"Permission to \S+ denied to",
              r"not allowed to push",
              r"marked as read only|does not have write access",
              r"Authentication failed for",
              r"could not read (Username|Password) for",
              r"Invalid username or (password|token)",
              r"The requested URL returned error: 40[13]")),
    ("rejected", (r"\[remote rejected\]",
                  r"\[rejected\]", r"non-fast-forward|stale info", r"Updates were rejected")),
    ("not-found", (r"Repository not found",
                   r"does not appear to be a git repository",
                   r"repository '.*' not found",
                   r"The requested URL returned error: 404",
                   r"could not be found")),
    ("tls", (r"SSL certificate problem|server certificate verification failed|certificate has expired",)),
    ("unreachable", (r"Could not resolve host",
                     r"Connection refused|Connection timed out|No route to host|Network is unreachable",
                     r"Connection reset|Connection closed by|kex_exchange_identification|Failed to connect to",
                     r"timed out",
                     r"unable to access")),
)


@dataclass(frozen=True)
class RemoteProblem:
    """Why git could not talk to the remote: its kind, the line that says so, a hint naming a setting."""

    kind: ProblemKind
    reason: str
    hint: str | None
    transient: bool


def is_ssh_remote(remote: str) -> bool:
    """True for `ssh://`, `git+ssh://` and scp-like `[user@]host:path` remotes."""
    return bool(_SSH_URL.match(remote)) or ("://" not in remote and bool(_SCP_LIKE.match(remote)))


def ssh_target(remote: str) -> tuple[str, int | None]:
    """(host, port or None) of an ssh remote, for messages: never the user or the path."""
    if _SSH_URL.match(remote):
        parts = urlsplit(remote)
        try:
            port = parts.port
        except ValueError:
            port = None
        return parts.hostname or "?", port
    match = _SCP_LIKE.match(remote)
    return (match.group(1).strip("[]") if match else "?"), None


def _known_hosts_name(host: str, port: int | None) -> str:
    return f"[{host}]:{port}" if port and port != 22 else host


def _keyscan(host: str, port: int | None) -> str:
    return f"ssh-keyscan {'-p ' + str(port) + ' ' if port and port != 22 else ''}{host}"


def _ssh_option(name: str, path: Path | str) -> str:
    """`-o Name="PATH"`, safe for sh (git runs the command through it) and for ssh's own parser
    (which splits on spaces and expands %-tokens)."""
    text = str(path)  # no double quote: refused at config load
    return "-o " + shlex.quote(f'{name}="{text.replace("%", "%%")}"')


@contextmanager
def ssh_environment(config: GitDestinationConfig, remote: str | None) -> Iterator[dict[str, str]]:
    """The environment git needs to reach `remote` over ssh ({} for other remotes): GIT_SSH_COMMAND,
    with the key and the pinned host key in a private temp folder that is removed on exit."""
    if not remote or not is_ssh_remote(remote):
        yield {}
        return
    folder = Path(tempfile.mkdtemp(prefix="backupd-ssh-"))
    try:
        options: list[str] = []
        if config.ssh_key is not None:
            key = folder / "key"
            content = config.ssh_key.get_secret_value().replace("\r\n", "\n")  # ssh refuses a CRLF key
            descriptor = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with open(descriptor, "w", encoding="utf-8") as out:
                out.write(content if content.endswith("\n") else content + "\n")  # ssh wants the newline
            options += ["-i", shlex.quote(str(key))]
        options.append("-o IdentitiesOnly=yes")
        known_hosts: Path | None = config.known_hosts_file
        if config.host_key:
            known_hosts = folder / "known_hosts"
            host, port = ssh_target(remote)
            lines = []
            for line in config.host_key.splitlines():
                # a bare `type base64` line is pinned for the remote's host
                bare = line.split()[0].startswith(("ssh-", "ecdsa-", "sk-"))
                lines.append(f"{_known_hosts_name(host, port)} {line}" if bare else line)
            known_hosts.write_text("\n".join(lines) + "\n")
        if known_hosts is not None:
            options += [_ssh_option("UserKnownHostsFile", known_hosts), "-o GlobalKnownHostsFile=/dev/null"]
        options += ["-o BatchMode=yes", "-o StrictHostKeyChecking=yes", "-o ConnectTimeout=30"]
        yield {"GIT_SSH_COMMAND": f"{config.ssh_command} {' '.join(options)}"}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def diagnose(exc: CommandError, config: GitDestinationConfig, remote: str, branch: str) -> RemoteProblem:
    """Classify a failed git push/ls-remote/fetch and pick the line that says why."""
    lines = [line.strip() for line in exc.stderr_tail.splitlines() if line.strip()]
    for kind, patterns in _RULES:
        for pattern in patterns:
            found = [line for line in lines if re.search(pattern, line, re.IGNORECASE)]
            if found:
                reason = found[-1]
                if kind == "host-key" and pattern != _RULES[0][1][-1]:
                    verdict = [line for line in lines if "Host key verification failed" in line]
                    reason = f"{reason} {verdict[-1]}" if verdict else reason
                if "[remote rejected]" in reason:  # the server's own words (a hook, branch protection)
                    said = [line for line in lines if line.startswith("remote:") and line[7:].strip()]
                    reason = f"{reason}: {said[-1]}" if said else reason
                return RemoteProblem(kind, reason, _hint(kind, reason, config, remote, branch),
                                     transient=kind == "unreachable")
    if exc.returncode == -1:  # our timeout
        return RemoteProblem("unreachable", exc.detail, None, transient=True)
    return RemoteProblem("other", exc.detail, None, transient=False)


def _hint(kind: ProblemKind, reason: str, config: GitDestinationConfig, remote: str, branch: str) -> str | None:
    ssh = is_ssh_remote(remote)
    if kind == "host-key":
        host, port = ssh_target(remote)
        check = f"`{_keyscan(host, port)} | ssh-keygen -lf -`"
        if config.host_key or config.known_hosts_file:
            return (f"the server did not show the key pinned in host_key/known_hosts_file: check its fingerprint "
                    f"({check}) against the one the provider publishes before changing the setting")
        return (f"no host key is pinned for {_known_hosts_name(host, port)}: set host_key to its line from "
                f"`{_keyscan(host, port)}` once its fingerprint ({check}) matches the provider's, "
                "or set known_hosts_file")
    if kind == "auth":
        if ssh:
            if re.search(r"Load key|UNPROTECTED", reason):
                return "ssh cannot use the key in ssh_key_file: it must be an unencrypted private key (no passphrase)"
            if re.search(r"read only|write access", reason):
                return "the deploy key is read-only: give it write access in the repository's deploy key settings"
            if config.ssh_key is not None:
                return ("the server refused the key in ssh_key_file: add its public half (ssh-keygen -y -f KEYFILE) "
                        "to the repository as a deploy key with write access")
            return "set ssh_key_file to a private key the server accepts (a deploy key with write access)"
        return ("the remote refused the credentials in remote (or remote_file): put a token with write access "
                "in the URL (https://USER:TOKEN@host/owner/repo.git) and check it has not expired")
    if kind == "tls":
        return "the server's TLS certificate is not trusted here: fix the server's certificate or this host's CA bundle"
    if kind == "not-found":
        return "check the repository path in remote (or remote_file), and that the key or token may reach it"
    if kind == "rejected":
        if "[remote rejected]" in reason:
            return f"the server refused the update of {branch} (branch protection or a hook): let backupd's key push"
        return "the remote branch moved on its own: reconcile it by hand"
    return None
