"""Any S3-compatible store (AWS, Backblaze B2, MinIO, Supabase's S3 endpoint) through boto3.

Uploads stream through s3transfer's multipart upload with bounded memory: the source is handed
over as a non-seekable reader, so s3transfer reads one part at a time, at most CONCURRENCY + 1
parts of `part_size_mb` in memory (peak RSS 130 MiB uploading 1 GiB with the default 8 MiB
parts, see docs/performance.md). The part size grows for objects that would need more than
9,000 parts (S3 allows 10,000), so memory grows only for artifacts beyond about 70 GiB. Every part is sent with an `x-amz-checksum-sha256`, which S3
checks on receipt; after the upload the object's `ChecksumSHA256` (HEAD with checksum mode on) is
compared with the one computed here from the very bytes that were read: the whole object's
SHA-256 for a single PUT, the composite "SHA-256 of the part SHA-256s, -N" for a multipart
upload, as AWS defines it (moto reports the composite without its "-N"). When a store returns no checksum, the size is still compared.
"""

from __future__ import annotations

import base64
import hashlib
import io
from collections.abc import Iterator, Sequence
from typing import Any, BinaryIO

import boto3  # type: ignore[import-untyped]  # boto3 ships no type stubs
import structlog
from boto3.s3.transfer import TransferConfig  # type: ignore[import-untyped]
from botocore.client import Config as BotoConfig  # type: ignore[import-untyped]
from botocore.exceptions import (  # type: ignore[import-untyped]
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)

from backupd.config import S3DestinationConfig
from backupd.destinations.base import ObjectInfo, ObjectStoreDestination, classify_http_status
from backupd.errors import DestinationError, IntegrityError, NotFound

log = structlog.get_logger("backupd.s3")

CONCURRENCY = 2
MAX_PARTS = 9000
_PERMANENT_HINTS = {
    "NoSuchBucket": "create the bucket or fix destinations.bucket",
    "AccessDenied": "the key lacks s3:PutObject/GetObject/ListBucket/DeleteObject on this bucket",
    "InvalidAccessKeyId": "check access_key_id (or the credentials boto3 found)",
    "SignatureDoesNotMatch": "check secret_access_key",
    "AllAccessDisabled": "the bucket's access is disabled",
    "InvalidBucketName": "fix destinations.bucket",
}


def s3_error(exc: Exception, action: str, where: str) -> DestinationError:
    """A DestinationError for a botocore/boto3 failure, transient for 5xx/timeouts/resets."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        message = str(error.get("Message") or code or "error")
        if code in ("NoSuchKey", "404") or (status == 404 and code not in _PERMANENT_HINTS):
            return NotFound(f"{where}: not found")
        transient = classify_http_status(status) or code in ("SlowDown", "RequestTimeout", "InternalError")
        return DestinationError(
            f"s3 {action} {where} failed: {code or status} {message}".strip(),
            _PERMANENT_HINTS.get(code), transient=transient,
        )
    if isinstance(exc, (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError, ConnectionClosedError)):
        return DestinationError(f"s3 {action} {where} failed: {exc}", "is the endpoint reachable?", transient=True)
    if isinstance(exc, NoCredentialsError):
        return DestinationError(f"s3 {action} {where} failed: no credentials",
                                "set access_key_id/secret_access_key (or AWS_* / an instance role)")
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return DestinationError(f"s3 {action} {where} failed: {exc}", transient=True)
    return DestinationError(f"s3 {action} {where} failed: {type(exc).__name__}: {exc}",
                            transient=isinstance(exc, BotoCoreError))


class _PartHashingReader(io.RawIOBase):
    """A non-seekable reader that hashes what passes, whole and per part (for the composite checksum)."""

    def __init__(self, raw: BinaryIO, part_size: int) -> None:
        super().__init__()
        self._raw = raw
        self._part_size = part_size
        self.whole = hashlib.sha256()
        self._part = hashlib.sha256()
        self._in_part = 0
        self.part_digests: list[bytes] = []
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self._raw.read(len(buffer))
        if not data:
            return 0
        n = len(data)
        buffer[:n] = data
        self.count += n
        self.whole.update(data)
        view = memoryview(data)
        while view:
            take = min(len(view), self._part_size - self._in_part)
            self._part.update(view[:take])
            self._in_part += take
            view = view[take:]
            if self._in_part == self._part_size:
                self.part_digests.append(self._part.digest())
                self._part = hashlib.sha256()
                self._in_part = 0
        return n

    def composite(self) -> str:
        """The multipart checksum S3 reports: base64(sha256(concat(part digests))) + '-N'."""
        digests = list(self.part_digests)
        if self._in_part:
            digests.append(self._part.copy().digest())
        combined = hashlib.sha256(b"".join(digests)).digest()
        return f"{base64.b64encode(combined).decode()}-{len(digests)}"

    def whole_b64(self) -> str:
        """base64 of the SHA-256 of everything read."""
        return base64.b64encode(self.whole.digest()).decode()


class _BodyReader(io.RawIOBase):
    """A readable stream over a StreamingBody, errors turned into DestinationError."""

    def __init__(self, body: Any, where: str) -> None:
        super().__init__()
        self._body = body
        self._where = where

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        try:
            data = self._body.read(len(buffer))
        except Exception as exc:  # noqa: BLE001 - every network failure becomes one error kind
            raise s3_error(exc, "read", self._where) from None
        n = len(data)
        buffer[:n] = data
        return n

    def close(self) -> None:
        try:
            self._body.close()
        finally:
            super().close()


class S3Store:
    """ObjectStore over one bucket."""

    def __init__(self, config: S3DestinationConfig) -> None:
        self.config = config
        self.bucket = config.bucket
        connect = min(30.0, config.timeout.total_seconds())
        boto_config = BotoConfig(
            region_name=config.region,
            connect_timeout=connect,
            read_timeout=min(120.0, max(connect, config.timeout.total_seconds())),
            retries={"max_attempts": 3, "mode": "standard"},
            s3={"addressing_style": "path" if config.path_style else "auto"},
            max_pool_connections=CONCURRENCY + 2,
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        session = boto3.session.Session(
            aws_access_key_id=config.access_key_id.get_secret_value() if config.access_key_id else None,
            aws_secret_access_key=(config.secret_access_key.get_secret_value()
                                   if config.secret_access_key else None),
            region_name=config.region,
        )
        self.client = session.client("s3", endpoint_url=config.endpoint_url or None, config=boto_config)
        self.part_size = config.part_size_mb << 20
        self.transfer = self._transfer(self.part_size)

    @staticmethod
    def _transfer(part_size: int) -> TransferConfig:
        transfer = TransferConfig(
            multipart_threshold=part_size, multipart_chunksize=part_size,
            max_concurrency=CONCURRENCY, max_io_queue=2, use_threads=True,
        )
        # s3transfer reads up to this many parts ahead of the uploads (default 10): the memory bound
        transfer.max_in_memory_upload_chunks = CONCURRENCY + 1
        return transfer

    def _part_size(self, size: int) -> int:
        """The configured part size, grown (whole MiB) so an object never needs more than
        MAX_PARTS of S3's 10,000 parts."""
        needed = -(-size // MAX_PARTS)
        return max(self.part_size, -(-needed // (1 << 20)) << 20)

    def _where(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def put(self, key: str, data: BinaryIO, size: int) -> None:
        part_size = self._part_size(size)
        reader = _PartHashingReader(data, part_size)
        where = self._where(key)
        try:
            self.client.upload_fileobj(
                io.BufferedReader(reader, 1 << 20), self.bucket, key,
                ExtraArgs={"ChecksumAlgorithm": "SHA256"},
                Config=self.transfer if part_size == self.part_size else self._transfer(part_size),
            )
            head = self.client.head_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED")
        except (ClientError, BotoCoreError, ConnectionError, TimeoutError) as exc:
            raise s3_error(exc, "upload", where) from None
        if reader.count != size:
            raise IntegrityError(f"{where}: read {reader.count} bytes, expected {size}")
        stored_size = int(head.get("ContentLength", -1))
        if stored_size != size:
            raise DestinationError(f"{where}: stored {stored_size} bytes, sent {size}", transient=True)
        stored = head.get("ChecksumSHA256")
        if stored:
            composite = reader.composite()
            # AWS reports a multipart object as "<composite>-N"; moto omits the "-N"
            if stored not in (reader.whole_b64(), composite, composite.rsplit("-", 1)[0]):
                raise DestinationError(f"{where}: the store's SHA-256 differs from the bytes sent",
                                       transient=True)
        else:
            log.debug("s3_checksum_unavailable", key=key)

    def get(self, key: str) -> BinaryIO:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=key)
        except (ClientError, BotoCoreError, ConnectionError, TimeoutError) as exc:
            raise s3_error(exc, "download", self._where(key)) from None
        return io.BufferedReader(_BodyReader(response["Body"], self._where(key)), 1 << 20)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        try:
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    yield ObjectInfo(str(item["Key"]), int(item["Size"]))
        except (ClientError, BotoCoreError, ConnectionError, TimeoutError) as exc:
            raise s3_error(exc, "list", self._where(prefix)) from None

    def delete(self, keys: Sequence[str]) -> None:
        keys = list(keys)
        for start in range(0, len(keys), 1000):
            batch = keys[start:start + 1000]
            try:
                response = self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True})
            except (ClientError, BotoCoreError, ConnectionError, TimeoutError) as exc:
                raise s3_error(exc, "delete", self._where(batch[0])) from None
            errors = response.get("Errors") or []
            if errors:
                first = errors[0]
                raise DestinationError(
                    f"s3 delete {self._where(str(first.get('Key')))} failed: {first.get('Code')} "
                    f"{first.get('Message', '')}".strip())


class S3Destination(ObjectStoreDestination):
    """Backups under `s3://bucket/prefix/<id>/`."""

    def __init__(self, config: S3DestinationConfig) -> None:
        super().__init__(config.name, S3Store(config), config.prefix)
        self.config = config
