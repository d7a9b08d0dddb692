#!/bin/sh
# Install backupd as a systemd service: scripts/install.sh [PREFIX]   (run as root; make install)
#
#   PREFIX (default /opt/backupd)  the virtualenv holding backupd and its dependencies
#   DESTDIR (env, default empty)   a staging root: everything lands under it, no user is created
#                                  and systemd is not touched (packaging, tests)
#   PYTHON (env)                   the interpreter for the virtualenv (3.11+; default: the system's
#                                  /usr/bin/python3, else python3 on PATH). One under /root or /home
#                                  is refused: the unit's ProtectHome=yes would hide it (203/EXEC)
#   BACKUPD_PIP_ARGS (env)         extra pip arguments (e.g. --no-index --find-links WHEELS)
#
# What it does: virtualenv in PREFIX with backupd installed; the `backupd` system user; the units
# backupd.service, backupd@.service, backupd.timer + backupd-backup.service in /etc/systemd/system; /usr/local/bin/backupd (a symlink);
# /etc/backupd/backupd.toml from the example unless a config is already there (never overwritten);
# /etc/backupd/credentials/ for LoadCredential= (with a fresh signing_key unless one is there);
# /var/backups/backupd for the default local
# destination; then a check that the backupd user can run backupd with /home and /root hidden
# as the unit hides them. Idempotent.
set -eu

PREFIX=${1:-/opt/backupd}
DESTDIR=${DESTDIR:-}
if [ -z "${PYTHON:-}" ]; then
    if [ -x /usr/bin/python3 ]; then PYTHON=/usr/bin/python3; else PYTHON=python3; fi
fi
REPO=$(cd "$(dirname "$0")/.." && pwd)
ETC="$DESTDIR/etc/backupd"
UNITS="$DESTDIR/etc/systemd/system"

say() { printf '%s\n' "install: $*"; }

if [ -z "$DESTDIR" ] && [ "$(id -u)" -ne 0 ]; then
    echo "install: must run as root (or set DESTDIR to stage the files elsewhere)" >&2
    exit 2
fi
case "$PREFIX" in
    /*) ;;
    *) echo "install: PREFIX must be an absolute path, not '$PREFIX'" >&2; exit 2 ;;
esac

# 0. the interpreter: 3.11+, and not hidden from the service by ProtectHome=yes
if ! where=$("$PYTHON" -c 'import os, sys
assert sys.version_info >= (3, 11), "Python 3.11+ needed, this is " + sys.version.split()[0]
print(os.path.realpath(sys.executable))
print(os.path.realpath(sys.base_prefix))' 2>&1); then
    echo "install: $PYTHON cannot be used: $(printf '%s\n' "$where" | tail -n 1)" >&2
    exit 2
fi
for path in $where; do
    case "$path" in
        /root|/root/*|/home|/home/*|/run/user/*)
            echo "install: $PYTHON is $path, under a home directory that the unit's ProtectHome=yes hides from the service (it would fail with 203/EXEC); use the system interpreter: PYTHON=/usr/bin/python3 (apt install python3 python3-venv)" >&2
            exit 2 ;;
    esac
done

# 1. the virtualenv
say "virtualenv $DESTDIR$PREFIX (from $PYTHON)"
"$PYTHON" -m venv "$DESTDIR$PREFIX"
# shellcheck disable=SC2086 # BACKUPD_PIP_ARGS is a list of arguments
"$DESTDIR$PREFIX/bin/pip" install --quiet --disable-pip-version-check ${BACKUPD_PIP_ARGS:-} "$REPO"
install -d -m 0755 "$DESTDIR$PREFIX/share/doc"
install -m 0644 "$REPO/docs/operations.md" "$DESTDIR$PREFIX/share/doc/operations.md"
# `backupd` on PATH (sudo's secure_path includes /usr/local/bin)
install -d -m 0755 "$DESTDIR/usr/local/bin"
ln -sfn "$PREFIX/bin/backupd" "$DESTDIR/usr/local/bin/backupd"
say "command /usr/local/bin/backupd -> $PREFIX/bin/backupd"
# shell completion (bash-completion and zsh load these by name)
install -d -m 0755 "$DESTDIR/usr/share/bash-completion/completions" "$DESTDIR/usr/share/zsh/vendor-completions"
"$DESTDIR$PREFIX/bin/backupd" completion bash > "$DESTDIR/usr/share/bash-completion/completions/backupd"
"$DESTDIR$PREFIX/bin/backupd" completion zsh > "$DESTDIR/usr/share/zsh/vendor-completions/_backupd"

# 2. the system user (owns the state and the local backups, nothing else)
if [ -n "$DESTDIR" ]; then
    say "DESTDIR set: not creating the backupd user"
elif id backupd >/dev/null 2>&1; then
    say "user backupd exists"
else
    useradd --system --user-group --home-dir /var/lib/backupd --no-create-home \
        --shell /usr/sbin/nologin --comment "backupd backup daemon" backupd
    say "created system user backupd"
fi
# the monitoring group: reads backupd.prom and nothing else (not the config, not the state)
if [ -z "$DESTDIR" ] && ! getent group backupd-metrics >/dev/null 2>&1; then
    groupadd --system backupd-metrics
    say "created group backupd-metrics (add node_exporter's user to it)"
fi
owner() { # chown only for a real install
    if [ -z "$DESTDIR" ]; then chown "$@"; fi
}

# 3. the units, pointing at PREFIX
install -d -m 0755 "$UNITS"
for unit in backupd.service backupd@.service backupd-backup.service backupd.timer; do
    sed "s#/opt/backupd/#$PREFIX/#g" "$REPO/systemd/$unit" > "$UNITS/$unit.tmp"
    chmod 0644 "$UNITS/$unit.tmp"
    mv "$UNITS/$unit.tmp" "$UNITS/$unit"
    say "unit $UNITS/$unit"
done

# 4. config and credentials (an existing config is never touched)
install -d -m 0750 "$ETC"
owner root:backupd "$ETC"
install -m 0644 "$REPO/config/backupd.example.toml" "$ETC/backupd.example.toml"
if [ -e "$ETC/backupd.toml" ]; then
    say "kept the existing $ETC/backupd.toml"
else
    # a new config writes its metrics where the monitoring group can read them
    sed 's|^# metrics_file = |metrics_file = |' "$REPO/config/backupd.example.toml" > "$ETC/backupd.toml.tmp"
    install -m 0640 "$ETC/backupd.toml.tmp" "$ETC/backupd.toml"
    rm -f "$ETC/backupd.toml.tmp"
    owner root:backupd "$ETC/backupd.toml"
    say "config $ETC/backupd.toml (from the example: edit it)"
fi
install -d -m 0700 "$ETC/credentials"
for credential in dsn bot_token; do
    # LoadCredential= needs the file to exist; empty means "not given this way"
    if [ ! -e "$ETC/credentials/$credential" ]; then
        install -m 0600 /dev/null "$ETC/credentials/$credential"
    fi
done
# the manifest signing key: made here, never replaced (the old backups need it)
if [ -s "$ETC/credentials/signing_key" ]; then
    say "kept the existing signing key $ETC/credentials/signing_key"
else
    rm -f "$ETC/credentials/signing_key"
    "$DESTDIR$PREFIX/bin/backupd" keygen "$ETC/credentials/signing_key" >/dev/null
    say "signing key $ETC/credentials/signing_key (0600): keep a copy with the decryption keys"
fi

# 5. where the default local destination writes; where the metrics file goes (setgid: the file
# gets the group backupd-metrics, 0640)
install -d -m 0700 "$DESTDIR/var/backups/backupd"
owner backupd:backupd "$DESTDIR/var/backups/backupd"
install -d -m 2750 "$DESTDIR/var/lib/backupd-metrics"
owner backupd:backupd-metrics "$DESTDIR/var/lib/backupd-metrics"
chmod 2750 "$DESTDIR/var/lib/backupd-metrics"

if [ -z "$DESTDIR" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    systemctl daemon-reload
fi

# 6. can the service user run it, with /home and /root hidden as ProtectHome=yes hides them?
if [ -z "$DESTDIR" ]; then
    check="$PREFIX/bin/backupd --version"
    if command -v unshare >/dev/null 2>&1 && unshare --mount true 2>/dev/null; then
        # shellcheck disable=SC2016 # expanded by the inner shell
        ran=$(unshare --mount sh -c 'for d in /home /root /run/user; do
                  if [ -d "$d" ]; then mount -t tmpfs -o mode=0000 tmpfs "$d"; fi; done
              exec runuser -u backupd -- '"$check" 2>&1) || {
            echo "install: the backupd user cannot run $check with /home and /root hidden (as the unit runs it): $ran" >&2
            exit 1
        }
    else
        ran=$(runuser -u backupd -- $check 2>&1) || {
            echo "install: the backupd user cannot run $check: $ran" >&2
            exit 1
        }
    fi
    say "checked: the backupd user runs $ran"
fi

cat <<NEXT

backupd is installed in $PREFIX. Next steps:
  1. edit $ETC/backupd.toml  (database, destinations, notifiers; no secrets in it)
  2. secrets, one file each, root-only (0600): the DSN in $ETC/credentials/dsn, the Telegram
     token in $ETC/credentials/bot_token (docs/security.md)
  3. sudo backupd doctor               (as root it reads the unit's credentials)
  4. systemctl enable --now backupd
  5. journalctl -u backupd -f          (and: sudo backupd status)
  More: $PREFIX/share/doc/operations.md
NEXT
