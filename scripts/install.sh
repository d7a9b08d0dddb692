#!/bin/sh
# Install backupd as a systemd service: scripts/install.sh [PREFIX]   (run as root; make install)
#
#   PREFIX (default /opt/backupd)  the virtualenv holding backupd and its dependencies
#   DESTDIR (env, default empty)   a staging root: everything lands under it, no user is created
#                                  and systemd is not touched (packaging, tests)
#   PYTHON (env, default python3)  the interpreter for the virtualenv (3.11+)
#   BACKUPD_PIP_ARGS (env)         extra pip arguments (e.g. --no-index --find-links WHEELS)
#
# What it does: virtualenv in PREFIX with backupd installed; the `backupd` system user; the units
# backupd.service and backupd@.service in /etc/systemd/system; /etc/backupd/backupd.toml from the
# example unless a config is already there (never overwritten); /etc/backupd/credentials/ for
# LoadCredential=; /var/backups/backupd for the default local destination. Idempotent.
set -eu

PREFIX=${1:-/opt/backupd}
DESTDIR=${DESTDIR:-}
PYTHON=${PYTHON:-python3}
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

# 1. the virtualenv
say "virtualenv $DESTDIR$PREFIX"
"$PYTHON" -m venv "$DESTDIR$PREFIX"
# shellcheck disable=SC2086 # BACKUPD_PIP_ARGS is a list of arguments
"$DESTDIR$PREFIX/bin/pip" install --quiet --disable-pip-version-check ${BACKUPD_PIP_ARGS:-} "$REPO"
install -d -m 0755 "$DESTDIR$PREFIX/share/doc"
install -m 0644 "$REPO/docs/operations.md" "$DESTDIR$PREFIX/share/doc/operations.md"

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
owner() { # chown only for a real install
    if [ -z "$DESTDIR" ]; then chown "$@"; fi
}

# 3. the units, pointing at PREFIX
install -d -m 0755 "$UNITS"
for unit in backupd.service backupd@.service; do
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
    install -m 0640 "$REPO/config/backupd.example.toml" "$ETC/backupd.toml"
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

# 5. where the default local destination writes
install -d -m 0700 "$DESTDIR/var/backups/backupd"
owner backupd:backupd "$DESTDIR/var/backups/backupd"

if [ -z "$DESTDIR" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    systemctl daemon-reload
fi

cat <<NEXT

backupd is installed in $PREFIX. Next steps:
  1. edit $ETC/backupd.toml  (database, destinations, notifiers); put secrets in
     $ETC/credentials/dsn and .../bot_token (or <key>_file paths), root-only
  2. sudo -u backupd $PREFIX/bin/backupd --config /etc/backupd/backupd.toml doctor
  3. systemctl enable --now backupd
  4. journalctl -u backupd -f          (and: $PREFIX/bin/backupd status)
  More: $PREFIX/share/doc/operations.md
NEXT
