#!/usr/bin/env bash
# Builds the container image offline and tests it end to end.
#
#  1. `relay` and `agent` built statically (glibc, crt-static: Rust's
#     x86_64-unknown-linux-gnu target does it without an extra target),
#     stripped, checked to have no ELF interpreter;
#  2. deploy/Containerfile (FROM scratch: the two binaries and nothing
#     else) built with buildah or docker; nothing is pulled;
#  3. a relay, a connector and a client, each run from the image (as its
#     user 65532, host network), carry an HTTP request from curl on the host
#     to a web server on the host. The agents find the relay by the name
#     `localhost`, which checks that the static binary resolves names from
#     /etc/hosts without glibc's shared NSS modules.
#
# Containers are run with `buildah run --isolation chroot`: it needs no
# daemon, no user namespaces and no cgroups, so it works inside a VM or a
# CI container where `podman run` cannot set rlimits. With docker (and its
# daemon) the image is built and run with docker instead.
#
# Usage: bash deploy/image.sh            (from anywhere; tag localhost/ztna:dev)
#   ZTNA_IMAGE_TAG=...                   another tag
#   ZTNA_SKIP_IMAGE=1                    skip, saying so (no container tool)
# A missing container tool fails the check unless ZTNA_SKIP_IMAGE=1.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
tag=${ZTNA_IMAGE_TAG:-localhost/ztna:dev}

if [ "${ZTNA_SKIP_IMAGE:-0}" = 1 ]; then
    echo "deploy/image: SKIPPED (ZTNA_SKIP_IMAGE=1)" >&2
    exit 0
fi
if command -v buildah > /dev/null; then
    engine=buildah
elif command -v docker > /dev/null && docker info > /dev/null 2>&1; then
    engine=docker
else
    echo "deploy/image: no container tool: install buildah (apt-get install buildah; scripts/setup.sh does) or run a docker daemon; ZTNA_SKIP_IMAGE=1 skips" >&2
    exit 1
fi
storage=(--storage-driver vfs)

# --- 1. static binaries --------------------------------------------------------
target_dir="${CARGO_TARGET_DIR:-$root/target}/static"
triple=x86_64-unknown-linux-gnu
# Static, added to the workspace's flags (.cargo/config.toml: AVX2), which
# a RUSTFLAGS variable would replace: cargo joins --config arrays to them.
cargo build --quiet --release --locked \
    --config "target.$triple.rustflags = [\"-C\", \"target-feature=+crt-static\"]" \
    --target "$triple" -p relay -p agent --target-dir "$target_dir"
work="$(mktemp -d /tmp/ztna-image.XXXXXX)"
pids=()
containers=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2> /dev/null || true; done
    wait 2> /dev/null || true
    if [ "$engine" = buildah ]; then
        for c in "${containers[@]}"; do buildah "${storage[@]}" rm "$c" > /dev/null 2>&1 || true; done
    fi
    rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/context" "$work/vol"
for b in relay agent; do
    strip -o "$work/context/$b" "$target_dir/$triple/release/$b"
    if readelf -l "$work/context/$b" | grep -q 'Requesting program interpreter'; then
        echo "deploy/image: $b is dynamically linked; the image has no libc" >&2
        exit 1
    fi
done
cp deploy/Containerfile "$work/context/"

# --- 2. the image ----------------------------------------------------------------
case $engine in
    buildah) buildah "${storage[@]}" build --quiet --isolation chroot --network host \
                 -t "$tag" -f Containerfile "$work/context" > /dev/null ;;
    docker) docker build --quiet --network none -t "$tag" -f "$work/context/Containerfile" "$work/context" > /dev/null ;;
esac
size=$(du -sk "$work/context" | cut -f1)
echo "deploy/image: built $tag with $engine (FROM scratch, binaries $((size / 1024)) MiB)"

# Runs a command from the image, in the background, with $work/vol at /work.
run_bg() { # name, command...
    local name=$1
    shift
    case $engine in
        buildah)
            local c
            c=$(buildah "${storage[@]}" from --quiet "$tag")
            containers+=("$c")
            buildah "${storage[@]}" run --isolation chroot -v "$work/vol:/work" "$c" "$@" \
                > "$work/$name.log" 2>&1 &
            ;;
        docker)
            docker run --rm --network host -v "$work/vol:/work" "$tag" "$@" \
                > "$work/$name.log" 2>&1 &
            ;;
    esac
    pids+=($!)
}
# run_bg, again (3 tries at most) when buildah fails to start the container
# itself: under load its chroot runner sometimes cannot seal its memfd copy
# ("Close_Fd sealing memfd copy: Device or resource busy"), which says
# nothing about the image. The error shows at once, so 2 s of watching
# the log is enough.
start() { # name, command...
    local name=$1
    for try in 1 2 3; do
        run_bg "$@"
        local failed=0
        for _ in $(seq 10); do
            if grep -q 'sealing memfd' "$work/$name.log" 2> /dev/null; then failed=1; break; fi
            sleep 0.2
        done
        [ $failed = 0 ] && return 0
        echo "deploy/image: buildah could not start $name (try $try: sealing memfd busy); again" >&2
    done
    echo "deploy/image: buildah could not start $name" >&2
    exit 1
}
# Waits (bounded) until `cond` succeeds.
await() { # what, cond...
    local what=$1
    shift
    for _ in $(seq 150); do
        if "$@" > /dev/null 2>&1; then return 0; fi
        sleep 0.2
    done
    echo "deploy/image: timed out waiting for $what" >&2
    for log in "$work"/*.log; do echo "--- $log" >&2; tail -20 "$log" >&2; done
    exit 1
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# --- 3. relay, connector and client from the image ------------------------------
relay_bin="$work/context/relay"
vol="$work/vol"
relay_port=$(free_port); metrics_port=$(free_port); web_port=$(free_port)
listen_port=$(free_port); status_c=$(free_port); status_a=$(free_port)
"$relay_bin" ca init --dir "$vol/ca" > /dev/null
for node in "relay 1 relay-img" "connector 501 web-connector" "user 1001 alice"; do
    set -- $node
    "$relay_bin" keygen --out "$vol/$3.key" > /dev/null
    groups=()
    [ "$1" = user ] && groups=(--group eng)
    "$relay_bin" ca issue --ca-key "$vol/ca/ca.key" --key "$vol/$3.key" --role "$1" --id "$2" \
        --name "$3" "${groups[@]}" --out "$vol/$3.cert" > /dev/null
done
cat > "$vol/policy.toml" << EOF
[[groups]]
name = "eng"
[[users]]
id = 1001
name = "alice"
groups = ["eng"]
[[connectors]]
id = 501
name = "web-connector"
[[services]]
id = 10
name = "web"
protocol = "tcp"
target = "127.0.0.1:$web_port"
connectors = ["web-connector"]
[[rules]]
name = "eng-web"
groups = ["eng"]
services = ["web"]
EOF
cat > "$vol/relay.toml" << EOF
listen = "127.0.0.1:$relay_port"
workers = 1
policy = "/work/policy.toml"
ca = "/work/ca/ca.pub"
certificate = "/work/relay-img.cert"
key = "/work/relay-img.key"
metrics = "127.0.0.1:$metrics_port"
EOF
# The image's user (65532) reads the files (the keys are 0600 to root here).
chmod -R a+rX "$vol"
chmod a+r "$vol"/*.key "$vol"/ca/*
echo "served through the image" > "$work/index.html"
(cd "$work" && exec python3 -m http.server --bind 127.0.0.1 "$web_port") > "$work/web.log" 2>&1 &
pids+=($!)

start relay /usr/local/bin/relay run --config /work/relay.toml
await "the relay's metrics" curl -sf "http://127.0.0.1:$metrics_port/metrics"
relay_key=$(grep -o 'public key [0-9a-f]*' "$work/relay.log" | cut -d' ' -f3)
for role in connector client; do
    name=web-connector status=$status_c
    [ $role = client ] && name=alice status=$status_a
    {
        printf '[relay]\naddress = "localhost:%s"\npublic_key = "%s"\n' "$relay_port" "$relay_key"
        printf '[identity]\nca = "/work/ca/ca.pub"\ncert = "/work/%s.cert"\nkey = "/work/%s.key"\n' "$name" "$name"
        printf '[status]\nlisten = "127.0.0.1:%s"\n' "$status"
        if [ $role = connector ]; then
            printf '[connector]\npolicy = "/work/policy.toml"\n'
        else
            printf '[client]\nmode = "proxy"\n[[client.listen]]\nservice = "web"\nlisten = "127.0.0.1:%s"\n' "$listen_port"
        fi
    } > "$vol/$role.toml"
    chmod a+r "$vol/$role.toml"
    start "$role" /usr/local/bin/agent run --config "/work/$role.toml"
done
await "the client's directory" sh -c "curl -sf http://127.0.0.1:$status_a/status | grep -Eq '\"name\": ?\"web\"'"
got=$(curl -sS --max-time 10 "http://127.0.0.1:$listen_port/")
if [ "$got" != "served through the image" ]; then
    echo "deploy/image: curl through the image's relay and agents got: $got" >&2
    exit 1
fi
forwarded_frames() {
    curl -sS "http://127.0.0.1:$metrics_port/metrics" | awk '/^ztna_forwarded_frames_total/ {s += $2} END {print s + 0}'
}
forwarded_some() { [ "$(forwarded_frames)" -gt 0 ]; }
# The workers publish their counters a few times a second.
await "the relay's forwarded frames on /metrics" forwarded_some
forwarded=$(forwarded_frames)
echo "deploy/image: ok: curl -> client -> relay -> connector -> web server, all from the image ($forwarded frames forwarded by the relay)"
