#!/usr/bin/env bash
# The demo: a local Slack-compatible receiver on 127.0.0.1, then the example
# pipeline twice (the second run loads plugins from the compiled cache).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo build --quiet -p pipeline-tests --bin slack-receiver
log="$(mktemp)"
rm -f target/demo-slack-messages.jsonl
./target/debug/slack-receiver --listen 127.0.0.1:0 --out target/demo-slack-messages.jsonl >/dev/null 2>"$log" &
receiver=$!
trap 'kill $receiver 2>/dev/null || true' EXIT
# Wait for the receiver to say where it listens.
for _ in $(seq 1 100); do
  addr="$(sed -n 's/^listening on //p' "$log")"
  [ -n "$addr" ] && break
  sleep 0.1
done
[ -n "$addr" ] || { echo "slack receiver did not start:"; cat "$log"; exit 1; }
export SLACK_WEBHOOK_URL="$addr/services/T000DEMO/B000DEMO/demo-token"
export HOST_STATE_DIR="${HOST_STATE_DIR:-$PWD/target/demo-state}"
./target/debug/host run pipelines/tag-notify.toml
echo
echo "second run (plugins come from the compiled cache):"
./target/debug/host -v run --quiet pipelines/tag-notify.toml 2>&1 | grep -E "plugin loaded|^run " || true
echo
echo "the Slack-compatible receiver got $(wc -l < target/demo-slack-messages.jsonl) message(s): target/demo-slack-messages.jsonl"
