#!/bin/sh
# Remove backupd installed by scripts/install.sh: scripts/uninstall.sh [PREFIX]   (root; make uninstall)
#
# Stops and disables the units, removes them and the virtualenv in PREFIX. Keeps, on purpose:
# the backups (/var/backups/backupd and every other destination), the state (/var/lib/backupd),
# the config and credentials (/etc/backupd) and the backupd user that owns them; the commands
# to remove those too are printed at the end. DESTDIR works as for install.sh.
set -eu

PREFIX=${1:-/opt/backupd}
DESTDIR=${DESTDIR:-}
UNITS="$DESTDIR/etc/systemd/system"

say() { printf '%s\n' "uninstall: $*"; }

if [ -z "$DESTDIR" ] && [ "$(id -u)" -ne 0 ]; then
    echo "uninstall: must run as root (or set DESTDIR)" >&2
    exit 2
fi
case "$PREFIX" in
    /*) ;;
    *) echo "uninstall: PREFIX must be an absolute path, not '$PREFIX'" >&2; exit 2 ;;
esac
if [ "$PREFIX" = "/" ] || [ "$PREFIX" = "/usr" ] || [ "$PREFIX" = "/opt" ]; then
    echo "uninstall: refusing to remove PREFIX=$PREFIX" >&2
    exit 2
fi

systemd_running() { [ -z "$DESTDIR" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; }

if systemd_running; then
    # every instance too; a unit that is not loaded is not an error
    systemctl disable --now backupd.service 'backupd@*.service' backupd.timer backupd-backup.service 2>/dev/null || true
fi
for unit in backupd.service backupd@.service backupd-backup.service backupd.timer; do
    if [ -e "$UNITS/$unit" ]; then
        rm -f "$UNITS/$unit"
        say "removed $UNITS/$unit"
    fi
done
if systemd_running; then
    systemctl daemon-reload
fi
if [ -x "$DESTDIR$PREFIX/bin/backupd" ] || [ -e "$DESTDIR$PREFIX/pyvenv.cfg" ]; then
    rm -rf "$DESTDIR$PREFIX"
    say "removed $DESTDIR$PREFIX"
fi
rm -f "$DESTDIR/etc/backupd/backupd.example.toml"
rm -f "$DESTDIR/usr/share/bash-completion/completions/backupd" "$DESTDIR/usr/share/zsh/vendor-completions/_backupd"
if [ "$(readlink "$DESTDIR/usr/local/bin/backupd" 2>/dev/null)" = "$PREFIX/bin/backupd" ]; then
    rm -f "$DESTDIR/usr/local/bin/backupd"
    say "removed $DESTDIR/usr/local/bin/backupd"
fi

cat <<KEPT

backupd is uninstalled. Kept: backups (/var/backups/backupd and the other destinations), state
(/var/lib/backupd), config and credentials (/etc/backupd), the backupd user. To remove them too:
  rm -rf /var/lib/backupd /etc/backupd     # status, history, config, credentials
  userdel backupd                          # after removing what it owns
KEPT
