"""A real redis-server process on a free loopback port, which tests may kill and restart."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
import redis


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """`redis-server --save '' --appendonly no` (fast, nothing on disk) under test control;
    `options` come last, so they override (`"--appendonly", "yes"`: persistent)."""

    def __init__(self, directory: Path, options: Sequence[str] = ()) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server not found: `apt-get install redis-server` "
                        "(`make test` installs it)")
        self.binary = binary
        self.directory = directory
        self.options = list(options)
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        log = (self.directory / f"redis-{self.port}.log").open("ab")
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.directory), *self.options],
            stdout=log, stderr=subprocess.STDOUT)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return self
            except redis.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    text = (self.directory / f"redis-{self.port}.log").read_text()[-2000:]
                    pytest.fail(f"redis-server on port {self.port} did not start:\n{text}")
                time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL: the way a crashed Redis disappears (its data is gone: nothing saved)."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port)
