# Stubs for the Rust extension; checked against the built module by mypy.stubtest.
from collections.abc import Callable
from typing import Any, final

from typing_extensions import Buffer

__all__ = [
    "Hasher",
    "__version__",
    "agent_target",
    "hash_file",
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
    flash: str,
    *,
    chip: str = "f407",
    on_event: Callable[[dict[str, Any]], object] | None = None,
    stop: Any = None,
) -> None: ...
