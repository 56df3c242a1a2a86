"""Slow clients cannot hold the server's connections: a request head that
never finishes (slowloris), a connection that never speaks, and a keep-alive
connection that starts a second request and stops are all closed after
``--header-timeout``, while other clients are served meanwhile."""

from __future__ import annotations

import socket
import time
from urllib.parse import urlparse

import pytest
from server_process import ServerProcess

HEADER_TIMEOUT = 1.0
#: far beyond the deadline: before the fix these connections were never closed
WAIT = 15.0


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("slow") / "store"
    root.mkdir()
    with ServerProcess(root, "--dev", "--header-timeout", str(HEADER_TIMEOUT), "--keep-alive-timeout", "30") as srv:
        yield srv


def connect(server) -> socket.socket:
    address = urlparse(server.url)
    sock = socket.create_connection((address.hostname, address.port), timeout=WAIT)
    return sock


def read_until_closed(sock: socket.socket) -> tuple[bytes, float]:
    """Everything the server sends until it closes; → (bytes, seconds it took)."""
    started = time.monotonic()
    got = b""
    while True:
        chunk = sock.recv(65536)  # raises socket.timeout after WAIT s if the server keeps it open
        if not chunk:
            return got, time.monotonic() - started
        got += chunk


def test_a_request_head_that_never_finishes_is_closed_and_others_are_served(server):
    slow = [connect(server) for _ in range(3)]
    for sock in slow:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # and never the rest
    with server.client() as other:  # served meanwhile
        assert other.get("/health").status_code == 200
    for sock in slow:
        with sock:
            got, took = read_until_closed(sock)
            assert got.startswith(b"HTTP/1.1 408")
            assert took < HEADER_TIMEOUT + 5
    with server.client() as other:
        assert other.get("/health").status_code == 200


def test_a_connection_that_never_speaks_is_closed(server):
    with connect(server) as sock:
        got, took = read_until_closed(sock)
    assert got == b"" and took < HEADER_TIMEOUT + 5


def test_a_kept_alive_connection_gets_a_new_deadline_per_request(server):
    with connect(server) as sock:
        for _ in range(2):  # whole requests, each well within the deadline, on one connection
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            reply = b""
            while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
                reply += sock.recv(65536)
            assert reply.startswith(b"HTTP/1.1 200")
            time.sleep(HEADER_TIMEOUT * 0.6)  # slower than the deadline in total, never per request
        sock.sendall(b"GET /health HTTP/1.1\r\n")  # a third one that stops half-way
        got, took = read_until_closed(sock)
    assert got.startswith(b"HTTP/1.1 408") and took < HEADER_TIMEOUT + 5


def test_a_slow_but_steady_head_within_the_deadline_is_served(server):
    with connect(server) as sock:
        for piece in (b"GET /health HTTP/1.1\r\n", b"Host: x\r\n", b"Connection: close\r\n", b"\r\n"):
            sock.sendall(piece)
            time.sleep(HEADER_TIMEOUT / 8)
        got, _ = read_until_closed(sock)
    assert got.startswith(b"HTTP/1.1 200")
