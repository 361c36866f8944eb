#!/bin/bash
# Fetch and unpack what the IPVS User-Mode Linux tests need (idempotent).
#
#   tests/vm/setup_uml.sh            -> tests/vm/.cache/{debs,uml,pkgroot}
#
# Everything comes from Debian with `apt-get download` (never installed on the host,
# never committed: tests/vm/.cache/ is git-ignored).  The kernel version is whatever
# the archive's user-mode-linux package currently ships (not pinned).
#   uml/usr/bin/linux.uml                  the UML kernel (hostfs built in)
#   uml/usr/lib/uml/modules/<ver>/...      its modules (net, lib, crypto, dummy,
#                                          geneve, vxlan, bonding)
#   pkgroot/                               ipvsadm + libnl/libpopt, busybox (static),
#                                          prometheus-node-exporter
# Env: UML_CACHE (default tests/vm/.cache), SKIP_APT_UPDATE=1 to not run apt-get update.
set -euo pipefail
HERE=$(dirname "$(readlink -f "$0")")
CACHE=${UML_CACHE:-$HERE/.cache}
export DEBIAN_FRONTEND=noninteractive
PKGS="user-mode-linux ipvsadm libnl-3-200 libnl-genl-3-200 libpopt0 busybox-static prometheus-node-exporter"
mkdir -p "$CACHE/debs" "$CACHE/pkgroot"
cd "$CACHE/debs"

need=""
for p in $PKGS; do
    ls "${p}"_*.deb >/dev/null 2>&1 || need="$need $p"
done
if [ -n "$need" ]; then
    if [ "${SKIP_APT_UPDATE:-0}" != 1 ]; then
        apt-get update -qq || echo "setup_uml: apt-get update failed (continuing with the lists we have)" >&2
    fi
    # apt-get download writes into the current directory; as root it warns about the sandbox
    apt-get download $need 2>&1 | grep -v 'Download is performed unsandboxed' || true
    for p in $need; do
        ls "${p}"_*.deb >/dev/null 2>&1 || { echo "setup_uml: FAILED to download $p" >&2; exit 1; }
    done
fi

# user-space tools: extract once per .deb (stamp files name the exact .deb)
for p in ipvsadm libnl-3-200 libnl-genl-3-200 libpopt0 busybox-static prometheus-node-exporter; do
    deb=$(ls "${p}"_*.deb | sort | tail -1)
    stamp="$CACHE/pkgroot/.extracted.$deb"
    [ -e "$stamp" ] && continue
    dpkg-deb -x "$deb" "$CACHE/pkgroot"
    touch "$stamp"
done

# the kernel: only the binary and the module trees we load (keeps the cache small).
# The stamp names the .deb and the pattern list, so a longer list re-extracts an old cache.
deb=$(ls user-mode-linux_*.deb | sort | tail -1)
PATTERNS=(
    './usr/bin/linux.uml'
    './usr/lib/uml/modules/*/modules.builtin'
    './usr/lib/uml/modules/*/kernel/net/*'
    './usr/lib/uml/modules/*/kernel/lib/*'
    './usr/lib/uml/modules/*/kernel/crypto/*'
    './usr/lib/uml/modules/*/kernel/drivers/net/dummy.ko*'
    # link kinds of the netdev tests (tests/vm/test_netdev_tunnels_uml.py)
    './usr/lib/uml/modules/*/kernel/drivers/net/geneve.ko*'
    './usr/lib/uml/modules/*/kernel/drivers/net/vxlan/*'
    './usr/lib/uml/modules/*/kernel/drivers/net/bonding/*'
)
stamp="$CACHE/uml/.extracted.$deb.$(printf '%s\n' "${PATTERNS[@]}" | md5sum | cut -c1-8)"
if [ ! -e "$stamp" ] || [ ! -x "$CACHE/uml/usr/bin/linux.uml" ]; then
    rm -rf "$CACHE/uml"
    mkdir -p "$CACHE/uml"
    dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$CACHE/uml" --wildcards "${PATTERNS[@]}"
    touch "$stamp"
fi

# module index, so that modprobe (explicit, and the kernel's own autoload via the
# kernel.modprobe helper below) works in the guest:  modprobe -d $CACHE/uml ...
command -v depmod >/dev/null || { echo "setup_uml: depmod (Debian kmod) is required" >&2; exit 1; }
mkdir -p "$CACHE/uml/lib"
ln -sfn ../usr/lib/uml/modules "$CACHE/uml/lib/modules"
for v in $(ls "$CACHE/uml/usr/lib/uml/modules"); do
    [ -e "$CACHE/uml/lib/modules/$v/modules.dep.bin" ] || depmod -b "$CACHE/uml" "$v" 2>/dev/null
    [ -e "$CACHE/uml/lib/modules/$v/modules.dep.bin" ] || { echo "setup_uml: depmod failed for $v" >&2; exit 1; }
done
mkdir -p "$CACHE/modprobe.d" "$CACHE/bin"
# conntrack registers its hooks without any ct rule, so IPVS-NATed flows are tracked
echo "options nf_conntrack enable_hooks=1" > "$CACHE/modprobe.d/nodenet-uml.conf"
cat > "$CACHE/bin/uml-modprobe" <<'EOS'
#!/bin/bash
# modprobe for the UML guest (also its kernel.modprobe autoload helper)
C=$(dirname "$(dirname "$(readlink -f "$0")")")
exec /usr/sbin/modprobe -d "$C/uml" -C "$C/modprobe.d" "$@"
EOS
cat > "$CACHE/bin/ipvsadm" <<'EOS'
#!/bin/bash
C=$(dirname "$(dirname "$(readlink -f "$0")")")
LD_LIBRARY_PATH="$C/pkgroot/lib/x86_64-linux-gnu:$C/pkgroot/usr/lib/x86_64-linux-gnu" exec "$C/pkgroot/sbin/ipvsadm" "$@"
EOS
ln -sfn ../pkgroot/usr/bin/prometheus-node-exporter "$CACHE/bin/node_exporter"
ln -sfn ../pkgroot/bin/busybox "$CACHE/bin/busybox"
chmod +x "$CACHE/bin/uml-modprobe" "$CACHE/bin/ipvsadm"

for f in "$CACHE/uml/usr/bin/linux.uml" "$CACHE/pkgroot/bin/busybox" "$CACHE/pkgroot/sbin/ipvsadm" \
         "$CACHE/pkgroot/usr/bin/prometheus-node-exporter"; do
    [ -x "$f" ] || { echo "setup_uml: missing $f after extraction" >&2; exit 1; }
done
echo "setup_uml: ready in $CACHE ($(du -sh "$CACHE" | cut -f1)); kernel modules $(ls "$CACHE/uml/usr/lib/uml/modules")"
