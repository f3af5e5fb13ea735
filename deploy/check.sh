#!/usr/bin/env bash
# Offline checks of deploy/: the systemd units (systemd-analyze verify, any
# warning is an error), the Kubernetes manifests (kubernetes-validate, strict,
# schemas shipped with the package), the seccomp profile (JSON, allows
# io_uring), and the keys of the TOML configs embedded here against the
# structs that read them (relay/src/config.rs, agent/src/config.rs).
#
# A missing tool fails the check. To skip a part on a machine without it:
#   ZTNA_DEPLOY_SKIP_SYSTEMD=1   no systemd-analyze
#   ZTNA_DEPLOY_SKIP_K8S=1       no kubernetes-validate (scripts/setup.sh installs it)
# K8S_VERSION picks the schema version (default 1.33.0).
set -euo pipefail
cd "$(dirname "$0")/.."
K8S_VERSION=${K8S_VERSION:-1.33.0}
fail=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# --- systemd ---------------------------------------------------------------
if [ "${ZTNA_DEPLOY_SKIP_SYSTEMD:-0}" = 1 ]; then
    echo "deploy/check: SKIPPED systemd units (ZTNA_DEPLOY_SKIP_SYSTEMD=1)" >&2
elif ! command -v systemd-analyze >/dev/null 2>&1; then
    echo "deploy/check: systemd-analyze not found (apt-get install systemd); set ZTNA_DEPLOY_SKIP_SYSTEMD=1 to skip" >&2
    exit 1
else
    # verify insists that ExecStart's binary exists: point the units at stubs.
    mkdir -p "$tmp/bin" "$tmp/units/ztna-agent@check-tun.service.d"
    for b in relay agent; do printf '#!/bin/sh\n' >"$tmp/bin/$b"; chmod +x "$tmp/bin/$b"; done
    for u in ztna-relay.service ztna-agent@.service; do
        sed "s#/usr/local/bin/#$tmp/bin/#" "deploy/systemd/$u" >"$tmp/units/$u"
    done
    cp deploy/systemd/ztna-agent-tun.conf "$tmp/units/ztna-agent@check-tun.service.d/tun.conf"
    out=$(cd "$tmp/units" && SYSTEMD_LOG_COLOR=0 systemd-analyze verify --man=no \
        ztna-relay.service ztna-agent@check.service ztna-agent@check-tun.service 2>&1) || fail=1
    if [ -n "$out" ]; then
        echo "$out" >&2
        fail=1
    fi
    [ $fail = 0 ] && echo "deploy/check: systemd units ok ($(systemd-analyze --version | head -1))"
fi

# --- Kubernetes ------------------------------------------------------------
mapfile -t manifests < <(find deploy/k8s -name '*.yaml' | sort)
if [ "${ZTNA_DEPLOY_SKIP_K8S:-0}" = 1 ]; then
    echo "deploy/check: SKIPPED Kubernetes manifests (ZTNA_DEPLOY_SKIP_K8S=1)" >&2
elif ! command -v kubernetes-validate >/dev/null 2>&1; then
    echo "deploy/check: kubernetes-validate not found (bash scripts/setup.sh installs it); set ZTNA_DEPLOY_SKIP_K8S=1 to skip" >&2
    exit 1
else
    if kubernetes-validate --strict --quiet --no-warn -k "$K8S_VERSION" "${manifests[@]}"; then
        echo "deploy/check: ${#manifests[@]} manifests ok against Kubernetes $K8S_VERSION (strict)"
    else
        echo "deploy/check: Kubernetes manifests FAILED" >&2
        fail=1
    fi
fi

# --- seccomp profile and embedded configs (python3 only) --------------------
python3 - "${manifests[@]}" <<'PY' || fail=1
import json, re, sys, tomllib

ok = True
def bad(msg):
    global ok
    ok = False
    print("deploy/check: " + msg, file=sys.stderr)

p = json.load(open("deploy/k8s/seccomp/ztna-relay.json"))
allowed = {n for s in p["syscalls"] if s["action"] == "SCMP_ACT_ALLOW" for n in s["names"]}
if p["defaultAction"] not in ("SCMP_ACT_ERRNO", "SCMP_ACT_KILL_PROCESS"):
    bad("seccomp: defaultAction must deny")
for n in ["io_uring_setup", "io_uring_enter", "io_uring_register", "sendmmsg", "recvmmsg",
          "sched_setaffinity", "setsockopt", "epoll_wait", "futex", "clone3", "mmap"]:
    if n not in allowed:
        bad(f"seccomp: {n} is not allowed")
for n in ["mount", "ptrace", "bpf", "kexec_load", "init_module", "reboot"]:
    if n in allowed:
        bad(f"seccomp: {n} must not be allowed")

def fields(path, struct):
    src = open(path).read()
    body = re.search(r"pub struct %s \{(.*?)\n\}" % struct, src, re.S).group(1)
    return set(re.findall(r"^\s*pub (\w+):", body, re.M))

relay = fields("relay/src/config.rs", "Config")
agent = {
    "": fields("agent/src/config.rs", "AgentConfig"),
    "relay": fields("agent/src/config.rs", "RelayConfig"),
    "identity": fields("agent/src/config.rs", "IdentityConfig"),
    "client": fields("agent/src/config.rs", "ClientConfig"),
    "connector": fields("agent/src/config.rs", "ConnectorConfig"),
    "status": fields("agent/src/config.rs", "StatusConfig"),
    "tunnel": fields("agent/src/config.rs", "TunnelConfig"),
}

def check_relay(name, text):
    for k in tomllib.loads(text):
        if k not in relay:
            bad(f"{name}: relay config key `{k}` does not exist in relay/src/config.rs")

def check_agent(name, text):
    for k, v in tomllib.loads(text).items():
        if k not in agent[""]:
            bad(f"{name}: agent config table [{k}] does not exist")
        elif isinstance(v, dict):
            for kk in v:
                if kk not in agent.get(k, set()):
                    bad(f"{name}: agent config key {k}.{kk} does not exist")

check_relay("deploy/systemd/relay.toml", open("deploy/systemd/relay.toml").read())
try:
    import yaml  # kubernetes-validate depends on PyYAML
except ImportError:
    yaml = None
    print("deploy/check: no PyYAML: configs inside the manifests not checked", file=sys.stderr)
for m in (sys.argv[1:] if yaml else []):
    for doc in yaml.safe_load_all(open(m)):
        if not doc or doc.get("kind") != "ConfigMap":
            continue
        for key, text in (doc.get("data") or {}).items():
            if key == "relay.toml":
                check_relay(f"{m}:{key}", text)
            elif key.endswith(".toml") and "[relay]" in text:
                check_agent(f"{m}:{key}", text)
print("deploy/check: seccomp profile and embedded configs ok" if ok else "deploy/check: seccomp/config FAILED")
sys.exit(0 if ok else 1)
PY

exit $fail
