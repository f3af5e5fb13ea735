#!/usr/bin/env bash
# The relay's I/O code under AddressSanitizer: every `unsafe` block of
# relay/src/io/ (io_uring rings and buffer rings, recvmmsg/sendmmsg
# headers, cmsg parsing, socket address conversion, the buffer region) runs
# instrumented in the relay's library tests and relay/tests/io_loopback.rs
# (both backends, GRO/GSO, truncation, buffer exhaustion), plus the
# datapath and worker tests of relay/src.
#
#   scripts/sanitize.sh            # ASan (LeakSanitizer included)
#   SANITIZE_TOOL=valgrind scripts/sanitize.sh   # memcheck, library tests
#
# ASan on the stable toolchain: RUSTC_BOOTSTRAP=1 unlocks -Zsanitizer; the
# explicit --target keeps the flag off build scripts and proc macros. The
# standard library is not rebuilt (no rust-src here), so it is not
# instrumented; the relay's own code and its dependencies are. Its own
# target directory (target/asan) keeps the instrumented build apart.
#
# valgrind: the relay's library tests (unmodified debug build) under
# memcheck. Not io_loopback: valgrind does not implement io_uring and runs
# some 50 times slower, so its uring and timing-bound cases fail there for
# reasons of their own (3 of 9 on 2026-12-02); ASan covers them.
set -euo pipefail
cd "$(dirname "$0")/.."
tool="${SANITIZE_TOOL:-asan}"
target=x86_64-unknown-linux-gnu

case "$tool" in
asan)
    export RUSTC_BOOTSTRAP=1
    # These flags replace the workspace's (.cargo/config.toml), so AVX2 is
    # named again: the instrumented build runs the same vector hop-tag
    # lanes as a release build, not the scalar fallback.
    export RUSTFLAGS="-Zsanitizer=address -Cforce-frame-pointers=yes -Ctarget-feature=+avx2"
    export RUSTDOCFLAGS="$RUSTFLAGS"
    export CARGO_TARGET_DIR="${SANITIZE_TARGET_DIR:-$PWD/target/asan}"
    # Errors abort the test binary with a report; leaks are errors too.
    export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:halt_on_error=1:detect_stack_use_after_return=1"
    cargo test -p relay --target "$target" --lib --test io_loopback -- --test-threads=1
    echo "sanitize: AddressSanitizer found nothing in relay lib + io_loopback"
    ;;
valgrind)
    export ZTNA_SKIP_URING=1
    # The test harnesses only (the relay binary is built too, for its CLI
    # tests).
    bins=$(cargo test -p relay --lib --no-run --message-format=json 2>/dev/null |
        grep '"test":true' | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p')
    for b in $bins; do
        echo "sanitize: valgrind $b" >&2
        valgrind --quiet --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite \
            "$b" --test-threads=1 -q
    done
    echo "sanitize: memcheck found nothing in the relay's library tests"
    ;;
*)
    echo "SANITIZE_TOOL must be asan or valgrind" >&2
    exit 2
    ;;
esac
