#!/bin/bash
# run.sh ONEFS_BINARY - boots a real systemd in a container (box.sh), installs
# onefs there with systemd/install.sh and runs inner.sh. Cleans up on exit.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
bin=${1:?usage: run.sh ONEFS_BINARY}
box=$here/box.sh
name=onefs-t$$-$RANDOM
stage=$(mktemp -d /var/tmp/onefs-stage.XXXXXX)
cleanup() {
    "$box" stop "$name" || true
    rm -rf "$stage"
}
trap cleanup EXIT
"$box" setup
mkdir -p "$stage/systemd" "$stage/man"
cp "$repo"/systemd/* "$stage/systemd/"
cp "$repo"/man/* "$stage/man/"
cp "$bin" "$stage/onefs"
cp "$here/inner.sh" "$stage/inner.sh"
"$box" start "$name" --bind-ro="$stage:/onefs-stage"
"$box" exec "$name" /onefs-stage/inner.sh
