"""Starting the update server: in the foreground (``otaflash serve``), in a
thread of this process, or as a subprocess (demos, tests, benchmarks).

>>> with EmbeddedServer(data_dir) as server:            # doctest: +SKIP
...     server.url, server.admin_token
"""

from __future__ import annotations

import gc
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from otaflash.errors import InputError, RuleError

__all__ = ["EmbeddedServer", "ServerConfig", "ServerProcess", "build", "free_port", "serve"]

TOKEN_FILE = "admin-token"


@dataclass
class ServerConfig:
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 8080
    #: SQLAlchemy URL; default: the SQLite file ``data_dir/otaflash.db``.
    database: str | None = None
    admin_token: str | None = None
    mqtt: str | None = None
    mqtt_sign_method: str = "md5"
    #: What devices are told to download from; default ``http://host:port``.
    public_url: str | None = None
    max_upload: int = 1 << 30
    log_level: str = "warning"
    extra: dict[str, Any] = field(default_factory=dict)

    def resolved_public_url(self) -> str:
        return self.public_url or f"http://{self.host}:{self.port}"


def load_admin_token(config: ServerConfig) -> str:
    """The configured token, else the one kept in ``data_dir/admin-token`` (made once, 0600)."""
    if config.admin_token:
        return config.admin_token
    path = config.data_dir / TOKEN_FILE
    try:
        token = path.read_text().strip()
        if token:
            return token
    except FileNotFoundError:
        pass
    token = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(token + "\n")
    return token


def build(config: ServerConfig) -> tuple[Any, Any, Any]:
    """``(asgi_app, service, bridge or None)``; the bridge is not started yet."""
    # Imported here: the `server` extra may be missing, and the error should say so.
    try:
        from otaflash.server.app import create_app  # noqa: PLC0415
        from otaflash.server.mqtt_bridge import MqttBridge  # noqa: PLC0415
        from otaflash.server.service import UpdateService, default_paths  # noqa: PLC0415
        from otaflash.server.store import BlobStore, Store  # noqa: PLC0415
    except ImportError as error:
        missing = InputError(
            f"the update server needs packages that are not installed ({error.name})"
        )
        missing.hint = "pip install 'otaflash[server]'"
        raise missing from None
    if config.mqtt_sign_method not in {"md5", "sha256"}:
        raise InputError(f"invalid MQTT sign method {config.mqtt_sign_method!r}: md5 or sha256")
    config.data_dir.mkdir(parents=True, exist_ok=True)
    db_path, blob_dir = default_paths(config.data_dir)
    store = Store(config.database or f"sqlite:///{db_path}")
    service = UpdateService(
        store,
        BlobStore(blob_dir),
        public_url=config.resolved_public_url(),
        mqtt_sign_method=config.mqtt_sign_method,
    )
    token = load_admin_token(config)
    config.admin_token = token
    app = create_app(service, admin_token=token, max_upload=config.max_upload)
    bridge = MqttBridge(service, config.mqtt) if config.mqtt else None
    return app, service, bridge


def _uvicorn_config(app: Any, config: ServerConfig, **kwargs: Any) -> Any:
    import uvicorn  # noqa: PLC0415 - the server extra, checked in build()

    return uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        log_level=config.log_level,
        access_log=False,
        loop="auto",  # uvloop when installed
        http="auto",  # httptools when installed
        timeout_keep_alive=30,
        **kwargs,
    )


def serve(config: ServerConfig, *, ready: threading.Event | None = None) -> None:
    """Runs the server in the foreground until SIGINT/SIGTERM."""
    import uvicorn  # noqa: PLC0415 - the server extra, checked in build()

    app, service, bridge = build(config)
    if bridge is not None:
        bridge.start()
    # Everything imported so far lives as long as the server: keep the cyclic
    # GC from rescanning it, which otherwise shows up in the latency tail.
    gc.collect()
    gc.freeze()
    try:
        server = uvicorn.Server(_uvicorn_config(app, config))
        server.run()
    finally:
        if bridge is not None:
            bridge.stop()
        service.store.close()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class EmbeddedServer:
    """The server in a thread of this process, on a free port unless one is given."""

    def __init__(self, data_dir: Path | str, **options: Any) -> None:
        options.setdefault("port", free_port(options.get("host", "127.0.0.1")))
        self.config = ServerConfig(Path(data_dir), **options)
        self._thread: threading.Thread | None = None
        self._server: Any = None
        self.service: Any = None
        self._bridge: Any = None

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.config.port}"

    @property
    def admin_token(self) -> str:
        assert self.config.admin_token is not None
        return self.config.admin_token

    def start(self, timeout: float = 20.0) -> EmbeddedServer:
        import uvicorn  # noqa: PLC0415 - the server extra, checked in build()

        app, self.service, self._bridge = build(self.config)
        if self._bridge is not None:
            self._bridge.start()
        self._server = uvicorn.Server(_uvicorn_config(app, self.config))
        self._thread = threading.Thread(
            target=self._server.run, name="otaflash-server", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuleError(f"the update server did not start on {self.url}")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        if self._bridge is not None:
            self._bridge.stop()
        if self.service is not None:
            self.service.store.close()

    def __enter__(self) -> EmbeddedServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class ServerProcess:
    """``otaflash serve`` as a subprocess (a real separate server: restarts, benchmarks)."""

    def __init__(self, data_dir: Path | str, *, port: int | None = None, **options: Any) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.options = options
        self.process: subprocess.Popen[bytes] | None = None
        self.admin_token: str = options.get("admin_token") or secrets.token_urlsafe(16)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "otaflash", "serve", "--data-dir", str(self.data_dir)]
        cmd += ["--host", "127.0.0.1", "--port", str(self.port)]
        for key, value in self.options.items():
            if key != "admin_token" and value is not None:
                cmd += [f"--{key.replace('_', '-')}", str(value)]
        return cmd

    def start(self, timeout: float = 30.0) -> ServerProcess:
        env = {**os.environ, "OTAFLASH_ADMIN_TOKEN": self.admin_token}
        self.process = subprocess.Popen(self.command(), env=env)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuleError(f"otaflash serve exited with {self.process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuleError(f"otaflash serve did not listen on {self.url}") from None
                time.sleep(0.05)

    def stop(self, *, kill: bool = False) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        if kill:
            self.process.kill()
        else:
            self.process.terminate()
        self.process.wait(15)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()
