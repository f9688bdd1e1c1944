#!/bin/bash
# Runs INSIDE the container booted by deb-in-box.sh (systemd is PID 1, fuse3
# and man-db installed, onefs not). deb-inner.sh DEB
set -euo pipefail
deb=$1
step() { echo "== $*"; }
fail() {
    echo "FAILED: $*"
    systemctl --no-pager status 'onefs*' 'srv-onefs-data.mount' 2>&1 | tail -40 || true
    journalctl --no-pager -n 60 2>&1 || true
    exit 1
}
trap 'fail "line $LINENO: $BASH_COMMAND"' ERR
wait_for() {  # wait_for SECONDS CMD...
    local t=$(( $1 * 10 )); shift
    until "$@"; do t=$((t - 1)); [ $t -gt 0 ] || return 1; sleep 0.1; done
}
is_onefs_mount() { findmnt -n -t fuse.onefs "$1" >/dev/null; }
no_onefs_process() { local p; for p in /proc/[0-9]*; do [ "$(cat "$p/comm" 2>/dev/null)" != onefs ] || return 1; done; }
reloads() { journalctl -b -o cat _PID=1 | grep -c '^Reloading' || true; }
store_sum() { (cd /var/lib/onefs/data && find . -type f ! -name onefs.lock -print0 | sort -z | xargs -0 md5sum); }

files=(/usr/bin/onefs /usr/sbin/mount.onefs /usr/sbin/mount.fuse.onefs
       /usr/lib/systemd/system/onefs@.service /usr/lib/systemd/system/onefs.service
       /usr/share/man/man8/onefs.8.gz /usr/share/man/man8/mount.onefs.8.gz
       /usr/share/man/man8/mount.fuse.onefs.8.gz /usr/share/man/man5/onefs.toml.5.gz
       /usr/share/doc/onefs/examples/data.toml /usr/share/doc/onefs/copyright)

step "dpkg -i: files in place, systemd reloaded, nothing started"
[ ! -e /usr/bin/onefs ] || fail "onefs already installed in the box"
r0=$(reloads)
dpkg -i "$deb" > /tmp/dpkg-i.log 2>&1 || { cat /tmp/dpkg-i.log; fail "dpkg -i"; }
for f in "${files[@]}"; do [ -e "$f" ] || fail "$f missing after dpkg -i"; done
[ -d /etc/onefs ] && [ -z "$(ls -A /etc/onefs)" ] || fail "/etc/onefs not an empty directory"
[ "$(readlink -f /sbin/mount.fuse.onefs)" = /usr/bin/onefs ] || fail "/sbin/mount.fuse.onefs does not reach onefs"
[ "$(reloads)" -gt "$r0" ] || fail "postinst did not run systemctl daemon-reload"
onefs --version >/dev/null 2>&1 || onefs --help >/dev/null
[ "$(readlink -f "$(systemctl show -P FragmentPath onefs@probe.service)")" = /usr/lib/systemd/system/onefs@.service ] || fail "unit not found"
[ -z "$(systemctl list-units --no-legend --plain --state=active,activating 'onefs@*.service' onefs.service)" ] || fail "dpkg -i started a unit"

step "systemctl enable --now onefs@data, from the shipped example"
cp /usr/share/doc/onefs/examples/data.toml /etc/onefs/data.toml
mkdir -p /srv/onefs/data
systemctl enable --now onefs@data
[ -e /srv/onefs/data/disk.img ] || fail "disk.img not visible when start returned"
is_onefs_mount /srv/onefs/data || fail "not mounted"
[ "$(stat -c %s /srv/onefs/data/disk.img)" = $((1 << 40)) ] || fail "disk.img is not 1T"
onefs status data | grep -q "onefs@data.service" || fail "onefs status: $(onefs status data)"
dd if=/dev/urandom of=/tmp/data bs=1M count=6 status=none
dd if=/tmp/data of=/srv/onefs/data/disk.img bs=1M seek=3 conv=notrunc,fsync status=none
[ "$(ls /var/lib/onefs/data | grep -c '^blk-')" -ge 2 ] || fail "no block files written"

step "upgrade (dpkg -i again): running mount not restarted, user told"
pid=$(systemctl show -P MainPID onefs@data)
dpkg -i "$deb" > /tmp/dpkg-u.log 2>&1 || { cat /tmp/dpkg-u.log; fail "dpkg -i (upgrade)"; }
grep -q "onefs@data.service" /tmp/dpkg-u.log || { cat /tmp/dpkg-u.log; fail "upgrade did not name the running unit"; }
sed 's/^/   /' /tmp/dpkg-u.log
[ "$(systemctl show -P MainPID onefs@data)" = "$pid" ] || fail "upgrade restarted onefs@data"
[ "$(systemctl show -P NRestarts onefs@data)" = 0 ] || fail "onefs@data restarted"
is_onefs_mount /srv/onefs/data || fail "upgrade unmounted"

step "fstab: mount -a with a fuse.onefs line"
systemctl stop onefs@data
! is_onefs_mount /srv/onefs/data || fail "still mounted after stop"
echo "data /srv/onefs/data fuse.onefs _netdev,nofail 0 0" >> /etc/fstab
mount -a
is_onefs_mount /srv/onefs/data || fail "mount -a did not mount"
cmp <(dd if=/srv/onefs/data/disk.img bs=1M skip=3 count=6 status=none) /tmp/data || fail "data read back differs"
umount /srv/onefs/data
wait_for 30 bash -c '! findmnt -n /srv/onefs/data >/dev/null' || fail "umount"
wait_for 30 no_onefs_process || fail "onefs from mount -a did not exit after umount"
sed -i '/fuse.onefs/d' /etc/fstab
systemctl daemon-reload

step "man pages"
man -P cat onefs 2>/dev/null | grep -q "one giant sparse file" || fail "man onefs"
man -P cat 5 onefs.toml 2>/dev/null | grep -q "mount definitions" || fail "man 5 onefs.toml"
man -P cat mount.fuse.onefs 2>/dev/null | grep -qi "mount.onefs" || fail "man mount.fuse.onefs"

step "dpkg -r: stops running instances, removes the files, keeps definitions and store"
systemctl start onefs@data
is_onefs_mount /srv/onefs/data
before=$(store_sum)
r0=$(reloads)
dpkg -r onefs > /tmp/dpkg-r.log 2>&1 || { cat /tmp/dpkg-r.log; fail "dpkg -r"; }
grep -q "stopping onefs@data.service" /tmp/dpkg-r.log || { cat /tmp/dpkg-r.log; fail "prerm did not say it stops onefs@data"; }
sed 's/^/   /' /tmp/dpkg-r.log
[ "$(systemctl is-active onefs@data || true)" != active ] || fail "onefs@data still active"
! is_onefs_mount /srv/onefs/data || fail "still mounted after dpkg -r"
no_onefs_process || fail "an onefs process is left after dpkg -r"
for f in "${files[@]}"; do [ ! -e "$f" ] && [ ! -L "$f" ] || fail "$f left after dpkg -r"; done
[ "$(reloads)" -gt "$r0" ] || fail "postrm did not run systemctl daemon-reload"
[ "$(systemctl show -P LoadState onefs@data.service)" = not-found ] || fail "systemd still knows onefs@.service"
[ -f /etc/onefs/data.toml ] || fail "dpkg -r removed the user's definition"
[ "$(store_sum)" = "$before" ] || fail "dpkg -r changed the store"

step "dpkg --purge: the store is untouched"
dpkg --purge onefs > /tmp/dpkg-p.log 2>&1 || { cat /tmp/dpkg-p.log; fail "dpkg --purge"; }
[ "$(dpkg-query -W -f='${db:Status-Status}' onefs 2>/dev/null || echo not-installed)" = not-installed ] || fail "onefs still known to dpkg"
[ "$(store_sum)" = "$before" ] || fail "purge changed the store"
[ -f /var/lib/onefs/data/onefs.json ] || fail "purge removed onefs.json"
[ ! -L /etc/systemd/system/multi-user.target.wants/onefs@data.service ] || fail "dangling enable link left after purge"

echo "ALL DEB PACKAGE TESTS PASSED"
