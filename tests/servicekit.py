"""Real peers for the update-service tests: a mosquitto broker, the embedded
server, an HTTP server that cuts connections where it is told to, and an
MQTT listener that records messages.

Fixtures are imported by name (``from .servicekit import broker_fixture``);
they are defined with ``name=`` so test arguments do not shadow the import.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest

from otaflash.admin import AdminClient
from otaflash.server import EmbeddedServer, free_port


class Broker:
    def __init__(self, workdir: Path) -> None:
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not os.path.exists(exe):
            raise RuntimeError("mosquitto is not installed: run `make system-deps`")
        self.port = free_port()
        self.url = f"mqtt://127.0.0.1:{self.port}"
        conf = workdir / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        )
        self.process = subprocess.Popen(
            [exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    break
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("mosquitto did not start") from None
                time.sleep(0.02)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        if self.process.stderr is not None:
            self.process.stderr.close()


@pytest.fixture(name="broker")
def broker_fixture(tmp_path: Path) -> Iterator[Broker]:
    broker = Broker(tmp_path)
    yield broker
    broker.stop()


class Recorder:
    """A plain paho client (an Alibaba-protocol device, or a cloud): records
    every message on its subscriptions and publishes raw payloads."""

    def __init__(self, url: str, topics: list[str], client_id: str) -> None:
        host, port = url.removeprefix("mqtt://").split(":")
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id)
        subscribed = threading.Event()
        self.client.on_message = lambda _c, _u, msg: self.messages.put((msg.topic, msg.payload))
        self.client.on_subscribe = lambda *_a: subscribed.set()
        self.client.on_connect = lambda c, *_a: c.subscribe([(t, 1) for t in topics])
        self.client.connect(host, int(port))
        self.client.loop_start()
        assert subscribed.wait(10), "subscription not acknowledged"

    def publish(self, topic: str, payload: bytes | dict[str, Any]) -> None:
        data = json.dumps(payload).encode() if isinstance(payload, dict) else payload
        self.client.publish(topic, data, qos=1).wait_for_publish(10)

    def next(self, timeout: float = 10.0) -> tuple[str, dict[str, Any]]:
        topic, payload = self.messages.get(timeout=timeout)
        return topic, json.loads(payload)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture(name="server")
def server_fixture(tmp_path: Path) -> Iterator[EmbeddedServer]:
    with EmbeddedServer(tmp_path / "server", max_upload=8 << 20) as server:
        yield server


@pytest.fixture(name="admin")
def admin_fixture(server: EmbeddedServer) -> AdminClient:
    return AdminClient(server.url, server.admin_token)


def image(size: int, seed: int) -> bytes:
    """Deterministic pseudo-random bytes (an image that does not compress)."""
    import random

    return random.Random(seed).randbytes(size)


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


class CuttingServer:
    """A real HTTP/1.1 file server on a socket, with faults on demand.

    ``cuts`` holds absolute byte offsets: the connection serving an offset
    that reaches the next cut sends up to exactly that byte, then is closed.
    Records every request's Range start. ``tamper_at`` flips one byte;
    ``chunked`` answers without Content-Length; ``status`` overrides the
    answer's status code.
    """

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.cuts: list[int] = []
        self.starts: list[int] = []
        self.sent_until: list[int] = []
        self.tamper_at: int | None = None
        self.chunked = False
        self.status: int | None = None
        self.ignore_range = False
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/image.bin"
        self._stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self._stop = True
        self.sock.close()

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):  # the client went away: what these tests do
            self._converse(conn)

    def _converse(self, conn: socket.socket) -> None:
        with conn:
            buffer = b""
            while True:
                while b"\r\n\r\n" not in buffer:
                    chunk = conn.recv(4096)
                    if not chunk:
                        return
                    buffer += chunk
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                if not self._respond(conn, head.decode("latin-1")):
                    return

    def _respond(self, conn: socket.socket, head: str) -> bool:
        match = re.search(r"(?im)^range:\s*bytes=(\d+)-\s*$", head)
        start = int(match[1]) if match and not self.ignore_range else 0
        size = len(self.data)
        with self.lock:
            self.starts.append(start)
            cut = next((c for c in sorted(self.cuts) if c > start), None)
            if cut is not None:
                self.cuts.remove(cut)
        status = self.status or (206 if start else 200)
        body = bytearray(self.data[start:])
        if self.tamper_at is not None and self.tamper_at >= start:
            body[self.tamper_at - start] ^= 0xFF
        headers = [f"HTTP/1.1 {status} X", 'ETag: "v1"']
        if status >= 400:
            conn.sendall(("\r\n".join([*headers, "Content-Length: 0"]) + "\r\n\r\n").encode())
            return True
        if self.chunked:
            headers.append("Transfer-Encoding: chunked")
            payload = f"{len(body):x}\r\n".encode() + bytes(body) + b"\r\n0\r\n\r\n"
        else:
            headers.append(f"Content-Length: {len(body)}")
            if status == 206:
                headers.append(f"Content-Range: bytes {start}-{size - 1}/{size}")
            payload = bytes(body)
        conn.sendall(("\r\n".join(headers) + "\r\n\r\n").encode())
        if cut is not None:
            conn.sendall(payload[: cut - start])
            with self.lock:
                self.sent_until.append(cut)
            conn.shutdown(socket.SHUT_RDWR)
            return False
        conn.sendall(payload)
        return True


class Postgres:
    """A throwaway PostgreSQL cluster on 127.0.0.1 (Debian's postgresql package)."""

    def __init__(self) -> None:
        import glob
        import tempfile

        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not found:
            raise RuntimeError("PostgreSQL is not installed: run `make system-deps`")
        bin_dir = Path(found[-1]).parent
        # PostgreSQL refuses to run as root: run it as the postgres user then.
        self.prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        # Not under pytest's tmp_path: its parents are private to us, not to postgres.
        workdir = self.workdir = Path(tempfile.mkdtemp(prefix="otaflash-pg-"))
        workdir.chmod(0o777)
        self.data = workdir / "pgdata"
        self.port = free_port()
        self._run(str(bin_dir / "initdb"), "-D", str(self.data), "-U", "otaflash",
                  "--auth=trust", "-E", "UTF8")  # fmt: skip
        self.process = subprocess.Popen(
            [*self.prefix, str(bin_dir / "postgres"), "-D", str(self.data),
             "-p", str(self.port), "-h", "127.0.0.1", "-k", str(workdir), "-F"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while subprocess.run(
            [str(bin_dir / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
            capture_output=True,
            check=False,
        ).returncode:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("PostgreSQL did not start")
            time.sleep(0.1)
        self._run(str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port),
                  "-U", "otaflash", "otaflash")  # fmt: skip
        self.url = f"postgresql+psycopg://otaflash@127.0.0.1:{self.port}/otaflash"

    def _run(self, *argv: str) -> None:
        subprocess.run([*self.prefix, *argv], check=True, capture_output=True, timeout=120)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)
        shutil.rmtree(self.workdir, ignore_errors=True)
