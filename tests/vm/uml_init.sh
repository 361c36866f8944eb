#!/bin/bash
# PID 1 of the nodenet-exporter User-Mode Linux guest (started by tests/vm/uml.py).
#
# The root fs is the host's / over hostfs, read-only.  Kernel command line:
#   nn.out=DIR    host dir mounted read-write at the same path; it holds
#                 guest.env (sourced here), guest.sh (the script to run), and
#                 receives the results
#   nn.code=DIR   the checkout; mounted read-only from the host when the guest's
#                 own tmpfs on /tmp (or /run, /var/tmp) hides it
# guest.env sets at least UML_CACHE (tests/vm/.cache) and NN_MODULES (modules to
# load, space separated, in that order, via the cache's modprobe).
# Prints "NN_INIT ready" when ready and "NN_EXIT rc=N" at the end, then powers off.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
OUT=""; CODE=""
for w in $(cat /proc/cmdline); do
    case "$w" in
        nn.out=*) OUT="${w#nn.out=}" ;;
        nn.code=*) CODE="${w#nn.code=}" ;;
    esac
done
log() { echo "[nn-init $(cut -d' ' -f1 /proc/uptime)] $*"; }
BB=""
finish() {
    log "NN_EXIT rc=$1"
    sync
    if [ -n "$BB" ]; then "$BB" poweroff -f; fi
    # no busybox: halt by making PID 1 exit (UML then shuts down with a panic)
    exit "$1"
}
log "init started"
mount -t sysfs sysfs /sys
grep -q "^devtmpfs /dev " /proc/mounts || mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/shm /dev/pts 2>/dev/null
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -t devpts devpts /dev/pts
# writable scratch areas over the read-only host root
for d in /tmp /run /var/tmp; do mount -t tmpfs -o mode=1777 tmpfs "$d"; done
mkdir -p /tmp/home
# the checkout, when hidden by the tmpfs mounts above (CI may clone under /tmp)
if [ -n "$CODE" ] && [ ! -e "$CODE" ]; then
    mkdir -p "$CODE" && mount -t hostfs -o "ro,$CODE" none "$CODE" || log "hostfs mount of code dir $CODE FAILED"
fi
if [ -z "$OUT" ]; then log "no nn.out= on the kernel command line"; finish 2; fi
mkdir -p "$OUT" 2>/dev/null
mount -t hostfs -o "$OUT" none "$OUT" || { log "hostfs mount of $OUT FAILED"; finish 2; }
[ -r "$OUT/guest.env" ] || { log "$OUT/guest.env missing"; finish 2; }
set -a
. "$OUT/guest.env"
set +a
BB="$UML_CACHE/bin/busybox"
# the kernel's module autoload uses the cache's modules too (so a test can see
# whether something made the kernel load ip_vs)
echo "$UML_CACHE/bin/uml-modprobe" > /proc/sys/kernel/modprobe
[ -z "$NN_MODULES" ] || "$UML_CACHE/bin/uml-modprobe" -a $NN_MODULES || log "modprobe -a $NN_MODULES FAILED"
ip link set lo up
log "modules: $(cut -d' ' -f1 /proc/modules | sort | tr '\n' ' ')"
log "NN_INIT ready"
cd /tmp/home
HOME=/tmp/home bash "$OUT/guest.sh" </dev/null
finish $?
