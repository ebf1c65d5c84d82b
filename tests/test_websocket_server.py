"""The websocket server (services/websocket_service.py, relay.py, web_files.py), started
in-process on port 0 against a private real Redis, driven by real websocket and HTTP clients.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from websockets.asyncio.client import connect as connect_async
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from constants.states import State
from constants.tunables import (
    CLIENT_FRAME_MAX_BYTES,
    CLIENT_FRAMES_BURST,
    CLIENT_FRAMES_PER_S,
    PAGE_WRITE_LIMIT_BYTES,
)
from cores.broker import Broker
from cores.config import ConfigError, Settings
from cores.protocol import FLOOD_CLOSE_FACTOR
from cores.redis_process import free_port
from services.runtime import redis_url
from services.web_files import CONTENT_SECURITY_POLICY
from tests.kiosk_helpers import (
    MENU,
    WAIT_S,
    Running,
    error_code,
    health,
    http_request,
    open_page,
    recv,
    run_async,
    send,
    serving,
)
from tests.machine_helpers import ROOT, ChildOutput, child_env, machine_state

# --- fixtures and helpers --------------------------------------------------------------------


@pytest.fixture
def web_dir(tmp_path: Path) -> Path:
    """A kiosk web/ directory with known files, and a secret just outside it."""
    web = tmp_path / "web"
    (web / "assets").mkdir(parents=True)
    (web / "index.html").write_text("<!doctype html><title>Kiosk</title>", encoding="utf-8")
    (web / "kiosk.js").write_text("console.log('kiosk');", encoding="utf-8")
    (web / "kiosk.css").write_text("body{margin:0}", encoding="utf-8")
    (web / "assets" / "cola.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'/>")
    (web / ".env").write_text("MIDTRANS_SERVER_KEY=secret")
    (tmp_path / "secret.txt").write_text("outside web/")
    (web / "escape.txt").symlink_to(tmp_path / "secret.txt")
    return web


@pytest.fixture
def menu() -> list[dict]:
    """Cola in stock, tea sold out."""
    return MENU


@pytest.fixture
def start_server(settings: Settings, web_dir: Path) -> Iterator[Callable[..., Running]]:
    """Start WebsocketServers on 127.0.0.1:0 serving `web_dir`, each in a thread of its own;
    all stopped after the test."""
    with contextlib.ExitStack() as stack:

        def start(
            client: redis.Redis,
            clock: Callable[[], float] = time.monotonic,
            settings: Settings = settings,
        ) -> Running:
            return stack.enter_context(serving(settings, client, clock=clock, web_dir=web_dir))

        yield start


@pytest.fixture
def server(start_server: Callable[..., Running], broker: Broker) -> Running:
    return start_server(broker.redis)


@pytest.fixture
def pages(server: Running) -> Iterator[Callable[[], ClientConnection]]:
    """Open kiosk pages on the server; each has read its snapshot frame already."""
    # websockets 17.1+: connect() outside a `with` is deprecated; an ExitStack holds them.
    with contextlib.ExitStack() as stack:
        yield lambda: stack.enter_context(open_page(server.ws_url))


def on_menu(open_page: Callable[[], ClientConnection]) -> ClientConnection:
    page = open_page()
    assert recv(page)["event"] == "IDLE"
    send(page, "SHOW_MENU", {})
    assert recv(page)["event"] == "SHOW_MENU"
    return page


# --- screens ---------------------------------------------------------------------------------


def test_page_gets_the_current_screen_on_connect(pages, broker):
    page = pages()
    assert recv(page) == {"event": "IDLE", "values": {}}


def test_page_connecting_on_the_menu_gets_the_menu_with_stock(pages, broker):
    on_menu(pages)
    late = pages()
    frame = recv(late)
    assert frame["event"] == "SHOW_MENU"
    assert {d["id"]: d["stock"] for d in frame["values"]} == {"cola": 5, "tea": 0}
    assert frame == broker.snapshot().frame


def test_show_menu_from_one_page_is_broadcast_to_every_page(pages, broker):
    first, second = pages(), pages()
    assert recv(first)["event"] == recv(second)["event"] == "IDLE"
    send(first, "SHOW_MENU", {})
    for page in (first, second):
        frame = recv(page)
        assert frame["event"] == "SHOW_MENU"
        assert [d["id"] for d in frame["values"]] == ["tea", "cola"]
    assert broker.snapshot().state is State.SHOW_MENU


def test_order_moves_every_page_to_menu_clicked_with_the_order(pages, broker):
    first = on_menu(pages)
    second = pages()
    assert recv(second)["event"] == "SHOW_MENU"
    send(first, "ORDER", {"id": "cola", "total": 1})
    frames = [recv(first), recv(second)]
    assert frames[0] == frames[1]
    assert frames[0]["event"] == "MENU_CLICKED"
    assert frames[0]["values"]["drink"]["id"] == "cola"
    assert frames[0]["values"]["order_id"] == broker.snapshot().order_id


def test_cancel_on_the_menu_brings_every_page_back_to_idle(pages, broker):
    page = on_menu(pages)
    send(page, "CANCEL")
    assert recv(page) == {"event": "IDLE", "values": {}}


def test_frame_appended_by_another_process_reaches_every_page(pages, broker, redis_server):
    first, second = pages(), pages()
    assert recv(first)["event"] == recv(second)["event"] == "IDLE"
    script = (
        "import redis; from cores.broker import Broker;"
        f"c = redis.Redis.from_url({redis_server.url!r}, decode_responses=True);"
        f"Broker(c, {broker.machine_id!r}).set_out_of_service(True)"
    )
    subprocess.run([sys.executable, "-c", script], cwd=ROOT, check=True, timeout=30)
    assert recv(first) == recv(second) == {"event": "OUT_OF_SERVICE", "values": {}}


# --- refused commands ------------------------------------------------------------------------


@pytest.mark.parametrize(("drink", "code"), [("fanta", "unknown_drink"), ("tea", "sold_out")])
def test_order_refused_by_the_broker_is_an_error_to_the_sender_only(pages, broker, drink, code):
    sender = on_menu(pages)
    other = pages()
    assert recv(other)["event"] == "SHOW_MENU"
    before = machine_state(broker)
    send(sender, "ORDER", {"id": drink, "total": 1})
    assert error_code(recv(sender)) == code
    assert machine_state(broker) == before
    # The other page's next frame is the next broadcast: it never saw the ERROR.
    send(sender, "SHOW_MENU", {})
    assert recv(other)["event"] == "SHOW_MENU"
    assert recv(sender)["event"] == "SHOW_MENU"


def test_command_in_the_wrong_state_is_refused_and_changes_nothing(pages, broker):
    page = pages()
    assert recv(page)["event"] == "IDLE"
    before = machine_state(broker)
    send(page, "CANCEL", {})
    assert error_code(recv(page)) == "wrong_state"
    send(page, "ORDER", {"id": "cola", "total": 1})
    assert error_code(recv(page)) == "wrong_state"
    assert machine_state(broker) == before


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("not json", "malformed_frame"),
        ("[]", "malformed_frame"),
        ('["ORDER", {"id": "cola", "total": 1}]', "malformed_frame"),
        (b'{"event":"ORDER","values":{"id":"cola","total":1}}', "malformed_frame"),
        ('{"event":"DANCE","values":{}}', "unknown_event"),
        ('{"event":"PAYMENT_SUCCESS","values":{"order_id":"x"}}', "unknown_event"),
        ('{"event":"DISPENSED","values":{}}', "unknown_event"),
        ('{"event":"ORDER","values":{"id":7,"total":1}}', "bad_values"),
        ('{"event":"ORDER","values":{"id":"cola","total":"1"}}', "bad_values"),
        ('{"event":"ORDER","values":{"id":"cola","total":true}}', "bad_values"),
        ('{"event":"ORDER","values":{"id":"cola","total":2}}', "bad_values"),
        ('{"event":"ORDER","values":{"id":"cola","total":1,"price":1}}', "bad_values"),
        ('{"event":"ORDER","values":["cola"]}', "bad_values"),
        ('{"event":"CANCEL","values":{"order_id":"x"}}', "bad_values"),
    ],
    ids=lambda value: value if isinstance(value, str) and len(value) < 20 else None,
)
def test_malformed_frame_gets_an_error_and_changes_nothing(pages, broker, frame, code):
    page = on_menu(pages)
    other = pages()
    assert recv(other)["event"] == "SHOW_MENU"
    before = machine_state(broker)
    page.send(frame)
    assert error_code(recv(page)) == code
    assert machine_state(broker) == before
    # The connection stays usable, and the other page saw no echo and no ERROR.
    send(page, "CANCEL", {})
    assert recv(page)["event"] == "IDLE"
    assert recv(other)["event"] == "IDLE"


def test_frame_larger_than_4_kib_closes_the_connection_with_1009(pages, broker):
    page = on_menu(pages)
    before = machine_state(broker)
    padding = " " * CLIENT_FRAME_MAX_BYTES
    page.send('{"event":"ORDER","values":{"id":"cola","total":1}}' + padding)
    with pytest.raises(ConnectionClosed) as closed:
        page.recv(timeout=WAIT_S)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    assert machine_state(broker) == before


def test_frame_of_exactly_4_kib_is_still_handled(pages, broker):
    page = on_menu(pages)
    frame = '{"event":"CANCEL","values":{}}'
    page.send(frame + " " * (CLIENT_FRAME_MAX_BYTES - len(frame)))
    assert recv(page)["event"] == "IDLE"


def test_flooding_page_is_rate_limited_then_closed_with_1008(start_server, broker):
    # A frozen clock: every frame arrives at the same instant, whatever the machine's speed.
    server = start_server(broker.redis, clock=lambda: 1000.0)
    with open_page(server.ws_url) as page:
        assert recv(page)["event"] == "IDLE"
        for _ in range(CLIENT_FRAMES_BURST):
            send(page, "CANCEL", {})
            assert error_code(recv(page)) == "wrong_state"
        before = machine_state(broker)
        send(page, "SHOW_MENU", {})
        assert error_code(recv(page)) == "rate_limited"
        assert machine_state(broker) == before
        codes = []
        with pytest.raises(ConnectionClosed) as closed:
            for _ in range(CLIENT_FRAMES_BURST * FLOOD_CLOSE_FACTOR):
                send(page, "SHOW_MENU", {})
            while True:
                codes.append(error_code(recv(page)))
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
        assert set(codes) == {"rate_limited"}
        assert machine_state(broker) == before


def test_calm_page_is_never_rate_limited(start_server, broker):
    now = [0.0]
    server = start_server(broker.redis, clock=lambda: now[0])
    with open_page(server.ws_url) as page:
        assert recv(page)["event"] == "IDLE"
        for _ in range(CLIENT_FRAMES_PER_S * 3):
            now[0] += 1.0 / CLIENT_FRAMES_PER_S + 0.001
            send(page, "CANCEL", {})
            assert error_code(recv(page)) == "wrong_state"


def test_server_that_falls_behind_never_refuses_a_page_sending_15_frames_per_second(pages, broker):
    """Redis stalls every command of the server for 1.5 s while a page sends 30 frames at 15
    a second. The frames are timed as they arrive, not when the server gets to them: the
    ones that waited are not a burst, and none is rate_limited."""
    page = pages()
    assert recv(page)["event"] == "IDLE"
    frames = 30
    broker.redis.execute_command("CLIENT", "PAUSE", 1500, "ALL")
    start = time.monotonic()
    for i in range(frames):
        # The page's own rhythm, 15 frames a second (a pace, not a wait for the server).
        time.sleep(max(0.0, start + i / 15 - time.monotonic()))
        send(page, "CANCEL", {})
    codes = [error_code(recv(page)) for _ in range(frames)]
    assert codes == ["wrong_state"] * frames


def test_pages_tapping_show_menu_at_the_same_instant_get_no_wrong_state(server, broker):
    """20 pages send SHOW_MENU at once on IDLE: one opens the menu, and the others, whose
    compare-and-set lost the race, are judged again on the menu, where SHOW_MENU is legal
    (it re-sends the menu). No page is told the move is not possible."""

    async def tap_together() -> list[list[dict]]:
        async with contextlib.AsyncExitStack() as stack:
            # max_queue=None: a page here reads its frames only at the end.
            taps = [
                await stack.enter_async_context(
                    connect_async(server.ws_url, open_timeout=WAIT_S, max_queue=None)
                )
                for _ in range(20)
            ]
            for page in taps:
                assert json.loads(await page.recv())["event"] == "IDLE"
            for page in taps:
                await page.send('{"event":"SHOW_MENU","values":{}}')
            # A page's frames are handled in order: the ERROR for this marker comes after
            # whatever its SHOW_MENU earned.
            for page in taps:
                await page.send('{"event":"MARKER","values":{}}')
            errors = []
            for page in taps:
                mine = []
                while True:
                    frame = json.loads(await asyncio.wait_for(page.recv(), WAIT_S))
                    if frame["event"] != "ERROR":
                        continue
                    if frame["values"]["code"] == "unknown_event":
                        break
                    mine.append(frame["values"])
                errors.append(mine)
            return errors

    errors = run_async(tap_together)
    assert broker.snapshot().state is State.SHOW_MENU
    assert errors == [[]] * 20


# --- a page that reads nothing ---------------------------------------------------------------


def raw_handshake(port: int, *extra_headers: str) -> tuple[socket.socket, bytes]:
    """Open a socket and send a websocket handshake by hand; returns it and the answer's head.

    The socket's receive buffer is small, so that the kernel holds little on its behalf.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(WAIT_S)
        sock.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            "GET /ws HTTP/1.1",
            f"Host: 127.0.0.1:{port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
            *extra_headers,
        ]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = b""
        while not head.endswith(b"\r\n\r\n"):  # the answer's head, not one byte further
            byte = sock.recv(1)
            assert byte, f"closed during the handshake: {head!r}"
            head += byte
    except BaseException:
        sock.close()
        raise
    return sock, head


def raw_page(port: int) -> socket.socket:
    """A websocket page that completes the handshake and then never reads a frame."""
    sock, head = raw_handshake(port)
    if not head.startswith(b"HTTP/1.1 101"):
        sock.close()
        pytest.fail(f"handshake refused: {head!r}")
    return sock


def close_code_after_frames(sock: socket.socket) -> int:
    """Read server frames until a close frame; answer it; return its code."""
    buffer = b""

    def take(n: int) -> bytes:
        nonlocal buffer
        while len(buffer) < n:
            chunk = sock.recv(65536)
            assert chunk, "connection ended without a close frame"
            buffer += chunk
        data, buffer = buffer[:n], buffer[n:]
        return data

    while True:
        opcode, length = take(2)
        length &= 0x7F
        if length == 126:
            length = int.from_bytes(take(2), "big")
        elif length == 127:
            length = int.from_bytes(take(8), "big")
        payload = take(length)
        if opcode & 0x0F == 0x8:
            mask = os.urandom(4)
            body = payload[:2]
            sock.sendall(
                b"\x88"
                + bytes([0x80 | len(body)])
                + mask
                + bytes(b ^ mask[i % 4] for i, b in enumerate(body))
            )
            return int.from_bytes(payload[:2], "big")


def test_page_that_reads_nothing_is_closed_once_its_unsent_frames_pass_the_limit(
    server, pages, broker
):
    reader = pages()
    assert recv(reader)["event"] == "IDLE"
    stalled = raw_page(server.port)
    try:
        assert health(server.port)["pages"] == 2
        frame_bytes = 16 * 1024
        pad = "x" * frame_bytes
        # Far more than the write limit plus what the kernels' buffers can hold on loopback.
        most = (PAGE_WRITE_LIMIT_BYTES + 8 * 1024 * 1024) // frame_bytes
        for i in range(most):
            frame = json.dumps({"event": "IDLE", "values": {"i": i, "pad": pad}})
            broker.redis.xadd(
                broker.events_key, {"state": "IDLE", "order_id": "", "version": 0, "frame": frame}
            )
            # The page that reads gets every frame, undelayed by the one that does not.
            assert recv(reader)["values"]["i"] == i
            # The relay judges the pages right after each broadcast: once this page has
            # frame i, the stalled page is closed or still has room.
            if health(server.port)["pages"] == 1:
                break
        else:
            pytest.fail(f"the page that reads nothing still open after {most} frames")
        # Once it reads again it finds the close frame behind its frames, 1008, and the
        # connection ends when it answers.
        assert close_code_after_frames(stalled) == 1008
    finally:
        stalled.close()
    # The page that reads is still served.
    send(reader, "SHOW_MENU", {})
    assert recv(reader)["event"] == "SHOW_MENU"


# --- Redis down ------------------------------------------------------------------------------


@pytest.fixture
def dead_redis() -> Iterator[redis.Redis]:
    """A client of a port where no Redis listens."""
    client = redis.Redis(
        host="127.0.0.1",
        port=free_port(),
        decode_responses=True,
        socket_connect_timeout=1,
        retry=Retry(NoBackoff(), 0),
    )
    yield client
    client.close()


def test_health_is_503_when_redis_is_down(start_server, dead_redis):
    server = start_server(dead_redis)
    status, headers, body = http_request(server.port, "/healthz")
    assert status == 503
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body)["ok"] is False
    assert json.loads(body)["redis"] == "down"


def test_commands_get_unavailable_when_redis_is_down(start_server, dead_redis):
    server = start_server(dead_redis)
    with open_page(server.ws_url) as page:
        assert error_code(recv(page)) == "unavailable"
        send(page, "SHOW_MENU", {})
        assert error_code(recv(page)) == "unavailable"


def test_relay_recovers_after_a_redis_restart_and_redraws_every_page(
    start_server, settings, start_redis_server
):
    """Redis dies and comes back empty: pages get the current screen, then new frames."""
    process = start_redis_server(appendonly=False)
    # No client-side retries: the relay must see the outage itself, not have it papered over.
    client = redis.Redis.from_url(
        process.url, decode_responses=True, socket_timeout=5, retry=Retry(NoBackoff(), 0)
    )
    try:
        broker = Broker(client, settings.machine_id)
        broker.ensure_ready(MENU)
        broker.show_menu()
        server = start_server(client)
        with open_page(server.ws_url) as page:
            assert recv(page)["event"] == "SHOW_MENU"
            process.stop()
            status, _, _ = http_request(server.port, "/healthz")
            assert status == 503
            process.start()
            assert recv(page) == {"event": "IDLE", "values": {}}
            broker.ensure_ready(MENU)
            broker.show_menu()
            frames = [recv(page)]
            while frames[-1]["event"] != "SHOW_MENU":
                frames.append(recv(page))
            assert [f["event"] for f in frames] in (["SHOW_MENU"], ["IDLE", "SHOW_MENU"])
    finally:
        client.close()


# --- HTTP ------------------------------------------------------------------------------------


def test_get_root_serves_the_kiosk_page_uncached(server, web_dir):
    status, headers, body = http_request(server.port, "/")
    assert status == 200
    assert body == (web_dir / "index.html").read_bytes()
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert headers["Cache-Control"] == "no-cache"


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/index.html", "text/html; charset=utf-8"),
        ("/kiosk.js", "text/javascript; charset=utf-8"),
        ("/kiosk.css", "text/css; charset=utf-8"),
        ("/assets/cola.svg", "image/svg+xml"),
        ("/kiosk.js?v=2", "text/javascript; charset=utf-8"),
    ],
)
def test_web_files_are_served_with_their_content_type(server, web_dir, path, content_type):
    status, headers, body = http_request(server.port, path)
    assert status == 200
    assert headers["Content-Type"] == content_type
    assert body == (web_dir / path.split("?")[0].lstrip("/")).read_bytes()


@pytest.mark.parametrize(
    "path",
    [
        "/missing.html",
        "/assets/",
        "/assets",
        "/../secret.txt",
        "/assets/../../secret.txt",
        "/%2e%2e/secret.txt",
        "/..%2fsecret.txt",
        "/assets%2f..%2f..%2fsecret.txt",
        "/..\\secret.txt",
        "/escape.txt",
        "/.env",
        "/%2eenv",
        "/index.html%00.txt",
        "/%ff",
        "//etc/passwd",
        "/%2Fetc%2Fpasswd",
    ],
)
def test_paths_outside_web_or_missing_are_404(server, path):
    status, _, body = http_request(server.port, path)
    assert status == 404
    assert b"outside" not in body and b"secret" not in body


def test_health_reports_the_state_and_redis(server, pages, broker):
    on_menu(pages)
    status, headers, body = http_request(server.port, "/healthz")
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    health = json.loads(body)
    assert health["ok"] is True and health["redis"] == "ok"
    assert health["state"] == "SHOW_MENU"
    assert health["pages"] == 1


def test_head_answers_headers_without_a_body(server):
    status, headers, body = http_request(server.port, "/", method="HEAD")
    assert status == 200
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert body == b""


def test_other_methods_are_refused_with_405(server):
    status, headers, _ = http_request(server.port, "/", method="POST")
    assert status == 405
    assert headers["Allow"] == "GET, HEAD"


def test_plain_get_of_the_websocket_path_asks_for_an_upgrade(server):
    status, _, _ = http_request(server.port, "/ws")
    assert status == 426


# --- the handshake's Origin and the page's headers --------------------------------------------


def refused_status(url: str, origin: str) -> int:
    with pytest.raises(InvalidStatus) as refused, connect(url, open_timeout=WAIT_S, origin=origin):
        pass
    return refused.value.response.status_code


@pytest.mark.parametrize("origin", ["own", "null", None])
def test_websocket_from_the_pages_own_origin_a_file_page_or_no_browser_is_accepted(server, origin):
    if origin == "own":
        origin = f"http://127.0.0.1:{server.port}"
    with open_page(server.ws_url, origin=origin) as page:
        assert recv(page)["event"] == "IDLE"


@pytest.mark.parametrize(
    "origin",
    [
        "http://evil.example",
        "http://localhost:{port}",
        "http://127.0.0.1:1",
        "https://x.test:{port}",
    ],
)
def test_websocket_from_another_origin_is_refused_with_403(server, broker, origin):
    before = machine_state(broker)
    assert refused_status(server.ws_url, origin.format(port=server.port)) == 403
    assert health(server.port)["pages"] == 0
    assert machine_state(broker) == before


@pytest.mark.parametrize(
    "headers",
    [
        ("Origin: null", "Origin: http://evil.example"),
        ("Origin: http://127.0.0.1:{port}", "Host: evil.example"),
    ],
    ids=["two origins", "two hosts"],
)
def test_websocket_with_two_origin_or_host_headers_is_refused(server, headers):
    sock, head = raw_handshake(server.port, *(h.format(port=server.port) for h in headers))
    sock.close()
    assert head.startswith(b"HTTP/1.1 403"), head


def test_websocket_from_an_origin_of_kiosk_allowed_origins_is_accepted(
    start_server, broker, settings
):
    listed = settings.replace(
        kiosk_allowed_origins=("http://kiosk.local:8080", "https://shop.example")
    )
    server = start_server(broker.redis, settings=listed)
    for origin in ("http://kiosk.local:8080", "https://shop.example"):
        with open_page(server.ws_url, origin=origin) as page:
            assert recv(page)["event"] == "IDLE"
    assert refused_status(server.ws_url, "http://kiosk.local:9090") == 403


@pytest.mark.parametrize("path", ["/", "/kiosk.js", "/assets/cola.svg", "/healthz", "/missing"])
def test_every_http_answer_carries_the_content_security_policy_and_forbids_framing(server, path):
    _, headers, _ = http_request(server.port, path)
    assert headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["X-Content-Type-Options"] == "nosniff"


def test_content_security_policy_allows_what_the_kiosk_page_loads_and_nothing_else():
    policy = dict(
        (part.split()[0], part.split()[1:]) for part in CONTENT_SECURITY_POLICY.split("; ")
    )
    assert policy["default-src"] == ["'self'"]
    assert policy["frame-ancestors"] == ["'none'"]
    assert policy["connect-src"] == ["'self'", "ws:", "wss:"]  # its own host, or ?ws=
    assert policy["img-src"][:2] == ["'self'", "data:"]
    assert "'unsafe-inline'" not in CONTENT_SECURITY_POLICY
    assert "'unsafe-eval'" not in CONTENT_SECURITY_POLICY
    # web/index.html loads only files of its own: no inline script or style to allow.
    page = (ROOT / "web" / "index.html").read_text(encoding="utf-8")
    assert "<script>" not in page and "<style" not in page and " style=" not in page


# --- lifecycle -------------------------------------------------------------------------------


def test_stopping_the_server_closes_pages_with_going_away(start_server, broker):
    server = start_server(broker.redis)
    with open_page(server.ws_url) as page:
        assert recv(page)["event"] == "IDLE"
        server.stop()
        with pytest.raises(ConnectionClosed) as closed:
            page.recv(timeout=WAIT_S)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001


def test_redis_url_comes_from_the_var_dir_file_when_redis_url_is_unset(tmp_path):
    settings = Settings(var_dir=tmp_path)
    settings.redis_url_file.write_text("redis://127.0.0.1:7777/0\n")
    assert redis_url(settings) == "redis://127.0.0.1:7777/0"
    assert redis_url(settings.replace(redis_url="redis://other:1/0")) == "redis://other:1/0"


def test_missing_redis_url_is_a_config_error_naming_redis_url(tmp_path):
    with pytest.raises(ConfigError, match="REDIS_URL"):
        redis_url(Settings(var_dir=tmp_path))


@pytest.mark.integration
def test_entry_script_exits_2_on_invalid_configuration(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "websocket_server.py")],
        cwd=tmp_path,
        env=child_env(WS_PORT="not-a-port"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "WS_PORT" in result.stderr


def test_entry_script_serves_until_sigterm_then_exits_0(tmp_path, redis_server, real_redis):
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "websocket_server.py"), "--port", str(port)],
        cwd=tmp_path,
        env=child_env(REDIS_URL=redis_server.url, VAR_DIR=str(tmp_path / "var")),
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    output = ChildOutput(process.stderr)
    try:
        output.wait_for("websocket server listening", timeout_s=30)
        status, _, body = http_request(port, "/healthz")
        assert status == 200 and json.loads(body)["redis"] == "ok"
        with open_page(f"ws://127.0.0.1:{port}/ws") as page:
            assert recv(page)["event"] == "IDLE"
            process.send_signal(signal.SIGTERM)
            with pytest.raises(ConnectionClosed):
                page.recv(timeout=WAIT_S)
        assert process.wait(timeout=30) == 0
        assert (tmp_path / "var" / "logs" / "websocket.log").exists()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        output.text(wait_s=WAIT_S)  # the reader ends with the pipe, and closes it
