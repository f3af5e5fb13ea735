#!/usr/bin/env bash
# Instructions per frame of the in-memory datapath, counted by callgrind
# (docs/perf.md, "Instructions per frame (callgrind)"): builds
# frame_instructions (release profile, the one the figures are recorded
# with) and runs every case of bench::rig (three modes at 64 and 1400 B,
# ztna with 10 % denied) under
#   valgrind --tool=callgrind --toggle-collect='bench::rig::Rig::process_batch*'
# at 2560 and 12800 frames; (I(12800) - I(2560)) / 10240 is the steady cost
# of one frame, setup cancelled. Then compares with bench/instructions.json
# and exits 2 when a figure grew by more than the threshold (default 2 %).
#
#   scripts/instructions.sh                  # compare (about 15 s after the build)
#   scripts/instructions.sh --threshold 5    # what .ci/run does
#   scripts/instructions.sh --write          # record bench/instructions.json (commit it)
#   scripts/instructions.sh --check-stable   # count twice, fail unless within 0.1 %
#   scripts/instructions.sh --cases ztna/64B,vpn/64B
#
# Needs valgrind (Debian: apt-get install valgrind). Other arguments go to
# `frame_instructions measure` (--help lists them).
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
if ! command -v valgrind >/dev/null; then
    echo "instructions: valgrind not found (Debian: apt-get install valgrind)" >&2
    exit 1
fi
cargo build -q --release -p bench --bin frame_instructions
exec "$target/release/frame_instructions" measure --out-dir "$target/callgrind" "$@"
