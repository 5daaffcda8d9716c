"""A throwaway Linux guest for tests that need kernel drivers the host lacks
(MTD simulators today, a USB gadget later).

It boots Debian's own kernel under qemu with software emulation (TCG; no KVM
needed) and a tiny busybox initramfs that loads the requested modules,
mounts the host's root filesystem read-only over 9p at ``/host`` plus one
writable work directory (at the same path as on the host), then chroots into
the host tree and runs a bash script there. So the script sees the host's
own tools and this checkout's virtualenv, and leaves its results in the work
directory.

    guest = QemuGuest()                      # kernel + modules cached under target/
    result = guest.run(
        "flashcp -v img /dev/mtd0",
        workdir=tmp_path,
        modprobe=["mtdram total_size=4096 erase_size=64"],
    )
    assert result.returncode == 0, result.output

The kernel package is fetched with ``apt-get download`` (the version
``linux-image-amd64`` depends on) and unpacked once into
``target/qemu-guest/``; initramfs images are cached there per module set.
Needs ``qemu-system-x86_64``, ``busybox`` (static), ``depmod`` (kmod) and
``dpkg-deb``; ``scripts/system-deps.sh`` installs them.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "target" / "qemu-guest"
#: Modules every guest loads: 9p over virtio, to reach the host.
BASE_MODULES = ("virtio_pci", "9pnet_virtio", "9p")


@dataclass(frozen=True)
class GuestResult:
    returncode: int
    """The script's exit status (None-like -1 if the guest never reported)."""
    output: str
    """What the script printed (stdout and stderr)."""
    console: str
    """The guest's serial console (kernel messages, init)."""
    seconds: float
    """Wall time of the whole guest run, boot included."""


class GuestError(RuntimeError):
    pass


class QemuGuest:
    def __init__(self, cache: Path = CACHE) -> None:
        self.cache = cache
        self.root = cache / "kernel"

    # -- the kernel ---------------------------------------------------------
    def kernel_package(self) -> str:
        """The kernel image package Debian's linux-image-amd64 depends on now."""
        out = _run(["apt-cache", "depends", "linux-image-amd64"])
        match = re.search(r"Depends: (linux-image-[\w.+-]+)", out)
        if match is None:
            _run(["apt-get", "update", "-qq"])
            out = _run(["apt-cache", "depends", "linux-image-amd64"])
            match = re.search(r"Depends: (linux-image-[\w.+-]+)", out)
        if match is None:
            raise GuestError(f"cannot find Debian's kernel package: {out.strip()}")
        return match.group(1)

    def prepare(self) -> tuple[Path, str]:
        """Fetches and unpacks the kernel once; returns (vmlinuz, release)."""
        found = sorted(self.root.glob("boot/vmlinuz-*"))
        if found and (self.root / ".ready").exists():
            return found[-1], found[-1].name.removeprefix("vmlinuz-")
        package = self.kernel_package()
        download = self.cache / "deb"
        download.mkdir(parents=True, exist_ok=True)
        if not list(download.glob(f"{package}_*.deb")):
            try:
                _run(["apt-get", "download", package], cwd=download)
            except GuestError:
                _run(["apt-get", "update", "-qq"])
                _run(["apt-get", "download", package], cwd=download)
        deb = sorted(download.glob(f"{package}_*.deb"))[-1]
        shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(parents=True)
        _run(["dpkg-deb", "-x", str(deb), str(self.root)])
        kernel = sorted(self.root.glob("boot/vmlinuz-*"))[-1]
        release = kernel.name.removeprefix("vmlinuz-")
        _run([_depmod(), "-b", str(self.root), release])
        (self.root / ".ready").touch()
        return kernel, release

    def _module_tree(self, release: str) -> Path:
        tree = self.root / "lib" / "modules" / release
        if not tree.is_dir():
            tree = self.root / "usr" / "lib" / "modules" / release
        return tree

    def _closure(self, release: str, names: Iterable[str]) -> list[str]:
        """Module files (relative) for `names` and everything they depend on."""
        tree = self._module_tree(release)
        deps: dict[str, list[str]] = {}
        by_name: dict[str, str] = {}
        for line in (tree / "modules.dep").read_text().splitlines():
            path, _, rest = line.partition(":")
            deps[path] = rest.split()
            stem = Path(path).name.split(".ko")[0]
            by_name[stem] = path
            by_name[stem.replace("-", "_")] = path
        wanted: list[str] = []
        todo = []
        for name in names:
            key = name.replace("-", "_")
            if key not in by_name:
                raise GuestError(f"the guest kernel has no module {name!r}")
            todo.append(by_name[key])
        while todo:
            path = todo.pop()
            if path not in wanted:
                wanted.append(path)
                todo.extend(deps.get(path, []))
        return wanted

    # -- the initramfs -------------------------------------------------------
    def initramfs(self, release: str, modules: Sequence[str]) -> Path:
        names = list(dict.fromkeys([*BASE_MODULES, *modules]))
        files = self._closure(release, names)
        init = INIT.replace("@MODULES@", " ".join(BASE_MODULES))
        key = hashlib.sha256("\n".join([release, init, *sorted(files)]).encode()).hexdigest()[:16]
        image = self.cache / f"initrd-{key}.gz"
        if image.exists():
            return image
        busybox = shutil.which("busybox")
        if busybox is None:
            raise GuestError("busybox is missing (install busybox-static)")
        tree = self._module_tree(release)
        entries: list[tuple[str, int, bytes]] = []
        for directory in ("bin", "dev", "proc", "sys", "host", "lib", "lib/modules"):
            entries.append((directory, 0o040755, b""))
        entries.append(("bin/busybox", 0o100755, Path(busybox).read_bytes()))
        entries.append(("init", 0o100755, init.encode()))
        base = f"lib/modules/{release}"
        seen_dirs = {"lib/modules"}
        for rel in [*files, "modules.dep", "modules.alias", "modules.symbols", "modules.order"]:
            src = tree / rel
            if not src.exists():
                continue
            parts = Path(base, rel).parts
            for depth in range(3, len(parts)):
                directory = "/".join(parts[:depth])
                if directory not in seen_dirs:
                    seen_dirs.add(directory)
                    entries.append((directory, 0o040755, b""))
            entries.append((f"{base}/{rel}", 0o100644, src.read_bytes()))
        image.write_bytes(gzip.compress(_cpio(entries), compresslevel=6))
        return image

    # -- running --------------------------------------------------------------
    def run(
        self,
        script: str,
        *,
        workdir: Path,
        modprobe: Sequence[str] = (),
        timeout: float = 300,
        memory_mb: int = 1024,
    ) -> GuestResult:
        """Boots, loads `modprobe` lines ("name arg=value ..."), runs `script`
        with bash in the host tree (cwd = `workdir`), powers off."""
        qemu = shutil.which("qemu-system-x86_64")
        if qemu is None:
            raise GuestError("qemu-system-x86_64 is missing (install qemu-system-x86)")
        kernel, release = self.prepare()
        _compile_checkout()
        modules = [line.split()[0] for line in modprobe]
        initrd = self.initramfs(release, modules)
        workdir = workdir.resolve()
        for name in ("guest.rc", "guest.log"):
            (workdir / name).unlink(missing_ok=True)
        env = "\n".join(
            f"export {k}={shlex.quote(v)}"
            for k, v in {
                "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "HOME": str(workdir),
                "TMPDIR": str(workdir),
                "PYTHONDONTWRITEBYTECODE": "1",
                "LANG": "C.UTF-8",
            }.items()
        )
        (workdir / "guest.sh").write_text(f"{env}\ncd {shlex.quote(str(workdir))}\n{script}\n")
        (workdir / "guest.modprobe").write_text("\n".join(modprobe) + "\n")
        command = [
            qemu,
            "-accel", "tcg", "-cpu", "max", "-m", str(memory_mb), "-smp", "2",
            "-nographic", "-no-reboot", "-nic", "none",
            "-kernel", str(kernel), "-initrd", str(initrd),
            "-append", f"console=ttyS0 quiet panic=-1 otaflash.work={workdir}",
            "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
            "-virtfs", f"local,path={workdir},mount_tag=work,security_model=none",
        ]  # fmt: skip
        started = time.monotonic()
        try:
            done = subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as expired:
            console = (expired.stdout or b"").decode(errors="replace")
            raise GuestError(
                f"the guest did not finish in {timeout} s:\n{console[-3000:]}"
            ) from None
        seconds = time.monotonic() - started
        console = done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")
        rc_file = workdir / "guest.rc"
        log_file = workdir / "guest.log"
        returncode = int(rc_file.read_text().strip() or -1) if rc_file.exists() else -1
        output = log_file.read_text(errors="replace") if log_file.exists() else ""
        return GuestResult(returncode, output, console, seconds)


def _compile_checkout() -> None:
    """Byte-compiles this checkout's Python on the host: the guest sees it
    read-only and, under TCG, would otherwise compile every module it
    imports at every start (seconds per process)."""
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(ROOT / "python")],
        capture_output=True,
        check=False,
    )


def missing_tools() -> list[str]:
    """Host tools the guest needs that are not installed."""
    tools = ["qemu-system-x86_64", "busybox", "dpkg-deb", "apt-get"]
    missing = [t for t in tools if shutil.which(t) is None]
    if _depmod_or_none() is None:
        missing.append("depmod")
    return missing


def _depmod_or_none() -> str | None:
    return shutil.which("depmod") or next(
        (p for p in ("/sbin/depmod", "/usr/sbin/depmod") if os.path.exists(p)), None
    )


def _depmod() -> str:
    found = _depmod_or_none()
    if found is None:
        raise GuestError("depmod is missing (install kmod)")
    return found


def _run(command: list[str], cwd: Path | None = None) -> str:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise GuestError(f"{' '.join(command)} failed: {done.stderr.strip()}")
    return done.stdout


def _cpio(entries: list[tuple[str, int, bytes]]) -> bytes:
    """A newc cpio archive (what the kernel unpacks as an initramfs)."""
    out = bytearray()

    def add(name: str, mode: int, data: bytes, ino: int) -> None:
        encoded = name.encode() + b"\0"
        fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0]
        out.extend(b"070701" + b"".join(f"{f:08x}".encode() for f in fields))
        out.extend(encoded)
        out.extend(b"\0" * (-len(out) % 4))
        out.extend(data)
        out.extend(b"\0" * (-len(out) % 4))

    for ino, (name, mode, data) in enumerate(entries, start=1):
        add(name, mode, data, ino)
    add("TRAILER!!!", 0, b"", 0)
    return bytes(out)


INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
WORK=$(sed -n 's/.*otaflash\.work=\([^ ]*\).*/\1/p' /proc/cmdline)
for m in @MODULES@; do modprobe "$m" 2>/dev/null; done
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=262144 hostroot /host || echo "init: cannot mount the host"
mount -t tmpfs tmpfs /host/tmp
mount -t tmpfs tmpfs /host/run
mkdir -p "/host$WORK" 2>/dev/null
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 work "/host$WORK" || echo "init: cannot mount the work directory"
while read -r line; do
    [ -n "$line" ] || continue
    modprobe $line || echo "init: modprobe $line failed" >> "/host$WORK/guest.log"
done < "/host$WORK/guest.modprobe"
mount --bind /proc /host/proc
mount --bind /sys /host/sys
mount --bind /dev /host/dev
chroot /host /bin/bash "$WORK/guest.sh" >> "/host$WORK/guest.log" 2>&1
echo $? > "/host$WORK/guest.rc"
sync
umount "/host$WORK"
poweroff -f
"""
