#!/bin/sh
# /init of the end-to-end test guest (busybox).  Loads the virtio-gpu driver, draws
# known text on the framebuffer console and reports on the serial console with
# machine-readable lines "E2E: <WORD> <args>", then waits for commands and powers off.
#
# Kernel command line parameters read here:
#   e2e.hold=SECONDS    how long to wait for a command after READY (default 60)
#   e2e.fbwait=SECONDS  how long to wait for /dev/fb0 and fbcon (default 30)
#
# Commands read from the serial console after READY (one per line):
#   poweroff      power off (also after e2e.hold seconds without a command)
#   reboot        reboot -f (a guest-initiated reset)
#   dmesg         print the kernel log
#   redraw        draw the screen again, then "E2E: REDRAWN"
#   draw TEXT     write TEXT on the draw row, then "E2E: DRAWN <uptime>"

/bin/busybox --install -s /bin
export PATH=/bin

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

say() { echo "E2E: $*"; }
uptime_s() { cut -d' ' -f1 /proc/uptime; }
finish() {
	say POWEROFF
	poweroff -f
}
fail() {
	say FAIL "$*"
	dmesg | grep -iE 'drm|virtio|fb|error|fail' | tail -n 40
	finish
}

HOLD=60
FBWAIT=30
for arg in $(cat /proc/cmdline); do
	case "$arg" in
	e2e.hold=*) HOLD=${arg#e2e.hold=} ;;
	e2e.fbwait=*) FBWAIT=${arg#e2e.fbwait=} ;;
	esac
done

KVER=$(cat /etc/e2e/kernel)
say INIT "$(uptime_s)" "$KVER"

for m in $(cat /etc/e2e/modules); do
	insmod "/lib/modules/$KVER/$m" || fail "insmod $m"
done
say MODULES "$(uptime_s)"

# Poll (bounded) until the driver has registered fb0 and fbcon has taken the
# console over: both happen during the driver's probe, possibly after insmod.
fbcon_bound() {
	for v in /sys/class/vtconsole/vtcon*; do
		grep -q 'frame buffer' "$v/name" 2>/dev/null &&
			[ "$(cat "$v/bind")" = 1 ] && return 0
	done
	return 1
}
i=0
while ! { [ -c /dev/fb0 ] && fbcon_bound; }; do
	i=$((i + 1))
	[ "$i" -gt $((FBWAIT * 10)) ] && fail "no /dev/fb0 with fbcon after ${FBWAIT}s"
	sleep 0.1
done

FBNAME=$(cat /sys/class/graphics/fb0/name)
FBMODE=$(tr ',' 'x' </sys/class/graphics/fb0/virtual_size)
CONN=none
CONNMODE=none
for c in /sys/class/drm/card0-*; do
	[ "$(cat "$c/status" 2>/dev/null)" = connected ] || continue
	CONN=${c##*/}
	CONNMODE=$(head -n 1 "$c/modes")
	break
done
# "rows cols" of the console: the harness derives the font cell size from it.
CONSIZE=$(stty -F /dev/tty0 size)
# Which device the driver bound: PCI class (VGA or other display), ids, and the
# driver of the virtio device on it.
PDEV=/sys/class/drm/card0/device
VDRV=none
for v in "$PDEV"/virtio*/driver; do
	[ -e "$v" ] && VDRV=$(basename "$(readlink -f "$v")")
done
DEVINFO="$(cat "$PDEV/class") $(cat "$PDEV/vendor"):$(cat "$PDEV/device") $VDRV"
# Random per boot: tells this boot's screen from an earlier one's (nothing survives a
# reboot in an initramfs, and the command line stays the same).
BOOTID=$(cat /proc/sys/kernel/random/boot_id)

esc=$(printf '\033')

draw() {
	{
		# Clear, home, hide the cursor.
		printf '%s[0m%s[H%s[2J%s[?25l' "$esc" "$esc" "$esc" "$esc"
		# Row 0: a full-width bar, bright yellow on blue (erase-line paints the rest).
		printf '%s[1;33;44m gst-vhost guest e2e: virtio_gpu -> vhost-user-gpu %s[K%s[0m\n' \
			"$esc" "$esc" "$esc"
		# Rows 1-3: grey text.
		printf 'kernel: %s\n' "$KVER"
		printf 'fb0: %s %s\n' "$FBNAME" "$FBMODE"
		printf '%s: %s\n' "$CONN" "$CONNMODE"
		# Row 4: colour blocks.
		printf '%s[30;42m GREEN %s[0m %s[30;41m RED %s[0m %s[37;44m BLUE %s[0m\n' \
			"$esc" "$esc" "$esc" "$esc" "$esc" "$esc"
		printf 'uptime %ss\n' "$(uptime_s)"
		# Row 6: the boot id; the cursor (hidden) stays at its end.
		printf 'boot %s' "$BOOTID"
	} >/dev/tty0
}
# Row 7, the draw row: the harness's text, in place of what was there.
draw_text() {
	printf '%s[8;1H%s[2K%s' "$esc" "$esc" "$1" >/dev/tty0
}
draw

dmesg | grep -E '\[drm\]|virtio_gpu|fb0' | head -n 20
say FB "$FBNAME"
say MODE "$FBMODE"
say CONNECTOR "$CONN" "$CONNMODE"
say CONSOLE "$CONSIZE"
say DEVICE "$DEVINFO"
say READY "$(uptime_s)" "$BOOTID"

# busybox ash has read -t.
# shellcheck disable=SC3045
while read -r -t "$HOLD" cmd; do
	case "$cmd" in
	poweroff | quit) break ;;
	reboot)
		say REBOOT
		reboot -f
		;;
	dmesg) dmesg ;;
	redraw) draw && say REDRAWN "$(uptime_s)" ;;
	draw\ *) draw_text "${cmd#draw }" && say DRAWN "$(uptime_s)" ;;
	*) say UNKNOWN "$cmd" ;;
	esac
done
finish
