# Stubs for the Rust extension; checked against the built module by mypy.stubtest.
from collections.abc import Callable
from os import PathLike
from typing import Any, final

from typing_extensions import Buffer

__all__ = [
    "PATCH_HEADER_MAX",
    "Applier",
    "FlashBlocks",
    "FlashTarget",
    "Hasher",
    "InstallSession",
    "__version__",
    "agent_target",
    "apply_file",
    "apply_patch_in_place",
    "begin_install",
    "checkpoint_offsets",
    "dfu_add_suffix",
    "dfu_crc",
    "dfu_file_info",
    "dfuse_erase_plan",
    "dfuse_file_build",
    "dfuse_file_parse",
    "dfuse_layout",
    "diff",
    "hash_file",
    "patch_info",
    "serial_agent",
    "serial_flash",
    "stm32_emulate",
    "stm32_emulated_chips",
    "stm32_flash",
    "stm32_info",
    "ymodem_receive",
    "ymodem_send",
]

__version__: str
#: The longest patch header: this many first bytes describe any patch.
PATCH_HEADER_MAX: int

@final
class Hasher:
    def __new__(cls, name: str, data: Buffer | None = None) -> Hasher: ...
    def update(self, data: Buffer) -> None: ...
    def digest(self) -> bytes: ...
    def hexdigest(self) -> str: ...
    def copy(self) -> Hasher: ...
    @property
    def name(self) -> str: ...
    @property
    def digest_size(self) -> int: ...
    @property
    def block_size(self) -> int: ...

def hash_file(
    path: str,
    algorithms: list[str],
    progress: Callable[[str, int, int | None], object] | None = None,
) -> tuple[int, list[tuple[str, str]]]: ...

_Progress = Callable[[str, int, int | None], object]

@final
class FlashTarget:
    def __new__(cls, uri: str) -> FlashTarget: ...
    @property
    def uri(self) -> str: ...
    @property
    def name(self) -> str: ...
    def geometry(self) -> dict[str, Any]: ...
    def bad_blocks(self) -> list[int]: ...
    def layout(self) -> dict[str, Any] | None: ...
    def read(self, offset: int, size: int) -> bytes: ...
    def write(
        self,
        image: str,
        offset: int = 0,
        layout: str = "raw",
        progress: _Progress | None = None,
        skip_blank: bool = True,
        skip_unchanged: bool = True,
    ) -> dict[str, Any]: ...
    def verify(self, image: str, offset: int = 0, progress: _Progress | None = None) -> str: ...
    def boot(
        self, image: str | None = None, progress: _Progress | None = None
    ) -> dict[str, Any]: ...
    def confirm(self) -> int | None: ...
    def cancel(self) -> None: ...

def diff(
    old: Buffer,
    new: Buffer,
    *,
    kind: str = "sequential",
    level: int | None = None,
    window_log: int = 21,
    block_size: int | None = None,
    frame_size: int | None = None,
    slot_size: int | None = None,
    threads: int = 0,
    compression: str = "zstd",
    progress: Callable[[str, int, int | None], object] | None = None,
) -> bytes: ...
def apply_file(
    old: str | PathLike[str],
    patch: str | PathLike[str],
    new: str | PathLike[str],
    *,
    max_working_set: int = ...,
    read_cache: int = ...,
    old_check: str = "before",
    progress: Callable[[str, int, int | None], object] | None = None,
) -> tuple[str, int, str, int]: ...
def patch_info(head: Buffer) -> dict[str, Any]: ...
def checkpoint_offsets(checkpoint: Buffer) -> tuple[int, int]: ...

@final
class Applier:
    def __new__(
        cls,
        old: object,
        sink: object,
        *,
        old_size: int | None = None,
        checkpoint: Buffer | None = None,
        max_working_set: int = ...,
        read_cache: int = ...,
        progress: Callable[[str, int, int | None], object] | None = None,
    ) -> Applier: ...
    def feed(self, chunk: Buffer) -> None: ...
    def finish(self) -> tuple[str, int, str, int]: ...
    def checkpoint(self) -> bytes | None: ...
    @property
    def patch_offset(self) -> int: ...
    @property
    def output_offset(self) -> int: ...
    @property
    def working_set(self) -> int | None: ...

@final
class InstallSession:
    def write(self, data: Buffer) -> None: ...
    def finish(self) -> dict[str, Any]: ...
    def abort(self) -> None: ...
    @property
    def layout(self) -> str: ...

def begin_install(
    target: FlashTarget,
    size: int,
    sha256: str,
    layout: str = "ab",
    patch: bool = False,
    progress: _Progress | None = None,
    skip_blank: bool = True,
    skip_unchanged: bool = True,
) -> InstallSession: ...
def apply_patch_in_place(
    target: FlashTarget, patch: str, progress: _Progress | None = None
) -> dict[str, Any]: ...

# -- USB DFU files and DfuSe layouts (otaflash.usb) ---------------------------

def dfu_file_info(path: str) -> dict[str, Any]: ...
def dfuse_file_parse(path: str) -> dict[str, Any]: ...
def dfuse_file_build(
    targets: list[tuple[int, str | None, list[tuple[int, bytes]]]],
    vendor_id: int,
    product_id: int,
    bcd_device: int,
) -> bytes: ...
def dfu_add_suffix(
    path: str, vendor_id: int, product_id: int, bcd_device: int, bcd_dfu: int
) -> dict[str, Any]: ...
def dfu_crc(data: Buffer) -> int: ...
def dfuse_layout(text: str) -> tuple[str, list[tuple[int, int, int, bool, bool, bool]]]: ...
def dfuse_erase_plan(text: str, regions: list[tuple[int, int]]) -> list[tuple[int, int]]: ...

@final
class FlashBlocks:
    def __new__(cls, uri: str) -> FlashBlocks: ...
    @property
    def name(self) -> str: ...
    def geometry(self) -> tuple[int, int, int]: ...
    def read(self, offset: int, size: int) -> bytes: ...
    def erase(self, offset: int, length: int) -> None: ...
    def program(self, offset: int, data: Buffer) -> None: ...
    def sync(self) -> None: ...

def serial_flash(
    port: Any,
    path: str,
    *,
    delta: bool = False,
    image_size: int | None = None,
    image_sha256: str | None = None,
    line_rate: int | None = None,
    switch_baud: int | None = None,
    compress: bool = True,
    block_size: int = 65536,
    window: int | None = None,
    connect_timeout: float = 10.0,
    timeout: float = 10.0,
    resume: bool = True,
    progress: _Progress | None = None,
    stop: Any = None,
) -> dict[str, Any]: ...
def agent_target(target: str) -> str: ...
def serial_agent(
    port: Any,
    target: str,
    *,
    baud: int = 115200,
    max_baud: int = 4000000,
    window: int = 16384,
    max_block: int = 1048576,
    checkpoint_every: int = 65536,
    once: bool = False,
    progress: _Progress | None = None,
    on_transfer: Callable[[dict[str, Any]], object] | None = None,
    stop: Any = None,
) -> None: ...
def ymodem_send(
    port: Any,
    path: str,
    *,
    name: str | None = None,
    block_size: int = 1024,
    start_timeout: float = 60.0,
    timeout: float = 10.0,
    progress: _Progress | None = None,
    stop: Any = None,
) -> dict[str, Any]: ...
def ymodem_receive(
    port: Any,
    destination: str,
    *,
    ack_first_eot: bool = False,
    start_timeout: float = 60.0,
    timeout: float = 3.0,
    progress: _Progress | None = None,
    stop: Any = None,
) -> list[dict[str, Any]]: ...
def stm32_flash(
    port: Any,
    path: str,
    *,
    address: int = 0x08000000,
    erase: str = "pages",
    verify: bool = True,
    go: int | None = None,
    progress: _Progress | None = None,
    stop: Any = None,
) -> dict[str, Any]: ...
def stm32_info(port: Any, *, stop: Any = None) -> dict[str, Any]: ...
def stm32_emulated_chips() -> list[tuple[str, str, int]]: ...
def stm32_emulate(
    port: Any,
    target: str,
    *,
    chip: str = "f407",
    on_event: Callable[[dict[str, Any]], object] | None = None,
    stop: Any = None,
) -> None: ...
