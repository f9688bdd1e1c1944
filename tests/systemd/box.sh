#!/bin/bash
# box.sh - boot a real systemd (PID 1) in a systemd-nspawn container over a
# cached debootstrap'ed Debian tree, and run commands in it. The onefs
# system tests (tests/service_systemd.rs -> tests/systemd/run.sh) use it.
#
#   box.sh setup [PKG...]   debootstrap the cached tree if missing (flock'ed, idempotent);
#                           PKGs (e.g. fuse3 man-db for the package test) are apt-get
#                           installed into the cached tree once, if missing
#   box.sh start NAME ARGS  boot container NAME (extra systemd-nspawn ARGS, e.g. --bind-ro=)
#   box.sh exec NAME CMD..  run CMD inside (nsenter into all its namespaces, clean env)
#   box.sh stop NAME        power off, kill if needed, remove host-side leftovers
#
# Recipe for a host whose PID 1 is not systemd (learned from ../shared/tools/systemd-box):
# --register=no --keep-unit (no machined), the container in its own cgroup, device
# nodes for /dev/fuse and /dev/loop* made inside at boot (no udev in the container),
# --volatile=overlay so the cached tree stays pristine and several boxes can share it.
#
# Environment: ONEFS_ROOTFS (default /var/tmp/onefs-systemd-rootfs), ONEFS_BOX_STATE
# (default /var/tmp/onefs-box-state), MIRROR (default: the host's bookworm apt source).
set -euo pipefail

ROOTFS=${ONEFS_ROOTFS:-/var/tmp/onefs-systemd-rootfs}
STATE_ROOT=${ONEFS_BOX_STATE:-/var/tmp/onefs-box-state}
SUITE=bookworm
# no procps on purpose: a minimal Debian has no /bin/kill, and the units must not need it
INCLUDE=systemd,systemd-sysv,dbus,util-linux,mount,e2fsprogs
# bump when provisioning changes: the cached tree is re-provisioned
PROVISION_VERSION=3
LOOP_NODES=256
BOOT_TIMEOUT=${BOOT_TIMEOUT:-90}

log() { printf '[box %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root"

mirror() {
    if [ -n "${MIRROR:-}" ]; then echo "$MIRROR"; return; fi
    local m=""
    if ls /etc/apt/sources.list.d/*.sources >/dev/null 2>&1; then
        m=$(awk -v s="$SUITE" 'BEGIN{RS="";FS="\n"}
            { u=""; ok=0; deb=0
              for (i=1;i<=NF;i++) {
                if ($i ~ /^Types:/ && $i ~ /[ \t]deb([ \t]|$)/) deb=1
                if ($i ~ /^URIs:/) { split($i,a,/[ \t]+/); u=a[2] }
                if ($i ~ /^Suites:/) { n=split($i,b,/[ \t]+/); for (j=2;j<=n;j++) if (b[j]==s) ok=1 }
              }
              if (deb && ok && u!="") { print u; exit } }' /etc/apt/sources.list.d/*.sources)
    fi
    if [ -z "$m" ] && [ -f /etc/apt/sources.list ]; then
        m=$(awk -v s="$SUITE" '$1=="deb" { for (i=2;i<=NF;i++) if ($i ~ /^[a-z]+:\/\//) { if ($(i+1)==s) { print $i; exit } } }' /etc/apt/sources.list)
    fi
    [ -n "$m" ] || die "no apt mirror for $SUITE in /etc/apt/sources.list*; set MIRROR="
    echo "$m"
}

provision() {
    mkdir -p "$ROOTFS/usr/local/sbin" "$ROOTFS/etc/systemd/system/sysinit.target.wants"
    cat > "$ROOTFS/usr/local/sbin/box-devnodes" <<EOF
#!/bin/sh
[ -e /dev/fuse ] || mknod -m 0666 /dev/fuse c 10 229
[ -e /dev/loop-control ] || mknod -m 0660 /dev/loop-control c 10 237
i=0
while [ \$i -lt $LOOP_NODES ]; do
    [ -e /dev/loop\$i ] || mknod -m 0660 /dev/loop\$i b 7 \$i
    i=\$((i+1))
done
chgrp disk /dev/loop-control /dev/loop[0-9]* 2>/dev/null || true
EOF
    chmod 755 "$ROOTFS/usr/local/sbin/box-devnodes"
    cat > "$ROOTFS/etc/systemd/system/box-devnodes.service" <<'EOF'
[Unit]
Description=Create /dev/fuse and /dev/loop* (the container has no udev)
DefaultDependencies=no
ConditionVirtualization=container
Before=sysinit.target local-fs-pre.target systemd-tmpfiles-setup-dev.service
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/box-devnodes
[Install]
WantedBy=sysinit.target
EOF
    ln -sf /etc/systemd/system/box-devnodes.service \
        "$ROOTFS/etc/systemd/system/sysinit.target.wants/box-devnodes.service"
    # nothing in the box needs these, and they slow the boot or fail without a network
    for u in systemd-networkd-wait-online.service apt-daily.timer apt-daily-upgrade.timer \
             e2scrub_all.timer e2scrub_reap.service fstrim.timer; do
        ln -sf /dev/null "$ROOTFS/etc/systemd/system/$u"
    done
    echo onefs-box > "$ROOTFS/etc/hostname"
    rm -rf "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/* 2>/dev/null || true
    echo "$PROVISION_VERSION" > "$ROOTFS/.onefs-provisioned"
}

setup() {
    command -v systemd-nspawn >/dev/null || die "systemd-nspawn missing: apt-get install systemd-container"
    command -v debootstrap >/dev/null || die "debootstrap missing: apt-get install debootstrap"
    [ -e /dev/fuse ] || modprobe fuse || die "host has no /dev/fuse"
    [ -e /dev/loop-control ] || modprobe loop || die "host has no /dev/loop-control"
    mkdir -p "$(dirname "$ROOTFS")" "$STATE_ROOT"
    exec 9>"$ROOTFS.lock"
    flock 9
    if [ ! -x "$ROOTFS/usr/lib/systemd/systemd" ] || [ ! -e "$ROOTFS/.onefs-debootstrap-done" ]; then
        local t0=$SECONDS tmp="$ROOTFS.tmp.$$"
        log "debootstrap $SUITE into $ROOTFS (first run only; a few minutes)"
        rm -rf "$ROOTFS" "$ROOTFS".tmp.*
        debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$tmp" "$(mirror)" \
            > "$STATE_ROOT/debootstrap.log" 2>&1 \
            || { tail -20 "$STATE_ROOT/debootstrap.log" >&2; rm -rf "$tmp"; die "debootstrap failed"; }
        touch "$tmp/.onefs-debootstrap-done"
        mv "$tmp" "$ROOTFS"
        log "debootstrap took $((SECONDS - t0))s"
    fi
    if [ "$(cat "$ROOTFS/.onefs-provisioned" 2>/dev/null)" != "$PROVISION_VERSION" ]; then
        provision
    fi
    local p missing=()
    for p in "$@"; do
        dpkg-query --admindir="$ROOTFS/var/lib/dpkg" -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" \
            || missing+=("$p")
    done
    if ((${#missing[@]})); then
        add_packages "${missing[@]}"
    fi
    exec 9>&-
}

# Installs packages into the cached tree (setup holds the lock): apt-get in a
# plain (not booted) systemd-nspawn, then the apt lists and archives are dropped.
add_packages() {
    local t0=$SECONDS extra=()
    [ -d /run/systemd/system ] || extra=(--register=no --keep-unit)
    log "installing $* into $ROOTFS (once)"
    systemd-nspawn -q -D "$ROOTFS" "${extra[@]}" --pipe -E DEBIAN_FRONTEND=noninteractive \
        sh -c 'apt-get update -qq && apt-get install -y -qq --no-install-recommends "$@"; rc=$?
               apt-get clean; rm -rf /var/lib/apt/lists/*; exit $rc' _ "$@" \
        > "$STATE_ROOT/add-packages.log" 2>&1 \
        || { tail -20 "$STATE_ROOT/add-packages.log" >&2; die "installing $* into the tree failed"; }
    log "installing $* took $((SECONDS - t0))s"
}

state() { echo "$STATE_ROOT/$1"; }

alive() { [ -e "/proc/$1" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null; }

nspawn_pid() {
    local p
    p=$(cat "$(state "$1")/nspawn.pid" 2>/dev/null) || return 1
    alive "$p" || return 1
    [ "$(cat /proc/$p/comm 2>/dev/null)" = systemd-nspawn ] || return 1
    echo "$p"
}

leader_pid() {
    local np c
    np=$(nspawn_pid "$1") || return 1
    for c in $(ps -o pid= --ppid "$np"); do
        [ "$(cat /proc/$c/comm 2>/dev/null)" = systemd ] && { echo "$c"; return 0; }
    done
    return 1
}

cgroup_dirs() {
    [ -d /run/systemd/system ] && return 0
    if [ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ]; then
        echo "/sys/fs/cgroup/onefs-box-$1"
    else
        local h
        for h in systemd unified; do
            [ -e "/sys/fs/cgroup/$h/cgroup.procs" ] && echo "/sys/fs/cgroup/$h/onefs-box-$1"
        done
    fi
    return 0
}

in_box() {
    local name=$1 l; shift
    l=$(leader_pid "$name") || die "container $name is not running"
    nsenter --target "$l" --all \
        env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        HOME=/root LANG=C.UTF-8 TERM=dumb SYSTEMD_PAGER= "$@"
}

cleanup_host() {
    local name=$1 d
    for d in $(cgroup_dirs "$name"); do
        [ -d "$d" ] && find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null || true
    done
    rm -rf "/run/systemd/nspawn/propagate/$name"
    rm -f "$(state "$name")/nspawn.pid"
}

start() {
    local name=$1 st i l; shift
    [ -x "$ROOTFS/usr/lib/systemd/systemd" ] || die "no rootfs at $ROOTFS: run $0 setup"
    nspawn_pid "$name" >/dev/null && die "container $name already running"
    cleanup_host "$name"
    mkdir -p "$(state "$name")"
    local args=(-q -D "$ROOTFS" -b -M "$name" --volatile=overlay --console=pipe "$@")
    local extra=()
    [ -d /run/systemd/system ] || extra=(--register=no --keep-unit)
    setsid bash -c '
        pidfile=$1 cgdirs=$2; shift 2
        for d in $cgdirs; do mkdir -p "$d" && echo $$ > "$d/cgroup.procs"; done
        echo $$ > "$pidfile"
        exec systemd-nspawn "$@"' _ "$(state "$name")/nspawn.pid" "$(cgroup_dirs "$name" | tr '\n' ' ')" \
        "${extra[@]}" "${args[@]}" < /dev/null > "$(state "$name")/nspawn.log" 2>&1 &
    for i in $(seq 1 $((BOOT_TIMEOUT * 10))); do
        l=$(leader_pid "$name" 2>/dev/null) && break
        if [ "$i" -gt 30 ] && ! nspawn_pid "$name" >/dev/null; then break; fi
        sleep 0.1
    done
    l=$(leader_pid "$name") || { cat "$(state "$name")/nspawn.log" >&2; die "nspawn did not start systemd"; }
    for i in $(seq 1 $((BOOT_TIMEOUT * 10))); do
        in_box "$name" test -S /run/systemd/private 2>/dev/null && break
        sleep 0.1
    done
    st=$(in_box "$name" timeout "$BOOT_TIMEOUT" systemctl is-system-running --wait 2>/dev/null || true)
    case "$st" in
        running) ;;
        degraded) log "WARNING: $name booted degraded:"; in_box "$name" systemctl --failed --no-pager >&2 || true ;;
        *) cat "$(state "$name")/nspawn.log" >&2; die "boot of $name did not finish (state: '$st')" ;;
    esac
    log "container $name booted ($st), leader PID $l"
}

stop() {
    local name=$1 np i
    if np=$(nspawn_pid "$name"); then
        ( in_box "$name" systemctl poweroff --no-block ) >/dev/null 2>&1 || kill -TERM "$np" 2>/dev/null || true
        for i in $(seq 1 300); do alive "$np" || break; sleep 0.1; done
        if alive "$np"; then log "poweroff of $name timed out: SIGTERM"; kill -TERM "$np" 2>/dev/null || true; sleep 5; fi
        if alive "$np"; then log "SIGKILL to nspawn of $name"; kill -KILL "$np" 2>/dev/null || true; sleep 1; fi
    fi
    cleanup_host "$name"
    rm -rf "$(state "$name")"
}

cmd=${1:-}; [ $# -gt 0 ] && shift
case "$cmd" in
    setup) setup "$@" ;;
    start) [ $# -ge 1 ] || die "usage: $0 start NAME [nspawn args]"; start "$@" ;;
    exec)  [ $# -ge 2 ] || die "usage: $0 exec NAME CMD..."; in_box "$@" ;;
    stop)  [ $# -ge 1 ] || die "usage: $0 stop NAME"; stop "$1" ;;
    *) die "usage: $0 setup [PKG...]|start NAME [args]|exec NAME CMD...|stop NAME" ;;
esac
