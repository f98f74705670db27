# Pipeline host: common tasks. `just --list` shows them.

set shell := ["bash", "-euo", "pipefail", "-c"]

# Build the host and every plugin component.
build: plugins
    cargo build -p host

# Build the plugins as wasm32-wasip2 components into target/plugins/.
plugins:
    bash plugins/build.sh

# Install (once) and start (when down) the Docker engine and the local registry.
services:
    bash scripts/services.sh

# Formatting, lints and every test (what CI runs).
test: services plugins
    cargo fmt --all --check
    cargo clippy --workspace --all-targets -- -D warnings
    cargo build --workspace --all-targets
    cargo test --workspace
    # The binary `cargo build --workspace` made: `cargo run -p` would resolve
    # features for that package alone and rebuild wasmtime.
    "${CARGO_TARGET_DIR:-target}/debug/pipeline-bench" --smoke --out target/bench/smoke.json

# Run the demo app's CI/CD flow (pipelines/demo.toml) on the real engine and registry.
demo: services build
    bash scripts/demo.sh

# Benchmarks (release build): Wasm stages vs container-per-step, plugin
# load, scaling, memory, capability calls. Prints a table, writes JSON.
bench: services plugins
    cargo run --quiet --release -p pipeline-bench -- --out target/bench/latest.json

# The benchmark with tiny sizes (part of `just test`: it must keep working).
bench-smoke: services plugins
    cargo run --quiet -p pipeline-bench -- --smoke --out target/bench/smoke.json

# Validate a pipeline file without running it.
check FILE: build
    ./target/debug/host check {{FILE}}
