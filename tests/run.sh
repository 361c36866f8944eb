#!/usr/bin/env bash
# The whole test suite on a fresh Debian machine: installs what the tests use, then runs pytest.
#   bash tests/run.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
    echo "tests/run.sh: must run as root (installs Debian packages, creates network namespaces)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
# Debian packages the real-server and real-kernel tests use.
PKGS="prometheus prometheus-alertmanager prometheus-node-exporter ipvsadm conntrack nftables bpftool
      iproute2 libcap2-bin util-linux procps curl openssl kmod libseccomp2 iptables
      podman buildah runc mmdebstrap uidmap tar ethtool"
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
command -v kubectl >/dev/null || missing="$missing kubernetes-client"
if [ -n "$missing" ]; then
    echo "tests/run.sh: installing Debian packages:$missing"
    apt-get update -qq
    dpkg --configure -a || true
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
PY=${PYTHON:-python3}
"$PY" -m pip install -q --disable-pip-version-check -e ".[test,dev]" 2>&1 | grep -v -e "^WARNING: Running pip as" -e "is ignored: it is neither" || true
"$PY" -c "import exporter, pytest, hypothesis, pytest_timeout" || { echo "tests/run.sh: python deps did not install" >&2; exit 1; }
# Lint and types first (config in pyproject.toml). A finding fails the run like a failing
# test, but the tests still run, so one report shows everything.
checks=0
"$PY" -m ruff check exporter || checks=1
"$PY" -m mypy exporter || checks=1
# Everything, slowest 20 listed; a test that needs something missing fails, never skips.
rc=0
"$PY" -m pytest --durations=20 "$@" || rc=$?
if [ "$checks" != 0 ]; then
    echo "tests/run.sh: ruff or mypy found problems (see above)" >&2
    [ "$rc" != 0 ] || rc=1
fi
exit "$rc"
