# Pipeline host: common tasks. `just --list` shows them.

set shell := ["bash", "-euo", "pipefail", "-c"]

# The PostgreSQL server `just services` starts: the store and cluster tests
# run their PostgreSQL half against it (they say they skipped it without).
export PIPELINE_TEST_POSTGRES := env_var_or_default("PIPELINE_TEST_POSTGRES", "postgres://postgres@127.0.0.1:55432/pipeline")

# Build the host and every plugin component.
build: plugins
    cargo build -p host

# Build the plugins as wasm32-wasip2 components into target/plugins/.
plugins:
    bash plugins/build.sh

# Install (once) and start (when down) the Docker engine, the local registry,
# nats-server and PostgreSQL.
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

# pipeline.toml, pipeline.lock, server.toml, upload archives, webhooks, OCI
# manifests, JUnit/Cobertura/lcov, Trivy JSON: release with overflow checks and
# debug assertions on, in its own target dir (the normal release build is left
# alone). `just test` runs the same tests with FUZZ_CASES=64 (the default).
# Seeds: tests/fuzz/corpus/; failures found are saved where proptest says.
# Property tests of every parser of untrusted input with many cases per property.
fuzz cases="100000":
    #!/usr/bin/env bash
    set -euo pipefail
    export FUZZ_CASES={{cases}} CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}/fuzz"
    export CARGO_PROFILE_RELEASE_OVERFLOW_CHECKS=true CARGO_PROFILE_RELEASE_DEBUG_ASSERTIONS=true
    for package in test-runner trivy-gate pipeline-tests; do
        cargo test --release -p "$package" --test fuzz
    done

# Run the demo app's CI/CD flow (pipelines/demo.toml) on the real engine and registry.
demo: services build
    bash scripts/demo.sh

# Benchmarks (release build): Wasm stages vs container-per-step, plugin
# load, scaling, memory, capability calls. Prints a table, writes JSON.
bench: services build
    cargo run --quiet --release -p pipeline-bench -- --out target/bench/latest.json

# The benchmark with tiny sizes (part of `just test`: it must keep working).
bench-smoke: services plugins
    cargo run --quiet -p pipeline-bench -- --smoke --out target/bench/smoke.json

# Validate a pipeline file without running it.
check FILE: build
    ./target/debug/host check {{FILE}}
