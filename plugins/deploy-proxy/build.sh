#!/usr/bin/env bash
# Builds the deploy proxy as a static Linux binary into
# plugins/deploy-proxy/dist/ and the FROM scratch image
#   local/deploy-proxy:<crate version>  and  local/deploy-proxy:latest
# Idempotent: cargo and the docker build cache make a second run a no-op.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
target=x86_64-unknown-linux-gnu
dist="$here/dist"
image="${DEPLOY_PROXY_IMAGE:-local/deploy-proxy}"

# A separate target dir: RUSTFLAGS would otherwise invalidate the main one
# (and the tests call this while `cargo test` holds the main one's lock).
export CARGO_TARGET_DIR="$root/target/deploy-proxy-build"
cd "$root"
RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --quiet --release -p deploy-proxy --target "$target"

bin="$CARGO_TARGET_DIR/$target/release/deploy-proxy"
if ! file -L "$bin" | grep -Eq 'statically linked|static-pie linked'; then
  echo "build.sh: $bin is not static:" >&2
  file -L "$bin" >&2
  exit 1
fi
mkdir -p "$dist"
cp -p "$bin" "$dist/deploy-proxy.tmp"
# Replace only when it changed, so the image build stays cached.
if ! cmp -s "$dist/deploy-proxy.tmp" "$dist/deploy-proxy" 2>/dev/null; then
  mv "$dist/deploy-proxy.tmp" "$dist/deploy-proxy"
else
  rm -f "$dist/deploy-proxy.tmp"
fi
chmod 0755 "$dist/deploy-proxy"

version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -n 1)"
docker build --quiet -t "$image:$version" -t "$image:latest" "$here" >/dev/null
echo "built $image:$version (and :latest) from $dist/deploy-proxy"
