#!/usr/bin/env bash
# Builds the demo app as a static Linux binary into pipelines/demo-app/dist/
# (with the host's static busybox for the test image), ready for
#   docker build -f pipelines/demo-app/Dockerfile      pipelines/demo-app
#   docker build -f pipelines/demo-app/Dockerfile.test pipelines/demo-app
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
target=x86_64-unknown-linux-gnu
dist="$here/dist"

if [[ ! -x /bin/busybox ]] || ! file -L /bin/busybox | grep -q 'statically linked'; then
  echo "build.sh: /bin/busybox is missing or not static; install it: apt-get install busybox-static" >&2
  exit 1
fi

# A separate target dir: RUSTFLAGS would otherwise invalidate the main one.
export CARGO_TARGET_DIR="$root/target/demo-app-build"
cd "$root"
RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --quiet --release -p demo-app --target "$target"

bin="$CARGO_TARGET_DIR/$target/release/demo-app"
if ! file -L "$bin" | grep -Eq 'statically linked|static-pie linked'; then
  echo "build.sh: $bin is not static:" >&2
  file -L "$bin" >&2
  exit 1
fi

mkdir -p "$dist"
cp "$bin" "$dist/demo-app"
cp /bin/busybox "$dist/busybox"
chmod 0755 "$dist/demo-app" "$dist/busybox"
echo "built $dist/demo-app ($(file -b -L "$dist/demo-app" | grep -Eo "stat[a-z-]* linked")) and $dist/busybox"
