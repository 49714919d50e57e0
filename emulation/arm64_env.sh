#!/usr/bin/env bash
# Build an emulated arm64 Debian userland with the edgetl runtime in it, from Debian's and PyPI's registries only,
# and print how to run a command there.  Usage: emulation/arm64_env.sh ROOT PYTHON
#
# ROOT is cached: the userland and the third-party wheels are made once (about 70 s), the edgetl wheel is
# reinstalled on every call.  No binfmt_misc registration is needed (containers rarely allow it): debootstrap's
# first stage downloads the packages, every .deb is unpacked into ROOT with dpkg-deb (the second stage would need
# to execute arm64 code), and each emulated command is one process, `chroot ROOT qemu-aarch64-static ...`.
# PYTHON is the x86 interpreter whose package versions the arm64 side pins (numpy, Pillow, onnxruntime, click).
set -euo pipefail

ROOT=${1:?usage: emulation/arm64_env.sh ROOT PYTHON}
PYTHON=${2:?usage: emulation/arm64_env.sh ROOT PYTHON}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm                 # its python3 is 3.11, the wheels below are cp311
HERE=$(cd "$(dirname "$0")/.." && pwd)

need() { command -v "$1" >/dev/null 2>&1; }
if ! need qemu-aarch64-static || ! need debootstrap; then
    if [ "$(id -u)" != 0 ]; then
        echo "emulation/arm64_env.sh: needs qemu-user-static and debootstrap: sudo apt-get install qemu-user-static debootstrap" >&2
        exit 2
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q qemu-user-static debootstrap >/dev/null
fi
if [ "$(id -u)" != 0 ]; then
    echo "emulation/arm64_env.sh: chroot needs root (run make check-arm64 as root, e.g. in a container)" >&2
    exit 2
fi

if [ ! -f "$ROOT/.userland-done" ]; then
    echo "arm64 userland: debootstrap's first stage into $ROOT" >&2
    rm -rf "$ROOT" && mkdir -p "$ROOT"
    debootstrap --arch=arm64 --foreign --variant=minbase --include=python3,python3-venv,python3-pip \
        "$SUITE" "$ROOT" "$MIRROR" >/dev/null
    for deb in "$ROOT"/var/cache/apt/archives/*.deb; do
        dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$ROOT" --keep-directory-symlink
    done
    cp "$(command -v qemu-aarch64-static)" "$ROOT/usr/bin/"
    cp /etc/resolv.conf "$ROOT/etc/" 2>/dev/null || true
    chroot "$ROOT" /usr/bin/qemu-aarch64-static /usr/bin/python3 -m venv --without-pip --system-site-packages /opt/venv
    touch "$ROOT/.userland-done"
fi

WHEELS="$ROOT/wheelhouse"
pins=$("$PYTHON" - <<'EOF'
from importlib.metadata import version
print(" ".join(f"{name}=={version(name)}" for name in ("numpy", "pillow", "onnxruntime", "click", "pytest")))
EOF
)
if [ ! -f "$WHEELS/.pins" ] || [ "$(cat "$WHEELS/.pins")" != "$pins" ]; then
    echo "arm64 wheels: $pins" >&2
    rm -rf "$WHEELS" && mkdir -p "$WHEELS"
    # shellcheck disable=SC2086
    "$PYTHON" -m pip download -q --only-binary=:all: --platform manylinux_2_28_aarch64 \
        --platform manylinux2014_aarch64 --platform manylinux_2_17_aarch64 --python-version 3.11 \
        --implementation cp --abi cp311 -d "$WHEELS" $pins
    chroot "$ROOT" /usr/bin/qemu-aarch64-static /opt/venv/bin/python -m pip install -q --no-index \
        --find-links /wheelhouse $pins
    echo "$pins" > "$WHEELS/.pins"
fi

rm -f "$WHEELS"/edgetl-*.whl
"$PYTHON" -m pip wheel -q --no-deps --no-build-isolation -w "$WHEELS" "$HERE" >/dev/null
chroot "$ROOT" /usr/bin/qemu-aarch64-static /opt/venv/bin/python -m pip install -q --no-index --no-deps \
    --force-reinstall "/wheelhouse/$(basename "$WHEELS"/edgetl-*.whl)"
echo "chroot $ROOT /usr/bin/qemu-aarch64-static -cpu cortex-a76 /opt/venv/bin/python"
