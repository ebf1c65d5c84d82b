"""Helpers for tests that talk to the kiosk websocket server (services/websocket_service.py):
start it in a thread of its own on 127.0.0.1:0, open pages, read and check frames, ask over
plain HTTP. Used by tests/test_websocket_server.py and tests/test_fuzz_kiosk.py.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import http.client
import json
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import TypeVar

import redis
from websockets.sync.client import ClientConnection, connect

from cores.config import Settings
from services.websocket_service import WebsocketServer

T = TypeVar("T")

#: How long a page waits for a frame, or a client for an answer.
WAIT_S = 5.0
#: The menu of the machine these tests talk to: cola in stock, tea sold out.
MENU = [
    {"id": "cola", "name": "Cola", "icon": "assets/cola.svg", "price": 7000, "stock": 5},
    {"id": "tea", "name": "Iced Tea", "icon": "assets/tea.svg", "price": 6000, "stock": 0},
]


class Running:
    """A WebsocketServer serving in a thread of its own."""

    def __init__(
        self, server: WebsocketServer, thread: threading.Thread, failure: list[BaseException]
    ) -> None:
        self.server = server
        self.thread = thread
        self.failure = failure
        self.port = server.port

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def stop(self) -> None:
        """Stop the server (again, if a test stopped it already); fail if it crashed."""
        self.server.request_stop()
        self.thread.join(WAIT_S * 2)
        assert not self.thread.is_alive(), "server did not stop"
        assert not self.failure, self.failure


@contextlib.contextmanager
def serving(
    settings: Settings,
    client: redis.Redis,
    *,
    clock: Callable[[], float] = time.monotonic,
    web_dir: Path | None = None,
) -> Iterator[Running]:
    """A WebsocketServer on 127.0.0.1:0 in a thread of its own, stopped on exit.
    `clock` times the flood gate; `web_dir` replaces web/."""
    files = {} if web_dir is None else {"web_dir": web_dir}
    server = WebsocketServer(settings, client, clock=clock, **files)
    ready = threading.Event()
    failure: list[BaseException] = []

    def main() -> None:
        try:
            asyncio.run(server.serve("127.0.0.1", 0, ready=lambda port: ready.set()))
        except BaseException as exc:  # surfaced by Running.stop
            failure.append(exc)
            ready.set()

    thread = threading.Thread(target=main, name="ws-server", daemon=True)
    thread.start()
    assert ready.wait(WAIT_S * 2), "server did not start"
    assert not failure, failure
    running = Running(server, thread, failure)
    try:
        yield running
    finally:
        running.stop()


def run_async(main: Callable[[], Coroutine[object, object, T]]) -> T:
    """`asyncio.run(main())` in a thread of its own: the test's thread may have an event loop
    running already (pytest-playwright's sync API keeps one for the whole session)."""
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="async-clients") as pool:
        return pool.submit(lambda: asyncio.run(main())).result(timeout=WAIT_S * 6)


def open_page(url: str, **options: object) -> ClientConnection:
    """A websocket page; use it in a `with` block (websockets 17.1+ deprecates the rest)."""
    return connect(url, open_timeout=WAIT_S, close_timeout=1, **options)


def recv(ws: ClientConnection) -> dict:
    """The page's next frame, checked for the shape every server frame has."""
    try:
        text = ws.recv(timeout=WAIT_S)
    except TimeoutError:
        raise AssertionError(f"no frame within {WAIT_S} s") from None
    frame = json.loads(text)
    assert isinstance(frame, dict) and set(frame) == {"event", "values"}, frame
    return frame


def send(ws: ClientConnection, event: str, values: object = None) -> None:
    frame: dict = {"event": event}
    if values is not None:
        frame["values"] = values
    ws.send(json.dumps(frame))


def error_code(frame: dict) -> str:
    """The code of an ERROR frame, checked for its code and a message to show."""
    assert frame["event"] == "ERROR", frame
    values = frame["values"]
    assert set(values) == {"code", "message"}, values
    assert isinstance(values["message"], str) and values["message"], values
    return values["code"]


def http_request(port: int, path: str, method: str = "GET") -> tuple[int, dict, bytes]:
    """A raw HTTP request: the path is sent exactly as given (no '..' normalisation)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT_S)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def health(port: int) -> dict:
    """The server's /healthz answer, which must be 200."""
    status, _, body = http_request(port, "/healthz")
    assert status == 200, body
    return json.loads(body)
