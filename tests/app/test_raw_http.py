"""Hand-written HTTP/1.1 on a raw socket to a real `fmrec serve` (uvicorn): the framing
clients normalise away (odd Content-Length headers), so only a socket can send it.

The body limit must hold whatever the headers say: a Content-Length is parsed as the
HTTP spec says (optional whitespace around it; anything but digits, or several values
that differ, is a 400), and the bytes received are counted against the limit anyway,
before any key check (a refused caller must not make the server buffer 100 MiB).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import select
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.main import content_length
from tests.support.api_client import load_users, service_settings
from tests.support.live_server import LiveServer
from tests.support.redis_server import RedisServer

KEY = "raw-key-0123456789abcdef"
LIMIT = 2048
PREDICT = json.dumps({"user": {"id": "1"}, "movies": [{"id": "1"}]}).encode()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, small_bundle_path: Path,
         small_data: tuple) -> Iterator[LiveServer]:
    """Reads protected, a small body limit."""
    tmp = tmp_path_factory.mktemp("raw")
    redis_server = RedisServer(tmp).start()
    asyncio.run(load_users(service_settings(redis_url=redis_server.url), small_data[0]))
    server = LiveServer({
        "FMREC_BUNDLE": str(small_bundle_path), "FMREC_REDIS_URL": redis_server.url,
        "FMREC_API_KEYS": KEY, "FMREC_PROTECT_READS": "true",
        "FMREC_MAX_BODY_BYTES": str(LIMIT), "FMREC_REDIS_TIMEOUT_S": "5",
        "FMREC_LOG_LEVEL": "warning"}, tmp / "serve.log").start()
    try:
        yield server
    finally:
        server.stop()
        redis_server.kill()
    assert "Traceback" not in server.log(), server.log()[-3000:]


def exchange(server: LiveServer, head: list[str], body: bytes, chunk: int = 1024
             ) -> tuple[int, bytes, int]:
    """Send a request head and then `body` (in chunks, stopping when the server answers or
    closes); returns (status, response body, body bytes the socket accepted)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
        sent, answer = 0, b""
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            while sent < len(body):
                readable, writable, _ = select.select([sock], [sock], [], 30)
                if readable:  # answered before the whole body: it was not all read
                    answer = sock.recv(65536)
                    break
                if writable:
                    sent += sock.send(body[sent:sent + chunk])
        with contextlib.suppress(ConnectionResetError):
            while b"\r\n\r\n" not in answer or len(answer) < _expected_size(answer):
                data = sock.recv(65536)
                if not data:
                    break
                answer += data
    status = int(answer.split(b" ", 2)[1])
    return status, answer.split(b"\r\n\r\n", 1)[1], sent


def _expected_size(answer: bytes) -> int:
    head, _, _ = answer.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(head) + 4 + int(value)
    return len(answer) + 1  # no length: read until the server closes


def post(server: LiveServer, lengths: list[str], body: bytes, key: bool = False
         ) -> tuple[int, bytes, int]:
    head = ["POST /predict HTTP/1.1", "Host: fmrec", "Content-Type: application/json",
            "Connection: close", *(f"Content-Length:{value}" for value in lengths)]
    if key:
        head.append(f"X-API-Key: {KEY}")
    return exchange(server, head, body)


def padded(size: int) -> bytes:
    return PREDICT + b" " * (size - len(PREDICT))


@pytest.mark.parametrize("spelling", [" {n}", " {n} ", "\t{n}\t", "{n}", " {n}  "])
def test_content_length_with_optional_whitespace_is_honoured(live: LiveServer,
                                                             spelling: str) -> None:
    """Whitespace around the value is allowed (RFC 9110 5.5): the value still counts."""
    status, _, _ = post(live, [spelling.format(n=len(PREDICT))], PREDICT, key=True)
    assert status == 200
    status, body, _ = post(live, [spelling.format(n=LIMIT + 1)], padded(LIMIT + 1), key=True)
    assert status == 413, body
    assert json.loads(body)["detail"] == f"request body over {LIMIT} bytes"


def test_huge_body_with_a_padded_length_is_refused_before_the_key_check(
        live: LiveServer) -> None:
    """The attack: `Content-Length: 104857600 ` and no key. 413 without reading it all
    (not a 401 after buffering 100 MiB)."""
    size = 100 << 20
    status, body, sent = post(live, [f" {size} "], padded(size))
    assert status == 413, body
    assert sent < size // 2  # the server stopped reading long before the end


@pytest.mark.parametrize("lengths", [[" 12a"], [" -5"], [" +5"], [" 0x10"], [" "],
                                     [" 5", " 6"], [" 5,6"]])
def test_malformed_or_conflicting_content_length_is_a_400(live: LiveServer,
                                                          lengths: list[str]) -> None:
    status, _, _ = post(live, lengths, PREDICT, key=True)
    assert status == 400


@pytest.mark.parametrize(("headers", "expected"), [
    ([], None), ([(b"content-length", b" 7 ")], 7), ([(b"content-length", b"\t0")], 0),
    ([(b"content-length", b"7"), (b"content-length", b" 7")], 7),
    ([(b"content-length", b"7, 7")], 7), ([(b"content-type", b"5")], None)])
def test_content_length_parsing(headers: list[tuple[bytes, bytes]],
                                expected: int | None) -> None:
    """What the server may pass on (uvicorn refuses repeated fields itself today)."""
    assert content_length(headers) == expected


@pytest.mark.parametrize("value", [b" 12a", b"-5", b"+5", b"", b" ", b"5,6", b"\xd9\xa3",
                                   b"1 2"])
def test_content_length_parsing_refuses(value: bytes) -> None:
    with pytest.raises(ValueError, match="Content-Length"):
        content_length([(b"content-length", value)])
    with pytest.raises(ValueError, match="conflicting"):
        content_length([(b"content-length", b"5"), (b"content-length", b"6")])


def test_chunked_body_over_the_limit_is_refused_before_the_key_check(live: LiveServer) -> None:
    size = 32 << 20
    data = padded(size)
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(data[i:i + 4096]), data[i:i + 4096])
                      for i in range(0, size, 4096)) + b"0\r\n\r\n"
    status, body, sent = exchange(live, [
        "POST /predict HTTP/1.1", "Host: fmrec", "Content-Type: application/json",
        "Connection: close", "Transfer-Encoding: chunked"], chunks)
    assert status == 413, body
    assert sent < len(chunks) // 2


def test_no_key_small_body_is_still_a_401(live: LiveServer) -> None:
    status, _, _ = post(live, [f" {len(PREDICT)}"], PREDICT)
    assert status == 401
