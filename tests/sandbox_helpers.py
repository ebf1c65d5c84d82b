"""Helpers and fixtures for the tests of the sandbox/ package (tests/test_sandbox_*.py).

Each test starts its own Sandbox on port 0 with an injected clock (real time plus an offset the
test moves), so expiries are reached by moving the clock, not by waiting; its ledger lives in
the test's tmp_path. A test module takes the fixtures by name:
``clock, receiver, sandbox, api, anon, paid = sandbox_helpers.FIXTURES``.
"""

from __future__ import annotations

import hashlib
import json
import socket
import struct
import threading
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests

from cores.midtrans_wire import JAKARTA
from sandbox import Sandbox

KEY = "SB-Mid-server-unit-test-key"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
WAIT_S = 5.0


# --------------------------------------------------------------------------------------------
# Helpers


class FakeClock:
    """Unix time that runs with real time, plus whatever the test adds with `advance`."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


class Receiver:
    """A notification receiver on port 0. Answers 500 to the first `fail_first` POSTs, then 200,
    and records each accepted body with its arrival (monotonic) time."""

    def __init__(self, fail_first: int = 0) -> None:
        self.fail_first = fail_first
        self.attempts = 0
        self.posts: list[dict[str, Any]] = []
        self.arrivals: list[float] = []
        self.cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                data = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver.cond:
                    receiver.attempts += 1
                    failing = receiver.attempts <= receiver.fail_first
                    if not failing:
                        receiver.posts.append(json.loads(data))
                        receiver.arrivals.append(time.monotonic())
                        receiver.cond.notify_all()
                self.send_response(500 if failing else 200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/notify"

    def wait_for(self, predicate, timeout: float = WAIT_S) -> list[dict[str, Any]]:
        with self.cond:
            ok = self.cond.wait_for(lambda: predicate(self.posts), timeout)
            assert ok, f"notifications seen: {[summary(p) for p in self.posts]}"
            return list(self.posts)

    def wait_count(self, n: int, timeout: float = WAIT_S) -> list[dict[str, Any]]:
        return self.wait_for(lambda posts: len(posts) >= n, timeout)

    def wait_status(self, order_id: str, status: str, timeout: float = WAIT_S) -> dict[str, Any]:
        """The first notification of `order_id` with `status`, once it has come."""

        def match(post: dict[str, Any]) -> bool:
            return post.get("order_id") == order_id and post.get("transaction_status") == status

        return next(filter(match, self.wait_for(lambda posts: any(map(match, posts)), timeout)))

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(WAIT_S)


class Api:
    """requests against the sandbox with the server key; every call has a timeout."""

    def __init__(self, session: requests.Session, base: str) -> None:
        self.session = session
        self.base = base

    def get(self, path: str, **kw: Any) -> requests.Response:
        return self.session.get(self.base + path, timeout=10, **kw)

    def post(self, path: str, **kw: Any) -> requests.Response:
        return self.session.post(self.base + path, timeout=10, **kw)

    def charge(
        self,
        order_id: str,
        amount: int = 7000,
        payment_type: str = "qris",
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> requests.Response:
        body: dict[str, Any] = {
            "payment_type": payment_type,
            "transaction_details": {"order_id": order_id, "gross_amount": amount},
            "item_details": [{"id": "cola", "price": amount, "quantity": 1, "name": "Cola"}],
        }
        body.update(extra)
        return self.post("/v2/charge", json=body, headers=headers or {})

    def status(self, ident: str) -> requests.Response:
        return self.get(f"/v2/{ident}/status")


def summary(post: dict[str, Any]) -> str:
    return f"{post.get('order_id')}:{post.get('transaction_status')}:{post.get('status_code')}"


def signed(body: dict[str, Any], key: str = KEY) -> bool:
    text = body["order_id"] + body["status_code"] + body["gross_amount"] + key
    return body["signature_key"] == hashlib.sha512(text.encode()).hexdigest()


def of(posts: list[dict[str, Any]], order_id: str) -> list[str]:
    return [p["transaction_status"] for p in posts if p["order_id"] == order_id]


def raw_http(sandbox: Sandbox, data: bytes, shut_write: bool = False) -> bytes:
    """Send raw bytes, return everything the server answers until it closes."""
    with socket.create_connection(("127.0.0.1", sandbox.port), timeout=10) as sock:
        sock.sendall(data)
        if shut_write:
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def raw_json(answer: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body)


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_MAGIC
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def jakarta(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=JAKARTA)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def sandbox(clock, receiver, tmp_path):
    """A sandbox that accepts KEY only, notifies `receiver`, keeps its ledger in tmp_path."""
    sb = Sandbox(
        port=0,
        server_key=KEY,
        notification_url=receiver.url,
        clock=clock,
        seed=7,
        directory=tmp_path / "sandbox",
    )
    sb.notify_retry_delays_s = (0.05, 0.1, 0.2)
    sb.start()
    yield sb
    sb.stop()


@pytest.fixture
def api(sandbox):
    session = requests.Session()
    session.auth = (KEY, "")
    session.headers["Accept"] = "application/json"
    yield Api(session, sandbox.url)
    session.close()


@pytest.fixture
def anon(sandbox):
    """A session without credentials (the QR image and the simulator need none)."""
    session = requests.Session()
    yield Api(session, sandbox.url)
    session.close()


@pytest.fixture
def paid(api, sandbox):
    """The order_id of a qris charge that was paid."""
    api.charge("vm-1-r")
    sandbox.pay("vm-1-r")
    return "vm-1-r"


#: The fixtures above, to unpack into a test module (pytest finds a fixture by its name there).
FIXTURES = (clock, receiver, sandbox, api, anon, paid)


# --------------------------------------------------------------------------------------------
# Request bodies


def good_charge(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "payment_type": "qris",
        "transaction_details": {"order_id": "vm-1-bad", "gross_amount": 7000},
        "item_details": [{"id": "cola", "price": 7000, "quantity": 1, "name": "Cola"}],
    }
    body.update(changes)
    return body


def details(**changes: Any) -> dict[str, Any]:
    return {"order_id": "vm-1-bad", "gross_amount": 7000, **changes}
