#!/usr/bin/env bash
# The demo: the demo app's whole flow (pipelines/demo.toml: test → build →
# tag → push → notify) on the real Docker engine and registry, with a local
# Slack-compatible receiver; then the small tag + notify pipeline twice, the
# second run loading its plugins from the compiled cache.
# Expects `just services` and `just build` (which `just demo` runs first).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash pipelines/demo-app/build.sh
bash plugins/deploy-proxy/build.sh
cargo build --quiet -p pipeline-tests --bin slack-receiver

log="$(mktemp)"
messages=target/demo-slack-messages.jsonl
rm -f "$messages"
./target/debug/slack-receiver --listen 127.0.0.1:0 --out "$messages" >/dev/null 2>"$log" &
receiver=$!
trap 'kill $receiver 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  addr="$(sed -n 's/^listening on //p' "$log")"
  [ -n "$addr" ] && break
  sleep 0.1
done
[ -n "$addr" ] || { echo "slack receiver did not start:"; cat "$log"; exit 1; }

export SLACK_WEBHOOK_URL="$addr/services/T000DEMO/B000DEMO/demo-token"
# The local registry's test credentials (scripts/services.sh).
export REGISTRY_AUTH="${REGISTRY_USER:-ci}:${REGISTRY_PASSWORD:-ci-registry-password}"

# `main` deploys to `prod`, which needs an approval: the run waits and prints
# the command; here the script plays the person who runs it.
# The run's workspace: the demo app with the binaries build.sh just made.
# (Run in this checkout, the host would copy only the files git knows of, and
# dist/ is a build output git ignores.)
workspace="$(mktemp -d)"
trap 'kill $receiver 2>/dev/null || true; rm -rf "$workspace"' EXIT
mkdir -p "$workspace/pipelines"
cp -r pipelines/demo-app "$workspace/pipelines/"

runlog="$(mktemp)"
./target/debug/host run pipelines/demo.toml --branch main --workspace "$workspace" 2> >(tee "$runlog" >&2) &
run=$!
approve=""
for _ in $(seq 1 1500); do
  approve="$(sed -n 's/.*approve: \(host approve .*\)$/\1/p' "$runlog" | head -n 1)"
  [ -n "$approve" ] && break
  kill -0 "$run" 2>/dev/null || break
  sleep 0.2
done
if [ -n "$approve" ]; then
  echo ">>> demo: approving the deployment, as a person would: $approve"
  ./target/debug/$approve --by demo --comment "approved by scripts/demo.sh"
fi
wait "$run"
echo
echo "the deployed app, through the switch proxy:"
curl -s http://127.0.0.1:18080/health; echo
echo
echo "tags of demo-app in the registry:"
curl -s -u "$REGISTRY_AUTH" http://127.0.0.1:5000/v2/demo-app/tags/list; echo

echo
echo "tag + notify, twice (the second run loads plugins from the compiled cache):"
./target/debug/host run --quiet pipelines/tag-notify.toml >/dev/null 2>&1
./target/debug/host -v run --quiet pipelines/tag-notify.toml 2>&1 | grep -E "plugin loaded|^run "
echo
echo "the Slack-compatible receiver got $(wc -l < "$messages") message(s): $messages"
