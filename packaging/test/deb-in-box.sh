#!/bin/bash
# deb-in-box.sh DEB - boots a real systemd in a container (tests/systemd/box.sh,
# over the cached Debian tree, with fuse3 and man-db added to it once), and
# runs deb-inner.sh there: dpkg -i, enable --now from the shipped example,
# fstab mount -a, man, upgrade without restart, dpkg -r, dpkg --purge.
# Cleans up the container on exit. tests/packaging.rs runs it.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
deb=${1:?usage: deb-in-box.sh DEB}
box=$repo/tests/systemd/box.sh
name=onefs-pkg$$-$RANDOM
stage=$(mktemp -d /var/tmp/onefs-pkgstage.XXXXXX)
cleanup() {
    "$box" stop "$name" || true
    rm -rf "$stage"
}
trap cleanup EXIT
"$box" setup fuse3 man-db
cp "$deb" "$stage/onefs.deb"
cp "$here/deb-inner.sh" "$stage/deb-inner.sh"
"$box" start "$name" --bind-ro="$stage:/onefs-stage"
"$box" exec "$name" /onefs-stage/deb-inner.sh /onefs-stage/onefs.deb
