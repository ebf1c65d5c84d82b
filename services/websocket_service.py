"""The websocket server: a relay with a gate (shared/STYLE.md), one port for the kiosk.

    GET /ws          the kiosk websocket: the gate, here (KioskGate)
    GET /, /<file>   web/ and /healthz: services/web_files.py
    frames           -> every page: from a `Machine` (below)

The gate is the page-facing half, the same in both modes; what stands behind it is a
`Machine`, which says what the current screen is, executes a page's command, feeds every
page's frames while the gate serves, and answers its part of /healthz:

    KioskGate --+-- RedisMachine   one machine (`main.py up`, websocket_server.py): the broker
                |                  executes, the relay follows the events stream (relay.py)
                +-- Agent          fleet mode (`main.py machine`, services/agent_service.py):
                                   the command goes up the backend link, frames come down it

`WebsocketServer` is the gate with a RedisMachine: one machine's kiosk server.

Handshake: `/ws` checks the Origin header (`cores.protocol.origin_allowed`: none, `null`, the
page's own origin or one of KIOSK_ALLOWED_ORIGINS); any other is refused with 403.

On connect a page gets the current screen (the machine's snapshot frame). Each page has a
reader task that takes its frames off the socket as they arrive, stamps each with the clock
and judges it there with its `FloodGate`, then queues it for the page's handler, which runs
the commands one at a time: the parser (`cores.protocol.parse_client_frame`), then the
machine (on one machine the broker: show_menu, place_order, request_cancel). Because frames
are timed on arrival, a server that falls behind never turns a calm page's frames into a
flood. A refused frame gets an ERROR frame, to that page alone, and changes nothing; a page
that keeps flooding is closed with 1008; a machine that cannot act now (`Unavailable`) gets the
page an ERROR unavailable. The server never echoes a page's frame and holds no business state
of its own; Redis (or the backend, in fleet mode) is the truth.

The broker's Redis client is synchronous (redis-py), so commands run in asyncio's default
executor with a short socket timeout; the relay's blocking read has a client of its own whose
timeout exceeds REDIS_BLOCK_MAX_MS (`run` builds both).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry
from websockets.asyncio.server import ServerConnection
from websockets.asyncio.server import serve as ws_serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from constants.states import ErrorCode
from constants.tunables import (
    BLOCKING_SOCKET_TIMEOUT_S,
    CLIENT_FRAME_MAX_BYTES,
    CLIENT_FRAME_QUEUE_MAX,
    CLIENT_FRAMES_PER_S,
    COMMAND_SOCKET_TIMEOUT_S,
    PAGE_SEND_TIMEOUT_S,
    PAGE_WRITE_LIMIT_BYTES,
)
from cores.broker import Broker, CommandRefused
from cores.config import Settings
from cores.logs import kv
from cores.protocol import (
    Command,
    FloodGate,
    ProtocolError,
    Verdict,
    encode,
    error_frame,
    origin_allowed,
    parse_client_frame,
)
from services import kiosk_commands
from services.relay import CLOSE_POLICY_VIOLATION, Pages, Relay, peer_name
from services.runtime import redis_url
from services.stoppable import Stoppable
from services.web_files import WEB_DIR, WebFiles, respond

log = logging.getLogger(__name__)

WS_PATH = "/ws"
UNAVAILABLE_MESSAGE = "the machine is temporarily unavailable, please try again"


class Unavailable(Exception):
    """The machine behind the gate cannot act now (Redis down, the backend link down).

    The page gets ERROR unavailable; nothing changed.
    """


@dataclass(frozen=True)
class Screen:
    """The current screen: a kiosk frame's text, and its version (see Pages.missed_newer)."""

    text: str
    version: int


class Machine(Protocol):
    """What stands behind the page gate: the source of frames and the executor of commands."""

    async def screen(self) -> Screen:
        """The current screen, for a page that connects. Raises Unavailable."""
        ...

    async def execute(self, page: int, text: str, command: Command) -> None:
        """Carry out a valid command that page `page` sent as `text`.

        Raises CommandRefused (an ERROR with its code to the page) or Unavailable.
        """
        ...

    async def follow(self, pages: Pages) -> None:
        """Feed every page its frames (Pages.broadcast, Pages.send) until cancelled."""
        ...

    async def health(self) -> tuple[HTTPStatus, dict[str, object]]:
        """The machine's part of /healthz: 200 or 503, and the body's fields."""
        ...


@dataclass(frozen=True)
class Arrival:
    """A frame as it came off a page's socket, with the gate's verdict on its arrival time."""

    verdict: Verdict
    message: str | bytes


#: What a page's reader queues when the page stops sending (closed, or closing for a flood).
END = None


class KioskGate(Stoppable):
    """The page-facing half of a kiosk server: the Origin check, each page's flood gate, the
    size and UTF-8 limits, the page's files and headers, the snapshot on connect and the
    broadcast with write limits. Start it with `serve()`; stop it with `request_stop()`.

    `machine` stands behind it (see Machine). `clock` is the monotonic clock that stamps each
    frame's arrival for the flood gate.
    """

    def __init__(
        self,
        settings: Settings,
        machine: Machine,
        *,
        web_dir: Path = WEB_DIR,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.machine = machine
        self.clock = clock
        self.pages = Pages()
        self.web = WebFiles(web_dir, machine.health, lambda: len(self.pages))
        self.port: int | None = None

    # --- lifecycle --------------------------------------------------------------------------

    async def serve(
        self,
        host: str,
        port: int,
        *,
        ready: Callable[[int], None] | None = None,
        stop: asyncio.Event | None = None,
        handle_signals: bool = False,
    ) -> None:
        """Listen on host:port (0: any free port) until `stop` is set or `request_stop()`.

        `ready(port)` is called once listening. With `handle_signals`, SIGTERM and SIGINT
        stop the server; pages are closed with 1001 (going away).
        """
        with self.stoppable(stop, handle_signals) as stopping:
            async with ws_serve(
                self._handler,
                host,
                port,
                process_request=self._process_request,
                max_size=CLIENT_FRAME_MAX_BYTES,
                # The high-water mark of each page's write buffer: the relay closes a page
                # whose unsent frames pass it (services/relay.py).
                write_limit=PAGE_WRITE_LIMIT_BYTES,
                server_header=None,
            ) as server:
                self.port = server.sockets[0].getsockname()[1]
                follow = asyncio.create_task(self.machine.follow(self.pages), name="frames")
                log.info(
                    "websocket server listening",
                    extra=kv(host=host, port=self.port, web_dir=self.web.web_dir),
                )
                if ready is not None:
                    ready(self.port)
                try:
                    await stopping.wait()
                finally:
                    log.info("websocket server stopping", extra=kv(pages=len(self.pages)))
                    follow.cancel()
                    await asyncio.gather(follow, return_exceptions=True)
        log.info("websocket server stopped")

    # --- handshake --------------------------------------------------------------------------

    async def _process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        """Let an allowed /ws upgrade go on; answer anything else as plain HTTP."""
        if urlsplit(request.path).path != WS_PATH or request.method != "GET":
            return await self.web.answer(request)
        origins = request.headers.get_all("Origin")
        hosts = request.headers.get_all("Host")
        origin = origins[0] if len(origins) == 1 else None
        host = hosts[0] if len(hosts) == 1 else None
        if len(origins) > 1 or not origin_allowed(
            origin, host, self.settings.kiosk_allowed_origins
        ):
            log.warning(
                "websocket refused: origin not allowed",
                extra=kv(
                    origin=", ".join(origins)[:200],
                    host=", ".join(hosts)[:200],
                    peer=peer_name(connection),
                ),
            )
            return respond(HTTPStatus.FORBIDDEN, b"origin not allowed\n", ".txt")
        return None

    # --- pages ------------------------------------------------------------------------------

    async def _handler(self, ws: ServerConnection) -> None:
        peer = peer_name(ws)
        registered = self.pages.add(ws)
        log.info("page connected", extra=kv(peer=peer, page=registered.page, pages=len(self.pages)))
        inbox: asyncio.Queue[Arrival | None] = asyncio.Queue(CLIENT_FRAME_QUEUE_MAX)
        reader = asyncio.create_task(self._read(ws, inbox), name=f"page-reader {peer}")
        try:
            await self._send_snapshot(ws, registered.seen)
            while (arrival := await inbox.get()) is not END:
                if arrival.verdict is Verdict.CLOSE:
                    await self._close_flooding(ws, peer)
                    break
                await self._on_frame(ws, peer, registered.page, arrival)
        except ConnectionClosed:
            pass
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            self.pages.discard(ws)
            log.info(
                "page disconnected",
                extra=kv(peer=peer, code=ws.close_code, pages=len(self.pages)),
            )

    async def _read(self, ws: ServerConnection, inbox: asyncio.Queue[Arrival | None]) -> None:
        """Take a page's frames off its socket as they arrive, stamp and judge each, queue it.

        Stops at the first CLOSE verdict: the handler closes the page, the frames behind it
        are never handled.
        """
        gate = FloodGate()
        try:
            async for message in ws:
                verdict = gate.check(self.clock())
                await inbox.put(Arrival(verdict, message))
                if verdict is Verdict.CLOSE:
                    return
        except ConnectionClosed:
            pass
        except Exception:
            # The handler must not wait for ever on a reader that died.
            log.exception("page reader failed", extra=kv(peer=peer_name(ws)))
        await inbox.put(END)

    async def _send_snapshot(self, ws: ServerConnection, seen: int) -> None:
        """The current screen, to a page that just connected."""
        try:
            screen = await self.machine.screen()
        except Unavailable as exc:
            log.warning("snapshot: machine unavailable", extra=kv(error=exc))
            await self._send(ws, error_frame(ErrorCode.UNAVAILABLE, UNAVAILABLE_MESSAGE))
            return
        # The page was registered before the snapshot was read: a frame broadcast since then
        # with a newer version already reached it, and the snapshot would draw an older screen.
        if self.pages.missed_newer(seen, screen.version):
            return
        await self._send(ws, screen.text)

    async def _on_frame(self, ws: ServerConnection, peer: str, page: int, arrival: Arrival) -> None:
        """Handle one frame from a page that the gate let through or limited."""
        if arrival.verdict is Verdict.LIMIT:
            await self._refuse(
                ws,
                peer,
                ErrorCode.RATE_LIMITED,
                f"more than {CLIENT_FRAMES_PER_S} frames per second",
            )
            return
        message = arrival.message
        log.debug("frame", extra=kv(peer=peer, size=len(message), text=_preview(message)))
        try:
            command = parse_client_frame(message)
        except ProtocolError as exc:
            await self._refuse(ws, peer, exc.code, exc.message)
            return
        assert isinstance(message, str)  # parse_client_frame refuses binary frames
        try:
            await self.machine.execute(page, message, command)
        except CommandRefused as exc:
            await self._refuse(ws, peer, exc.code, exc.message)
        except Unavailable as exc:
            log.warning("command: machine unavailable", extra=kv(peer=peer, error=exc))
            await self._refuse(ws, peer, ErrorCode.UNAVAILABLE, UNAVAILABLE_MESSAGE)
        except Exception:
            log.exception("command failed", extra=kv(peer=peer, command=command.event))
            await self._refuse(ws, peer, ErrorCode.UNAVAILABLE, UNAVAILABLE_MESSAGE)

    async def _close_flooding(self, ws: ServerConnection, peer: str) -> None:
        """Close a page that keeps flooding with 1008 (policy violation)."""
        log.warning("page keeps flooding, closing it", extra=kv(peer=peer))
        # The reader stopped: the page's unread frames fill the queue, and the page's reply to
        # our close frame waits behind them. Drain them, unhandled, so that the close completes
        # now rather than after close_timeout.
        closing = asyncio.create_task(ws.close(CLOSE_POLICY_VIOLATION, "too many frames"))
        with contextlib.suppress(ConnectionClosed):
            async for _ in ws:
                pass
        await closing

    async def _refuse(self, ws: ServerConnection, peer: str, code: ErrorCode, message: str) -> None:
        log.debug("refused", extra=kv(peer=peer, code=code, message=message))
        await self._send(ws, error_frame(code, message))

    async def _send(self, ws: ServerConnection, text: str) -> None:
        """Send to one page; a page that takes nothing for PAGE_SEND_TIMEOUT_S is closed."""
        try:
            async with asyncio.timeout(PAGE_SEND_TIMEOUT_S):
                await ws.send(text)
        except TimeoutError:
            self.pages.close_slow(ws, "a frame to it waited too long")


# --- one machine: Redis behind the gate ------------------------------------------------------


class RedisMachine:
    """The machine behind the gate on one machine: the broker executes, the relay follows.

    The broker's Redis client is synchronous, so its calls run in asyncio's default executor.
    """

    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    async def screen(self) -> Screen:
        try:
            snap = await asyncio.to_thread(self.broker.snapshot)
        except redis.RedisError as exc:
            raise Unavailable(f"redis unreachable: {exc}") from exc
        return Screen(encode(snap.frame), snap.version)

    async def execute(self, page: int, text: str, command: Command) -> None:
        # In a thread: the broker's client is synchronous.
        try:
            await asyncio.to_thread(kiosk_commands.execute, self.broker, command)
        except redis.RedisError as exc:
            raise Unavailable(f"redis unreachable: {exc}") from exc

    async def follow(self, pages: Pages) -> None:
        await Relay(self.broker, pages).run()

    async def health(self) -> tuple[HTTPStatus, dict[str, object]]:
        try:
            snap = await asyncio.to_thread(self.broker.snapshot)
        except redis.RedisError as exc:
            log.warning("health: redis unreachable", extra=kv(error=exc))
            return HTTPStatus.SERVICE_UNAVAILABLE, {"ok": False, "state": None, "redis": "down"}
        return HTTPStatus.OK, {"ok": True, "state": str(snap.state), "redis": "ok"}


class WebsocketServer(KioskGate):
    """One machine's kiosk server. Start it with `serve()`; stop it with `request_stop()`.

    `redis_client` is a synchronous redis-py client with decode_responses=True (the broker's
    convention). `clock` is the monotonic clock that stamps each frame's arrival for the
    flood gate.
    """

    def __init__(
        self,
        settings: Settings,
        redis_client: redis.Redis,
        *,
        web_dir: Path = WEB_DIR,
        clock: Callable[[], float] = time.monotonic,
        relay_client: redis.Redis | None = None,
    ) -> None:
        # The relay's long blocking read has a client of its own (Broker `blocking`).
        self.broker = Broker(redis_client, settings.machine_id, blocking=relay_client)
        super().__init__(settings, RedisMachine(self.broker), web_dir=web_dir, clock=clock)


def _preview(message: str | bytes) -> str:
    if isinstance(message, bytes):
        return f"<{len(message)} bytes binary>"
    return message[:200]


# --- the process -----------------------------------------------------------------------------


def run(settings: Settings) -> int:
    """The websocket server process: serve until SIGTERM or SIGINT. Returns the exit status.

    Raises ConfigError when no Redis is configured.
    """
    client = redis.Redis.from_url(
        redis_url(settings),
        decode_responses=True,
        socket_timeout=COMMAND_SOCKET_TIMEOUT_S,
        socket_connect_timeout=3,
        health_check_interval=30,
        client_name="websocket",
        # Fail fast when Redis is down: a page gets ERROR unavailable in well under a second
        # (redis-py's default retries for several), and the relay retries on its own schedule.
        retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), 2),
    )
    # Above the relay's longest BLOCK (shared/TESTING.md: redis-py's default is 5 s).
    relay_client = redis.Redis.from_url(
        redis_url(settings),
        decode_responses=True,
        socket_timeout=BLOCKING_SOCKET_TIMEOUT_S,
        socket_connect_timeout=3,
        client_name="websocket",
        retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), 2),
    )
    server = WebsocketServer(settings, client, relay_client=relay_client)
    try:
        asyncio.run(server.serve(settings.ws_host, settings.ws_port, handle_signals=True))
    except OSError as exc:
        log.error(
            "cannot listen",
            extra=kv(host=settings.ws_host, port=settings.ws_port, error=exc),
        )
        return 1
    finally:
        client.close()
        relay_client.close()
    return 0


__all__ = [
    "KioskGate",
    "Machine",
    "RedisMachine",
    "Screen",
    "Unavailable",
    "WebsocketServer",
    "run",
]
