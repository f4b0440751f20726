#!/bin/sh
# Installs every Debian 12 package gst-vhost needs to build, test and run its demos.
# Idempotent: prints nothing and touches nothing when all is present. Run as root.
set -eu

BASE_PKGS="meson ninja-build pkg-config gcc clang libclang-rt-14-dev llvm
libglib2.0-dev libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev
gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good
libpixman-1-dev libepoxy-dev libdrm-dev libvirglrenderer-dev
busybox-static cpio xz-utils zstd python3 socat"
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

add_backports() {
    if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
        echo "install-deps: adding bookworm-backports to apt sources"
        printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
            >/etc/apt/sources.list.d/gst-vhost-backports.sources
    fi
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
[ "$bpo" = 1 ] && add_backports
echo "install-deps: installing $(echo $base_missing)$([ "$bpo" = 1 ] && echo " $BPO_PKGS (bookworm-backports)")"
apt-get update -qq
[ -n "$base_missing" ] && apt-get install -y -qq --no-install-recommends $base_missing >/dev/null
[ "$bpo" = 1 ] &&
    apt-get install -y -qq --no-install-recommends -t bookworm-backports $BPO_PKGS >/dev/null
exit 0
