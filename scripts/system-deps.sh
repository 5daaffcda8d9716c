#!/usr/bin/env bash
# Installs the Debian packages that the test suite runs as real peers, and
# only those that are missing, so a fresh machine needs nothing by hand.
set -euo pipefail

# "command package": the package is installed when the command is missing.
# "- package": installed when dpkg does not know it (no command to probe).
requirements=(
    "md5sum coreutils"
    "sha256sum coreutils"
    "sha1sum coreutils"
    # The MTD tests boot Debian's kernel in a qemu guest (tests/qemu_guest.py)
    # and cross-check with mtd-utils there; the initramfs needs a static busybox.
    "qemu-system-x86_64 qemu-system-x86"
    "- busybox-static"
    "- kmod"
    "flashcp mtd-utils"
    # USB DFU: dfu-util (with dfu-suffix and dfu-prefix) is the peer our host
    # and emulated device are checked against; libusb is what pyusb drives.
    "dfu-util dfu-util"
    "- libusb-1.0-0"
    # The update service's peers: a real MQTT broker for the Alibaba IoT topics,
    # the load generator and reference file server of its benchmarks, and
    # PostgreSQL, the server's storage for fleets.
    "- mosquitto"
    "wrk wrk"
    "- nginx-light"
    "- postgresql"
    "bsdiff bsdiff"
    "bspatch bsdiff"
    "xdelta3 xdelta3"
    "zstd zstd"
    "sb lrzsz"
    "rb lrzsz"
    "stm32flash stm32flash"
    "socat socat"
    "qemu-system-i386 qemu-system-x86"
    "- u-boot-qemu"
)

missing=()
for entry in "${requirements[@]}"; do
    read -r probe package <<<"$entry"
    if [ "$probe" = "-" ]; then
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" && continue
    else
        command -v "$probe" >/dev/null 2>&1 && continue
    fi
    [[ " ${missing[*]} " == *" $package "* ]] || missing+=("$package")
done

if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi

sudo=()
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "system-deps: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
    sudo=(sudo)
fi
echo "system-deps: installing ${missing[*]}" >&2
"${sudo[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
