"""The agent on a vending machine (services/agent_service.py, `main.py machine`), started
in-process on port 0 against a scripted backend: a small websockets server in this file that
checks the handshake's headers and plays the gateway's side of cores/agent_protocol.py. It is
the agent's own test double; the real gateway is tested with its own module.

Pages are real websocket clients of the agent's /ws, as the kiosk page is.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import queue
import random
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.server import Server, ServerConnection, serve

from constants.tunables import AGENT_PING_S, AGENT_PONG_TIMEOUT_S, CLIENT_FRAME_MAX_BYTES
from cores import agent_protocol as wire
from cores.agent_protocol import CLOSE_REVOKED, FROM_AGENT, MACHINE_HEADER, Kind, Message
from cores.config import ConfigError, Settings
from cores.dispenser import JOURNAL_NAME, STARTED, SimulatedDispenser
from cores.redis_process import free_port
from cores.rules import Vend
from services import agent_service
from services.agent_service import (
    LINK_CLOSE_TIMEOUT_S,
    OUT_OF_SERVICE_FRAME,
    Agent,
    Backoff,
    LinkTimings,
    project_version,
)
from services.websocket_service import KioskGate
from tests.kiosk_helpers import WAIT_S, error_code, http_request, open_page, recv, send
from tests.machine_helpers import ROOT, ChildOutput, child_env, eventually

TOKEN = "tok-3f9a6c1e8b7d4a20-secret"
MACHINE = "vm-7"
#: Short link timings: a test waits tenths of a second, not the production seconds.
FAST = LinkTimings(
    ping_s=0.5, pong_timeout_s=0.5, retry_min_s=0.05, retry_max_s=0.2, refused_retry_s=0.6
)
IDLE = {"event": "IDLE", "values": {}}
#: The scripted backend's own log (its DEBUG lines show the headers it received: not the agent's).
BACKEND_LOG = logging.getLogger("tests.scripted_backend")
MENU_FRAME = {"event": "SHOW_MENU", "values": [{"id": "cola", "name": "Cola", "price": 7000}]}


# --- the scripted backend --------------------------------------------------------------------


class Backend:
    """The gateway's side of the agent link, scripted: checks the headers (401 otherwise),
    records every handshake and every frame the agent sends, sends `screen` after each hello
    (the gateway's snapshot on connect), and sends what the test asks it to."""

    def __init__(
        self, port: int = 0, *, refuse: bool = False, tls: ssl.SSLContext | None = None
    ) -> None:
        self.refuse = refuse
        self.tls = tls
        self.screen: dict | None = IDLE
        self.handshakes: list[tuple[float, dict[str, str]]] = []
        self.received: queue.Queue[Message] = queue.Queue()
        self.connections: list[ServerConnection] = []
        self._server: Server | None = None
        self._thread: threading.Thread | None = None
        self.port = port
        self.start()

    @property
    def url(self) -> str:
        if self.tls is not None:
            return f"wss://localhost:{self.port}/agent"
        return f"ws://127.0.0.1:{self.port}/agent"

    def start(self) -> None:
        self._server = serve(
            self._handler,
            "127.0.0.1",
            self.port,
            process_request=self._check,
            logger=BACKEND_LOG,
            ssl=self.tls,
        )
        self.port = self._server.socket.getsockname()[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self, code: int = 1001) -> None:
        """Stop listening and close every agent's connection with `code`."""
        assert self._server is not None and self._thread is not None
        self._server.shutdown(code=code)
        self._thread.join(WAIT_S)
        assert not self._thread.is_alive()

    def _check(self, connection: ServerConnection, request):
        headers = {name.lower(): value for name, value in request.headers.raw_items()}
        self.handshakes.append((time.monotonic(), headers))
        if (
            self.refuse
            or headers.get(MACHINE_HEADER.lower()) != MACHINE
            or headers.get("authorization") != f"Bearer {TOKEN}"
        ):
            return connection.respond(401, "token refused\n")
        return None

    def _handler(self, ws: ServerConnection) -> None:
        self.connections.append(ws)
        with contextlib.suppress(ConnectionClosed):
            hello = wire.parse(ws.recv(), FROM_AGENT)
            assert hello.kind is Kind.HELLO, hello
            self.received.put(hello)
            if self.screen is not None:
                ws.send(wire.encode(Message(Kind.FRAME, frame=json.dumps(self.screen))))
            for raw in ws:
                self.received.put(wire.parse(raw, FROM_AGENT))

    @property
    def live(self) -> ServerConnection:
        return self.connections[-1]

    def send(self, message: Message) -> None:
        self.live.send(wire.encode(message))

    def next(self, kind: Kind | None = None) -> Message:
        """The agent's next frame (of `kind`, skipping others), within WAIT_S."""
        deadline = time.monotonic() + WAIT_S
        while True:
            try:
                message = self.received.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {kind or 'frame'} from the agent") from None
            if kind is None or message.kind is kind:
                return message

    def nothing_more(self) -> list[Message]:
        """Every frame received and not yet taken."""
        out = []
        while True:
            try:
                out.append(self.received.get_nowait())
            except queue.Empty:
                return out


@pytest.fixture
def backend() -> Iterator[Backend]:
    server = Backend()
    yield server
    with contextlib.suppress(AssertionError):
        server.stop()


# --- the agent under test ---------------------------------------------------------------------


class CountingDispenser(SimulatedDispenser):
    """The simulated driver, counting vends; `hold` keeps a vend in progress until set."""

    def __init__(self, var_dir: Path) -> None:
        super().__init__(var_dir, duration_s=0.0, failure_rate=0.0)
        self.calls: list[str] = []
        self.slots: list[int | None] = []
        self.hold = threading.Event()
        self.hold.set()

    def vend(self, order_id: str, drink_id: str, slot: int | None = None) -> Vend:
        self.calls.append(order_id)
        self.slots.append(slot)
        assert self.hold.wait(WAIT_S * 2)
        return super().vend(order_id, drink_id, slot)


class RunningAgent:
    """An agent's kiosk server on 127.0.0.1:0 in a thread of its own."""

    def __init__(self, agent: Agent, settings: Settings) -> None:
        self.agent = agent
        self.gate = KioskGate(settings, agent)
        self.failure: list[BaseException] = []
        ready = threading.Event()

        def main() -> None:
            try:
                asyncio.run(self.gate.serve("127.0.0.1", 0, ready=lambda port: ready.set()))
            except BaseException as exc:
                self.failure.append(exc)
                ready.set()

        self.thread = threading.Thread(target=main, name="agent", daemon=True)
        self.thread.start()
        assert ready.wait(WAIT_S), "agent did not start"
        assert not self.failure, self.failure

    @property
    def port(self) -> int:
        assert self.gate.port is not None
        return self.gate.port

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def stop(self) -> None:
        self.gate.request_stop()
        self.thread.join(WAIT_S * 2)
        assert not self.thread.is_alive(), "agent did not stop"
        assert not self.failure, self.failure


def agent_settings(tmp_path: Path, backend_url: str) -> Settings:
    return Settings(
        machine_id=MACHINE,
        backend_url=backend_url,
        machine_token=TOKEN,
        var_dir=tmp_path / "var",
        dispense_s=0.0,
    )


@contextlib.contextmanager
def running_agent(
    tmp_path: Path,
    backend_url: str,
    timings: LinkTimings = FAST,
    ssl_context: ssl.SSLContext | None = None,
) -> Iterator[RunningAgent]:
    settings = agent_settings(tmp_path, backend_url)
    agent = Agent(
        settings,
        CountingDispenser(settings.var_dir),
        timings=timings,
        rng=random.Random(7),
        ssl_context=ssl_context,
    )
    running = RunningAgent(agent, settings)
    try:
        yield running
    finally:
        running.stop()


def dispenser_of(running: RunningAgent) -> CountingDispenser:
    dispenser = running.agent.dispenser
    assert isinstance(dispenser, CountingDispenser)
    return dispenser


def journal(running: RunningAgent) -> list[dict]:
    return dispenser_of(running).entries()


def connected(running: RunningAgent, backend: Backend) -> Message:
    """Wait for the agent's hello on a new connection (it must be the next frame), and for
    the backend's snapshot to be the agent's current screen."""
    hello = backend.next()
    assert hello.kind is Kind.HELLO, hello
    eventually(lambda: running.agent.connected, WAIT_S, "the agent's link up")
    if backend.screen is not None:
        expected = backend.screen
        eventually(
            lambda: json.loads(running.agent.showing) == expected, WAIT_S, "the snapshot shown"
        )
    return hello


def frame_text(frame: dict) -> str:
    return json.dumps(frame)


def page_ids_differ(a: Message, b: Message) -> bool:
    return a.page is not None and b.page is not None and a.page != b.page


# --- the handshake and the token --------------------------------------------------------------


def test_the_handshake_names_the_machine_carries_the_token_and_hello_says_the_version(
    tmp_path, backend
):
    """The agent opens BACKEND_URL with X-Machine-Id and Authorization: Bearer <token>, and
    its first frame is hello with the project's version (pyproject.toml)."""
    with running_agent(tmp_path, backend.url) as running:
        hello = connected(running, backend)
    _, headers = backend.handshakes[0]
    assert headers[MACHINE_HEADER.lower()] == MACHINE
    assert headers["authorization"] == f"Bearer {TOKEN}"
    assert hello.version == project_version() == "0.1.0"


def test_the_token_never_reaches_a_page_an_http_answer_or_a_log_line(tmp_path, backend, caplog):
    """Whatever a page sees (frames, the page's files, /healthz) and every log line, the
    websocket library's DEBUG lines about the handshake included, is free of the token."""
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []
    with running_agent(tmp_path, backend.url) as running:
        connected(running, backend)
        with open_page(running.ws_url) as page:
            seen.append(json.dumps(recv(page)))  # the gateway's snapshot
            send(page, "SHOW_MENU", {})
            backend.next(Kind.PAGE)
            backend.send(Message(Kind.REPLY, page=1, frame='{"event":"ERROR","values":{}}'))
            seen.append(json.dumps(recv(page)))
        for path in ("/", "/kiosk.js", "/healthz"):
            status, headers, body = http_request(running.port, path)
            seen.append(f"{status} {headers} {body!r}")
    assert any("Authorization" in r.getMessage() for r in caplog.records), "no DEBUG handshake"
    assert not [line for line in seen if TOKEN in line]
    agents = [r for r in caplog.records if r.name != BACKEND_LOG.name]
    assert not [r for r in agents if TOKEN in r.getMessage()]


# --- frames both ways --------------------------------------------------------------------------


def test_a_pages_frame_goes_up_as_it_was_sent_with_that_pages_id(tmp_path, backend):
    """A page's frame, past the local gate, reaches the backend as {"kind": "page", "page": N,
    "frame": TEXT}, TEXT exactly as the page sent it; two pages have two page ids."""
    with (
        running_agent(tmp_path, backend.url) as running,
        open_page(running.ws_url) as one,
        open_page(running.ws_url) as two,
    ):
        connected(running, backend)
        text = '{"event":"ORDER","values":{"id":"cola","total":1}}'
        one.send(text)
        first = backend.next(Kind.PAGE)
        send(two, "SHOW_MENU", {})
        second = backend.next(Kind.PAGE)
    assert first.frame == text
    assert json.loads(second.frame or "") == {"event": "SHOW_MENU", "values": {}}
    assert page_ids_differ(first, second)


def test_a_frame_reaches_every_page_and_a_page_that_connects_later_gets_the_current_screen(
    tmp_path, backend
):
    """A `frame` from the gateway is broadcast to every page and remembered: a page that
    connects afterwards gets it as its first frame."""
    with running_agent(tmp_path, backend.url) as running:
        connected(running, backend)
        with open_page(running.ws_url) as one, open_page(running.ws_url) as two:
            assert recv(one) == IDLE and recv(two) == IDLE  # the snapshot sent on connect
            backend.send(Message(Kind.FRAME, frame=frame_text(MENU_FRAME)))
            assert recv(one) == MENU_FRAME
            assert recv(two) == MENU_FRAME
        with open_page(running.ws_url) as late:
            assert recv(late) == MENU_FRAME


def test_a_reply_reaches_only_the_page_it_names(tmp_path, backend):
    """A `reply` for page N goes to page N alone: the other page's next frame is the
    broadcast that follows it."""
    with running_agent(tmp_path, backend.url) as running:
        connected(running, backend)
        with open_page(running.ws_url) as one, open_page(running.ws_url) as two:
            recv(one), recv(two)
            send(one, "ORDER", {"id": "tea", "total": 1})
            page = backend.next(Kind.PAGE).page
            error = {"event": "ERROR", "values": {"code": "sold_out", "message": "sold out"}}
            backend.send(Message(Kind.REPLY, page=page, frame=frame_text(error)))
            backend.send(Message(Kind.FRAME, frame=frame_text(MENU_FRAME)))
            assert recv(one) == error
            assert recv(one) == MENU_FRAME
            assert recv(two) == MENU_FRAME


def test_the_page_gate_guards_the_agents_pages_as_on_one_machine(tmp_path, backend):
    """The agent's /ws has the one-machine gate: another Origin is refused with 403, a frame
    over 4 KiB closes the page with 1009, a malformed frame gets ERROR from the agent itself
    and nothing goes up to the backend."""
    with running_agent(tmp_path, backend.url) as running:
        connected(running, backend)
        with (
            pytest.raises(InvalidStatus) as refused,
            open_page(running.ws_url, origin="http://evil.example"),
        ):
            pass
        assert refused.value.response.status_code == 403
        with open_page(running.ws_url) as page:
            recv(page)
            page.send('{"event":"PAYMENT_SUCCESS","values":{}}')
            assert error_code(recv(page)) == "unknown_event"
            page.send("x" * (CLIENT_FRAME_MAX_BYTES + 1))
            with pytest.raises(ConnectionClosed):
                recv(page)
            assert page.close_code == 1009
        status, headers, _ = http_request(running.port, "/")
        assert status == 200 and "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    assert not [m for m in backend.nothing_more() if m.kind is Kind.PAGE]


# --- offline -----------------------------------------------------------------------------------


def test_pages_show_out_of_service_until_the_backend_first_answers(tmp_path):
    """With no backend to reach, a page is shown OUT_OF_SERVICE (a screen web/kiosk.js
    draws) and a tap gets ERROR unavailable; /healthz (200: the agent serves) says the
    backend is down."""
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        url = f"ws://127.0.0.1:{unused.getsockname()[1]}/agent"
        with running_agent(tmp_path, url) as running, open_page(running.ws_url) as page:
            assert recv(page) == json.loads(OUT_OF_SERVICE_FRAME)
            send(page, "SHOW_MENU", {})
            assert error_code(recv(page)) == "unavailable"
            status, _, body = http_request(running.port, "/healthz")
    assert status == 200
    assert json.loads(body) == {"ok": True, "backend": "down", "pages": 1}


def test_backend_gone_every_page_shows_out_of_service_and_a_tap_goes_nowhere(tmp_path, backend):
    """The backend stops: every page shows OUT_OF_SERVICE within 5 s, a tap gets ERROR
    unavailable from the agent, and nothing of it goes up (the restarted backend gets a
    hello and no page frame)."""
    with running_agent(tmp_path, backend.url) as running:
        connected(running, backend)
        with open_page(running.ws_url) as one, open_page(running.ws_url) as two:
            recv(one), recv(two)
            backend.stop()
            gone = time.monotonic()
            assert recv(one) == json.loads(OUT_OF_SERVICE_FRAME)
            assert recv(two) == json.loads(OUT_OF_SERVICE_FRAME)
            assert time.monotonic() - gone < 5
            send(one, "SHOW_MENU", {})
            assert error_code(recv(one)) == "unavailable"
            backend.nothing_more()
            backend.start()
            connected(running, backend)
            assert recv(one) == IDLE  # the snapshot redraws the page
    assert [m.kind for m in backend.nothing_more()] == []


def test_after_the_backend_comes_back_the_agent_reconnects_and_the_snapshot_redraws_pages(
    tmp_path, backend
):
    """A backend that comes back on the same address is reconnected (backoff between
    AGENT_RETRY_MIN_S and _MAX_S), the agent says hello again, and the gateway's snapshot
    redraws every page, including one that connected while the machine was offline."""
    with running_agent(tmp_path, backend.url) as running:
        connected(running, backend)
        with open_page(running.ws_url) as early:
            recv(early)
            backend.stop()
            assert recv(early)["event"] == "OUT_OF_SERVICE"
            with open_page(running.ws_url) as offline:
                assert recv(offline)["event"] == "OUT_OF_SERVICE"
                backend.screen = MENU_FRAME
                backend.start()
                connected(running, backend)
                assert recv(early) == MENU_FRAME
                assert recv(offline) == MENU_FRAME
                send(offline, "SHOW_MENU", {})
                assert backend.next(Kind.PAGE).frame == '{"event": "SHOW_MENU", "values": {}}'


def test_a_backend_that_stops_answering_pings_is_offline_within_ping_and_pong_timeout(tmp_path):
    """A backend that goes silent (the connection stays open, nothing comes back, as when a
    network drops) is detected by the keepalive: the pages show OUT_OF_SERVICE within
    ping + pong timeout + the closing handshake's limit, which for the production values is
    under 5 s."""
    assert AGENT_PING_S + AGENT_PONG_TIMEOUT_S + LINK_CLOSE_TIMEOUT_S < 5
    backend = Backend()
    proxy = FreezingProxy(backend.port)
    stack = contextlib.ExitStack()
    try:
        with running_agent(tmp_path, proxy.url) as running:
            connected(running, backend)
            page = stack.enter_context(open_page(running.ws_url))
            assert recv(page) == IDLE
            proxy.freeze()
            frozen = time.monotonic()
            limit = FAST.ping_s + FAST.pong_timeout_s + LINK_CLOSE_TIMEOUT_S
            eventually(lambda: not running.agent.connected, limit + 2, "the silent link given up")
            assert recv(page)["event"] == "OUT_OF_SERVICE"
            assert time.monotonic() - frozen < limit + 1
    finally:
        stack.close()
        proxy.close()
        backend.stop()


class FreezingProxy:
    """A TCP proxy to 127.0.0.1:`port` that can go silent: once frozen it forwards nothing
    either way and keeps the connections open."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.frozen = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/agent"

    def freeze(self) -> None:
        self.frozen.set()

    def close(self) -> None:
        for sock in [self.listener, *self.sockets]:
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self.listener.accept()
                upstream = socket.create_connection(("127.0.0.1", self.target))
                self.sockets += [client, upstream]
                for a, b in ((client, upstream), (upstream, client)):
                    threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if not self.frozen.is_set():
                    sink.sendall(data)


# --- a refused token ---------------------------------------------------------------------------


def test_a_refused_token_is_logged_once_and_retried_no_faster_than_the_refused_period(
    tmp_path, caplog
):
    """A backend answering 401 at the handshake: the agent logs "token refused" once (without
    the token) and tries again every refused_retry_s at the soonest, not at the fast
    backoff; its pages stay OUT_OF_SERVICE."""
    caplog.set_level(logging.INFO)
    backend = Backend(refuse=True)
    try:
        with running_agent(tmp_path, backend.url) as running, open_page(running.ws_url) as page:
            assert recv(page)["event"] == "OUT_OF_SERVICE"
            eventually(lambda: len(backend.handshakes) >= 3, WAIT_S, "three attempts")
            assert not running.agent.connected
    finally:
        backend.stop()
    times = [at for at, _ in backend.handshakes]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert min(gaps) >= FAST.refused_retry_s, gaps
    refused = [r for r in caplog.records if r.getMessage() == "token refused"]
    assert len(refused) == 1
    assert TOKEN not in caplog.text


def test_a_revoked_machine_closed_with_close_revoked_is_retried_at_the_refused_period(
    tmp_path, backend, caplog
):
    """The gateway closes a revoked machine's live link with CLOSE_REVOKED: the pages go
    OUT_OF_SERVICE, "token refused" is logged, and the next attempt waits refused_retry_s."""
    caplog.set_level(logging.INFO)
    with contextlib.ExitStack() as stack:
        running = stack.enter_context(running_agent(tmp_path, backend.url))
        connected(running, backend)
        page = stack.enter_context(open_page(running.ws_url))
        assert recv(page) == IDLE
        backend.refuse = True
        closed = time.monotonic()  # the agent learns of the close after this instant
        backend.stop(code=CLOSE_REVOKED)
        assert recv(page)["event"] == "OUT_OF_SERVICE"
        backend.start()
        eventually(lambda: backend.handshakes[-1][0] > closed, WAIT_S, "a new attempt")
        assert backend.handshakes[-1][0] - closed >= FAST.refused_retry_s
    assert [r.getMessage() for r in caplog.records].count("token refused") == 1


# --- vends (money rule 6) ----------------------------------------------------------------------


def test_a_vend_is_journaled_started_then_its_result_and_the_result_is_sent(tmp_path, backend):
    """On `vend` the agent journals "started" before the drink drops, the driver journals
    the result, and vend_result carries it up."""
    with running_agent(tmp_path, backend.url) as running:
        connected(running, backend)
        backend.send(Message(Kind.VEND, order_id="vm-7-o1", drink_id="cola"))
        result = backend.next(Kind.VEND_RESULT)
        assert (result.order_id, result.result) == ("vm-7-o1", "vended")
        assert [(e["order_id"], e["drink"], e["result"]) for e in journal(running)] == [
            ("vm-7-o1", "cola", STARTED),
            ("vm-7-o1", "cola", "vended"),
        ]
        assert dispenser_of(running).calls == ["vm-7-o1"]


def test_a_repeated_vend_is_answered_from_the_journal_and_never_vends_again(tmp_path, backend):
    """The gateway asks again for an order already vended (a reconnect, an event seen
    twice): the journal answers, the driver is not called a second time."""
    with running_agent(tmp_path, backend.url) as running:
        connected(running, backend)
        for _ in range(3):
            backend.send(Message(Kind.VEND, order_id="vm-7-o1", drink_id="cola"))
            assert backend.next(Kind.VEND_RESULT).result == "vended"
        assert dispenser_of(running).calls == ["vm-7-o1"]


def test_the_vends_slot_reaches_the_driver_and_a_failures_reason_goes_up(tmp_path, backend):
    """`vend` with a slot: the driver vends from it. A failed vend in the journal is answered
    with the journal's reason (the backend counts it against the slot). The hello names the
    driver (no firmware: the simulated driver has no board)."""
    with running_agent(tmp_path, backend.url) as running:
        hello = connected(running, backend)
        assert (hello.driver, hello.firmware) == ("simulated", None)
        backend.send(Message(Kind.VEND, order_id="vm-7-o1", drink_id="cola", slot=4))
        result = backend.next(Kind.VEND_RESULT)
        assert (result.result, result.reason) == ("vended", None)
        assert dispenser_of(running).slots == [4]
        assert journal(running)[0]["result"] == STARTED and journal(running)[0]["slot"] == 4
        assert journal(running)[-1]["slot"] == 4
        dispenser_of(running).vends.record("vm-7-o2", "cola", "failed", slot=4, reason="JAM")
        backend.send(Message(Kind.VEND, order_id="vm-7-o2", drink_id="cola", slot=4))
        failed = backend.next(Kind.VEND_RESULT)
        assert (failed.order_id, failed.result, failed.reason) == ("vm-7-o2", "failed", "JAM")
        assert dispenser_of(running).slots == [4]


def test_a_vend_asked_again_while_in_progress_is_vended_once_and_answered_once(tmp_path, backend):
    """A `vend` for an order whose vend is in progress here does nothing: one driver call,
    one vend_result when it ends."""
    with running_agent(tmp_path, backend.url) as running:
        connected(running, backend)
        dispenser = dispenser_of(running)
        dispenser.hold.clear()
        backend.send(Message(Kind.VEND, order_id="vm-7-o2", drink_id="tea"))
        eventually(lambda: dispenser.calls, WAIT_S, "the vend in progress")
        with open_page(running.ws_url) as page:
            assert recv(page) == IDLE
            backend.send(Message(Kind.VEND, order_id="vm-7-o2", drink_id="tea"))
            # Frames are handled in order: the page drawing this proves the second vend done.
            backend.send(Message(Kind.FRAME, frame=frame_text(MENU_FRAME)))
            assert recv(page) == MENU_FRAME
        assert not backend.nothing_more()
        dispenser.hold.set()
        assert backend.next(Kind.VEND_RESULT).result == "vended"
        assert dispenser.calls == ["vm-7-o2"]
        assert not [m for m in backend.nothing_more() if m.kind is Kind.VEND_RESULT]


def test_a_journal_with_only_started_answers_unknown_and_never_vends(tmp_path, backend):
    """An agent that died mid-vend left "started" and no result: asked again, the restarted
    agent answers unknown (the operator decides), never vends."""
    var_dir = tmp_path / "var"
    SimulatedDispenser(var_dir).begin("vm-7-o3", "cola")
    with running_agent(tmp_path, backend.url) as running:
        connected(running, backend)
        backend.send(Message(Kind.VEND, order_id="vm-7-o3", drink_id="cola"))
        result = backend.next(Kind.VEND_RESULT)
        assert (result.order_id, result.result) == ("vm-7-o3", "unknown")
        assert dispenser_of(running).calls == []


def test_a_result_produced_while_the_link_is_down_is_sent_after_the_next_hello(tmp_path, backend):
    """The backend goes away mid-vend: the result is kept and sent right after the hello of
    the next connection, without the gateway asking again."""
    with running_agent(tmp_path, backend.url) as running:
        connected(running, backend)
        dispenser = dispenser_of(running)
        dispenser.hold.clear()
        backend.send(Message(Kind.VEND, order_id="vm-7-o4", drink_id="cola"))
        eventually(lambda: dispenser.calls, WAIT_S, "the vend in progress")
        backend.stop()
        eventually(lambda: not running.agent.connected, WAIT_S, "the link down")
        dispenser.hold.set()
        eventually(
            lambda: any(e["result"] == "vended" for e in journal(running)), WAIT_S, "the result"
        )
        backend.nothing_more()
        backend.start()
        assert backend.next().kind is Kind.HELLO
        result = backend.next()
        assert (result.kind, result.order_id, result.result) == (
            Kind.VEND_RESULT,
            "vm-7-o4",
            "vended",
        )
        assert dispenser.calls == ["vm-7-o4"]


# --- the journal (cores/dispenser.py) ----------------------------------------------------------


def test_journal_outcome_started_only_is_unknown_and_a_result_after_it_wins(tmp_path):
    """A "started" line alone reads UNKNOWN; a result after it reads as that result; an
    order with no line reads None; the line has the design's schema."""
    dispenser = SimulatedDispenser(tmp_path, duration_s=0, clock=lambda: 1000.0)
    dispenser.begin("a", "cola")
    assert dispenser.outcome("a") is Vend.UNKNOWN
    assert json.loads((tmp_path / JOURNAL_NAME).read_text().splitlines()[0]) == {
        "order_id": "a",
        "drink": "cola",
        "result": "started",
        "at": 1000.0,
    }
    dispenser.vend("a", "cola")
    assert dispenser.outcome("a") is Vend.VENDED
    dispenser.begin("b", "tea")
    SimulatedDispenser(tmp_path, duration_s=0, failure_rate=1).vend("b", "tea")
    assert dispenser.outcome("b") is Vend.FAILED
    assert dispenser.outcome("c") is None


# --- pure parts and the process ------------------------------------------------------------------


def test_backoff_doubles_from_the_minimum_to_the_maximum_with_20_percent_jitter():
    """Delays double from min to max, each within +-20 %, and start again after a reset."""
    backoff = Backoff(0.5, 15.0, random.Random(3))
    delays = [backoff.delay() for _ in range(8)]
    for delay, base in zip(delays, [0.5, 1, 2, 4, 8, 15, 15, 15], strict=True):
        assert base * 0.8 <= delay <= base * 1.2
    backoff.reset()
    assert 0.4 <= backoff.delay() <= 0.6


def test_project_version_comes_from_pyproject(tmp_path):
    """The hello's version is pyproject.toml's; unreadable, it is "unknown"."""
    assert project_version() == "0.1.0"
    assert project_version(tmp_path / "missing.toml") == "unknown"


@pytest.mark.parametrize("missing", ["BACKEND_URL", "MACHINE_TOKEN"])
def test_run_without_backend_url_or_token_is_a_config_error_naming_it(tmp_path, missing):
    """`main.py machine` without BACKEND_URL or MACHINE_TOKEN stops with a ConfigError that
    names the variable."""
    settings = agent_settings(tmp_path, "ws://127.0.0.1:1/agent")
    field = {"BACKEND_URL": "backend_url", "MACHINE_TOKEN": "machine_token"}[missing]
    with pytest.raises(ConfigError, match=missing):
        agent_service.run(settings.replace(**{field: None}))


def test_main_py_machine_prints_its_urls_serves_until_sigterm_and_exits_0(tmp_path, backend):
    """`main.py machine` prints `Kiosk: URL` and `Backend: URL`, serves the page from the
    backend's screens, never prints the token (not even at LOG_LEVEL=DEBUG), and exits 0 on
    SIGTERM."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "main.py"), "machine"],
        cwd=tmp_path,
        env=machine_env(tmp_path, backend.url, port),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    output = ChildOutput(process.stdout)
    try:
        output.wait_for(f"Backend: {backend.url}", timeout_s=30)
        assert f"Kiosk: http://127.0.0.1:{port}/" in output.text()
        assert backend.next().kind is Kind.HELLO
        with open_page(f"ws://127.0.0.1:{port}/ws") as page:
            eventually(lambda: recv(page) == IDLE, WAIT_S, "the backend's screen")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    text = output.text(wait_s=WAIT_S)
    assert "Authorization: Bearer <token>" in text  # the DEBUG handshake lines, redacted
    assert TOKEN not in text


def test_main_py_machine_exits_1_when_its_port_is_taken(tmp_path, backend):
    """An agent that cannot listen on WS_PORT says so and exits 1."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, str(ROOT / "main.py"), "machine"],
            cwd=tmp_path,
            env=machine_env(tmp_path, backend.url, port),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 1, done.stderr
    assert "cannot listen" in done.stderr
    assert TOKEN not in done.stdout + done.stderr


def machine_env(tmp_path: Path, backend_url: str, port: int) -> dict[str, str]:
    return child_env(
        VENDING_MACHINE_ID=MACHINE,
        MACHINE_TOKEN=TOKEN,
        BACKEND_URL=backend_url,
        WS_PORT=str(port),
        VAR_DIR=str(tmp_path / "var"),
        LOG_LEVEL="DEBUG",
    )


# --- wss:// -------------------------------------------------------------------------------------


def test_a_wss_backend_url_speaks_tls_and_checks_the_backends_certificate(tmp_path, caplog):
    """BACKEND_URL=wss://...: the agent connects over TLS to a backend whose certificate its
    trust store vouches for, and refuses one signed by an authority it does not trust: the
    TLS handshake fails, so no HTTP request (and no token) reaches that backend."""
    authority = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("localhost").configure_cert(server_tls)
    backend = Backend(tls=server_tls)
    try:
        trusting = ssl.create_default_context()
        authority.configure_trust(trusting)
        with running_agent(tmp_path / "trusting", backend.url, ssl_context=trusting) as running:
            assert connected(running, backend).kind is Kind.HELLO
        handshakes = len(backend.handshakes)
        stranger = ssl.create_default_context()
        trustme.CA().configure_trust(stranger)  # another authority than the backend's
        caplog.set_level(logging.INFO, logger=agent_service.__name__)

        def refused_twice() -> bool:
            why = [str(getattr(r, "kv", {}).get("why")) for r in caplog.records]
            return sum("CERTIFICATE_VERIFY_FAILED" in w for w in why) >= 2

        with running_agent(tmp_path / "stranger", backend.url, ssl_context=stranger) as running:
            eventually(refused_twice, WAIT_S, "two refused TLS handshakes")
            assert not running.agent.connected
        assert len(backend.handshakes) == handshakes
    finally:
        backend.stop()
