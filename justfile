# Pipeline host: common tasks. `just --list` shows them.

set shell := ["bash", "-euo", "pipefail", "-c"]

# Build the host and every plugin component.
build: plugins
    cargo build -p host

# Build the plugins as wasm32-wasip2 components into target/plugins/.
plugins:
    bash plugins/build.sh

# Formatting, lints and every test (what CI runs).
test: plugins
    cargo fmt --all --check
    cargo clippy --workspace --all-targets -- -D warnings
    cargo test --workspace

# Run the example pipeline (tag + Slack notify) against a local Slack-compatible receiver.
demo: build
    bash scripts/demo.sh

# Validate a pipeline file without running it.
check FILE: build
    ./target/debug/host check {{FILE}}
