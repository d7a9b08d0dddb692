"""Signed manifests (contract section 9): the key, the signature, and the one place where a backup
id or `latest` becomes a manifest that a reader may act on.

With `[security] signing_key`, every manifest carries `"signature": "hmac-sha256:<hex>"`, the
HMAC-SHA256 of its canonical bytes (backupd.manifest.canonical_json). The manifest holds every
artifact's sha256, so the signature covers the whole backup. Readers (restore, verify, diff,
drills, restore-storage) see a destination only through `TrustedDestination`, which checks a
backup's manifest before the first byte of any of its artifacts is read, and `resolve` is the one
function turning "ID or latest" into a manifest.

Rules (docs/security.md, "Signed manifests"):
- a key is configured: an unsigned or mismatching manifest is refused (IntegrityError, the word
  "signature") unless `--trust-unsigned` (then a warning);
- no key: nothing can be checked; backups are read as before, with a warning (existing unsigned
  set-ups keep working; `doctor` says to set a key);
- a config that encrypts refuses a manifest with a plain artifact unless `--trust-unsigned`;
- `latest` is the newest backup whose signature verifies (newer ones that do not are named in a
  warning); ids more than a day in the future are never `latest` and never count for retention.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Literal

import structlog

from backupd.errors import BackupdError, IntegrityError, NotFound
from backupd.manifest import Manifest, id_time, now_utc

if TYPE_CHECKING:
    from backupd.config import Config
    from backupd.destinations.base import Destination, StagedBackup

log = structlog.get_logger("backupd.signing")

SCHEME = "hmac-sha256:"
KEY_BYTES = 32
# an id this far ahead of the clock was not made by this host's runs: never `latest`, never retained by
FUTURE_SLACK = timedelta(days=1)

SignatureState = Literal["valid", "unsigned", "invalid", "unchecked"]
"""valid: verifies with the key; unsigned: no signature; invalid: does not verify;
unchecked: signed, but no key is configured to check it."""


def new_key() -> str:
    """A fresh signing key: 32 random bytes as 64 lowercase hex digits."""
    return secrets.token_hex(KEY_BYTES)


def write_new_key(path: Path) -> None:
    """Write a fresh key to `path`, mode 0600; raises BackupdError when the file exists."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        raise BackupdError(f"{path} exists: keygen never overwrites a key",
                           "backups signed with the old key would no longer verify; pick another path") from None
    except OSError as exc:
        raise BackupdError(f"cannot create {path}: {exc.strerror or exc}") from None
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, (new_key() + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def key_of(config: Config) -> bytes | None:
    """The configured signing key as bytes, or None."""
    secret = config.security.signing_key
    return bytes.fromhex(secret.get_secret_value()) if secret is not None else None


def signature(canonical: bytes, key: bytes) -> str:
    """`hmac-sha256:<hex>` of canonical manifest bytes."""
    return SCHEME + hmac.new(key, canonical, hashlib.sha256).hexdigest()


def sign(manifest: Manifest, key: bytes | None) -> Manifest:
    """`manifest` with its signature (unchanged without a key)."""
    if key is None:
        return manifest
    unsigned = manifest.model_copy(update={"signature": None})
    return unsigned.model_copy(update={"signature": signature(unsigned.canonical_bytes(), key)})


def signature_state(manifest: Manifest, key: bytes | None) -> SignatureState:
    """Whether `manifest` verifies with `key`."""
    if not manifest.signature:
        return "unsigned"
    if key is None:
        return "unchecked"
    expected = signature(manifest.canonical_bytes(), key)
    return "valid" if hmac.compare_digest(expected, manifest.signature) else "invalid"


def is_future(backup_id: str, now: datetime | None = None) -> bool:
    """True for an id more than FUTURE_SLACK ahead of the clock."""
    return id_time(backup_id) > (now or now_utc()) + FUTURE_SLACK


def own_backups(manifests: Sequence[Manifest], key: bytes | None, now: datetime
                ) -> tuple[list[Manifest], list[str]]:
    """(the backups this host's runs may build on and count, the ids of the others): never an id
    in the future; with a key, only manifests whose signature verifies."""
    own, others = [], []
    for manifest in manifests:
        if is_future(manifest.id, now) or (key is not None and signature_state(manifest, key) != "valid"):
            others.append(manifest.id)
        else:
            own.append(manifest)
    return own, others


def counted_for_retention(manifests: Sequence[Manifest], key: bytes | None, now: datetime,
                          where: str) -> list[Manifest]:
    """The backups retention may count and prune (`own_backups`). The others are kept, not
    counted, and named in a warning."""
    counted, ignored = own_backups(manifests, key, now)
    if ignored:
        log.warning("retention_ignores_untrusted", destination=where, backup_ids=ignored,
                    detail="ids in the future or manifests not signed with this key are neither counted "
                           "nor pruned: check them and remove them by hand")
    return counted


@dataclass(frozen=True)
class Trust:
    """What a reader accepts: the key (None: nothing can be checked), `--trust-unsigned`, and
    whether the config encrypts (then a plain artifact is refused)."""

    key: bytes | None = field(default=None, repr=False)
    trust_unsigned: bool = False
    encrypting: bool = False

    @classmethod
    def of(cls, config: Config, *, trust_unsigned: bool = False) -> Trust:
        """The trust a config gives, with `--trust-unsigned` when asked."""
        pipeline = config.pipeline
        return cls(key_of(config), trust_unsigned, bool(pipeline.encrypt_to or pipeline.age_recipients))

    def state(self, manifest: Manifest) -> SignatureState:
        """The signature state of `manifest` under this key."""
        return signature_state(manifest, self.key)

    def check(self, manifest: Manifest, where: str) -> None:
        """Refuse (IntegrityError) a manifest this trust does not accept; warn when one is accepted
        without proof."""
        state = self.state(manifest)
        if state != "valid":
            if self.key is None:
                log.warning("signature_not_checked", backup_id=manifest.id, destination=where,
                            detail="no [security] signing_key is configured: the manifest's signature is "
                                   "not checked (`backupd keygen FILE`, then set signing_key_file)")
            elif self.trust_unsigned:
                log.warning("signature_not_trusted", backup_id=manifest.id, destination=where, state=state,
                            detail="read anyway because of --trust-unsigned")
            else:
                hint = "if you know where this backup comes from, add --trust-unsigned"
                if state == "unsigned":
                    raise IntegrityError(f"backup {manifest.id} at {where} has no signature, and a [security] "
                                         "signing_key is set: refused, nothing was read", hint)
                raise IntegrityError(f"backup {manifest.id} at {where} has a signature that does not match "
                                     "[security] signing_key: refused, nothing was read", hint)
        plain = [a.name for a in manifest.artifacts if a.encryption == "none"]
        if self.encrypting and plain:
            if not self.trust_unsigned:
                raise IntegrityError(
                    f'backup {manifest.id} at {where} says {plain[0]} is not encrypted (encryption "none"), '
                    "but this config encrypts: refused, nothing was read",
                    "a backup taken before encryption was turned on needs --trust-unsigned")
            log.warning("unencrypted_backup_trusted", backup_id=manifest.id, destination=where,
                        detail=f"{plain[0]} is not encrypted; read anyway because of --trust-unsigned")


class TrustedDestination:
    """A Destination as readers see it: `manifest()` checks the signature, and `open()` checks the
    backup's manifest before reading any artifact. `backups()` is the plain listing (for `latest`,
    `list` and chains, whose members are each checked when read)."""

    def __init__(self, inner: Destination, trust: Trust) -> None:
        self.inner = inner
        self.trust = trust
        self.name = inner.name
        self._checked: dict[str, Manifest] = {}

    def manifest(self, backup_id: str) -> Manifest:
        """The checked manifest of `backup_id`; raises NotFound or IntegrityError."""
        if backup_id not in self._checked:
            manifest = self.inner.manifest(backup_id)
            self.check(manifest)
        return self._checked[backup_id]

    def check(self, manifest: Manifest) -> None:
        """Check a listed manifest (once per backup); raises IntegrityError."""
        if manifest.id not in self._checked:
            self.trust.check(manifest, self.name)
            self._checked[manifest.id] = manifest

    def backups(self) -> list[Manifest]:
        """Every complete backup listed, oldest first, unchecked."""
        return self.inner.backups()

    def open(self, backup_id: str, artifact: str) -> BinaryIO:
        """An artifact's stored bytes, once its backup's manifest has been checked."""
        self.manifest(backup_id)
        return self.inner.open(backup_id, artifact)

    def store(self, backup: StagedBackup) -> None:
        """Delegated (readers do not store)."""
        self.inner.store(backup)

    def remove(self, backup_id: str) -> None:
        """Delegated."""
        self.inner.remove(backup_id)

    def sweep(self, keep: str | None = None) -> list[str]:
        """Delegated."""
        return self.inner.sweep(keep)

    def probe(self) -> str:
        """Delegated."""
        return self.inner.probe()


def resolve(destination: TrustedDestination, requested: str, now: datetime | None = None) -> Manifest:
    """The checked manifest of `requested` (a backup id or `latest`): the one resolution every
    reader uses. Raises NotFound or IntegrityError."""
    if requested != "latest":
        try:
            return destination.manifest(requested)
        except NotFound:
            raise NotFound(
                f"backup {requested} not found at {destination.name} (no manifest.json: "
                "an incomplete backup is never restored)",
                f"`backupd list --from {destination.name}` shows the complete ones") from None
    trust = destination.trust
    now = now or now_utc()
    listed = destination.backups()
    future = [m.id for m in listed if is_future(m.id, now)]
    if future:
        log.warning("backup_ids_in_future", destination=destination.name, backup_ids=future,
                    detail="ids more than a day ahead of this clock are never `latest`")
    current = [m for m in listed if not is_future(m.id, now)]
    if not current:
        raise NotFound(f"no complete backup at {destination.name}")
    verified = [m for m in current if trust.state(m) == "valid"]
    if verified:
        chosen = verified[-1]
        newer = [m.id for m in current if m.id > chosen.id]
        if newer:
            log.warning("newer_backups_not_verified", destination=destination.name, latest=chosen.id,
                        backup_ids=newer, detail="newer backups whose signature does not verify are not `latest`")
    elif trust.key is not None and not trust.trust_unsigned:
        raise IntegrityError(
            f"no backup at {destination.name} has a valid signature (newest: {current[-1].id}): "
            "there is no trusted `latest`",
            "name a backup id and add --trust-unsigned if you know where it comes from")
    else:
        chosen = current[-1]
    destination.check(chosen)
    return chosen
