# Shell functions shared by the .deb maintainer scripts and the .rpm
# scriptlets (packaging/build inlines this file at the marker line of
# each script). POSIX sh; every systemd call is skipped when systemd is not
# running (a chroot, a container build, another init).

onefs_systemd_running() { [ -d /run/systemd/system ]; }

# Make systemd see added, changed or removed unit files.
onefs_daemon_reload() {
    if onefs_systemd_running; then
        systemctl --system daemon-reload >/dev/null 2>&1 || true
    fi
}

# onefs units that are running now, one line.
onefs_running_units() {
    onefs_systemd_running || return 0
    systemctl list-units --plain --no-legend --state=active,reloading,activating 'onefs@*.service' 'onefs.service' 2>/dev/null \
        | awk '{ printf "%s%s", sep, $1; sep = " " }'
}

# Upgrades never restart a mount (a restart unmounts disk.img under its
# users): say what still runs the previous version.
onefs_tell_running() {
    units=$(onefs_running_units)
    if [ -n "$units" ]; then
        echo "onefs: these units still run the previous onefs: $units"
        echo "onefs: they were not restarted, as a restart unmounts disk.img; when nothing uses it: systemctl restart UNIT"
    fi
}

# Removal: stop every running onefs unit (flush, unmount), then name any
# onefs mount left (mounted from fstab or by hand), which is not touched.
onefs_stop_all() {
    if onefs_systemd_running; then
        units=$(onefs_running_units)
        if [ -n "$units" ]; then
            echo "onefs: stopping $units"
            # deb-systemd-invoke honours policy-rc.d on Debian; plain systemctl elsewhere
            if command -v deb-systemd-invoke >/dev/null 2>&1; then set -- deb-systemd-invoke; else set -- systemctl; fi
            # shellcheck disable=SC2086
            "$@" stop $units || echo "onefs: warning: stopping $units failed; see systemctl status" >&2
        fi
    fi
    left=$(awk '$3 == "fuse.onefs" || $3 == "onefs" { printf "%s%s", sep, $2; sep = " " }' /proc/mounts 2>/dev/null || true)
    if [ -n "$left" ]; then
        echo "onefs: still mounted, not by an onefs unit (fstab or by hand), left alone: $left" >&2
    fi
}
