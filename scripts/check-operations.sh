#!/usr/bin/env bash
# Runs every ```sh block of docs/operations.md, in order, in a fresh
# directory, with the workspace's debug `relay` and `agent` first on PATH:
# the walkthrough must work as written. Bounded: the whole run is killed
# after 300 s. Needs python3, curl and etcd (scripts/setup.sh).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cargo build --quiet --bins -p relay -p agent --manifest-path "$root/Cargo.toml"
target="${CARGO_TARGET_DIR:-$root/target}"
for tool in python3 curl etcd; do
    command -v "$tool" > /dev/null || { echo "check-operations: '$tool' is missing (run scripts/setup.sh)" >&2; exit 1; }
done
work="$(mktemp -d /tmp/ztna-operations.XXXXXX)"
script="$work/walkthrough.sh"
{
    echo 'set -euo pipefail'
    echo "export PATH=\"$target/debug:\$PATH\""
    echo "cd \"$work\""
    # Whatever the blocks started in the background dies with the run.
    echo 'trap '"'"'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true'"'"' EXIT'
    awk '/^```sh$/ {on=1; next} /^```$/ {on=0; next} on {print}' "$root/docs/operations.md"
} > "$script"
echo "check-operations: running $(grep -c . "$script") lines from docs/operations.md in $work"
if timeout 300 bash "$script" > "$work/output.log" 2>&1; then
    echo "check-operations: ok"
    rm -rf "$work"
else
    rc=$?
    echo "check-operations: FAILED (exit $rc); output:" >&2
    tail -40 "$work/output.log" >&2
    for log in "$work"/*.log; do echo "--- $log" >&2; tail -15 "$log" >&2; done
    exit 1
fi
