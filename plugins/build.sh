#!/usr/bin/env bash
# Build every stage plugin (and the test fixtures) as wasm32-wasip2
# components and copy them to target/plugins/<name>.wasm.
# Used by the justfile and by the integration tests, so both see the same files.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
# A separate target dir: the tests call this while `cargo test` holds the
# lock on the main one.
build="$target/plugins-build"
crates=(tag slack-notify hostile bench-stage build push test-runner trivy-gate deploy gitops-deploy ssh-deploy)
args=()
for c in "${crates[@]}"; do args+=(-p "$c"); done
cd "$root"
CARGO_TARGET_DIR="$build" cargo build --quiet --release --target wasm32-wasip2 "${args[@]}"
mkdir -p "$target/plugins"
for c in "${crates[@]}"; do
  src="$build/wasm32-wasip2/release/${c//-/_}.wasm"
  cp -u "$src" "$target/plugins/$c.wasm"
done
# Plugins in other languages (Python, JavaScript) carry their own
# build-component.sh, which installs its toolchain if needed and writes
# "$1/<name>.wasm".
for script in "$root"/plugins/*/build-component.sh; do
  [ -e "$script" ] || continue
  bash "$script" "$target/plugins"
done
