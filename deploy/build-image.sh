#!/usr/bin/env bash
# Build the nodenet-exporter image from the Containerfile; the tag is the last line on stdout.
#   bash deploy/build-image.sh                  -> localhost/nodenet-exporter:<version>
#   bash deploy/build-image.sh --context-only   -> stages the build context, prints its path
#
# Environment:
#   NODENET_IMAGE_BASE   unset/auto: the Containerfile's BASE_IMAGE (python:3.11-slim) if the
#                        engine has it or can pull it, otherwise debian-local;
#                        debian-local: a Debian bookworm minbase + python3 made with mmdebstrap
#                        from Debian's packages and imported (no registry needed);
#                        any other value: that image, used as the base as is.
#   NODENET_IMAGE_TAG    the tag to build (default localhost/nodenet-exporter:<version>).
#   NODENET_ENGINE       podman or docker (default: podman if installed, else docker).
#   NODENET_WHEELS       a directory of ready wheels (air-gapped hosts): the dependencies and
#                        pip are taken from it instead of being downloaded.
#   NODENET_DEBIAN_MIRROR  Debian mirror for debian-local (default http://deb.debian.org/debian;
#                        the security suite comes from its sibling .../debian-security).
#   NODENET_IMAGE_CACHE  cache directory (default <repo>/.cache/image, git-ignored).
#   NODENET_IMAGE_SOURCE the org.opencontainers.image.source label (default: git remote origin).
#
# Cache: the Debian base (a tarball keyed by its recipe), the dependency wheels (keyed by the
# dependency list and the target platform) and the built image (an archive keyed by everything
# the build reads) live in the cache directory; an unchanged tree "rebuilds" in seconds, a fresh
# machine builds from nothing in ~2-3 min (mostly mmdebstrap; measured on 2 busy CPUs). Delete the directory to rebuild
# everything (e.g. to pick up Debian security updates for the base).
#
# Wheels: the exporter's own (pure Python) with the host's `pip wheel --no-deps`; dependencies
# with `pip download --only-binary=:all: --platform manylinux_2_36_<arch> --python-version 3.11
# --implementation cp` (and every older manylinux tag): PyPI's manylinux wheels for CPython 3.11
# and glibc <= 2.36 (bookworm), whatever the host's Python is built against.
set -euo pipefail
case ${1:-} in
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    ""|--context-only) ;;
    *) echo "build-image.sh: unknown argument ${1} (see --help)" >&2; exit 2 ;;
esac

REPO=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${NODENET_IMAGE_CACHE:-$REPO/.cache/image}
PY=${PYTHON:-python3}
PYVER=3.11          # the CPython of both bases (python:3.11-slim, Debian bookworm's python3)
GLIBC=2_36          # bookworm's glibc: the newest manylinux the wheels may need
ARCH=$(uname -m)
BASE_RECIPE="bookworm minbase python3"

log() { echo "build-image.sh: $*" >&2; }
die() { log "$*"; exit 1; }
sha() { sha256sum | cut -c1-16; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
T0=$(now)

VERSION=$("$PY" -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' "$REPO/pyproject.toml")
TAG=${NODENET_IMAGE_TAG:-localhost/nodenet-exporter:$VERSION}
REVISION=$(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo unknown)
SOURCE=${NODENET_IMAGE_SOURCE:-$(git -C "$REPO" config --get remote.origin.url 2>/dev/null || echo unknown)}
mkdir -p "$CACHE"

# --------------------------------------------------------------------------- wheels

CTX=$CACHE/context
rm -rf "$CTX" "$CACHE/src"
mkdir -p "$CTX/wheels" "$CTX/deploy/image"
DEPS=$("$PY" -c 'import sys, tomllib; print("\n".join(tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]))' "$REPO/pyproject.toml")
PIP_REQ="pip==$("$PY" -m pip --version | awk '{print $2}')"
if [ -n "${NODENET_WHEELS:-}" ]; then
    WHEELS=$NODENET_WHEELS
    log "wheels: from $WHEELS"
else
    WHEELS=$CACHE/wheels-$(printf '%s\n' "$DEPS" "$PIP_REQ" "$PYVER" "$GLIBC" "$ARCH" | sha)
    if [ ! -d "$WHEELS" ]; then
        log "wheels: pip download (manylinux_${GLIBC}_$ARCH, CPython $PYVER)"
        rm -rf "$WHEELS.tmp"
        # pip does not expand manylinux_2_X to older tags: list them (2014 expands to 2010, 1).
        plats=(--platform "manylinux2014_$ARCH")
        for v in $(seq 17 "${GLIBC#2_}"); do plats+=(--platform "manylinux_2_${v}_$ARCH"); done
        # shellcheck disable=SC2086  # $DEPS: one requirement per word
        "$PY" -m pip download --quiet --disable-pip-version-check --only-binary=:all: \
            "${plats[@]}" --python-version "$PYVER" --implementation cp \
            --dest "$WHEELS.tmp" $DEPS "$PIP_REQ" >&2 \
            || die "pip download failed: no binary wheel for a dependency? Put wheels in a directory and set NODENET_WHEELS"
        mv "$WHEELS.tmp" "$WHEELS"
    fi
fi
cp "$WHEELS"/*.whl "$CTX/wheels/"
ls "$CTX"/wheels/pip-*.whl >/dev/null 2>&1 || die "no pip wheel in $WHEELS (the builder runs pip from it)"
cp "$REPO/deploy/image/rootfs.py" "$CTX/deploy/image/"
cp "$REPO/.dockerignore" "$CTX/"
# The exporter's wheel from a copy of exactly what it is built from (no build/ in the tree);
# made only when a build needs it (the cache key hashes the sources themselves).
project_wheel() {
    mkdir -p "$CACHE/src"
    cp -r "$REPO/pyproject.toml" "$REPO/README.md" "$REPO/exporter" "$CACHE/src/"
    find "$CACHE/src" -name __pycache__ -prune -exec rm -rf {} +
    "$PY" -m pip wheel --quiet --disable-pip-version-check --no-deps --wheel-dir "$CTX/wheels" "$CACHE/src" >&2
    rm -rf "$CACHE/src"
}

if [ "${1:-}" = --context-only ]; then
    # The staged build context alone (no engine needed): what the Containerfile COPYs.
    project_wheel
    echo "$CTX"
    exit 0
fi

ENGINE=${NODENET_ENGINE:-}
if [ -z "$ENGINE" ]; then
    if command -v podman >/dev/null; then ENGINE=podman
    elif command -v docker >/dev/null; then ENGINE=docker
    else die "neither podman nor docker is installed"; fi
fi
BUILD_FLAGS=()
if [ "$ENGINE" = podman ]; then
    # crun fails on some hosts (cgroup v1 hybrid, raising rlimits); runc works everywhere.
    command -v runc >/dev/null && BUILD_FLAGS+=(--runtime runc)
    BUILD_FLAGS+=(--pull=never --layers=false)
fi

image_id() { "$ENGINE" image inspect --format '{{.Id}}' "$1" 2>/dev/null || true; }

# --------------------------------------------------------------------------- the base

debian_local_base() {
    command -v mmdebstrap >/dev/null || die "debian-local base: mmdebstrap is not installed (Debian: apt-get install mmdebstrap)"
    local mirror=${NODENET_DEBIAN_MIRROR:-http://deb.debian.org/debian}
    local mirrors=("deb $mirror bookworm main" "deb $mirror bookworm-updates main"
                   "deb ${mirror%/debian}/debian-security bookworm-security main")
    # The builder only: docs, man pages and translations are not needed to build.
    local opts=(--variant=minbase --include=python3 --format=tar
                --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*'
                --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*')
    local key; key=$(printf '%s\n' "$BASE_RECIPE" "${opts[@]}" "${mirrors[@]}" | sha)
    BASE=localhost/nodenet-base:bookworm-$key
    local tar=$CACHE/base-$key.tar
    if [ -n "$(image_id "$BASE")" ]; then
        log "base $BASE: present"
        return
    fi
    if [ ! -s "$tar" ]; then
        local t; t=$(now)
        log "base: mmdebstrap $BASE_RECIPE from $mirror (about 30 s)"
        mmdebstrap --quiet "${opts[@]}" bookworm "$tar.tmp" "${mirrors[@]}" >&2 || die "mmdebstrap failed"
        mv "$tar.tmp" "$tar"
        log "base: made in $(since "$t") s"
    fi
    # An imported tree has no image config: give RUN steps a PATH.
    "$ENGINE" import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        "$tar" "$BASE" >/dev/null
    log "base $BASE: imported from $tar"
}

DEFAULT_BASE=$(sed -n 's/^ARG BASE_IMAGE=//p' "$REPO/Containerfile")
case ${NODENET_IMAGE_BASE:-auto} in
    debian-local) debian_local_base ;;
    auto)
        if [ -n "$(image_id "$DEFAULT_BASE")" ] || timeout 120 "$ENGINE" pull -q "$DEFAULT_BASE" >/dev/null 2>&1; then
            BASE=$DEFAULT_BASE
        else
            log "cannot pull $DEFAULT_BASE: making the debian-local base instead"
            debian_local_base
        fi ;;
    *)  BASE=$NODENET_IMAGE_BASE
        [ -n "$(image_id "$BASE")" ] || "$ENGINE" pull -q "$BASE" >/dev/null || die "base $BASE: not present and cannot be pulled" ;;
esac
BASE_ID=$(image_id "$BASE")

# --------------------------------------------------------------------------- build (or reuse)

KEY=$({ echo "$BASE_ID $VERSION $SOURCE $REVISION"
        cat "$REPO/Containerfile" "$REPO/.dockerignore" "$REPO/deploy/image/rootfs.py" "$0"
        (cd "$WHEELS" && sha256sum ./*.whl)
        (cd "$REPO" && find pyproject.toml README.md exporter -name __pycache__ -prune -o -type f -print \
            | LC_ALL=C sort | xargs sha256sum); } | sha)
ARCHIVE=$CACHE/image-$KEY.tar
label() { "$ENGINE" image inspect --format '{{index .Config.Labels "io.nodenet.build-key"}}' "$1" 2>/dev/null || true; }
# An image of this build, whatever it is tagged (the tests build under their own tag).
keyed() { "$ENGINE" images -q --no-trunc --filter "label=io.nodenet.build-key=$KEY" | head -n 1; }
OLD_ID=$(image_id "$TAG")
ID=$(keyed)
if [ -n "$ID" ]; then
    HOW="cached (image present)"
elif [ -s "$ARCHIVE" ]; then
    "$ENGINE" load -q -i "$ARCHIVE" >/dev/null
    ID=$(keyed)
    [ -n "$ID" ] || die "$ARCHIVE did not load an image of build $KEY"
    HOW="cached (loaded $ARCHIVE)"
else
    project_wheel
    log "building $TAG on $BASE with $ENGINE"
    "$ENGINE" build "${BUILD_FLAGS[@]}" -f "$REPO/Containerfile" \
        --build-arg "BASE_IMAGE=$BASE" --build-arg "VERSION=$VERSION" \
        --build-arg "SOURCE=$SOURCE" --build-arg "REVISION=$REVISION" \
        --label "io.nodenet.build-key=$KEY" -t "$TAG" "$CTX" >&2
    ID=$(image_id "$TAG")
    rm -f "$CACHE"/image-*.tar
    # Saved by ID (no tag inside): a load gives the image back, this script tags it.
    "$ENGINE" save -o "$ARCHIVE.tmp" "$ID" >/dev/null && mv "$ARCHIVE.tmp" "$ARCHIVE"
    HOW="built"
fi
"$ENGINE" tag "$ID" "$TAG"
# The image this tag named before, now untagged: removed if it is one of ours (build-key label).
if [ -n "$OLD_ID" ] && [ "$OLD_ID" != "$ID" ] && [ -n "$(label "$OLD_ID")" ] \
    && [ "$("$ENGINE" image inspect --format '{{len .RepoTags}}' "$OLD_ID" 2>/dev/null)" = 0 ]; then
    "$ENGINE" rmi "$OLD_ID" >/dev/null 2>&1 || true
fi
SIZE=$("$ENGINE" image inspect --format '{{.Size}}' "$TAG")
log "$TAG: $HOW in $(since "$T0") s; size $((SIZE / 1048576)) MiB uncompressed ($SIZE bytes); base $BASE"
echo "$TAG"
