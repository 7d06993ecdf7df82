"""`fmrec serve` as a real process on a free loopback port: real uvicorn, real sockets, its
own memory (sampled from /proc) and its own log file. Used by the security, fuzz and soak
tests and by bench/soak.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.support.redis_server import free_port

REPO = Path(__file__).resolve().parents[2]


class LiveServer:
    """The service started with exactly the FMREC_* settings given (inherited ones dropped)."""

    def __init__(self, settings: dict[str, str], log_path: Path) -> None:
        self.port = free_port()
        self.log_path = log_path
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("FMREC_")}
        self.env.update({"FMREC_HOST": "127.0.0.1", "FMREC_PORT": str(self.port),
                         "TF_CPP_MIN_LOG_LEVEL": "2", **settings})
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, timeout_s: float = 180) -> LiveServer:
        """Start and wait until /readyz answers 200 (model loaded and warmed)."""
        log = self.log_path.open("ab")
        self.process = subprocess.Popen([sys.executable, "-m", "app.cli", "serve"], cwd=REPO,
                                        env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"fmrec serve exited:\n{self.log()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"fmrec serve not ready in {timeout_s}s:\n"
                                   f"{self.log()[-3000:]}")
            time.sleep(0.25)

    def rss_bytes(self) -> int:
        """Resident memory of the server process now."""
        with open(f"/proc/{self.pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS line")

    def stop(self) -> None:
        """Ctrl-C (uvicorn's graceful shutdown), then SIGKILL if it hangs."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
