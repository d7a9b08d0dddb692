"""Encryption stages (GPG, age) for the artifact pipeline, and the decryptors restore and verify use.

Writing: `build_encryptor` turns `[pipeline]` into an Encryptor (see `backupd.pipeline`). GPG runs
as a child (`gpg --encrypt`, gpg's own compression off because zstd ran first) in a GNUPGHOME under
the state dir that holds public keys only; recipients are fingerprints looked up in that keyring
(or in `$GNUPGHOME`, whose public key is then copied in) or armored public key files. age runs in
process through pyrage. Both stream: nothing is held whole in memory.

Reading: `build_decryptor(gpg_homedir, identities)` / `default_decryptor()` return a Decryptor
whose `open()` refuses at once, before a single plaintext byte is handed over, when no available
key fits; the message names the recipients the backup was made for.
"""

from __future__ import annotations

import atexit
import io
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

import structlog

from backupd import proc
from backupd.errors import BackupdError, CommandError, ConfigError, IntegrityError, UsageError
from backupd.pipeline import COPY_BUFFER, Decryptor, Encryptor, Sink

log = structlog.get_logger("backupd.crypto")

GNUPG_DIR_NAME = "gnupg"
GPG = "gpg"
GPGCONF = "gpgconf"
_HEX_ID = re.compile(r"^(?:0x)?[0-9A-Fa-f]{8,40}$")
_KEY_FILE_SUFFIXES = (".asc", ".gpg", ".pgp", ".key", ".pub")


# ---------------------------------------------------------------------------------------------
# GPG: keyring and recipients


@dataclass(frozen=True)
class GpgRecipient:
    """One resolved recipient: its primary key fingerprint and the gpg options that select it."""

    fingerprint: str
    options: tuple[str, ...]


def gpg_home(state_dir: Path) -> Path:
    """The daemon's GNUPGHOME, `<state.dir>/gnupg`, created 0700 (gpg refuses a looser one)."""
    home = state_dir / GNUPG_DIR_NAME
    try:
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
        if home.stat().st_mode & 0o077:
            home.chmod(0o700)
    except OSError as exc:
        raise BackupdError(f"cannot create the GPG home {home}: {exc.strerror or exc}",
                           "check the owner and permissions of [state] dir") from None
    return home


def _gpg_argv(home: Path | None, *args: str) -> list[str]:
    argv = [GPG]
    if home is not None:
        argv += ["--homedir", str(home)]
    return argv + ["--batch", "--no-tty", "--quiet", "--no-greeting", *args]


def _colon_keys(output: bytes) -> list[dict[str, Any]]:
    """Parse `gpg --with-colons` key listings into primary keys with their fingerprint and state."""
    keys: list[dict[str, Any]] = []
    expect_fpr_for: dict[str, Any] | None = None
    for raw in output.decode("utf-8", "replace").splitlines():
        fields = raw.split(":")
        record = fields[0]
        if record == "pub":
            key = {"validity": fields[1], "expires": fields[6], "caps": fields[11] if len(fields) > 11 else "",
                   "fingerprint": "", "uid": ""}
            keys.append(key)
            expect_fpr_for = key
        elif record == "fpr" and expect_fpr_for is not None:
            expect_fpr_for["fingerprint"] = fields[9]
            expect_fpr_for = None
        elif record == "uid" and keys and not keys[-1]["uid"]:
            keys[-1]["uid"] = fields[9]
        elif record == "sub":
            expect_fpr_for = None
    return keys


def _check_usable(key: dict[str, Any], where: str) -> None:
    import time

    if key["validity"] in ("r", "e", "d"):
        state = {"r": "revoked", "e": "expired", "d": "disabled"}[key["validity"]]
        raise ConfigError([f"{where}: key {key['fingerprint']} is {state}"])
    if key["expires"] and key["expires"].isdigit() and int(key["expires"]) < time.time():
        raise ConfigError([f"{where}: key {key['fingerprint']} has expired"])
    if "E" not in key["caps"]:
        raise ConfigError([f"{where}: key {key['fingerprint']} cannot encrypt (no encryption subkey)"])


def _looks_like_file(spec: str) -> bool:
    return "/" in spec or spec.lower().endswith(_KEY_FILE_SUFFIXES) or Path(spec).is_file()


def _resolve_key_file(home: Path, path: Path, where: str) -> GpgRecipient:
    if not path.is_file():
        raise ConfigError([f"{where}: public key file {path} not found"])
    try:
        listing = proc.run(_gpg_argv(home, "--with-colons", "--import-options", "show-only", "--import",
                                     str(path)), timeout=60)
    except CommandError as exc:
        raise ConfigError([f"{where}: {path} is not an OpenPGP public key ({exc})"]) from None
    keys = _colon_keys(listing)
    if len(keys) != 1:
        raise ConfigError([f"{where}: {path} holds {len(keys)} keys; give one key per file"])
    _check_usable(keys[0], where)
    return GpgRecipient(keys[0]["fingerprint"], ("--recipient-file", str(path.resolve())))


def _list_keys(home: Path | None, spec: str) -> list[dict[str, Any]]:
    try:
        return _colon_keys(proc.run(_gpg_argv(home, "--with-colons", "--list-keys", "--", spec), timeout=60))
    except CommandError:
        return []


def _resolve_in_keyring(home: Path, spec: str, where: str) -> GpgRecipient:
    wanted = spec.replace(" ", "")
    if _HEX_ID.match(wanted):
        wanted = wanted.removeprefix("0x").removeprefix("0X").upper()
    else:
        wanted = spec
    keys = _list_keys(home, wanted)
    user_home = os.environ.get("GNUPGHOME")
    if not keys and user_home and Path(user_home).resolve() != home.resolve():
        # a key the operator has in their own keyring: copy its public part (never a secret key) in
        found = _list_keys(Path(user_home), wanted)
        if len(found) == 1:
            exported = proc.run(_gpg_argv(Path(user_home), "--export", "--", found[0]["fingerprint"]), timeout=60)
            proc.run(_gpg_argv(home, "--import"), input=exported, timeout=60)
            log.info("gpg_public_key_imported", fingerprint=found[0]["fingerprint"], into=str(home))
            keys = _list_keys(home, found[0]["fingerprint"])
    if not keys:
        raise ConfigError(
            [f"{where}: no public key {spec!r} in {home}"],
            f"import it (gpg --homedir {home} --import KEY.asc) or give the path of an armored public key file",
        )
    if len(keys) > 1:
        raise ConfigError([f"{where}: {spec!r} matches {len(keys)} keys in {home}; give a full fingerprint"])
    _check_usable(keys[0], where)
    return GpgRecipient(keys[0]["fingerprint"], ("--recipient", keys[0]["fingerprint"]))


def resolve_gpg_recipients(home: Path, specs: list[str]) -> list[GpgRecipient]:
    """Each `encrypt_to` entry as a recipient: an armored key file, or a key in the keyring at `home`.

    Raises ConfigError naming the entry (`pipeline.encrypt_to[1]: ...`) when a key is missing,
    ambiguous, expired, revoked or cannot encrypt.
    """
    recipients: list[GpgRecipient] = []
    for index, spec in enumerate(specs):
        where = f"pipeline.encrypt_to[{index}]"
        spec = spec.strip()
        if not spec:
            raise ConfigError([f"{where}: empty"])
        if _looks_like_file(spec):
            recipient = _resolve_key_file(home, Path(spec).expanduser(), where)
        else:
            recipient = _resolve_in_keyring(home, spec, where)
        if recipient.fingerprint not in (r.fingerprint for r in recipients):
            recipients.append(recipient)
    return recipients


def kill_gpg_agent(home: Path | None) -> None:
    """Stop the gpg-agent (and any other gpg daemon) serving `home`; a failure is only logged."""
    argv = [GPGCONF] + (["--homedir", str(home)] if home is not None else []) + ["--kill", "all"]
    try:
        proc.run(argv, timeout=30)
    except CommandError as exc:
        log.warning("gpg_agent_kill_failed", homedir=str(home), error=str(exc))


def _agent_running(home: Path | None) -> bool:
    """Whether a gpg-agent answers on `home`'s socket (gpg-connect-agent exits 0 either way)."""
    import socket

    argv = [GPGCONF] + (["--homedir", str(home)] if home is not None else []) + ["--list-dirs", "agent-socket"]
    try:
        path = proc.run(argv, timeout=30).decode("utf-8", "replace").strip()
    except CommandError:
        return False
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(5)
        probe.connect(path)
    except OSError:
        return False
    finally:
        probe.close()
    return True


# ---------------------------------------------------------------------------------------------
# GPG: the encryption stage


class _GpgEncryptingSink:
    """Plaintext in through gpg's stdin; a thread pumps gpg's stdout into the downstream sink."""

    def __init__(self, argv: list[str], downstream: Sink, on_closed: Callable[[], None]) -> None:
        self._downstream = downstream
        self._on_closed = on_closed
        self._stack = ExitStack()
        self._process = self._stack.enter_context(proc.spawn(argv, stdin=subprocess.PIPE))
        self._pump_error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._pump, name="gpg-encrypt-pump", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        stdout = self._process.stdout
        try:
            while True:
                chunk = stdout.read1(COPY_BUFFER)  # type: ignore[attr-defined]
                if not chunk:
                    break
                self._downstream.write(chunk)
        except BaseException as exc:  # noqa: BLE001 - handed to the writing thread
            self._pump_error = exc
            self._process.kill()  # unblocks a writer waiting on a full pipe

    def write(self, data: bytes | bytearray | memoryview) -> int:
        try:
            self._process.stdin.write(data)
        except (BrokenPipeError, ValueError, OSError):
            self._fail()
        return len(data)

    def _fail(self) -> None:
        self._thread.join()
        error = self._pump_error
        try:
            if error is None:
                self._process.finish(timeout=60, hint="check the recipients' public keys")
                error = CommandError("gpg", 0, "gpg stopped reading its input")
        except BaseException as exc:
            self._abort_stack(exc)
            raise
        self._abort_stack(error)
        raise error

    def _abort_stack(self, exc: BaseException) -> None:
        self._closed = True
        try:
            self._stack.__exit__(type(exc), exc, exc.__traceback__)
        finally:
            self._on_closed()

    def close(self) -> None:
        if self._closed:
            return
        try:
            self._process.stdin.close()
        except (BrokenPipeError, OSError):
            pass
        self._thread.join()
        if self._pump_error is not None:
            error = self._pump_error
            self._abort_stack(error)
            raise error
        try:
            self._process.finish(hint="check the recipients' public keys")
        except BaseException as exc:
            self._abort_stack(exc)
            raise
        self._closed = True
        try:
            self._stack.close()
        finally:
            self._on_closed()
        self._downstream.close()

    def abort(self) -> None:
        """Stop gpg and drop what it produced (the producer failed)."""
        if self._closed:
            return
        self._process.kill()
        self._thread.join(timeout=10)
        self._abort_stack(BackupdError("artifact aborted"))


class GpgEncryptor:
    """Encrypts with gpg to one or more public keys, in a public-keys-only GNUPGHOME."""

    kind: Literal["gpg", "age"] = "gpg"
    suffix = ".gpg"

    def __init__(self, home: Path, recipients: list[GpgRecipient]) -> None:
        self.home = home
        self._recipients = recipients
        self.recipients = [r.fingerprint for r in recipients]
        self._open = 0
        self._lock = threading.Lock()

    def argv(self) -> list[str]:
        """The gpg command line that encrypts stdin to stdout for every recipient."""
        options = [o for r in self._recipients for o in r.options]
        return _gpg_argv(self.home, "--trust-model", "always", "--compress-algo", "none",
                         "--no-auto-key-locate", "--encrypt", *options, "--output", "-")

    def wrap(self, sink: Sink) -> Sink:
        with self._lock:
            self._open += 1
        try:
            return _GpgEncryptingSink(self.argv(), sink, self._stream_closed)
        except BaseException:
            self._stream_closed()
            raise

    def _stream_closed(self) -> None:
        with self._lock:
            self._open -= 1
            last = self._open == 0
        if last:
            self.close()

    def close(self) -> None:
        """Leave no gpg-agent behind for the daemon's homedir."""
        kill_gpg_agent(self.home)


# ---------------------------------------------------------------------------------------------
# age: the encryption stage (pyrage, in process)


def _pyrage() -> Any:
    try:
        import pyrage  # type: ignore[import-untyped]  # pyrage ships no type information
    except ImportError:
        raise ConfigError(["pipeline.age_recipients: the pyrage package is not installed"],
                          "pip install pyrage (or backupd[age])") from None
    return pyrage


def _parse_age_recipient(pyrage: Any, text: str) -> Any:
    if text.startswith("age1"):
        return pyrage.x25519.Recipient.from_str(text)
    if text.startswith(("ssh-ed25519 ", "ssh-rsa ")):
        return pyrage.ssh.Recipient.from_str(text)
    raise ValueError("not an age recipient (age1...) nor an ssh-ed25519/ssh-rsa public key")


def resolve_age_recipients(specs: list[str]) -> tuple[list[str], list[Any]]:
    """(recipient strings for the manifest, pyrage recipient objects). An entry is a recipient
    (`age1...`, an ssh public key) or a file of them, one per line. Raises ConfigError naming the entry."""
    pyrage = _pyrage()
    names: list[str] = []
    objects: list[Any] = []
    for index, spec in enumerate(specs):
        where = f"pipeline.age_recipients[{index}]"
        spec = spec.strip()
        lines: list[str]
        if spec.startswith(("age1", "ssh-")):
            lines = [spec]
        else:
            path = Path(spec).expanduser()
            try:
                lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
            except OSError as exc:
                raise ConfigError([f"{where}: cannot read recipients file {path}: {exc.strerror or exc}"]) from None
            except UnicodeDecodeError:
                raise ConfigError([f"{where}: {path} is not a text file of age recipients"]) from None
            lines = [line for line in lines if line and not line.startswith("#")]
            if not lines:
                raise ConfigError([f"{where}: {path} holds no recipient"])
        for line in lines:
            try:
                objects.append(_parse_age_recipient(pyrage, line))
            except (ValueError, pyrage.RecipientError) as exc:
                raise ConfigError([f"{where}: {exc}"]) from None
            if line not in names:
                names.append(line)
    return names, objects


class _SinkFile(io.RawIOBase):
    """A Sink seen as a writable file (what pyrage writes to)."""

    def __init__(self, sink: Sink) -> None:
        super().__init__()
        self._sink = sink

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._sink.write(bytes(data))
        return len(data)


class _AgeEncryptingSink:
    """Plaintext into a pipe; a thread runs pyrage's streaming encryption from it into the sink."""

    def __init__(self, recipients: list[Any], downstream: Sink) -> None:
        self._downstream = downstream
        read_fd, write_fd = os.pipe()
        self._reader = os.fdopen(read_fd, "rb", buffering=COPY_BUFFER)
        self._writer = os.fdopen(write_fd, "wb", buffering=COPY_BUFFER)
        self._error: BaseException | None = None
        self._closed = False
        self._recipients = recipients
        self._thread = threading.Thread(target=self._encrypt, name="age-encrypt", daemon=True)
        self._thread.start()

    def _encrypt(self) -> None:
        try:
            _pyrage().encrypt_io(self._reader, _SinkFile(self._downstream), self._recipients)
        except BaseException as exc:  # noqa: BLE001 - handed to the writing thread
            self._error = exc
        finally:
            self._reader.close()  # a writer blocked on a full pipe gets EPIPE

    def write(self, data: bytes | bytearray | memoryview) -> int:
        try:
            self._writer.write(data)
        except (BrokenPipeError, OSError, ValueError):
            self._thread.join()
            self._closed = True
            raise self._failure() from None
        return len(data)

    def _failure(self) -> BaseException:
        error = self._error
        if isinstance(error, BackupdError):
            return error
        return BackupdError(f"age encryption failed: {error or 'the encrypting thread stopped'}")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._writer.close()
        except (BrokenPipeError, OSError):
            pass
        self._thread.join()
        if self._error is not None:
            raise self._failure()
        self._downstream.close()

    def abort(self) -> None:
        """Stop encrypting (the producer failed)."""
        if self._closed:
            return
        self._closed = True
        self._error = BackupdError("artifact aborted")
        try:
            self._writer.close()
        except (BrokenPipeError, OSError):
            pass
        self._thread.join(timeout=10)


class AgeEncryptor:
    """Encrypts with age (pyrage) to one or more recipients; no agent, no child process."""

    kind: Literal["gpg", "age"] = "age"
    suffix = ".age"

    def __init__(self, names: list[str], objects: list[Any]) -> None:
        self.recipients = names
        self._objects = objects

    def wrap(self, sink: Sink) -> Sink:
        return _AgeEncryptingSink(self._objects, sink)


def build_encryptor(pipeline_config: Any, state_dir: Path) -> Encryptor:
    """The Encryptor for `[pipeline]` (`encrypt_to` -> gpg, `age_recipients` -> age).

    GPG keys are checked now (present, unique, usable), so a bad key fails the run before any
    artifact is written. Raises ConfigError naming the offending entry.
    """
    if pipeline_config.encrypt_to:
        home = gpg_home(state_dir)
        try:
            recipients = resolve_gpg_recipients(home, list(pipeline_config.encrypt_to))
        finally:
            kill_gpg_agent(home)
        log.debug("encryption_ready", kind="gpg", recipients=[r.fingerprint for r in recipients])
        return GpgEncryptor(home, recipients)
    if pipeline_config.age_recipients:
        names, objects = resolve_age_recipients(list(pipeline_config.age_recipients))
        log.debug("encryption_ready", kind="age", recipients=names)
        return AgeEncryptor(names, objects)
    raise ConfigError(["pipeline: no encryption configured (encrypt_to or age_recipients)"])


# ---------------------------------------------------------------------------------------------
# Decryption


class _CapturingReader(io.RawIOBase):
    """Reads the ciphertext stream for a decrypting thread, keeping the first error it raised
    (an IntegrityError from the sha256 check) for the consumer."""

    def __init__(self, stream: BinaryIO) -> None:
        super().__init__()
        self._stream = stream
        self.error: BaseException | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            data = self._stream.read(len(buffer))
        except BaseException as exc:
            self.error = exc
            raise OSError(str(exc)) from None
        n = len(data)
        buffer[:n] = data
        return n

    def close(self) -> None:
        try:
            self._stream.close()
        finally:
            super().close()


def _recipients_text(recipients: list[str]) -> str:
    return ", ".join(recipients) if recipients else "(recipients not recorded)"


class _PlaintextReader(io.RawIOBase):
    """Plaintext coming out of a decrypting worker; `finish()` is called at end of stream and
    raises IntegrityError when the worker failed (corrupt, truncated, tampered with)."""

    def __init__(self, source: BinaryIO, finish: Callable[[], None], cleanup: Callable[[], None]) -> None:
        super().__init__()
        self._source = source
        self._finish = finish
        self._cleanup = cleanup
        self._pending = b""
        self._done = False

    def prefetch(self) -> None:
        """Read the first bytes now, so a wrong key fails in `open()`, before anything is touched."""
        self._pending = self._next()

    def _next(self) -> bytes:
        if self._done:
            return b""
        chunk: bytes = self._source.read1(COPY_BUFFER)  # type: ignore[attr-defined]
        if not chunk:
            self._done = True
            self._finish()
        return chunk

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if not self._pending:
            self._pending = self._next()
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def close(self) -> None:
        if self.closed:
            return
        try:
            self._cleanup()
        finally:
            super().close()


class GpgDecryptor:
    """Decrypts with gpg using the private keys of `home` (None: gpg's own `$GNUPGHOME`)."""

    def __init__(self, home: Path | None) -> None:
        self.home = home
        self._lock = threading.Lock()
        self._open = 0
        self._agent_was_running: bool | None = None

    def _argv(self) -> list[str]:
        extra: list[str] = []
        if sys.stdin is None or not sys.stdin.isatty():
            # no one could answer a passphrase prompt: fail at once instead of waiting for it
            extra = ["--pinentry-mode", "cancel"]
        return _gpg_argv(self.home, *extra, "--no-auto-key-locate", "--decrypt", "--output", "-")

    def open(self, stream: BinaryIO, recipients: list[str]) -> BinaryIO:
        """Plaintext of a gpg-encrypted stream; raises IntegrityError naming `recipients` when no
        private key here fits, or when the data is corrupt."""
        with self._lock:
            if self._agent_was_running is None:
                self._agent_was_running = _agent_running(self.home)
                if not self._agent_was_running:
                    _agents_to_stop.add(self.home)
            self._open += 1
        stack = ExitStack()
        try:
            process = stack.enter_context(proc.spawn(self._argv(), stdin=subprocess.PIPE))
        except BaseException:
            self._stream_closed()
            raise
        capture = _CapturingReader(stream)

        def feed() -> None:
            try:
                while True:
                    chunk = capture.read(COPY_BUFFER)
                    if not chunk:
                        break
                    process.stdin.write(chunk)
            except (OSError, ValueError):
                pass  # gpg stopped reading (it failed): its exit status tells why
            finally:
                try:
                    process.stdin.close()
                except (OSError, ValueError):
                    pass

        feeder = threading.Thread(target=feed, name="gpg-decrypt-feed", daemon=True)
        feeder.start()
        state = {"finished": False, "released": False}

        def release() -> None:
            # at end of stream already: a caller that never closes the stream leaves no agent behind
            if not state["released"]:
                state["released"] = True
                self._stream_closed()

        def finish() -> None:
            feeder.join()
            try:
                if capture.error is not None:
                    raise capture.error
                try:
                    process.finish(timeout=120)
                except CommandError as exc:
                    raise self._refusal(exc, recipients) from None
            finally:
                state["finished"] = True
                release()

        def cleanup() -> None:
            if not state["finished"]:
                process.kill()
                feeder.join(timeout=10)
            stack.close()
            release()

        reader = _PlaintextReader(process.stdout, finish, cleanup)  # type: ignore[arg-type]
        try:
            reader.prefetch()
        except BaseException:
            reader.close()
            raise
        return io.BufferedReader(reader, COPY_BUFFER)

    def _refusal(self, exc: CommandError, recipients: list[str]) -> IntegrityError:
        tail = exc.stderr_tail
        if any(marker in tail for marker in ("No secret key", "secret key not available", "cancel")):
            where = f"the keyring at {self.home}" if self.home else "$GNUPGHOME (or ~/.gnupg)"
            return IntegrityError(
                f"cannot decrypt: no private key in {where} for the recipients this backup was "
                f"encrypted to: {_recipients_text(recipients)}",
                "pass --gpg-homedir DIR (or set GNUPGHOME) with one of those private keys",
            )
        detail = exc.stderr_tail.strip().splitlines()[-1] if exc.stderr_tail.strip() else "gpg failed"
        return IntegrityError(
            f"cannot decrypt (encrypted to {_recipients_text(recipients)}): {detail}",
        )

    def _stream_closed(self) -> None:
        with self._lock:
            self._open -= 1
            last = self._open == 0
            started_by_us = self._agent_was_running is False
        if last and started_by_us:
            kill_gpg_agent(self.home)
            _agents_to_stop.discard(self.home)


def _read_age_identities(paths: list[Path]) -> list[Any]:
    if not paths:
        return []
    pyrage = _pyrage()
    identities: list[Any] = []
    for path in paths:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise UsageError(f"--identity {path}: cannot read: {exc.strerror or exc}") from None
        if data.lstrip().startswith(b"-----BEGIN AGE ENCRYPTED FILE"):
            raise UsageError(f"--identity {path}: passphrase-protected identity files are not supported",
                             "decrypt it first with `age -d` into a file readable only by you")
        if data.lstrip().startswith(b"-----BEGIN"):
            try:
                identities.append(pyrage.ssh.Identity.from_buffer(data))
            except Exception as exc:  # noqa: BLE001 - pyrage raises its own kinds
                raise UsageError(f"--identity {path}: not a usable ssh private key ({exc})") from None
            continue
        found = 0
        for line in data.decode("utf-8", "replace").splitlines():
            line = line.strip()
            if line.startswith("AGE-SECRET-KEY-"):
                try:
                    identities.append(pyrage.x25519.Identity.from_str(line))
                except pyrage.IdentityError:
                    raise UsageError(f"--identity {path}: malformed AGE-SECRET-KEY line") from None
                found += 1
        if not found:
            raise UsageError(f"--identity {path}: no AGE-SECRET-KEY-1... line in it")
    return identities


class AgeDecryptor:
    """Decrypts age streams (pyrage) with the identities read from `--identity` files."""

    def __init__(self, identities: list[Any]) -> None:
        self._identities = identities

    def open(self, stream: BinaryIO, recipients: list[str]) -> BinaryIO:
        """Plaintext of an age-encrypted stream; raises IntegrityError naming `recipients` when no
        identity fits, or when the data is corrupt or truncated."""
        if not self._identities:
            raise IntegrityError(
                f"cannot decrypt: the backup is encrypted with age to {_recipients_text(recipients)} "
                "and no identity was given",
                "pass --identity FILE (an age-keygen key file)",
            )
        pyrage = _pyrage()
        capture = _CapturingReader(stream)
        read_fd, write_fd = os.pipe()
        plain_in = os.fdopen(read_fd, "rb", buffering=COPY_BUFFER)
        plain_out = os.fdopen(write_fd, "wb", buffering=COPY_BUFFER)
        errors: list[BaseException] = []

        def decrypt() -> None:
            try:
                pyrage.decrypt_io(capture, plain_out, self._identities)
            except BaseException as exc:  # noqa: BLE001 - handed to the reading thread
                errors.append(exc)
            finally:
                try:
                    plain_out.close()
                except OSError:
                    pass

        worker = threading.Thread(target=decrypt, name="age-decrypt", daemon=True)
        worker.start()

        def finish() -> None:
            worker.join()
            if capture.error is not None:
                raise capture.error
            if errors:
                error = errors[0]
                if "No matching keys" in str(error):
                    raise IntegrityError(
                        f"cannot decrypt: none of the given identities fits the recipients this backup "
                        f"was encrypted to: {_recipients_text(recipients)}",
                        "pass --identity FILE holding the secret key of one of them",
                    )
                raise IntegrityError(f"cannot decrypt age data (corrupt or truncated): {error}")

        def cleanup() -> None:
            plain_in.close()  # the worker, if still writing, fails with EPIPE and ends
            worker.join(timeout=10)

        reader = _PlaintextReader(plain_in, finish, cleanup)
        try:
            reader.prefetch()
        except BaseException:
            reader.close()
            raise
        return io.BufferedReader(reader, COPY_BUFFER)


class BackupDecryptor:
    """The Decryptor restore and verify use: gpg or age, picked by the artifact's `encryption`."""

    def __init__(self, gpg: GpgDecryptor, age: AgeDecryptor) -> None:
        self.gpg = gpg
        self.age = age

    def open(self, stream: BinaryIO, kind: str, recipients: list[str]) -> BinaryIO:
        """A readable stream of plaintext; raises IntegrityError (naming the recipients) when the
        available keys cannot decrypt it or the data is damaged."""
        if kind == "gpg":
            return self.gpg.open(stream, recipients)
        if kind == "age":
            return self.age.open(stream, recipients)
        raise IntegrityError(f"unknown encryption {kind!r}")


def holds_private_key(decryptor: Decryptor | None, kind: str, recipients: list[str]) -> bool:
    """Whether `decryptor` (None: the default one, `$GNUPGHOME`) has a key for a `kind` ("gpg",
    "age") artifact encrypted to `recipients`: a GPG secret key whose fingerprint (primary or
    subkey) is one of them (any secret key when none are recorded), or any age identity. Only
    looks: nothing is decrypted. A decryptor of another kind is assumed able."""
    chosen = decryptor if decryptor is not None else default_decryptor()
    if not isinstance(chosen, BackupDecryptor):
        return True
    if kind == "age":
        return bool(chosen.age._identities)
    if kind != "gpg":
        return False
    home = chosen.gpg.home
    was_running = _agent_running(home)
    try:
        listing = proc.run(_gpg_argv(home, "--with-colons", "--list-secret-keys"), timeout=60)
    except CommandError:
        return False
    finally:
        if not was_running:
            kill_gpg_agent(home)
    fingerprints = {line.split(":")[9] for line in listing.decode("utf-8", "replace").splitlines()
                    if line.startswith("fpr:") and len(line.split(":")) > 9}
    wanted = {r.upper() for r in recipients}
    return bool(fingerprints & wanted) if wanted else bool(fingerprints)


def build_decryptor(gpg_homedir: Path | None, identities: list[Path]) -> Decryptor:
    """A Decryptor using the GPG private keys of `gpg_homedir` (None: `$GNUPGHOME`) and the age
    identities in `identities`. Raises UsageError for a missing homedir or an unreadable identity."""
    if gpg_homedir is not None and not gpg_homedir.is_dir():
        raise UsageError(f"--gpg-homedir {gpg_homedir}: no such directory")
    return BackupDecryptor(GpgDecryptor(gpg_homedir), AgeDecryptor(_read_age_identities(identities)))


def default_decryptor() -> Decryptor:
    """The Decryptor used when a command was given no key options: GPG from `$GNUPGHOME`, no age identity."""
    return build_decryptor(None, [])


# homedirs whose gpg-agent a decryption started: stopped at exit even if a stream was never closed
_agents_to_stop: set[Path | None] = set()


@atexit.register
def _stop_agents() -> None:
    for home in list(_agents_to_stop):
        kill_gpg_agent(home)
