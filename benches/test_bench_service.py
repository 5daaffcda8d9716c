"""Update-server benchmarks against real peers: wrk as the load generator, nginx
as the reference file server.

* device query throughput and latency at concurrency 64 on loopback
  (target: >= 2,000 queries/s, p99 <= 50 ms on the 2-core machine);
* artifact download throughput, ours vs nginx serving the same file
  (target: >= 0.5x nginx).

Run once as smoke tests by default (1 s of load, no targets checked); with
``--benchmark-enable`` (``make bench``) each load runs 10 s and the targets
are asserted. Figures land in the benchmark JSON's ``extra_info``.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from otaflash.admin import AdminClient
from otaflash.server import ServerProcess, free_port

QUERY_TARGET_QPS = 2000
QUERY_TARGET_P99_MS = 50.0
DOWNLOAD_TARGET_RATIO = 0.5
FILE_SIZE = 64 << 20

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}
_BYTES = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30}


def wrk(url: str, *, seconds: int, connections: int, threads: int = 2) -> dict[str, float]:
    exe = shutil.which("wrk")
    assert exe, "wrk is not installed: run `make system-deps`"
    out = subprocess.run(
        [exe, f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", url],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 60,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])  # type: ignore[index]
    value, unit = re.search(r"Transfer/sec:\s+([\d.]+)(\w+)", out).groups()  # type: ignore[union-attr]
    p50 = re.search(r"50%\s+([\d.]+)(\w+)", out)
    p99 = re.search(r"99%\s+([\d.]+)(\w+)", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    assert p50, out
    assert p99, out
    return {
        "requests_per_s": rps,
        "bytes_per_s": float(value) * _BYTES[unit],
        "p50_ms": float(p50[1]) * _UNITS[p50[2]],
        "p99_ms": float(p99[1]) * _UNITS[p99[2]],
        "non_2xx": float(errors[1]) if errors else 0.0,
        "socket_errors": 1.0 if socket_errors else 0.0,
    }


def load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


@pytest.fixture(name="served", scope="module")
def served_fixture(tmp_path_factory: pytest.TempPathFactory) -> Any:
    workdir = tmp_path_factory.mktemp("bench-service")
    firmware = workdir / "firmware.bin"
    firmware.write_bytes(random.Random(99).randbytes(FILE_SIZE))
    with ServerProcess(workdir / "data") as server:
        admin = AdminClient(server.url, server.admin_token)
        package = admin.publish("benchpk", "2.0.0", firmware, title="bench")
        yield server, firmware, package


def test_query_throughput_and_latency_at_concurrency_64(served: Any, benchmark: Any) -> None:
    server, _firmware, _package = served
    seconds = 1 if benchmark.disabled else 10
    url = f"{server.url}/api/v1/devices/benchpk/SN0001/update?version=1.9.9"
    wrk(url, seconds=1, connections=64)  # warm up
    before = load_average()
    result = benchmark.pedantic(
        lambda: wrk(url, seconds=seconds, connections=64), rounds=1, iterations=1
    )
    benchmark.extra_info.update(result, load_before=before, load_after=load_average())
    print(f"\nquery: {result} (load average {before} -> {load_average()})")
    assert result["non_2xx"] == 0
    assert result["requests_per_s"] > 0
    if not benchmark.disabled:
        assert result["requests_per_s"] >= QUERY_TARGET_QPS, result
        assert result["p99_ms"] <= QUERY_TARGET_P99_MS, result


class Nginx:
    def __init__(self, root: Path, workdir: Path) -> None:
        exe = shutil.which("nginx") or "/usr/sbin/nginx"
        assert os.path.exists(exe), "nginx is not installed: run `make system-deps`"
        self.port = free_port()
        conf = workdir / "nginx.conf"
        conf.write_text(
            f"""
worker_processes 1;
daemon off;
# One process with our own privileges, so it reads the test's files as we do.
master_process off;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log;
events {{ worker_connections 256; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    client_body_temp_path {workdir}/body;
    proxy_temp_path {workdir}/proxy;
    fastcgi_temp_path {workdir}/fastcgi;
    uwsgi_temp_path {workdir}/uwsgi;
    scgi_temp_path {workdir}/scgi;
    server {{
        listen 127.0.0.1:{self.port};
        root {root};
    }}
}}
"""
        )
        self.process = subprocess.Popen(
            [exe, "-c", str(conf), "-p", str(workdir)], stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                assert self.process.poll() is None, "nginx exited"
                assert time.monotonic() < deadline, "nginx did not listen"
                time.sleep(0.05)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def test_artifact_download_throughput_vs_nginx(served: Any, benchmark: Any, tmp_path: Path) -> None:
    server, firmware, package = served
    seconds = 1 if benchmark.disabled else 10
    nginx = Nginx(firmware.parent, tmp_path)
    try:
        ours_url = f"{server.url}/artifacts/{package['full']['sha256']}"
        nginx_url = f"http://127.0.0.1:{nginx.port}/{firmware.name}"
        before = load_average()

        def both() -> dict[str, float]:
            ours = wrk(ours_url, seconds=seconds, connections=4, threads=1)
            reference = wrk(nginx_url, seconds=seconds, connections=4, threads=1)
            return {
                "ours_bytes_per_s": ours["bytes_per_s"],
                "nginx_bytes_per_s": reference["bytes_per_s"],
                "ratio": ours["bytes_per_s"] / reference["bytes_per_s"],
                "ours_non_2xx": ours["non_2xx"],
                "nginx_non_2xx": reference["non_2xx"],
            }

        result = benchmark.pedantic(both, rounds=1, iterations=1)
    finally:
        nginx.stop()
    benchmark.extra_info.update(result, load_before=before, load_after=load_average())
    print(
        f"\ndownload: ours {result['ours_bytes_per_s'] / 2**20:.0f} MiB/s, nginx "
        f"{result['nginx_bytes_per_s'] / 2**20:.0f} MiB/s, ratio {result['ratio']:.2f} "
        f"(load average {before} -> {load_average()})"
    )
    assert result["ours_non_2xx"] == 0
    assert result["nginx_non_2xx"] == 0
    if not benchmark.disabled:
        assert result["ratio"] >= DOWNLOAD_TARGET_RATIO, result
