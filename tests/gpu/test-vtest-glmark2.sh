#!/bin/sh
# Real GL programs through gst-vhost-vtest and gst-vhost-gpu --virgl:
# glmark2-es2 --validate (Mesa's virpipe driver, under Xvfb) must give the
# same verdict for every scene as through Debian's virgl_test_server.
# Mesa 22.3's virpipe always connects to /tmp/.virgl_test, so each client
# runs in a mount namespace of its own with a private directory over /tmp:
# parallel runs never meet.  Usage: test-vtest-glmark2.sh GST_VHOST_GPU GST_VHOST_VTEST
set -u
GPU=$1
VTEST=$2
skip() { echo "SKIP: $*"; exit 77; }

for p in Xvfb glmark2-es2 virgl_test_server unshare; do
    command -v "$p" >/dev/null 2>&1 || skip "$p is not installed (scripts/install-deps.sh)"
done
unshare -m true 2>/dev/null || skip "no mount namespaces here (needs root)"

DIR=$(mktemp -d "${TMPDIR:-/tmp}/gst-vhost-vtest-XXXXXX")
PIDS=""
cleanup() {
    for p in $PIDS; do kill "$p" 2>/dev/null; done
    for p in $PIDS; do wait "$p" 2>/dev/null; done
    rm -rf "$DIR"
}
trap cleanup EXIT INT TERM

# Waits (at most 10 s) for a socket file to appear.
wait_socket() {
    i=0
    while [ ! -S "$1" ]; do
        i=$((i + 1))
        [ $i -gt 1000 ] && { echo "FAIL: $1 never appeared"; cat "$2"; exit 1; }
        sleep 0.01
    done
}

# A display of our own; Xvfb prints its number once it listens.
mkfifo "$DIR/displayfd"
Xvfb -displayfd 3 -screen 0 1024x768x24 -nolisten tcp 3>"$DIR/displayfd" >"$DIR/xvfb.log" 2>&1 &
PIDS="$PIDS $!"
read -r DISPLAY_NUM <"$DIR/displayfd" || { echo "FAIL: Xvfb did not start"; cat "$DIR/xvfb.log"; exit 1; }

# glmark2 in its own mount namespace, /tmp being @1.
glmark() {
    unshare -m sh -c "mount --bind '$1' /tmp && exec env DISPLAY=:$DISPLAY_NUM \
        GALLIUM_DRIVER=virpipe LIBGL_ALWAYS_SOFTWARE=1 timeout 120 glmark2-es2 --validate" \
        >"$2" 2>&1
}

# Through our daemon and the bridge.
mkdir "$DIR/ours"
"$GPU" --virgl --max-hostmem 1G --socket-path "$DIR/gpu.sock" >"$DIR/gpu.log" 2>&1 &
GPID=$!
PIDS="$PIDS $GPID"
i=0
while ! grep -q "listening on" "$DIR/gpu.log"; do
    if ! kill -0 $GPID 2>/dev/null; then
        grep -q "does not start" "$DIR/gpu.log" && skip "virglrenderer cannot start: $(cat "$DIR/gpu.log")"
        echo "FAIL: gst-vhost-gpu ended"; cat "$DIR/gpu.log"; exit 1
    fi
    i=$((i + 1))
    [ $i -gt 1000 ] && { echo "FAIL: gst-vhost-gpu does not listen"; exit 1; }
    sleep 0.01
done
"$VTEST" --backend "$DIR/gpu.sock" --socket-path "$DIR/ours/.virgl_test" >"$DIR/vtest.log" 2>&1 &
PIDS="$PIDS $!"
wait_socket "$DIR/ours/.virgl_test" "$DIR/vtest.log"
glmark "$DIR/ours" "$DIR/ours.log"
echo "ours: exit $?"

# The reference.
mkdir "$DIR/ref"
virgl_test_server --use-egl-surfaceless --socket-path="$DIR/ref/.virgl_test" >"$DIR/ref-server.log" 2>&1 &
PIDS="$PIDS $!"
wait_socket "$DIR/ref/.virgl_test" "$DIR/ref-server.log"
glmark "$DIR/ref" "$DIR/ref.log"
echo "reference: exit $?"

grep "Validation:" "$DIR/ours.log" >"$DIR/ours.v"
grep "Validation:" "$DIR/ref.log" >"$DIR/ref.v"
ok=$(grep -c "Validation: Success" "$DIR/ours.v")
ref=$(grep -c "Validation: Success" "$DIR/ref.v")
echo "scenes validated: $ok through gst-vhost-gpu, $ref through virgl_test_server"
status=0
if ! diff "$DIR/ref.v" "$DIR/ours.v"; then
    echo "FAIL: verdicts differ (< reference, > ours)"
    status=1
fi
if [ "$ok" -lt 20 ] || grep -q "Validation: Failure" "$DIR/ours.v"; then
    echo "FAIL: too few scenes validated or a failure"
    status=1
fi
if [ $status -ne 0 ]; then
    tail -20 "$DIR/ours.log" "$DIR/vtest.log" "$DIR/gpu.log"
fi
grep -i "warning\|critical" "$DIR/vtest.log" "$DIR/gpu.log" && { echo "FAIL: warnings logged"; status=1; }
exit $status
