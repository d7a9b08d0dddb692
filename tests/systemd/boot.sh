#!/bin/sh
# Boot a real systemd 252 as PID 1 of the current (new) PID + mount namespace, without touching the
# machine. Run it ONLY through `unshare --pid --fork --mount --uts --ipc --mount-proc`:
#     unshare --pid --fork --mount --uts --ipc --mount-proc sh tests/systemd/boot.sh WORK
# WORK (a host folder, outside /tmp) appears inside as /run/backupd-test; everything else the tests write lands
# on tmpfs or overlays that vanish with the namespace (end it with SIGKILL to its systemd's pid).
#
# The order matters (../shared GOTCHAS, systemd): systemd's boot runs `systemd-tmpfiles --remove`,
# and Debian's tmp.conf (`D /tmp`) would empty the machine's /tmp through a shared file system. So,
# before exec: every mount made private; fresh tmpfs on /tmp, /var/tmp, /run, /var/log/journal,
# /var/lib/systemd; the tmpfiles units masked; a minimal target of our own, never default.target.
set -eu

WORK=$1
[ "$$" = 1 ] || { echo "boot.sh: must be PID 1 of a new PID namespace (run it through unshare)" >&2; exit 2; }

mount --make-rprivate /

# /run first: it holds the overlays' upper layers, the masks, the target, and the test's folder
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
mkdir -p /run/backupd-test
mount --bind "$WORK" /run/backupd-test

# a /dev of its own: systemd would otherwise create /dev/log on the machine's /dev and write its
# status to the machine's console and kernel log (console and kmsg are /dev/null here)
mkdir -p /run/hostdev
mount --bind /dev /run/hostdev
mount -t tmpfs -o mode=0755,nosuid tmpfs /dev
for node in null zero full random urandom tty; do
    touch "/dev/$node"
    mount --bind "/run/hostdev/$node" "/dev/$node"
done
for node in console kmsg; do
    touch "/dev/$node"
    mount --bind /run/hostdev/null "/dev/$node"
done
umount /run/hostdev
rmdir /run/hostdev
mkdir -p /dev/pts /dev/shm /dev/mqueue
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts /dev/pts
ln -s pts/ptmx /dev/ptmx
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm
ln -s /proc/self/fd /dev/fd
ln -s /proc/self/fd/0 /dev/stdin
ln -s /proc/self/fd/1 /dev/stdout
ln -s /proc/self/fd/2 /dev/stderr

# `make install` (useradd, /opt, /etc/systemd/system...) writes into overlays, never the machine
for dir in /etc /opt /var /usr/local /srv /home /root; do
    name=$(echo "$dir" | tr / _)
    mkdir -p "/run/overlay/$name/upper" "/run/overlay/$name/work"
    mount -t overlay overlay -o "lowerdir=$dir,upperdir=/run/overlay/$name/upper,workdir=/run/overlay/$name/work" "$dir"
done

# on top of the /var overlay: fresh, empty file systems where systemd and tmpfiles write
for dir in /tmp /var/tmp /var/log/journal /var/lib/systemd; do
    mkdir -p "$dir"
    mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$dir"
done
chmod 0755 /var/log/journal /var/lib/systemd

mkdir -p /run/systemd/system
for unit in systemd-tmpfiles-setup.service systemd-tmpfiles-setup-dev.service \
            systemd-tmpfiles-clean.service systemd-tmpfiles-clean.timer; do
    ln -sf /dev/null "/run/systemd/system/$unit"
done
cat > /run/systemd/system/backupd-test.target <<'UNIT'
[Unit]
Description=backupd tests: journald only
Wants=systemd-journald.service
UNIT
echo ready > /run/backupd-test/.booting
exec /lib/systemd/systemd --unit=backupd-test.target
