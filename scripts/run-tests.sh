#!/bin/sh
# Installs what is missing, builds and runs the whole gst-vhost test suite:
#   build/        the normal build (all suites, including the real-guest tests)
#   build-asan/   the same tests under AddressSanitizer + UndefinedBehaviorSanitizer
#   build-fuzz/   the libFuzzer targets, each run for a short bounded time (clang)
# Usage: scripts/run-tests.sh [--no-asan] [--no-fuzz]
set -u
cd "$(dirname "$0")/.."

asan=1 fuzz=1
for a in "$@"; do
    case "$a" in
        --no-asan) asan=0 ;;
        --no-fuzz) fuzz=0 ;;
        -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
        *) echo "run-tests: unknown option $a" >&2; exit 2 ;;
    esac
done

if [ "$(id -u)" = 0 ]; then
    sh scripts/install-deps.sh || exit 1
else
    sh scripts/install-deps.sh || echo "run-tests: continuing without installing (not root)" >&2
fi

status=0
run_suite() { # dir, meson test args, setup args...
    dir=$1 test_args=$2; shift 2
    if [ ! -f "$dir/build.ninja" ]; then
        meson setup "$dir" "$@" >"$dir.setup.log" 2>&1 || {
            cat "$dir.setup.log"; status=1; return; }
    fi
    ninja -C "$dir" || { status=1; return; }
    meson test -C "$dir" --print-errorlogs --num-processes 2 $test_args || status=1
}

run_suite build ""
if [ "$asan" = 1 ]; then
    ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
        run_suite build-asan "" -Db_sanitize=address,undefined -Db_lundef=false
fi
if [ "$fuzz" = 1 ]; then
    CC=clang run_suite build-fuzz "--suite fuzz" -Dfuzzing=true -Dgstreamer=disabled -Dguest_tests=disabled
fi
exit $status
