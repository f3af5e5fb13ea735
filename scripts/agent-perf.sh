#!/usr/bin/env bash
# iperf3 through the agent, the way users run it: real `relay` and `agent`
# binaries (release), a CA, keys and certificates made with `relay ca`, a
# policy file, and unmodified iperf3 — all inside a network namespace this
# script makes (so tun mode works and nothing leaves the machine).
#
# Prints, in one run, with the modes interleaved round by round:
#   iperf3 over plain loopback (the floor of the comparison),
#   iperf3 through proxy mode and through tun mode,
#   each with the relay in `ztna` mode (per-packet policy) and `vpn` mode.
#
# Usage: sudo scripts/agent-perf.sh [SECONDS_PER_RUN] [ROUNDS]
# Needs root (namespace, TUN), iperf3 (scripts/setup.sh installs it).
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-5}
ROUNDS=${2:-3}
bash scripts/setup.sh
cargo build --release -q -p relay -p agent
REL=$PWD/target/release/relay
AGT=$PWD/target/release/agent
NS=ztna-perf-$$
D=$(mktemp -d /tmp/ztna-perf.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    ip netns del "$NS" 2>/dev/null || true
    rm -rf "$D"
}
trap cleanup EXIT
if [ -n "${KEEP:-}" ]; then trap - EXIT; fi
ip netns add "$NS"
in_ns() { ip netns exec "$NS" "$@"; }
in_ns ip link set lo up

# --- PKI and policy ---------------------------------------------------------
$REL ca init --dir "$D" >/dev/null
RELAY_KEY=$($REL keygen --out "$D/relay.key")
$REL keygen --out "$D/alice.key" >/dev/null
$REL keygen --out "$D/conn.key" >/dev/null
$REL ca issue --ca-key "$D/ca.key" --key "$D/relay.key" --role relay --id 1 --name relay-1 --out "$D/relay.cert" >/dev/null
$REL ca issue --ca-key "$D/ca.key" --key "$D/alice.key" --role user --id 1001 --name alice --group eng --out "$D/alice.cert" >/dev/null
$REL ca issue --ca-key "$D/ca.key" --key "$D/conn.key" --role connector --id 501 --name conn-a --out "$D/conn.cert" >/dev/null
cat >"$D/policy.toml" <<POLICY
[[groups]]
name = "eng"
[[users]]
id = 1001
name = "alice"
groups = ["eng"]
[[connectors]]
id = 501
name = "conn-a"
[[services]]
id = 20
name = "iperf"
protocol = "tcp"
target = "127.0.0.1:5201"
connectors = ["conn-a"]
[[rules]]
groups = ["eng"]
services = ["iperf"]
POLICY

agent_conf() { # name key cert status body
    cat >"$D/$1.toml" <<CONF
[relay]
address = "127.0.0.1:51820"
public_key = "$RELAY_KEY"
[identity]
ca = "ca.pub"
cert = "$3"
key = "$2"
[status]
listen = "$4"
$5
CONF
}
agent_conf conn conn.key conn.cert 127.0.0.1:7071 $'[connector]\npolicy = "policy.toml"'
agent_conf proxy alice.key alice.cert 127.0.0.1:7072 $'[client]\nmode = "proxy"\n[[client.listen]]\nservice = "iperf"\nlisten = "127.0.0.1:15201"'
agent_conf tun alice.key alice.cert 127.0.0.1:7073 $'[client]\nmode = "tun"\n[client.tun]\nname = "ztna0"'
agent_conf tunplain alice.key alice.cert 127.0.0.1:7074 $'[client]\nmode = "tun"\n[client.tun]\nname = "ztna0"\noffload = false'

# Background processes are started with `ip netns exec` directly (not
# through in_ns, a function, which would run in a subshell): $! is then the
# process itself and `stop` really stops it.
ip netns exec "$NS" iperf3 -s -p 5201 >/dev/null 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do
    in_ns ss -Hltn 'sport = :5201' | grep -q LISTEN && break
    sleep 0.1
done

start_relay() { # mode
    ip netns exec "$NS" "$REL" run --listen 127.0.0.1:51820 --mode "$1" --io uring --workers 1 \
        --policy "$D/policy.toml" --ca "$D/ca.pub" --cert "$D/relay.cert" --key "$D/relay.key" \
        >"$D/relay-$1.log" 2>&1 &
    RELAY_PID=$!
}
start_agent() { # name; sets AGENT_PID
    RUST_LOG=warn ip netns exec "$NS" "$AGT" run --config "$D/$1.toml" >>"$D/$1.log" 2>&1 &
    AGENT_PID=$!
}
stop() { # pids...: SIGTERM, then wait until they are gone
    kill "$@" 2>/dev/null || true
    wait "$@" 2>/dev/null || true
}
wait_ready() { # status-addr
    for _ in $(seq 100); do
        if in_ns "$AGT" status --addr "$1" --json 2>/dev/null | grep -q '"session": true\|"hop_up": true'; then return 0; fi
        sleep 0.1
    done
    echo "agent on $1 did not come up; logs in $D" >&2; return 1
}
gbps() { # iperf3 json on stdin
    python3 -c 'import json,sys
d=json.load(sys.stdin)
if "error" in d: sys.exit("iperf3: " + d["error"])
print("%.2f" % (d["end"]["sum_received"]["bits_per_second"]/1e9))'
}
run_iperf() { # host port [-R]
    in_ns iperf3 -c "$1" -p "$2" -t "$SECS" -J ${3:-} | gbps
}

declare -A RESULTS
for round in $(seq "$ROUNDS"); do
    RESULTS[loopback]+="$(run_iperf 127.0.0.1 5201) "
    RESULTS[loopback-R]+="$(run_iperf 127.0.0.1 5201 -R) "
    for mode in ztna vpn; do
        start_relay "$mode"
        start_agent conn
        CONN=$AGENT_PID
        wait_ready 127.0.0.1:7071
        start_agent proxy
        P=$AGENT_PID
        wait_ready 127.0.0.1:7072
        sleep 0.5 # the directory arrives right after the hop handshake
        RESULTS[proxy-$mode]+="$(run_iperf 127.0.0.1 15201) "
        RESULTS[proxy-$mode-R]+="$(run_iperf 127.0.0.1 15201 -R) "
        stop "$P"
        start_agent tun
        T=$AGENT_PID
        wait_ready 127.0.0.1:7073
        sleep 0.5
        IP=$(in_ns python3 - <<'PY'
import socket,struct,sys
q=b'\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x05iperf\x00\x00\x01\x00\x01'
s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.settimeout(2)
s.sendto(q,("100.80.0.2",53)); r=s.recv(512); print(socket.inet_ntoa(r[-4:]))
PY
)
        RESULTS[tun-$mode]+="$(run_iperf "$IP" 5201) "
        RESULTS[tun-$mode-R]+="$(run_iperf "$IP" 5201 -R) "
        if [ "$mode" = ztna ]; then
            # The same without IFF_VNET_HDR: one read/write per packet.
            stop "$T"
            start_agent tunplain
            T=$AGENT_PID
            wait_ready 127.0.0.1:7074
            sleep 0.5
            RESULTS[tun-noffload]+="$(run_iperf "$IP" 5201) "
            RESULTS[tun-noffload-R]+="$(run_iperf "$IP" 5201 -R) "
        fi
        stop "$T" "$CONN" "$RELAY_PID"
    done
    echo "round $round done" >&2
done

echo "iperf3 TCP, one flow, ${SECS} s per run, ${ROUNDS} rounds (Gb/s per round; -R: server to client)"
echo "machine: $(nproc) cores, $(uname -r), $(date -u +%Y-%m-%d)"
for k in loopback loopback-R proxy-ztna proxy-vpn proxy-ztna-R proxy-vpn-R tun-ztna tun-vpn tun-ztna-R tun-vpn-R tun-noffload tun-noffload-R; do
    printf '%-12s %s\n' "$k" "${RESULTS[$k]}"
done
