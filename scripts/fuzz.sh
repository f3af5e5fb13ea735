#!/usr/bin/env bash
# Builds every cargo-fuzz target in fuzz/ and runs each for a fixed time
# (default 60 s; first argument) from its committed seeds
# (fuzz/seeds/<target>/) plus the growing local corpus (fuzz/corpus/, not
# committed). Prints the executions per target; exits non-zero on the first
# crash, with the input under fuzz/artifacts/<target>/ (make it a
# regression test, then fix).
#
#   scripts/fuzz.sh            # 60 s per target
#   scripts/fuzz.sh 15         # what .ci/run does
#   FUZZ_TARGETS="certificate cookie_reply" scripts/fuzz.sh 300
#   FUZZ_SANITIZER=address scripts/fuzz.sh   # ASan (RUSTC_BOOTSTRAP=1)
#
# Stable Rust: libFuzzer without a sanitizer (-s none) by default; safe
# Rust needs none to find panics, overflows (debug assertions are on) and
# runaway allocations (-rss_limit_mb). Needs cargo-fuzz
# (installed with `cargo install` when missing); FUZZ_REPORT=<file> appends
# "target executions seconds" lines.
set -euo pipefail
cd "$(dirname "$0")/.."
# The fuzz crate keeps its own target directory (fuzz/target).
unset CARGO_TARGET_DIR
secs="${1:-60}"
sanitizer="${FUZZ_SANITIZER:-none}"
all="frame_parse policy_parse handshake_responder handshake_initiator cookie_reply certificate control_message relay_config agent_config"
targets="${FUZZ_TARGETS:-$all}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz" >&2
    cargo install -q --locked cargo-fuzz
fi
# Pin the fuzz crate's dependencies to the workspace's versions (it has its
# own, uncommitted lock file).
[ -f fuzz/Cargo.lock ] || cp Cargo.lock fuzz/Cargo.lock

if [ "$sanitizer" != none ]; then
    export RUSTC_BOOTSTRAP=1
fi
start=$(date +%s)
(cd fuzz && cargo fuzz build -s "$sanitizer" -a)
echo "fuzz: built in $(( $(date +%s) - start )) s"

bin_dir=fuzz/target/x86_64-unknown-linux-gnu/release
status=0
summary=""
for t in $targets; do
    mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
    log=$(mktemp)
    # -max_len: handshake frames are at most 1232 bytes, configs and
    # policies small; -timeout: one input in seconds; -rss_limit_mb: an
    # input may not make the process grow past it.
    if "$bin_dir/$t" "fuzz/corpus/$t" "fuzz/seeds/$t" \
        -max_total_time="$secs" -max_len=4096 -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="fuzz/artifacts/$t/" -print_final_stats=1 >"$log" 2>&1; then
        result=ok
    else
        result=CRASH
        status=1
        tail -n 40 "$log" >&2
    fi
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    line=$(printf '%-20s %10s execs in %ss  %s' "$t" "${execs:-?}" "$secs" "$result")
    echo "fuzz: $line"
    summary+="$line"$'\n'
    if [ -n "${FUZZ_REPORT:-}" ]; then
        echo "$t ${execs:-?} $secs $result" >>"$FUZZ_REPORT"
    fi
    rm -f "$log"
    if [ "$status" -ne 0 ]; then
        break
    fi
done
printf '\nfuzz summary (%s s per target, sanitizer %s):\n%s' "$secs" "$sanitizer" "$summary"
exit "$status"
