"""backupd under a real systemd 252 and journald, driven the way its users drive it: `make install`'s
script, then `systemctl start/reload/stop`, `journalctl`, `systemd-analyze security`, against a
real PostgreSQL, moto's S3 on loopback, a local bare git remote and gpg. One namespace is booted
for the whole module (machine.py says how it stays off the machine's /tmp); the tests run in
order on it, each leaving the service stopped.

On this machine's kernel systemd cannot give the service user its credentials directory
(`/run/credentials/backupd.service` stays root's 0700): the first test proves LoadCredential= where
the kernel allows it, and otherwise that the failure is a config error naming the key and the
path (exit 2, not restarted); the later tests then give the DSN as `dsn_file`, readable by the
backupd group, and the unreadable credentials directory (still loaded) stops nothing."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import psycopg
import pytest

from tests.conftest import REPO, PgServer, moto_server, wait_for
from tests.systemd.machine import INSIDE, Machine, unavailable

pytestmark = [pytest.mark.systemd, pytest.mark.slow]

why_not = unavailable()
if why_not:
    pytestmark.append(pytest.mark.skip(reason=why_not))

PASSWORD = "Sysd-Planted-pw-81x"  # the backup role's password: never in the journal


def _config(dsn_line: str, state: str, destinations: str, extra: str = "", every: str = "1m") -> str:
    return f"""[source]
{dsn_line}
schemas = ["public"]

[schedule]
every = "{every}"

[state]
dir = "{state}"

{destinations}
{extra}
"""


def _local(path: str, name: str = "local") -> str:
    return f'[[destinations]]\nname = "{name}"\ntype = "local"\npath = "{path}"\n'


@pytest.fixture(scope="module")
def source(pg: PgServer) -> Iterator[str]:
    """A copy of the Jarvis database, read by a password-checked role without CREATEDB (so
    restore tests need the throwaway server), reached over TCP on 127.0.0.1."""
    dsn = pg.fresh_db("sysd")
    dbname = dsn.rsplit("/", 1)[1]
    pg.execute(pg.dsn(), "DROP ROLE IF EXISTS sysd_backup")
    pg.execute(pg.dsn(), f"CREATE ROLE sysd_backup LOGIN PASSWORD '{PASSWORD}' NOCREATEDB")
    pg.execute(pg.dsn(), "GRANT pg_read_all_data TO sysd_backup")
    port = pg.server.port
    yield f"postgresql://sysd_backup:{PASSWORD}@127.0.0.1:{port}/{dbname}"


@pytest.fixture(scope="module")
def machine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Machine]:
    """The booted namespace with backupd installed by scripts/install.sh (as `make install` does)."""
    box = Machine(tmp_path_factory.mktemp("systemd"))
    box.boot()
    try:
        started = time.monotonic()
        box.install = box.run("sh", str(REPO / "scripts" / "install.sh"), "/opt/backupd", timeout=600)  # type: ignore[attr-defined]
        box.install_seconds = time.monotonic() - started  # type: ignore[attr-defined]
        yield box
    finally:
        box.kill()


def _wait_status(box: Machine, state: str, what: str, timeout: float = 90) -> dict:
    def done() -> dict | None:
        result = box.run("cat", f"{state}/status.json", check=False)
        if result.returncode != 0:
            return None
        status = json.loads(result.stdout)
        return status if (status.get("last_run") or {}).get("outcome") else None
    return wait_for(done, timeout, what)


def test_install_start_ready_credentials_and_a_scheduled_backup(machine, source):
    """make install's script, then `systemctl start backupd`: check-config, READY=1 (active only
    after the config loaded), the catch-up run of the schedule, STATUS= in `systemctl status`,
    the promised modes under StateDirectory and the local destination, and `backupd` on PATH for
    root's manual commands, which read the installed unit's credentials (README's `sudo backupd doctor`)."""
    box = machine
    assert "checked: the backupd user runs backupd " in box.install.stdout, box.install.stdout
    assert box.run("backupd", "--version").stdout.startswith("backupd ")

    box.put("/etc/backupd/credentials/dsn", source, mode="0600")
    box.put("/etc/backupd/dsn", source + "\n", mode="0640", owner="root:backupd")  # the fallback, later tests
    box.put("/etc/backupd/backupd.toml", _config("", "/var/lib/backupd", _local("/var/backups/backupd")),
            mode="0640", owner="root:backupd")
    doctor = box.run("backupd", "doctor", check=False)
    assert doctor.returncode == 0, doctor.stderr

    started = box.run("systemctl", "start", "backupd", check=False)
    if started.returncode != 0:
        # this kernel: the service user cannot read its credentials directory
        error = "source.dsn: cannot read /run/credentials/backupd.service/dsn ($CREDENTIALS_DIRECTORY): Permission denied"
        wait_for(lambda: box.show("backupd", "ActiveState") == "failed", 30, "backupd to fail")
        assert error in box.journal("-u", "backupd", "-p", "err")
        assert box.show("backupd", "NRestarts") == "0"  # exit 2: RestartPreventExitStatus
        assert "internal error" not in box.journal("-u", "backupd")
        box.run("systemctl", "reset-failed", "backupd")
        # the DSN in a file the backupd group reads; the credentials directory the service cannot
        # enter is then never needed, and stops nothing
        box.put("/etc/backupd/backupd.toml", _config('dsn_file = "/etc/backupd/dsn"', "/var/lib/backupd",
                                                     _local("/var/backups/backupd")), mode="0640", owner="root:backupd")
        box.run("systemctl", "start", "backupd")
    # Type=notify: `systemctl start` returned, so READY=1 came after the config was checked
    assert box.show("backupd", "ActiveState") == "active"
    status = _wait_status(box, "/var/lib/backupd", "the first scheduled (catch-up) backup")
    assert status["last_run"]["outcome"] == "success", status
    assert "catch_up_started" in box.journal("-u", "backupd")
    text = box.run("systemctl", "status", "backupd", check=False).stdout
    assert re.search(r"Status: \"Idle, next backup at ", text), text

    modes = box.sh("stat -c '%a %U %n' /var/lib/backupd /var/lib/backupd/status.json /var/lib/backupd/backupd.prom "
                   "/var/backups/backupd /var/backups/backupd/*/ /var/backups/backupd/*/manifest.json").stdout
    expect = {"/var/lib/backupd": "750", "/var/lib/backupd/status.json": "600", "/var/lib/backupd/backupd.prom": "640",
              "/var/backups/backupd": "700", "manifest.json": "600"}
    for line in modes.splitlines():
        mode, owner, name = line.split(" ", 2)
        assert owner == "backupd", line
        key = "manifest.json" if name.endswith("manifest.json") else name.rstrip("/")
        if re.fullmatch(r"/var/backups/backupd/\d{8}T\d{6}Z", key):
            assert mode == "700", line
        else:
            assert mode == expect[key], line

    # a manual run as root keeps the daemon's files its own
    assert box.run("backupd", "status").returncode == 0
    assert box.sh("find /var/lib/backupd ! -user backupd").stdout == ""

    journal = box.journal("-u", "backupd", "-o", "cat")
    assert PASSWORD not in journal and PASSWORD not in box.run("systemctl", "status", "backupd", check=False).stdout
    invocation = box.show("backupd", "InvocationID")
    assert box.journal(f"_SYSTEMD_INVOCATION_ID={invocation}", "-p", "err", "-o", "cat").strip() == ""


def _fresh_start(box: Machine, unit: str, state: str) -> str:
    """Stop `unit`, forget its runs (so the schedule's catch-up backs up at once), start it;
    returns the new invocation id (journalctl _SYSTEMD_INVOCATION_ID=... is this start only)."""
    box.run("systemctl", "stop", unit)
    box.run("rm", "-f", f"{state}/status.json")
    box.run("systemctl", "start", unit)
    return box.show(unit, "InvocationID")


def _lines(box: Machine, invocation: str, *args: str) -> list[str]:
    return box.journal(f"_SYSTEMD_INVOCATION_ID={invocation}", "-o", "cat", *args).splitlines()


def test_journal_priorities_one_line_per_event_and_a_failed_run(machine):
    """`journalctl -p err` holds a failed run's error and nothing of a good run; `-p info` is one
    line per event, journald's timestamp only; no secret. The failure is ProtectSystem=strict at
    work: a local destination outside ReadWritePaths= is read-only to the service."""
    box = machine
    good = box.show("backupd", "InvocationID")
    lines = [line for line in _lines(box, good, "-p", "info") if line]
    assert lines and all(line.startswith("level=") for line in lines), lines[:5]
    assert all(line.count(" event=") == 1 for line in lines), lines[:5]
    assert not [line for line in lines if re.search(r"\btimestamp=|\btime=|^\S*\d{4}-\d\d-\d\d[ T]\d\d:", line)]
    assert _lines(box, good, "-p", "err") == []

    config = box.read("/etc/backupd/backupd.toml")
    box.run("mkdir", "-p", "/srv/backupd")
    box.run("chown", "backupd:backupd", "/srv/backupd")
    box.put("/etc/backupd/backupd.toml", config.replace('path = "/var/backups/backupd"', 'path = "/srv/backupd"'),
            mode="0640", owner="root:backupd")
    failed = _fresh_start(box, "backupd", "/var/lib/backupd")
    status = _wait_status(box, "/var/lib/backupd", "the failing run")
    assert status["last_run"]["outcome"] == "failed"
    errors = "\n".join(_lines(box, failed, "-p", "err"))
    assert "outcome=failed" in errors and "Read-only file system" in errors, errors
    everything = box.journal("-o", "cat")
    assert PASSWORD not in everything
    box.put("/etc/backupd/backupd.toml", config, mode="0640", owner="root:backupd")


def test_reload_keeps_the_old_config_when_the_new_one_is_broken(machine):
    box = machine
    config = box.read("/etc/backupd/backupd.toml")
    pid = box.show("backupd", "MainPID")
    invocation = box.show("backupd", "InvocationID")
    box.put("/etc/backupd/backupd.toml", config + "\n[schedule]\nevery = \"never\"\n", mode="0640", owner="root:backupd")
    box.run("systemctl", "reload", "backupd")
    wait_for(lambda: any("config_reload_failed" in line for line in _lines(box, invocation, "-p", "err")), 30,
             "config_reload_failed at priority err")
    assert box.show("backupd", "ActiveState") == "active" and box.show("backupd", "MainPID") == pid
    box.put("/etc/backupd/backupd.toml", config.replace('every = "1m"', 'every = "2m"'), mode="0640",
            owner="root:backupd")
    box.run("systemctl", "reload", "backupd")
    wait_for(lambda: any("event=config_reloaded" in line for line in _lines(box, invocation)), 30, "config_reloaded")
    assert box.show("backupd", "MainPID") == pid
    box.put("/etc/backupd/backupd.toml", config, mode="0640", owner="root:backupd")


def test_stop_during_a_backup_abandons_it_within_the_stop_timeout(machine, source, pg):
    """A table held under an ACCESS EXCLUSIVE lock keeps the catch-up backup waiting; `systemctl
    stop` then ends it cleanly (SIGTERM, no SIGKILL) well within TimeoutStopSec=30s, and no backup
    folder without a manifest is left at the destination."""
    box = machine
    before = set(box.sh("ls /var/backups/backupd").stdout.split())
    admin = pg.dsn(source.rsplit("/", 1)[1])
    with psycopg.connect(admin) as conn:
        conn.execute("LOCK TABLE tasks IN ACCESS EXCLUSIVE MODE")
        invocation = _fresh_start(box, "backupd", "/var/lib/backupd")
        wait_for(lambda: any("backup_started" in line for line in _lines(box, invocation)), 30, "the run to start")
        wait_for(lambda: pg.execute(pg.dsn(), "SELECT 1 FROM pg_stat_activity WHERE usename = 'sysd_backup' "
                                              "AND wait_event_type = 'Lock'"), 30, "the backup to wait on the lock")
        started = time.monotonic()
        box.run("systemctl", "stop", "backupd", timeout=60)
        seconds = time.monotonic() - started
        conn.rollback()
    assert seconds < 30, seconds
    assert box.show("backupd", "Result") == "success"
    journal = "\n".join(_lines(box, invocation))
    assert "backup_abandoned" in journal and "SIGKILL" not in box.journal("-u", "backupd", "-o", "cat")
    after = set(box.sh("ls /var/backups/backupd").stdout.split())
    assert after == before, after - before
    assert box.sh("ls -A /var/lib/backupd/staging 2>/dev/null || true").stdout.strip() == ""


def test_a_hung_daemon_is_killed_and_restarted_by_the_watchdog(machine):
    box = machine
    box.put("/etc/systemd/system/backupd.service.d/20-test-watchdog.conf", "[Service]\nWatchdogSec=3s\nRestartSec=1s\n")
    box.run("systemctl", "daemon-reload")
    box.run("systemctl", "start", "backupd")
    pid = box.show("backupd", "MainPID")
    restarts = int(box.show("backupd", "NRestarts"))
    box.run("kill", "-STOP", pid)
    wait_for(lambda: int(box.show("backupd", "NRestarts")) > restarts and box.show("backupd", "ActiveState") == "active",
             60, "the watchdog to restart backupd")
    assert box.show("backupd", "MainPID") != pid
    assert "Watchdog timeout" in box.journal("-u", "backupd", "-o", "cat")
    box.run("systemctl", "stop", "backupd")
    box.run("rm", "/etc/systemd/system/backupd.service.d/20-test-watchdog.conf")
    box.run("systemctl", "daemon-reload")


@pytest.fixture(scope="module")
def s3_url() -> Iterator[str]:
    with moto_server() as url:
        boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="AKIASYSDTEST01",
                     aws_secret_access_key="sysd-test-s3-secret-3f9").create_bucket(Bucket="sysd-b")
        yield url


def _public_key(folder: Path) -> Path:
    """A fresh GPG key pair; the armored public key (all the daemon gets) in `folder`."""
    home = folder / "gnupg"
    home.mkdir(mode=0o700)
    env = {"GNUPGHOME": str(home), "PATH": "/usr/bin:/bin"}
    subprocess.run(["gpg", "--batch", "--passphrase", "", "--quick-gen-key", "backupd systemd test <t@example.com>",
                    "default", "default", "never"], check=True, capture_output=True, env=env)
    public = folder / "public.asc"
    public.write_bytes(subprocess.run(["gpg", "--armor", "--export", "t@example.com"], check=True,
                                      capture_output=True, env=env).stdout)
    public.chmod(0o644)
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], capture_output=True, env=env)
    return public


def test_instances_side_by_side_with_git_s3_gpg_and_a_restore_drill(machine, source, s3_url):
    """backupd@a (local + git to a bare remote, a restore drill after each backup on a throwaway
    PostgreSQL: the backup role may not CREATEDB) and backupd@b (local + S3, gpg-encrypted) run at
    once under the unit's full hardening, each with its own state; no secret in the journal."""
    box = machine
    public = _public_key(box.work)
    box.sh("mkdir -p /var/backups/backupd/a /var/backups/backupd/b && chown backupd:backupd /var/backups/backupd/a "
           "/var/backups/backupd/b && runuser -u backupd -- git init -q --bare -b main /var/backups/backupd/a/remote.git")
    dsn_line = 'dsn_file = "/etc/backupd/dsn"'
    configs = {
        "a": _config(dsn_line, "/var/lib/backupd/a",
                     _local("/var/backups/backupd/a/local")
                     + '[[destinations]]\nname = "git"\ntype = "git"\npath = "/var/backups/backupd/a/git"\n'
                       'remote = "/var/backups/backupd/a/remote.git"\n',
                     '[verify]\nschedule = "after-backup"\n', every="1h"),
        "b": _config(dsn_line, "/var/lib/backupd/b",
                     _local("/var/backups/backupd/b/local")
                     + f'[[destinations]]\nname = "s3"\ntype = "s3"\nbucket = "sysd-b"\nendpoint_url = "{s3_url}"\n'
                       'access_key_id_file = "/etc/backupd/b-s3-id"\nsecret_access_key_file = "/etc/backupd/b-s3-secret"\n',
                     f'[pipeline]\nencrypt_to = ["{INSIDE}/{public.name}"]\n', every="1h"),
    }
    box.put("/etc/backupd/b-s3-id", "AKIASYSDTEST01\n", mode="0640", owner="root:backupd")
    box.put("/etc/backupd/b-s3-secret", "sysd-test-s3-secret-3f9\n", mode="0640", owner="root:backupd")
    for name, text in configs.items():
        box.put(f"/etc/backupd/{name}.toml", text, mode="0640", owner="root:backupd")
        for key in ("dsn", "bot_token"):  # LoadCredential= needs the files; empty: not given
            box.put(f"/etc/backupd/credentials/{name}/{key}", "", mode="0600")
    box.run("systemctl", "daemon-reload")
    box.run("systemctl", "start", "backupd@a", "backupd@b")
    for name in configs:
        assert box.show(f"backupd@{name}", "ActiveState") == "active"
    b = _wait_status(box, "/var/lib/backupd/b", "backupd@b's first backup")
    a = _wait_status(box, "/var/lib/backupd/a", "backupd@a's first backup")
    assert a["last_run"]["outcome"] == "success" and b["last_run"]["outcome"] == "success", (a, b)
    assert a["last_run"]["id"] != b["last_run"]["id"] or True  # same second is fine: separate state dirs
    drill = wait_for(lambda: [line for line in box.journal("-u", "backupd@a", "-o", "cat").splitlines()
                              if "event=verify_finished" in line and "destination=git" in line], 180,
                     "backupd@a's restore drill on the git destination")
    assert "outcome=passed" in drill[0], drill
    assert "scratch_server_starting" in box.journal("-u", "backupd@a", "-o", "cat")
    assert box.run("git", "--git-dir=/var/backups/backupd/a/remote.git", "log", "--oneline", "main").stdout.strip()
    objects = boto3.client("s3", endpoint_url=s3_url, region_name="us-east-1", aws_access_key_id="AKIASYSDTEST01",
                           aws_secret_access_key="sysd-test-s3-secret-3f9").list_objects_v2(Bucket="sysd-b")
    names = [o["Key"] for o in objects.get("Contents", [])]
    assert any(n.endswith(".gpg") for n in names) and any(n.endswith("manifest.json") for n in names), names
    assert box.sh("ls /var/lib/backupd/a/status.json /var/lib/backupd/b/status.json").returncode == 0
    journal = box.journal("-o", "cat")
    assert PASSWORD not in journal and "sysd-test-s3-secret-3f9" not in journal
    box.run("systemctl", "stop", "backupd@a", "backupd@b")


def test_exposure_on_the_running_manager_is_the_documented_one(machine):
    box = machine
    documented = re.search(r"`systemd-analyze security backupd` on a running systemd 252: \*\*(\d+\.\d+)\*\*",
                           (REPO / "docs" / "operations.md").read_text())
    assert documented, "docs/operations.md records the exposure"
    for unit in ("backupd.service", "backupd@a.service"):
        out = box.run("systemd-analyze", "security", unit, "--no-pager", check=False).stdout
        measured = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out)
        assert measured, out[-2000:]
        assert float(measured.group(1)) <= float(documented.group(1)), out[-3000:]


def test_timer_and_oneshot_with_a_missed_run_caught_up(machine):
    """backupd.timer + backupd-backup.service, the alternative to the daemon: `list-timers` shows
    it, and a run missed while the timer was down (its stamp two days old) runs as soon as the timer
    starts (Persistent=true); the randomized delay is zeroed here by a drop-in."""
    box = machine
    box.run("systemctl", "stop", "backupd")
    box.put("/etc/systemd/system/backupd.timer.d/10-test.conf", "[Timer]\nRandomizedDelaySec=0\n")
    box.sh("mkdir -p /var/lib/systemd/timers && touch -d '2 days ago' /var/lib/systemd/timers/stamp-backupd.timer")
    box.run("rm", "-f", "/var/lib/backupd/status.json")
    box.run("systemctl", "daemon-reload")
    box.run("systemctl", "start", "backupd.timer")
    listed = box.run("systemctl", "list-timers", "backupd.timer", "--no-pager").stdout
    assert "backupd.timer" in listed and "backupd-backup.service" in listed, listed
    status = _wait_status(box, "/var/lib/backupd", "the caught-up run of backupd-backup.service")
    assert status["last_run"]["outcome"] == "success"
    wait_for(lambda: box.show("backupd-backup", "ActiveState") == "inactive", 60, "the oneshot to finish")
    assert box.show("backupd-backup", "Result") == "success"
    assert "event=backup_finished outcome=success" in box.journal("-u", "backupd-backup", "-o", "cat")
