#!/usr/bin/env bash
# Soak: a real relay process (one worker) for [minutes] (default 10) under
# session churn (handshakes, rekeys, replacements, expiries at the 180 s
# REJECT_AFTER_TIME), a mixed hostile flood (junk, forged and replayed
# frames, handshake floods with bad and good mac1, another CA's
# initiations) while allowed traffic flows; RSS and /metrics sampled every
# 10 s. Fails unless RSS stays within 10 % after warm-up, traffic flows
# throughout and at the end, the session gauge stays bounded and (runs of
# 4 min or more) returns to its baseline once the churn stops (up to
# 4 more minutes: sessions only go by expiry). See tests/tests/soak.rs.
#
#   scripts/soak.sh             # 10 minutes (+ the drain)
#   scripts/soak.sh 1           # what .ci/run does (no expiries, no drain)
#   SOAK_RELEASE=1 scripts/soak.sh   # the relay built in release mode (the
#                                    # driver stays a debug test)
#
# Writes the samples as CSV to $SOAK_REPORT (default
# target/soak-<time>.csv). Other knobs: SOAK_CHURN_PER_SEC (10),
# SOAK_SAMPLE_SECS (10), SOAK_WARMUP_SECS, SOAK_IO (uring|mmsg), SOAK_DRAIN.
set -euo pipefail
cd "$(dirname "$0")/.."
mins="${1:-10}"
secs=$(awk -v m="$mins" 'BEGIN { printf "%d", m * 60 }')
profile=()
relay_dir=debug
if [ "${SOAK_RELEASE:-0}" = 1 ]; then
    profile=(--release)
    relay_dir=release
fi
mkdir -p target
export SOAK_SECS="$secs"
export SOAK_REPORT="${SOAK_REPORT:-$PWD/target/soak-$(date +%Y%m%d-%H%M%S).csv}"
cargo build -q "${profile[@]}" -p relay --bin relay
export SOAK_RELAY_BIN="${CARGO_TARGET_DIR:-$PWD/target}/$relay_dir/relay"
cargo test -q -p tests --test soak -- --ignored --nocapture
echo "soak: samples in $SOAK_REPORT"
