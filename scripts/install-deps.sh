#!/bin/sh
# Installs every Debian 12 package gst-vhost needs to build, test and run its demos.
# Idempotent: prints nothing and touches nothing when all is present. Run as root.
set -eu

BASE_PKGS="meson ninja-build pkg-config gcc clang libclang-rt-14-dev llvm
libglib2.0-dev libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev
gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good
libpixman-1-dev libepoxy-dev libdrm-dev libvirglrenderer-dev
glmark2-es2-x11 xvfb virgl-server
busybox-static cpio xz-utils zstd python3 socat
libvirt-daemon-system libvirt-clients libgstrtspserver-1.0-dev
gstreamer1.0-plugins-ugly gstreamer1.0-libav ffmpeg"
# QEMU 10 (vhost-user-gpu under TCG, vhost-user-snd, QEMU's own vhost-user-gpu backend).
BPO_PKGS="qemu-system-x86 qemu-system-gui"

missing() {
    for p in "$@"; do
        dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q 'install ok installed' ||
            echo "$p"
    done
}

need_bpo() {
    # Debian 12 ships QEMU 7.2, which refuses vhost-user-gpu without KVM.
    [ -x /usr/bin/qemu-system-x86_64 ] && [ -x /usr/lib/qemu/vhost-user-gpu ] &&
        /usr/bin/qemu-system-x86_64 --version | grep -q 'version \(1[0-9]\|[89]\)\.' &&
        return 1
    return 0
}

# The archive that serves bookworm on this machine (a mirror, a proxy, a
# snapshot): bookworm-backports comes from the same place.  Prints
# "URI KEYRING" (KEYRING may be empty) from the first deb entry whose suites
# include plain "bookworm", in deb822 .sources files or one-line lists.
bookworm_archive() {
    for f in ${APT_ETC:-/etc/apt}/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        awk '
            function flush() {
                if (types ~ /(^| )deb( |$)/ && (" " suites " ") ~ / bookworm / && uris != "") {
                    split(uris, u, " "); print u[1], key; found = 1; exit
                }
                types = suites = uris = key = ""
            }
            /^[ \t]*#/ { next }
            /^[ \t]*$/ { flush(); next }
            tolower($1) == "types:" { $1 = ""; types = $0 }
            tolower($1) == "suites:" { $1 = ""; suites = $0 }
            tolower($1) == "uris:" { $1 = ""; uris = $0; sub(/^ +/, "", uris) }
            tolower($1) == "signed-by:" { key = $2 }
            END { if (!found) flush() }
        ' "$f"
    done | head -n 1 | grep . && return 0
    cat ${APT_ETC:-/etc/apt}/sources.list ${APT_ETC:-/etc/apt}/sources.list.d/*.list 2>/dev/null | awk '
        $1 == "deb" {
            key = ""; i = 2
            if ($2 ~ /^\[/) {
                for (; i <= NF; i++) {
                    if ($i ~ /signed-by=/) { key = $i; sub(/.*signed-by=/, "", key); sub(/\]$/, "", key) }
                    if ($i ~ /\]$/) { i++; break }
                }
            }
            if ($(i + 1) == "bookworm") { print $i, key; exit }
        }' | grep .
}

add_backports() {
    if grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
        return 0
    fi
    archive=$(bookworm_archive) || {
        echo "install-deps: no bookworm entry in the apt sources to take the backports archive from" >&2
        return 1
    }
    uri=${archive%% *} key=${archive#* }
    [ "$key" = "$archive" ] && key=""
    echo "install-deps: adding bookworm-backports from $uri to apt sources"
    {
        printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\n' "$uri"
        [ -n "$key" ] && printf 'Signed-By: %s\n' "$key"
    } >/etc/apt/sources.list.d/gst-vhost-backports.sources
}

base_missing=$(missing $BASE_PKGS)
bpo=0
need_bpo && bpo=1
[ -z "$base_missing" ] && [ "$bpo" = 0 ] && exit 0

if [ "$(id -u)" != 0 ]; then
    [ "$bpo" = 1 ] && base_missing="$base_missing qemu-system-x86/bookworm-backports qemu-system-gui/bookworm-backports"
    echo "install-deps: missing packages: $(echo $base_missing)" >&2
    echo "install-deps: run as root to install them" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
[ "$bpo" = 1 ] && { add_backports || exit 1; }
echo "install-deps: installing $(echo $base_missing)$([ "$bpo" = 1 ] && echo " $BPO_PKGS (bookworm-backports)")"
apt-get update -qq
[ -n "$base_missing" ] && apt-get install -y -qq --no-install-recommends $base_missing >/dev/null
[ "$bpo" = 1 ] &&
    apt-get install -y -qq --no-install-recommends -t bookworm-backports $BPO_PKGS >/dev/null
exit 0
