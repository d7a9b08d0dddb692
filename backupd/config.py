"""The configuration: pydantic models that are the only home of defaults, and the loader.

Load order (contract section 3): `--config PATH`, else `$BACKUPD_CONFIG`, else
`/etc/backupd/backupd.toml`; then `BACKUPD_<SECTION>__<KEY>` environment overrides; then secrets
from `<key>_file` or `$CREDENTIALS_DIRECTORY/<key>`. Every problem is reported as one line that
names its key path (`destinations[1].bucket: required`); a secret's value never appears in one.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import stat
import tomllib
import zoneinfo
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from backupd import credentials, redact
from backupd.errors import ConfigError

DEFAULT_CONFIG_PATH = Path("/etc/backupd/backupd.toml")
ENV_PREFIX = "BACKUPD_"

_DURATION_UNITS = {
    "ms": 0.001, "s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1,
    "m": 60, "min": 60, "mins": 60, "minute": 60, "minutes": 60,
    "h": 3600, "hr": 3600, "hour": 3600, "hours": 3600,
    "d": 86400, "day": 86400, "days": 86400,
    "w": 604800, "week": 604800, "weeks": 604800,
}
_MAX_DURATION_SECONDS = 100 * 365 * 86400
_DURATION_TOKEN = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-z]+)\s*")


def parse_duration(value: object) -> timedelta:
    """Parse `90s`, `30min`, `48h`, `7d`, `1h30min` (or a number of seconds) into a timedelta.

    Raises ValueError naming the accepted units.
    """
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError("expected a duration like '90s', '30min', '48h' or '7d'")
    if isinstance(value, (int, float)):
        if value != value or value < 0:
            raise ValueError("a duration cannot be negative")
        if value > _MAX_DURATION_SECONDS:
            raise ValueError("a duration cannot be longer than a century")
        return timedelta(seconds=value)
    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected a duration like '90s', '30min', '48h' or '7d'")
    text = value.strip().lower()
    pos, seconds = 0, 0.0
    while pos < len(text):
        match = _DURATION_TOKEN.match(text, pos)
        if not match or match.group(2) not in _DURATION_UNITS:
            raise ValueError(f"invalid duration {value[:40]!r}: expected a number and a unit (s, min, h, d, w)")
        seconds += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if seconds > _MAX_DURATION_SECONDS:
        raise ValueError(f"duration {value[:40]!r} is longer than a century")
    return timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    """Render a timedelta in the config's own notation (`48h`, `90s`)."""
    seconds = int(value.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


Duration = Annotated[timedelta, BeforeValidator(parse_duration), PlainSerializer(format_duration, return_type=str)]
OptionalDuration = Annotated[
    timedelta | None,
    BeforeValidator(lambda v: None if v in ("", None) else parse_duration(v)),
    PlainSerializer(lambda v: format_duration(v) if v else "", return_type=str),
]


class Section(BaseModel):
    """Base of every config model: unknown keys are refused; secrets may come from files.

    Subclasses list their secret fields in `secret_keys`. For each, the value can be given inline,
    as `<key>_file` (a path; one trailing newline stripped), or as a systemd credential
    (`$CREDENTIALS_DIRECTORY/<key>`, or the installed unit's LoadCredential= path: credentials.py).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)
    secret_keys: ClassVar[tuple[str, ...]] = ()

    @model_validator(mode="before")
    @classmethod
    def _resolve_secret_files(cls, data: Any, info: ValidationInfo) -> Any:
        if not isinstance(data, dict) or not cls.secret_keys:
            return data
        data = dict(data)
        context = info.context if isinstance(info.context, dict) else {}
        found = context.get("credentials")
        given = found if isinstance(found, credentials.Credentials) else credentials.from_environment()
        for key in cls.secret_keys:
            file_key = f"{key}_file"
            if file_key in data:
                path = data.pop(file_key)
                if data.get(key):
                    raise ValueError(f"@{file_key}@ give either {key} or {file_key}, not both")
                if not isinstance(path, str) or not path:
                    raise ValueError(f"@{file_key}@ expected a file path")
                data[key] = _read_secret_file(Path(path), file_key)
            elif not data.get(key):
                value = given.read(key, required=cls.model_fields[key].is_required())
                if value is not None:
                    data[key] = value
        return data


def _read_secret_file(path: Path, key: str) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"@{key}@ cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ValueError(f"@{key}@ {path} is not UTF-8 text") from None
    return text[:-1] if text.endswith("\n") else text


class StorageSourceConfig(Section):
    """[[source.storage]]: files in Supabase Storage buckets, backed up beside the database."""

    secret_keys: ClassVar[tuple[str, ...]] = ("service_role_key",)
    url: str = Field(description="project URL, https://<ref>.supabase.co (Storage lives at <url>/storage/v1)")
    service_role_key: SecretStr = Field(description="service role key (reads every bucket)")
    buckets: list[str] = Field(default=[], description="buckets to back up (empty: every bucket)")
    timeout: Duration = Field(default=timedelta(minutes=5), description="bound on one request")

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("expected an http(s):// URL")
        return value.rstrip("/")


SUPABASE_HOST_SUFFIXES = (".supabase.co", ".pooler.supabase.com")


def _default_sslmode(dsn: str) -> str:
    """`sslmode=require` added to a DSN for a Supabase host that does not set sslmode itself."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = conninfo_to_dict(dsn)
    except Exception:  # noqa: BLE001 - an unparsable DSN is reported when connecting
        return dsn
    hosts = str(params.get("host") or "").split(",")
    if "sslmode" in params or not any(h.strip().lower().endswith(SUPABASE_HOST_SUFFIXES) for h in hosts):
        return dsn
    if "://" in dsn:
        return dsn + ("&" if "?" in dsn else "?") + "sslmode=require"
    return dsn + " sslmode=require"


class SourceConfig(Section):
    """[source]: the database to protect."""

    secret_keys: ClassVar[tuple[str, ...]] = ("dsn",)
    dsn: SecretStr = Field(description="libpq connection URI or key=value string of the database to back up")
    schemas: list[str] = Field(default=["public"], min_length=1, description="schemas whose tables are exported")
    include_tables: list[str] = Field(default=[], description="only these tables (empty: every table)")
    exclude_tables: list[str] = Field(default=[], description="tables left out of the export and the dump")
    exclude_columns: dict[str, list[str]] = Field(
        default={}, description="per table, columns that never leave the database"
    )
    connect_timeout: Duration = Field(default=timedelta(seconds=15), description="how long to wait for a connection")
    storage: list[StorageSourceConfig] = Field(default=[], description="Supabase Storage buckets to back up")

    @field_validator("dsn")
    @classmethod
    def _dsn_not_pooler(cls, value: SecretStr) -> SecretStr:
        dsn = value.get_secret_value().strip()
        if not dsn:
            raise ValueError("required")
        if "://" in dsn:
            try:
                parts = urlsplit(dsn)
                port = parts.port
            except ValueError:
                raise ValueError("not a valid postgresql:// URI") from None
            if parts.scheme not in ("postgresql", "postgres"):
                raise ValueError("must start with postgresql://")
            if port == 6543:
                raise ValueError(
                    "port 6543 is Supabase's transaction pooler, which cannot hold a snapshot: "
                    "use the session pooler or the direct connection on port 5432"
                )
        with_ssl = _default_sslmode(dsn)
        return SecretStr(with_ssl) if with_ssl != dsn else value


class DumpConfig(Section):
    """[dump]: the SQL half of a backup."""

    enabled: bool = Field(default=True, description="write schema.sql and data.sql")
    tool: Literal["pg_dump", "supabase"] = Field(default="pg_dump", description="what produces the SQL dump")
    pg_dump: str = Field(default="", description="path to pg_dump; empty: one whose major >= the server's")
    supabase_cli: str = Field(
        default="", description="tool = supabase: the Supabase CLI; empty: <state.dir>/supabase-cli, then PATH"
    )
    schemas: list[str] = Field(
        default=[], description="tool = supabase: schemas to dump; empty: every schema Supabase does not manage"
    )


class ExportConfig(Section):
    """[export]: the application half of a backup."""

    enabled: bool = Field(default=True, description="write the JSON v2.0 export")
    formats: list[Literal["json", "csv", "sqlite"]] = Field(default=["json"], description="export formats")
    incremental: bool = Field(default=False, description="take incrementals between fulls")
    full_every: Duration = Field(default=timedelta(days=7), description="how often a full is taken")
    safety_margin: Duration = Field(
        default=timedelta(minutes=5),
        description="an incremental also re-exports rows changed this long before its since (late commits)",
    )


class PipelineConfig(Section):
    """[pipeline]: how artifacts are compressed and encrypted."""

    compression: Literal["zstd", "gzip", "none"] = Field(default="zstd", description="compression of artifacts")
    # 1, not zstd's usual 3: on a small host the database's COPY already uses one core, and level 3
    # made the JSON half 12% slower for 9% smaller artifacts (docs/performance.md)
    compression_level: int = Field(default=1, ge=1, le=19,
                                   description="zstd level (gzip: clamped to 1-9); 3+ trades time for size")
    encrypt_to: list[str] = Field(default=[], description="GPG recipients: fingerprints or armored key files")
    age_recipients: list[str] = Field(default=[], description="age recipients (age1...) or files of them")

    @model_validator(mode="after")
    def _one_encryption(self) -> PipelineConfig:
        if self.encrypt_to and self.age_recipients:
            raise ValueError("use either encrypt_to (gpg) or age_recipients (age), not both")
        return self


_TIME_OF_DAY = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")


class ScheduleConfig(Section):
    """[schedule]: when the daemon runs backups."""

    at: list[str] = Field(default=["02:00"], description="daily times HH:MM (in timezone)")
    every: OptionalDuration = Field(default=None, description="an interval instead of daily times, e.g. 6h")
    timezone: str = Field(default="UTC", description="IANA time zone of `at`")
    catch_up: bool = Field(default=True, description="on start, run at once if the last slot was missed")
    on_changes: int = Field(default=0, ge=0, description="> 0: extra incremental after that many changed rows")
    min_interval: Duration = Field(default=timedelta(minutes=30), description="least time between change-triggered runs")

    @model_validator(mode="before")
    @classmethod
    def _every_replaces_at(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("every") and "at" not in data:
            data = {**data, "at": []}
        return data

    @field_validator("at")
    @classmethod
    def _times(cls, value: list[str]) -> list[str]:
        for item in value:
            if not _TIME_OF_DAY.match(item):
                raise ValueError(f"{item[:20]!r} is not a time of day HH:MM")
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value[:60]!r}") from None
        return value

    @model_validator(mode="after")
    def _one_of(self) -> ScheduleConfig:
        if self.at and self.every:
            raise ValueError("set either at (daily times) or every (an interval), not both")
        if not self.at and not self.every:
            raise ValueError("set at (daily times) or every (an interval)")
        if self.every is not None and self.every < timedelta(seconds=1):
            raise ValueError("every must be at least 1s")
        return self


class StateConfig(Section):
    """[state]: where backupd keeps status, history, the lock and staging."""

    dir: Path = Field(default=Path("/var/lib/backupd"), description="state directory")
    stale_after: Duration = Field(default=timedelta(hours=48), description="health turns stale after this")
    metrics_file: Path | None = Field(
        default=None, description="the Prometheus text file, mode 0640 (empty: <dir>/backupd.prom); put it in "
                                  "a folder of the monitoring group (install.sh: /var/lib/backupd-metrics)")

    @field_validator("metrics_file", mode="before")
    @classmethod
    def _empty_is_default(cls, value: Any) -> Any:
        return None if value == "" else value


class Retention(Section):
    """A destination's retention; rules combine like restic's `forget` (a backup kept by any rule stays)."""

    keep_last: int | None = Field(default=None, ge=1, le=100000, description="the newest N backups")
    keep_days: int | None = Field(default=None, ge=1, le=100000, description="every backup younger than N days")
    keep_daily: int | None = Field(default=None, ge=1, le=100000, description="the newest backup of each of N days")
    keep_weekly: int | None = Field(default=None, ge=1, le=100000, description="the newest of each of N weeks")
    keep_monthly: int | None = Field(default=None, ge=1, le=100000, description="the newest of each of N months")

    def is_unlimited(self) -> bool:
        """True when no rule is set: nothing ever expires."""
        return all(v is None for v in self.model_dump().values())


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


_PRIVATE_KEY = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----")
# [marker] [host patterns] key-type base64 [comment], as in known_hosts and ssh-keyscan's output
_HOST_KEY_LINE = re.compile(r"^(@[a-z-]+\s+)?(\S+\s+)?(ssh-[a-z0-9-]+|ecdsa-sha2-[a-z0-9-]+|sk-[a-z0-9@.-]+)"
                            r"(@openssh\.com)?\s+[A-Za-z0-9+/]+={0,3}(\s.*)?$")
_SSH_OPTIONS_BACKUPD_SETS = ("StrictHostKeyChecking", "BatchMode", "UserKnownHostsFile", "GlobalKnownHostsFile",
                             "IdentitiesOnly")


class DestinationBase(Section):
    """Keys every destination has."""

    name: str = Field(default="", description="unique name (default: the type)")
    retention: Retention = Field(default_factory=Retention, description="what to keep")
    timeout: Duration = Field(default=timedelta(minutes=30), description="bound on one upload")
    retries: int = Field(default=3, ge=0, le=10, description="retries of a transient failure (5xx, timeout, reset)")
    retry_backoff: Duration = Field(default=timedelta(seconds=2),
                                    description="first retry delay; each next one 4x longer, capped at 5min")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if value and not _NAME.match(value):
            raise ValueError("letters, digits, '.', '_' and '-' only, at most 63 characters")
        return value


def _prefix(value: str) -> str:
    value = value.strip("/")
    if any(part in ("..", ".") for part in value.split("/")):
        raise ValueError("must not contain '.' or '..' segments")
    return value


class LocalDestinationConfig(DestinationBase):
    """A folder on a local (or mounted) filesystem."""

    type: Literal["local"]
    path: Path = Field(description="folder that holds the backups")


class GitDestinationConfig(DestinationBase):
    """A git working repository with plain per-table JSON, one commit per backup."""

    secret_keys: ClassVar[tuple[str, ...]] = ("remote", "ssh_key")
    type: Literal["git"]
    path: Path = Field(description="working repository (created if missing)")
    remote: SecretStr | None = Field(default=None, description="URL or path to push to (optional)")
    branch: str = Field(default="main", description="branch to commit to")
    ssh_key: SecretStr | None = Field(
        default=None, description="private key for an ssh remote (usually ssh_key_file = PATH, or the credential "
                                  "ssh_key); handed to ssh as a private temp file, never on a command line")
    known_hosts_file: Path | None = Field(
        default=None, description="known_hosts file holding the ssh remote's host key (the only one trusted)")
    host_key: str = Field(
        default="", description="the ssh remote's public host key, pinned: a line of `ssh-keyscan HOST` "
                                "(several lines for several key types)")
    ssh_command: str = Field(
        default="ssh", description="ssh program and extra options (e.g. \"ssh -p 2222\"); backupd adds the key, "
                                   "the pinned host key and BatchMode")

    @field_validator("ssh_key")
    @classmethod
    def _ssh_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not _PRIVATE_KEY.search(value.get_secret_value()):
            raise ValueError("not a private key (expected a -----BEGIN ... PRIVATE KEY----- block; "
                             "the .pub file is the public half)")
        return value

    @field_validator("known_hosts_file")
    @classmethod
    def _known_hosts_file(cls, value: Path | None) -> Path | None:
        if value is not None and '"' in str(value):
            raise ValueError("a path with a double quote cannot be handed to ssh")
        return value

    @field_validator("host_key")
    @classmethod
    def _host_key(cls, value: str) -> str:
        lines = [line.strip() for line in value.strip().splitlines() if line.strip() and not line.startswith("#")]
        for line in lines:
            if not _HOST_KEY_LINE.match(line):
                raise ValueError("expected a public key line such as `github.com ssh-ed25519 AAAA...` "
                                 "(a line of ssh-keyscan's output)")
        return "\n".join(lines)

    @field_validator("ssh_command")
    @classmethod
    def _ssh_command(cls, value: str) -> str:
        try:
            words = shlex.split(value)
        except ValueError as exc:
            raise ValueError(f"cannot be split into words: {exc}") from None
        if not words:
            raise ValueError("must name the ssh program")
        text = " ".join(words).lower().replace("-o ", "-o")
        for option in _SSH_OPTIONS_BACKUPD_SETS:
            if f"-o{option.lower()}" in text:
                raise ValueError(f"must not set {option}: backupd sets it (pin the host key with host_key or "
                                 "known_hosts_file; the key with ssh_key_file)")
        return value

    @model_validator(mode="after")
    def _one_host_key_source(self) -> GitDestinationConfig:
        if self.host_key and self.known_hosts_file is not None:
            raise ValueError("give either host_key or known_hosts_file, not both")
        return self


class S3DestinationConfig(DestinationBase):
    """Any S3-compatible store: AWS, Backblaze B2, MinIO, Supabase's S3 endpoint."""

    secret_keys: ClassVar[tuple[str, ...]] = ("access_key_id", "secret_access_key")
    type: Literal["s3"]
    bucket: str = Field(min_length=3, max_length=63, description="bucket name")
    prefix: Annotated[str, BeforeValidator(lambda v: _prefix(v) if isinstance(v, str) else v)] = Field(
        default="", description="key prefix inside the bucket"
    )
    endpoint_url: str = Field(default="", description="endpoint for non-AWS stores (empty: AWS)")
    region: str = Field(default="us-east-1", description="region")
    access_key_id: SecretStr | None = Field(default=None, description="access key (empty: boto3's chain)")
    secret_access_key: SecretStr | None = Field(default=None, description="secret key")
    path_style: bool = Field(default=True, description="path-style addressing (MinIO, Supabase)")
    part_size_mb: int = Field(default=8, ge=5, le=512,
                              description="multipart part size (memory: about 3 parts are held at once)")


class SupabaseDestinationConfig(DestinationBase):
    """A Supabase Storage bucket through its REST API."""

    secret_keys: ClassVar[tuple[str, ...]] = ("service_role_key",)
    type: Literal["supabase"]
    url: str = Field(description="project URL, https://<ref>.supabase.co")
    service_role_key: SecretStr = Field(description="service role key")
    bucket: str = Field(min_length=1, description="storage bucket")
    prefix: Annotated[str, BeforeValidator(lambda v: _prefix(v) if isinstance(v, str) else v)] = Field(
        default="", description="path prefix inside the bucket"
    )


class RcloneDestinationConfig(DestinationBase):
    """Anything rclone reaches (`name:path`); the remote's own config comes from RCLONE_CONFIG."""

    type: Literal["rclone"]
    remote: str = Field(description="rclone remote and path, name:path")
    rclone: str = Field(default="rclone", description="rclone binary")
    extra_args: list[str] = Field(default=[], description="extra rclone flags, e.g. --s3-no-head")

    @field_validator("remote")
    @classmethod
    def _remote(cls, value: str) -> str:
        if ":" not in value:
            raise ValueError("expected name:path (an rclone remote)")
        return value


DestinationConfig = Annotated[
    Union[
        LocalDestinationConfig,
        GitDestinationConfig,
        S3DestinationConfig,
        SupabaseDestinationConfig,
        RcloneDestinationConfig,
    ],
    Field(discriminator="type"),
]

EventName = Literal["success", "failure", "partial", "stale", "recovered", "restore", "verify_failed"]
DEFAULT_EVENTS: list[EventName] = ["failure", "partial", "stale", "recovered", "verify_failed"]


class NotifierBase(Section):
    """Keys every notifier has."""

    on: list[EventName] = Field(default=list(DEFAULT_EVENTS), description="events that are sent")
    timeout: Duration = Field(default=timedelta(seconds=10), description="bound on one delivery")
    repeat_after: Duration = Field(default=timedelta(hours=6), description="repeat a failing alert at most this often")


class TelegramNotifierConfig(NotifierBase):
    """Telegram through the Bot API (python-telegram-bot)."""

    secret_keys: ClassVar[tuple[str, ...]] = ("bot_token",)
    type: Literal["telegram"]
    bot_token: SecretStr = Field(description="bot token from @BotFather")
    chat_id: str = Field(min_length=1, description="chat to send to")
    api_url: str = Field(default="https://api.telegram.org", description="Bot API root")
    commands: bool = Field(default=False, description="answer /status and /backup in chat_id")
    allowed_user_ids: list[int] = Field(
        default_factory=list,
        description="Telegram user ids whose commands are answered (the sender's, not the chat's); empty: none")
    commands_min_interval: Duration = Field(default=timedelta(minutes=10),
                                            description="at most one /backup command per this interval")

    @field_validator("chat_id", mode="before")
    @classmethod
    def _chat_id(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


class DiscordNotifierConfig(NotifierBase):
    """A Discord channel webhook."""

    secret_keys: ClassVar[tuple[str, ...]] = ("webhook_url",)
    type: Literal["discord"]
    webhook_url: SecretStr = Field(description="https://discord.com/api/webhooks/...")


class WebhookNotifierConfig(NotifierBase):
    """A generic JSON webhook, optionally HMAC-signed."""

    secret_keys: ClassVar[tuple[str, ...]] = ("url", "secret")
    type: Literal["webhook"]
    url: SecretStr = Field(description="URL the event is POSTed to")
    secret: SecretStr | None = Field(default=None, description="HMAC-SHA256 key for X-Backupd-Signature")


class HealthchecksNotifierConfig(NotifierBase):
    """A healthchecks.io-style dead man's switch."""

    secret_keys: ClassVar[tuple[str, ...]] = ("ping_url",)
    type: Literal["healthchecks"]
    ping_url: SecretStr = Field(description="https://hc-ping.com/<uuid>")
    on: list[EventName] = Field(
        default=["success", "failure", "partial"], description="events that are pinged"
    )


NotifierConfig = Annotated[
    Union[TelegramNotifierConfig, DiscordNotifierConfig, WebhookNotifierConfig, HealthchecksNotifierConfig],
    Field(discriminator="type"),
]


class VerifyConfig(Section):
    """[verify]: restore tests and scheduled drills."""

    secret_keys: ClassVar[tuple[str, ...]] = ("scratch_dsn",)
    scratch_dsn: SecretStr | None = Field(default=None, description="server for scratch databases (restore tests, drills, restore --sql --dry-run); empty: a throwaway local PostgreSQL, never the source's server")
    restore_timeout: Duration = Field(default=timedelta(hours=1), description="a psql restore in a restore test, drill or SQL dry run that runs longer is stopped and fails")
    schedule: Literal["", "after-backup", "daily", "weekly"] = Field(default="", description="drill schedule")


class HttpConfig(Section):
    """[http]: optional health/metrics endpoint, loopback only by default."""

    listen: str = Field(default="", description="host:port to serve /healthz /status /metrics (empty: off)")

    @field_validator("listen")
    @classmethod
    def _loopback(cls, value: str) -> str:
        if value:
            from backupd.metrics import parse_listen

            parse_listen(value)  # raises ValueError unless a loopback host:port
        return value


class AuditConfig(Section):
    """[audit]: optional audit rows in the source database."""

    table: str = Field(default="", description="table receiving one row per operation (empty: off)")


class SecurityConfig(Section):
    """[security]: the key manifests are signed and checked with."""

    secret_keys: ClassVar[tuple[str, ...]] = ("signing_key",)
    signing_key: SecretStr | None = Field(
        default=None, description="HMAC-SHA256 key signing every manifest: 32 random bytes as 64 hex digits "
                                  "(`backupd keygen FILE`); empty: manifests are unsigned and not checked")

    @field_validator("signing_key")
    @classmethod
    def _hex_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        if not re.fullmatch(r"[0-9a-fA-F]{64}", value.get_secret_value().strip()):
            raise ValueError("expected 64 hex digits (32 random bytes): make one with `backupd keygen FILE`")
        return SecretStr(value.get_secret_value().strip().lower())


class Config(Section):
    """The whole configuration file."""

    source: SourceConfig
    dump: DumpConfig = Field(default_factory=DumpConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    state: StateConfig = Field(default_factory=StateConfig)
    destinations: list[DestinationConfig] = Field(min_length=1, description="where backups go")
    notifiers: list[NotifierConfig] = Field(default=[], description="who is told")
    verify: VerifyConfig = Field(default_factory=VerifyConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)
    security: SecurityConfig = Field(default_factory=SecurityConfig)

    @model_validator(mode="before")
    @classmethod
    def _default_names(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("destinations"), list):
            data = dict(data)
            data["destinations"] = [
                {**d, "name": d.get("name") or d.get("type", "")} if isinstance(d, dict) else d
                for d in data["destinations"]
            ]
        return data

    @model_validator(mode="after")
    def _unique_names(self) -> Config:
        seen: set[str] = set()
        for index, destination in enumerate(self.destinations):
            if destination.name in seen:
                raise ValueError(f"@destinations[{index}].name@ duplicate name {destination.name!r}")
            seen.add(destination.name)
        if not (self.dump.enabled or self.export.enabled):
            raise ValueError("@dump.enabled@ dump and export are both disabled: nothing would be backed up")
        return self

    @model_validator(mode="after")
    def _git_needs_plain_fulls(self) -> Config:
        # git's point is plain, diffable text: encrypted bytes never delta, and an incremental's
        # partial tables would read as mass deletions in `git log -p`
        for index, destination in enumerate(self.destinations):
            if destination.type != "git":
                continue
            if self.pipeline.encrypt_to or self.pipeline.age_recipients:
                raise ValueError(f"@destinations[{index}].type@ a git destination keeps plain text: it cannot "
                                 "be combined with pipeline encryption (use a separate config for git)")
            if self.export.incremental:
                raise ValueError(f"@destinations[{index}].type@ a git destination keeps full backups only: "
                                 "set export.incremental = false (git's deltas already store only changes)")
        return self

    def destination(self, name: str) -> DestinationConfig:
        """The destination called `name`; raises ConfigError listing the known names."""
        for destination in self.destinations:
            if destination.name == name:
                return destination
        known = ", ".join(d.name for d in self.destinations)
        raise ConfigError([f"no destination named {name!r} (configured: {known})"])

    def secrets(self) -> list[str]:
        """Every secret value in the config, for redaction."""
        found: list[str] = []

        def walk(model: BaseModel) -> None:
            for name in type(model).model_fields:
                value = getattr(model, name)
                if isinstance(value, SecretStr):
                    found.append(value.get_secret_value())
                    found.extend(_dsn_password(value.get_secret_value()))
                elif isinstance(value, BaseModel):
                    walk(value)
                elif isinstance(value, list):
                    for item in value:
                        if isinstance(item, BaseModel):
                            walk(item)

        walk(self)
        return [s for s in found if s]


def _dsn_password(dsn: str) -> list[str]:
    if "://" in dsn:
        try:
            password = urlsplit(dsn).password
        except ValueError:
            return []
        if password:
            from urllib.parse import unquote

            return [password, unquote(password)]
        return []
    match = re.search(r"password\s*=\s*(?:'((?:[^'\\]|\\.)*)'|(\S+))", dsn)
    return [match.group(1) or match.group(2)] if match else []


# ---------------------------------------------------------------------------------------------
# Loading


def config_path(explicit: str | Path | None) -> Path:
    """The config file to read: `--config`, else `$BACKUPD_CONFIG`, else /etc/backupd/backupd.toml."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("BACKUPD_CONFIG")
    return Path(env) if env else DEFAULT_CONFIG_PATH


def load_config(explicit: str | Path | None = None, *, warn: list[str] | None = None) -> Config:
    """Read, override from the environment, validate. Raises ConfigError (exit 2) listing every problem.

    `warn`, when given, receives non-fatal remarks (a world-readable file holding inline secrets).
    """
    path = config_path(explicit)
    try:
        raw_text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"config file {path} not found"], "pass --config PATH or set BACKUPD_CONFIG") from None
    except OSError as exc:
        raise ConfigError([f"cannot read config file {path}: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"config file {path} is not UTF-8 text"]) from None
    try:
        raw = tomllib.loads(raw_text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: TOML syntax error: {exc}"]) from None
    raw = apply_env_overrides(raw, os.environ)
    config = parse_config(raw, credentials.for_config(path))
    if warn is not None:
        try:
            mode = path.stat().st_mode
        except OSError:
            mode = 0
        # a bare local path (a git remote on this disk) is a secret field's value, not a secret
        inline = any(s and not s.startswith("/") and s in raw_text for s in config.secrets())
        if inline and mode & (stat.S_IRGRP | stat.S_IROTH):
            warn.append(
                f"{path} holds an inline secret and is readable by other users: chmod 600 it, "
                "or move the secret to a <key>_file or a systemd credential"
            )
    return config


def parse_config(raw: dict[str, Any], found: credentials.Credentials | None = None) -> Config:
    """Validate a raw config mapping; raises ConfigError with one line per problem.

    Secrets the mapping leaves empty come from `found` (default: `$CREDENTIALS_DIRECTORY`)."""
    try:
        config = Config.model_validate(raw, context={"credentials": found or credentials.from_environment()})
    except ValidationError as exc:
        raise ConfigError(format_validation_errors(exc)) from None
    redact.register(config.secrets())
    problems = _unsupported_types(config)
    if problems:
        raise ConfigError(problems)
    return config


def _unsupported_types(config: Config) -> list[str]:
    from backupd.destinations import DESTINATION_TYPES
    from backupd.notify import NOTIFIER_TYPES

    problems = []
    for index, destination in enumerate(config.destinations):
        if destination.type not in DESTINATION_TYPES:
            problems.append(f"destinations[{index}].type: {destination.type!r} is not supported yet")
    for index, notifier in enumerate(config.notifiers):
        if notifier.type not in NOTIFIER_TYPES:
            problems.append(f"notifiers[{index}].type: {notifier.type!r} is not supported yet")
    return problems


_TAGS = {"local", "git", "s3", "supabase", "rclone", "telegram", "discord", "webhook", "healthchecks"}
_MOVED_KEY = re.compile(r"^@([^@]+)@ ")


def format_validation_errors(exc: ValidationError) -> list[str]:
    """One line per pydantic error: `destinations[1].bucket: required`. Input values are never echoed."""
    lines: list[str] = []
    for error in exc.errors(include_input=False, include_url=False):
        parts: list[str] = []
        loc = list(error["loc"])
        for position, part in enumerate(loc):
            if isinstance(part, int):
                parts.append(f"[{part}]")
            elif position > 0 and isinstance(loc[position - 1], int) and part in _TAGS:
                continue  # the discriminator's branch name adds nothing for the reader
            elif isinstance(part, str) and part.startswith("function-"):
                continue
            else:
                parts.append(("." if parts else "") + str(part))
        path = "".join(parts)
        message = _message(error)
        moved = _MOVED_KEY.match(message)
        if moved:
            key = moved.group(1)
            path = key if key.startswith("destinations[") or key.startswith("dump.") else (
                f"{path}.{key}" if path else key
            )
            message = message[moved.end():]
        lines.append(f"{path or 'config'}: {message}")
    return lines


def _message(error: Any) -> str:
    kind = error["type"]
    if kind == "missing":
        return "required"
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "union_tag_invalid":
        expected = error.get("ctx", {}).get("expected_tags", "")
        return f"unknown type (expected one of {expected})"
    if kind == "union_tag_not_found":
        return "type: required"
    message = str(error["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        if message.startswith(prefix):
            message = message[len(prefix):]
    return message


def apply_env_overrides(raw: dict[str, Any], environ: dict[str, str] | os._Environ[str]) -> dict[str, Any]:
    """Apply `BACKUPD_<SECTION>__<KEY>=value` (and `BACKUPD_DESTINATIONS__0__PATH`) over the file.

    A value that parses as a JSON array or object is used as such; any other value is a string that
    the models coerce (`true`, `5`, `48h`).
    """
    result: dict[str, Any] = json.loads(json.dumps(raw))
    for name, value in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or "__" not in name or name == "BACKUPD_CONFIG":
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX):].split("__")]
        if not all(path):
            continue
        parsed: Any = value
        if value[:1] in ("[", "{"):
            try:
                parsed = json.loads(value)
            except json.JSONDecodeError:
                parsed = value
        node: Any = result
        for position, part in enumerate(path[:-1]):
            following = path[position + 1]
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    break
                node = node[int(part)]
            else:
                if part not in node or not isinstance(node[part], (dict, list)):
                    node[part] = [] if following.isdigit() else {}
                node = node[part]
        else:
            last = path[-1]
            if isinstance(node, list):
                if last.isdigit() and int(last) < len(node):
                    node[int(last)] = parsed
            elif isinstance(node, dict):
                node[last] = parsed
    return result
