"""Regenerate tests/fixtures/netlink/ipvs_* from a real IPVS kernel (User-Mode Linux).

    python tests/vm/capture_fixtures.py

Boots UML, builds the test table (guest/build_table.sh), drives traffic
(guest/traffic.py), then records the raw netlink dump replies (guest/capture_netlink.py)
and, at the same moment, `ipvsadm -Ln --stats --exact`, `--thresholds`, `--persistent-conn`,
`-Ln` and `/proc/net/ip_vs` as the independent witnesses the fixture tests compare with.
The expected JSON beside each .hex is the decoder's output at capture time; the unit tests
check it against those witnesses, so a wrong decoder cannot bless itself.
"""
import dataclasses
import json
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))
sys.path.insert(0, str(HERE))

import uml  # noqa: E402
from exporter.sources import ipvs  # noqa: E402

DEST = HERE.parent / "fixtures" / "netlink"

GUEST = r'''
set -u
G=$CODE/tests/vm/guest
bash $G/build_table.sh > $OUT/build.log 2>&1 || { cat $OUT/build.log; exit 1; }
rm -f /tmp/ready /tmp/stop
$PY $G/traffic.py /tmp/ready /tmp/stop > $OUT/traffic.log 2>&1 &
for i in $(seq 1 300); do [ -f /tmp/ready ] && break; sleep 0.2; done
[ -f /tmp/ready ] || { echo "traffic never got ready"; cat $OUT/traffic.log; exit 1; }
cp /tmp/ready $OUT/traffic.json
sleep 2.2    # one tick of the 2 s rate estimator, so the rate fields are not all zero
witness() {   # $1: suffix
    ipvsadm -Ln --stats --exact > $OUT/w/stats$1
    ipvsadm -Ln --rate --exact > $OUT/w/rate$1
    ipvsadm -Ln > $OUT/w/Ln$1
    ipvsadm -Ln --thresholds > $OUT/w/thresholds$1
    ipvsadm -Ln --persistent-conn > $OUT/w/persistent$1
    ipvsadm -Sn > $OUT/w/save$1
    cat /proc/net/ip_vs > $OUT/w/proc$1
}
mkdir -p $OUT/w
ok=0
for try in 1 2 3 4 5; do   # the estimator updates counters/rates every 2 s: retry until
    rm -rf $OUT/cap         # nothing moved between the witnesses before and after
    witness .before
    $PY $G/capture_netlink.py $OUT/cap || exit 1
    witness .after
    same=1
    for f in stats rate Ln thresholds persistent save proc; do
        cmp -s $OUT/w/$f.before $OUT/w/$f.after || same=0
    done
    [ $same = 1 ] && { ok=1; break; }
    echo "witnesses moved during capture try $try, retrying"
done
[ $ok = 1 ] || { echo "counters kept moving"; exit 1; }
for f in stats rate Ln thresholds persistent save; do cp $OUT/w/$f.before $OUT/cap/ipvs_ipvsadm_$f.txt; done
cp $OUT/w/proc.before $OUT/cap/ipvs_proc_net_ip_vs.txt
touch /tmp/stop
wait
'''


def to_json(obj):
    d = dataclasses.asdict(obj)
    if "addr_raw" in d:
        d["addr_raw"] = d["addr_raw"].hex()
    if "backends" in d:
        d.pop("backends")
    return d


def main():
    res = uml.run_guest(GUEST, timeout=300, tag="capture")
    res.assert_ok()
    cap = res.outdir / "cap"
    print(res.read("traffic.json"))
    for p in DEST.glob("ipvs_*"):
        p.unlink()
    DEST.mkdir(parents=True, exist_ok=True)
    for p in cap.iterdir():
        if p.name.startswith("ipvs_"):
            shutil.copy(p, DEST / p.name)
    shutil.copy(cap / "index.json", DEST / "ipvs_index.json")

    def chunks(name):
        return [bytes.fromhex(x) for x in (DEST / name).read_text().split()]
    services = [s for c in chunks("ipvs_services.hex") for s in ipvs.decode_services(c)]
    (DEST / "ipvs_services.json").write_text(json.dumps([to_json(s) for s in services], indent=1))
    for i, svc in enumerate(services):
        name = "ipvs_dests_%02d" % i
        dests = [d for c in chunks(name + ".hex") for d in ipvs.decode_dests(c, svc.family)]
        (DEST / (name + ".json")).write_text(json.dumps([to_json(d) for d in dests], indent=1))
    print(f"wrote {len(services)} services' fixtures into {DEST}")


if __name__ == "__main__":
    main()
