#!/bin/sh
# One glmark2-es2 scene (off-screen, 800x600) through gst-vhost-vtest and
# gst-vhost-gpu --virgl against Debian's virgl_test_server: frames per second
# of each and the ratio.  Each client runs in a mount namespace of its own
# with a private directory over /tmp (Mesa's virpipe always uses
# /tmp/.virgl_test).  Usage: gst-vhost-virgl-glmark2.sh GST_VHOST_GPU GST_VHOST_VTEST [SCENE]
set -u
GPU=$1
VTEST=$2
SCENE=${3:-build:duration=5}
for p in Xvfb glmark2-es2 virgl_test_server unshare; do
    command -v "$p" >/dev/null 2>&1 || { echo "glmark2: $p is not installed"; exit 77; }
done
DIR=$(mktemp -d "${TMPDIR:-/tmp}/gst-vhost-virgl-glmark2-XXXXXX")
PIDS=""
cleanup() {
    for p in $PIDS; do kill "$p" 2>/dev/null; done
    for p in $PIDS; do wait "$p" 2>/dev/null; done
    rm -rf "$DIR"
}
trap cleanup EXIT INT TERM
wait_file() {
    i=0
    while [ ! -e "$1" ]; do
        i=$((i + 1)); [ $i -gt 1000 ] && { echo "glmark2: $1 never appeared"; exit 1; }
        sleep 0.01
    done
}
mkfifo "$DIR/displayfd"
Xvfb -displayfd 3 -screen 0 1024x768x24 -nolisten tcp 3>"$DIR/displayfd" >/dev/null 2>&1 &
PIDS="$PIDS $!"
read -r DISPLAY_NUM <"$DIR/displayfd"
fps() {
    unshare -m sh -c "mount --bind '$1' /tmp && exec env DISPLAY=:$DISPLAY_NUM \
        GALLIUM_DRIVER=virpipe LIBGL_ALWAYS_SOFTWARE=1 glmark2-es2 --off-screen -b '$SCENE'" \
        2>&1 | sed -n 's/.*FPS: \([0-9]*\).*/\1/p' | head -n 1
}
mkdir "$DIR/ours" "$DIR/ref"
"$GPU" --virgl -q --max-hostmem 1G --socket-path "$DIR/gpu.sock" >/dev/null 2>&1 &
PIDS="$PIDS $!"
wait_file "$DIR/gpu.sock"
"$VTEST" --backend "$DIR/gpu.sock" --socket-path "$DIR/ours/.virgl_test" >/dev/null 2>&1 &
PIDS="$PIDS $!"
virgl_test_server --use-egl-surfaceless --socket-path="$DIR/ref/.virgl_test" >/dev/null 2>&1 &
PIDS="$PIDS $!"
wait_file "$DIR/ours/.virgl_test"
wait_file "$DIR/ref/.virgl_test"
# alternate, two runs each; the better of each
r1=$(fps "$DIR/ref"); o1=$(fps "$DIR/ours"); r2=$(fps "$DIR/ref"); o2=$(fps "$DIR/ours")
ref=$(( ${r1:-0} > ${r2:-0} ? ${r1:-0} : ${r2:-0} ))
ours=$(( ${o1:-0} > ${o2:-0} ? ${o1:-0} : ${o2:-0} ))
echo "glmark2-es2 $SCENE, off-screen 800x600 (best of 2 each):"
echo "  virgl_test_server           $ref FPS ($r1, $r2)"
echo "  gst-vhost-vtest + gst-vhost-gpu $ours FPS ($o1, $o2)"
if [ "$ours" -gt 0 ]; then
    echo "  ratio (time per frame)      $(echo "scale=3; $ref / $ours" | bc) (target <= 1.05)"
fi
