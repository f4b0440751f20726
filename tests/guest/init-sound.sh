#!/bin/sh
# /init of the sound end-to-end guest (busybox): loads virtio_snd, plays a tone
# and records, reporting on the serial console with lines "E2E: <WORD> <args>",
# then reads "reboot" or "poweroff" from the console.
#
# Kernel command line parameters read here:
#   e2e.play=FREQ:SECONDS:RATE   the tone played (default 440:2:48000)
#   e2e.record=SECONDS:RATE      what is recorded (default 1:48000)

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
	dmesg | grep -iE 'snd|sound|virtio|error|fail' | tail -n 40
	finish
}

PLAY=440:2:48000
RECORD=1:48000
for arg in $(cat /proc/cmdline); do
	case "$arg" in
	e2e.play=*) PLAY=${arg#e2e.play=} ;;
	e2e.record=*) RECORD=${arg#e2e.record=} ;;
	esac
done

KVER=$(cat /etc/e2e/kernel)
say INIT "$(uptime_s)" "$KVER"
for m in $(cat /etc/e2e/modules); do
	insmod "/lib/modules/$KVER/$m" || fail "insmod $m"
done
say MODULES "$(uptime_s)"

# The card's device nodes appear once the driver probed (bounded wait).
i=0
while [ ! -e /dev/snd/pcmC0D0p ] || [ ! -e /dev/snd/pcmC0D0c ]; do
	i=$((i + 1))
	[ $i -gt 100 ] && fail "no /dev/snd/pcmC0D0p and pcmC0D0c"
	sleep 0.1
done
say READY "$(uptime_s)" "$(cat /proc/asound/cards | head -n 1)"

IFS=: read -r f s r <<EOT
$PLAY
EOT
/bin/snd-tool play "$f" "$s" "$r" || fail "play"
IFS=: read -r s r <<EOT
$RECORD
EOT
/bin/snd-tool record "$s" "$r" || fail "record"
say DONE "$(uptime_s)"
# The harness answers "reboot" (a guest-initiated reset) or "poweroff".
read -r -t 30 cmd
[ "$cmd" = reboot ] && { say REBOOT; reboot -f; }
finish
