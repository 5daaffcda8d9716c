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
