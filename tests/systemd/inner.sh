#!/bin/bash
# Runs INSIDE the container booted by run.sh (systemd is PID 1).
set -euo pipefail
step() { echo "== $*"; }
fail() {
    echo "FAILED: $*"
    systemctl --no-pager status 'onefs*' 'srv-onefs-data.mount' 'mnt-data.mount' 2>&1 | tail -40 || true
    journalctl --no-pager -n 80 2>&1 || true
    exit 1
}
trap 'fail "line $LINENO: $BASH_COMMAND"' ERR
wait_for() {  # wait_for SECONDS CMD...
    local t=$(( $1 * 10 )); shift
    until "$@"; do t=$((t - 1)); [ $t -gt 0 ] || return 1; sleep 0.1; done
}
is_onefs_mount() { findmnt -n -t fuse.onefs "$1" >/dev/null; }

DESTDIR= /onefs-stage/systemd/install.sh /onefs-stage/onefs
systemctl daemon-reload
mkdir -p /srv/onefs/data /mnt/data
cat > /etc/onefs/data.toml <<'T'
store = "/var/lib/onefs/data"
mountpoint = "/srv/onefs/data"
mode = "0660"
[create]
size = "2G"
block_size = "1M"
T

step "systemctl start onefs@data: active only once disk.img is visible"
systemctl start onefs@data
# no waiting: start returned, so READY=1 came, so the mount must be there
[ -e /srv/onefs/data/disk.img ] || fail "disk.img not visible when start returned"
is_onefs_mount /srv/onefs/data || fail "not in mountinfo when start returned"
[ "$(systemctl is-active onefs@data)" = active ]
status=$(systemctl show -P StatusText onefs@data)
[[ "$status" == "serving /var/lib/onefs/data at /srv/onefs/data" ]] || fail "StatusText: $status"
onefs status data | grep -q "unit onefs@data.service" || fail "status does not name the unit: $(onefs status data)"
[ "$(stat -c %a /srv/onefs/data/disk.img)" = 660 ]

step "systemctl reload"
systemctl reload onefs@data
journalctl -u onefs@data --no-pager | grep -q "reloaded: serving" || fail "no reload in the journal"
sed -i 's/mode = "0660"/mode = "0640"/' /etc/onefs/data.toml
if systemctl reload onefs@data 2>/dev/null; then fail "a change needing a remount reloaded silently"; fi
journalctl -u onefs@data --no-pager | grep -q "needs a remount" || fail "remount need not reported"
[ "$(systemctl is-active onefs@data)" = active ]
is_onefs_mount /srv/onefs/data
sed -i 's/mode = "0640"/mode = "0660"/' /etc/onefs/data.toml

step "onefs grow: the unit's onefs grows disk.img online, through its control socket"
out=$(onefs grow --size 3G --definition data) || fail "onefs grow failed: $out"
[[ "$out" == *"online at /srv/onefs/data: disk.img 2G -> 3G"* ]] || fail "onefs grow said: $out"
[ "$(stat -c %s /srv/onefs/data/disk.img)" = $((3 << 30)) ] || fail "stat does not show the new size"
journalctl -u onefs@data --no-pager | grep -q "grew /var/lib/onefs/data at /srv/onefs/data" || fail "no grow in the journal"
onefs status data | grep -q "disk.img 3G" || fail "status: $(onefs status data)"
[ "$(systemctl is-active onefs@data)" = active ]

step "one definition, one unit: onefs.service cannot take data while onefs@data runs"
systemctl start onefs.service
journalctl -u onefs.service --no-pager | grep -q "data: .*onefs@data.service" || fail "onefs.service does not name the unit holding data"
systemctl stop onefs.service

step "kill -9 of the daemon: Restart= brings the mount back"
pid=$(systemctl show -P MainPID onefs@data)
kill -9 "$pid"
wait_for 30 bash -c "p=\$(systemctl show -P MainPID onefs@data); [ \"\$p\" != 0 ] && [ \"\$p\" != $pid ] && [ \"\$(systemctl is-active onefs@data)\" = active ]" \
    || fail "not restarted"
[ -e /srv/onefs/data/disk.img ] || fail "disk.img not back after restart"
[ "$(systemctl show -P NRestarts onefs@data)" -ge 1 ]

step "systemctl stop unmounts"
systemctl stop onefs@data
! is_onefs_mount /srv/onefs/data || fail "still mounted after stop"
[ "$(systemctl is-active onefs@data || true)" = inactive ]

step "onefs.service serves the definition"
systemctl start onefs.service
is_onefs_mount /srv/onefs/data
systemctl show -P StatusText onefs.service | grep -q "serving 1 mount" || fail "onefs.service status"
systemctl stop onefs.service
! is_onefs_mount /srv/onefs/data

step "ext4 inside disk.img"
mount -t fuse.onefs data /srv/onefs/data
mkfs.ext4 -q -F /srv/onefs/data/disk.img
umount /srv/onefs/data

step "fstab: mount -a"
cat >> /etc/fstab <<'T'
data /srv/onefs/data fuse.onefs _netdev,nofail 0 0
/srv/onefs/data/disk.img /mnt/data ext4 loop,nofail,x-systemd.requires=srv-onefs-data.mount 0 0
T
mount -a
is_onefs_mount /srv/onefs/data
findmnt -n -t ext4 /mnt/data >/dev/null || fail "ext4 not mounted by mount -a"
echo hello > /mnt/data/hello
umount /mnt/data
umount /srv/onefs/data

step "fstab: generated mount units"
systemctl daemon-reload
systemctl start mnt-data.mount
[ "$(systemctl is-active srv-onefs-data.mount)" = active ] || fail "srv-onefs-data.mount not active"
[ "$(systemctl is-active mnt-data.mount)" = active ] || fail "mnt-data.mount not active"
[ "$(cat /mnt/data/hello)" = hello ]
systemctl stop mnt-data.mount srv-onefs-data.mount
! is_onefs_mount /srv/onefs/data
! findmnt -n /mnt/data >/dev/null

failed=$(systemctl --failed --no-legend --plain | grep -c onefs || true)
[ "$failed" = 0 ] || { systemctl --failed --no-pager; fail "failed units"; }
echo "ALL SYSTEMD TESTS PASSED"
