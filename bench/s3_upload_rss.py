"""Benchmark: peak memory of backupd uploading one large artifact to S3 (moto on loopback).

    .venv/bin/python bench/s3_upload_rss.py [--size-mb 1024] [--part-size-mb N (default: the config's)]

Starts `moto_server` as its own process on 127.0.0.1 (so the store's memory is not counted),
writes an incompressible artifact of --size-mb into a staging folder, and in a fresh child
process publishes it through the real S3 destination (`S3Destination.store`: multipart upload,
per-part SHA-256, the server's checksum compared after the upload, then manifest.json). The
child's peak RSS (ru_maxrss) is what is reported, beside its baseline after importing boto3.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r'''
import io, json, resource, sys, time
from pathlib import Path
import boto3
from backupd.config import parse_config
from backupd.destinations import build
from backupd.destinations.base import StagedBackup
from backupd.manifest import Manifest
baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
folder, endpoint, part = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
table = {"type": "s3", "name": "s3", "bucket": "bench", "endpoint_url": endpoint, "access_key_id": "a",
         "secret_access_key": "b", **({"part_size_mb": part} if part else {})}
config = parse_config({"source": {"dsn": "postgresql://u@127.0.0.1:1/db"}, "destinations": [table]})
destination = build(config.destinations[0])
destination.objects.client.create_bucket(Bucket="bench")
manifest = Manifest.parse((folder / "manifest.json").read_bytes())
began = time.monotonic()
destination.store(StagedBackup(folder, manifest))
seconds = time.monotonic() - began
listed = [m.id for m in destination.backups()]
print(json.dumps({"baseline_kb": baseline, "peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "seconds": seconds, "listed": listed}))
'''


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--part-size-mb", type=int, default=0, help="0: the config's default")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="backupd-s3bench-"))
    port = _free_port()
    bin_dir = Path(sys.executable).parent
    server = subprocess.Popen([str(bin_dir / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        folder = work / "20260101T000000Z"
        folder.mkdir()
        sha, size, block = hashlib.sha256(), 0, os.urandom(1 << 20)
        with open(folder / "data.sql.zst", "wb") as out:
            for n in range(args.size_mb):
                chunk = hashlib.sha256(block[:64] + n.to_bytes(8, "little")).digest() * 32768  # 1 MiB, varied
                out.write(chunk)
                sha.update(chunk)
                size += len(chunk)
        manifest = {"format": "backupd-manifest", "format_version": 1, "id": folder.name, "kind": "full",
                    "started_at": "2026-01-01T00:00:00Z", "finished_at": "2026-01-01T00:00:00Z", "backupd": "bench",
                    "source": {"server_version": "15", "server_version_num": 150000, "database": "bench"},
                    "snapshot": "bench", "artifacts": [{"name": "data.sql.zst", "bytes": size,
                                                        "sha256": sha.hexdigest(), "compression": "zstd",
                                                        "content": "data"}]}
        (folder / "manifest.json").write_text(json.dumps(manifest))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        env = dict(os.environ)
        result = subprocess.run([sys.executable, "-c", CHILD, str(folder), f"http://127.0.0.1:{port}",
                                 str(args.part_size_mb)], capture_output=True, text=True, env=env, check=False)
        if result.returncode != 0:
            sys.stderr.write(result.stderr[-3000:])
            raise SystemExit(1)
        figures = json.loads(result.stdout.strip().splitlines()[-1])
        print(f"artifact: {size / 2**20:.0f} MiB, part size {args.part_size_mb or 'default'} MiB")
        print(f"upload + verify: {figures['seconds']:.1f} s ({size / 2**20 / figures['seconds']:.0f} MiB/s)")
        print(f"backupd process RSS: baseline {figures['baseline_kb'] / 1024:.0f} MiB after imports, "
              f"peak {figures['peak_kb'] / 1024:.0f} MiB")
        print(f"listed after store: {figures['listed']}")
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
