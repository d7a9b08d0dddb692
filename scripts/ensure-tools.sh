#!/bin/sh
# Installs the system programs the test suite uses for real, when they are missing and we can
# (root with apt-get, as on CI). Prints what is missing otherwise; the tests that need it say so.
set -u
missing=""
command -v git     >/dev/null 2>&1 || missing="$missing git"
command -v gpg     >/dev/null 2>&1 || missing="$missing gnupg"
command -v rclone  >/dev/null 2>&1 || missing="$missing rclone"
command -v age     >/dev/null 2>&1 || missing="$missing age"
command -v sqlite3 >/dev/null 2>&1 || missing="$missing sqlite3"
command -v psql    >/dev/null 2>&1 || missing="$missing postgresql-client"
[ -x /usr/sbin/sshd ]              || missing="$missing openssh-server"
# promtool (monitoring rules), headless chromium + its driver (the status page), zsh (completion)
command -v promtool     >/dev/null 2>&1 || missing="$missing prometheus"
command -v chromium     >/dev/null 2>&1 || missing="$missing chromium"
command -v chromedriver >/dev/null 2>&1 || missing="$missing chromium-driver"
command -v zsh          >/dev/null 2>&1 || missing="$missing zsh"
# tests/systemd: a real systemd booted in a namespace; install.sh's venv from the system python3
[ -x /lib/systemd/systemd ]             || missing="$missing systemd"
/usr/bin/python3 -c 'import ensurepip' >/dev/null 2>&1 || missing="$missing python3-venv"
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing:$missing"
    apt-get update -qq >/dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null || {
        echo "apt-get install$missing failed" >&2; exit 1; }
else
    echo "missing system tools:$missing (install them for the full test suite)" >&2
fi
