#!/usr/bin/env bash
# Installs what the tests need beyond the Rust toolchain, if missing:
# iperf3 and curl (unmodified clients through the agent), python3 (an HTTP
# server behind the connector), iproute2 (network namespaces for tun mode),
# systemd (systemd-analyze verifies deploy/systemd/), etcd-server (a real
# etcd for the mesh's membership tests; binary `etcd`),
# buildah (deploy/image.sh builds and runs the container image, daemonless),
# valgrind (scripts/instructions.sh counts instructions per frame under
# callgrind; scripts/sanitize.sh's memcheck),
# and kubernetes-validate from PyPI (deploy/check.sh validates the Kubernetes
# manifests with it, offline: the package ships the schemas).
# Debian/Ubuntu only; needs root (or sudo) for apt-get. Idempotent.
set -euo pipefail

need=()
command -v iperf3 >/dev/null 2>&1 || need+=(iperf3)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v python3 >/dev/null 2>&1 || need+=(python3)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
# deploy/image.sh builds and runs the container image daemonless.
command -v buildah >/dev/null 2>&1 || need+=(buildah)
command -v valgrind >/dev/null 2>&1 || need+=(valgrind)
command -v kubernetes-validate >/dev/null 2>&1 || python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)

if [ ${#need[@]} -gt 0 ]; then
    echo "setup: installing ${need[*]}" >&2
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then
        SUDO="sudo"
    fi
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if ! command -v kubernetes-validate >/dev/null 2>&1; then
    echo "setup: installing kubernetes-validate (pip)" >&2
    python3 -m pip install -q kubernetes-validate ||
        python3 -m pip install -q --break-system-packages kubernetes-validate
fi
