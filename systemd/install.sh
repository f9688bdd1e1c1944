#!/bin/sh
# Installs onefs: the binary, the mount helpers, the units, the man pages.
#   systemd/install.sh [BINARY]        (default: target/release/onefs)
# DESTDIR=/some/root installs under another root (the system test uses it).
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${1:-$here/target/release/onefs}
root=${DESTDIR:-}
[ -x "$bin" ] || { echo "install.sh: $bin is not an executable (cargo build --release first)" >&2; exit 1; }
install -D -m 0755 "$bin" "$root/usr/bin/onefs"
mkdir -p "$root/usr/sbin"
# mount(8) runs /sbin/mount.onefs for type onefs and /sbin/mount.fuse.onefs for fuse.onefs
ln -sf ../bin/onefs "$root/usr/sbin/mount.onefs"
ln -sf ../bin/onefs "$root/usr/sbin/mount.fuse.onefs"
if [ ! -e "$root/sbin" ] && [ ! -L "$root/sbin" ]; then
    mkdir -p "$root/sbin"
fi
if [ "$(readlink -f "$root/sbin")" != "$(readlink -f "$root/usr/sbin")" ]; then
    ln -sf /usr/bin/onefs "$root/sbin/mount.onefs"
    ln -sf /usr/bin/onefs "$root/sbin/mount.fuse.onefs"
fi
install -D -m 0644 "$here/systemd/onefs@.service" "$root/lib/systemd/system/onefs@.service"
install -D -m 0644 "$here/systemd/onefs.service" "$root/lib/systemd/system/onefs.service"
install -D -m 0644 "$here/man/onefs.8" "$root/usr/share/man/man8/onefs.8"
install -D -m 0644 "$here/man/mount.onefs.8" "$root/usr/share/man/man8/mount.onefs.8"
ln -sf mount.onefs.8 "$root/usr/share/man/man8/mount.fuse.onefs.8"
install -D -m 0644 "$here/man/onefs.toml.5" "$root/usr/share/man/man5/onefs.toml.5"
install -d -m 0755 "$root/etc/onefs"
if [ -z "$root" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi
