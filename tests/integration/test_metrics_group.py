"""The metrics file is readable by a monitoring group that cannot read the config or the state
(issue #17 item 7): a setgid folder of that group, as scripts/install.sh makes
/var/lib/backupd-metrics, and `[state] metrics_file` in it. The reader is a real unprivileged
process (setpriv: uid nobody, only the monitoring group)."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

from tests.conftest import run_cli

MONITORING_GID = 48151  # stands for backupd-metrics
CONFIG_GID = 48152  # stands for backupd (the config's group)


def _as_monitoring(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", f"--groups={MONITORING_GID}",
                           "--inh-caps=-all", *argv], capture_output=True, text=True, timeout=30)


def test_monitoring_group_reads_the_metrics_and_not_the_config_nor_the_state(make_config, tmp_path):
    """A backup writes metrics_file 0640 with the folder's group; a process in that group alone
    reads it, and is refused the config (0640, the config's group) and the state dir."""
    outer = Path(tempfile.mkdtemp(prefix="backupd-metrics-test-"))
    try:
        outer.chmod(0o711)
        folder = outer / "metrics"
        folder.mkdir()
        os.chown(folder, 0, MONITORING_GID)
        folder.chmod(0o2750)
        metrics = folder / "backupd.prom"
        # beside the metrics folder, so only the file's own mode and group keep the reader out
        config = outer / "backupd.toml"
        config.write_bytes(make_config(state={"metrics_file": str(metrics)}).read_bytes())
        os.chown(config, 0, CONFIG_GID)
        config.chmod(0o640)
        result = run_cli("--config", str(config), "-q", "backup")
        assert result.returncode == 0, result.stderr

        info = metrics.stat()
        assert info.st_mode & 0o777 == 0o640 and info.st_gid == MONITORING_GID
        read = _as_monitoring("cat", str(metrics))
        assert read.returncode == 0 and "backupd_last_success_timestamp_seconds" in read.stdout, read.stderr
        assert _as_monitoring("test", "-x", str(outer)).returncode == 0  # it can reach the config...
        refused = _as_monitoring("cat", str(config))
        assert refused.returncode != 0 and "Permission denied" in refused.stderr  # ...but not read it
        state = _as_monitoring("cat", str(tmp_path / "state" / "status.json"))
        assert state.returncode != 0 and "Permission denied" in state.stderr
        assert not (tmp_path / "state" / "backupd.prom").exists()  # the file went where it was told
    finally:
        subprocess.run(["rm", "-rf", str(outer)], check=False)
