"""The websocket server: a relay with a gate (shared/STYLE.md), one port for the kiosk.

    GET /            web/index.html          GET /healthz   {"ok", "state", "redis"} 200 / 503
    GET /<file>      a file under web/       GET /ws        the kiosk websocket

On connect a page gets the current screen (the broker's snapshot frame). Every frame a page
sends goes through the gate: the flood limit, then `cores.protocol.parse_client_frame`, then
the broker (show_menu, place_order, request_cancel). A refused frame gets an ERROR frame, to
that page alone, and changes nothing. A relay task reads the machine's events stream and
broadcasts each entry's frame to every page. The server sends nothing else: it never echoes a
page's frame and holds no business state of its own; Redis is the truth.

The broker's Redis client is synchronous (redis-py), so its calls run in threads: commands in
asyncio's default executor, the relay's blocking XREAD in a thread of its own. The client's
socket_timeout must exceed REDIS_BLOCK_MAX_MS (`run` builds one that does).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import logging
import random
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry
from websockets.asyncio.server import ServerConnection, broadcast
from websockets.asyncio.server import serve as ws_serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from constants.states import ClientEvent, ErrorCode
from constants.tunables import (
    CLIENT_FRAME_MAX_BYTES,
    REDIS_BLOCK_MAX_MS,
    RELAY_RETRY_MAX_S,
    RELAY_RETRY_MIN_S,
)
from cores.broker import Broker, CommandRefused
from cores.config import Settings
from cores.logs import kv
from cores.protocol import (
    Command,
    FrameRate,
    ProtocolError,
    Verdict,
    encode,
    error_frame,
    parse_client_frame,
)
from services.runtime import redis_url

log = logging.getLogger(__name__)

#: The kiosk page and its assets.
WEB_DIR = Path(__file__).resolve().parent.parent / "web"
WS_PATH = "/ws"
HEALTH_PATH = "/healthz"
#: Entries read from the events stream per XREAD.
RELAY_BATCH = 100
#: Close code for a page that keeps flooding (RFC 6455: policy violation).
CLOSE_POLICY_VIOLATION = 1008

UNAVAILABLE_MESSAGE = "the machine is temporarily unavailable, please try again"

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".ico": "image/x-icon",
    ".woff2": "font/woff2",
    ".woff": "font/woff",
    ".ttf": "font/ttf",
    ".txt": "text/plain; charset=utf-8",
    ".webmanifest": "application/manifest+json",
}


class WebsocketServer:
    """One machine's kiosk server. Start it with `serve()`; stop it with `request_stop()`.

    `redis_client` is a synchronous redis-py client with decode_responses=True (the broker's
    convention). `clock` is the monotonic clock of the flood gate.
    """

    def __init__(
        self,
        settings: Settings,
        redis_client: redis.Redis,
        *,
        web_dir: Path = WEB_DIR,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.broker = Broker(redis_client, settings.machine_id)
        self.web_dir = Path(web_dir).resolve()
        self.clock = clock
        self.connections: set[ServerConnection] = set()
        self.port: int | None = None
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Broadcasts so far, and the version of the newest frame broadcast: a page whose
        # snapshot is older than a frame it already received does not get the snapshot.
        self._broadcasts = 0
        self._broadcast_version = 0
        self._relay_executor: ThreadPoolExecutor | None = None

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
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._stop = stop if stop is not None else asyncio.Event()
        if handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._stop.set)
        self._relay_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ws-relay")
        try:
            async with ws_serve(
                self._handler,
                host,
                port,
                process_request=self._process_request,
                max_size=CLIENT_FRAME_MAX_BYTES,
                server_header=None,
            ) as server:
                self.port = server.sockets[0].getsockname()[1]
                relay = asyncio.create_task(self._relay(), name="events-relay")
                log.info(
                    "websocket server listening",
                    extra=kv(host=host, port=self.port, web_dir=self.web_dir),
                )
                if ready is not None:
                    ready(self.port)
                try:
                    await self._stop.wait()
                finally:
                    log.info("websocket server stopping", extra=kv(pages=len(self.connections)))
                    relay.cancel()
                    await asyncio.gather(relay, return_exceptions=True)
        finally:
            if handle_signals:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
            # The relay thread may sit in a blocking XREAD for up to REDIS_BLOCK_MAX_MS.
            await loop.run_in_executor(None, partial(self._relay_executor.shutdown, wait=True))
            self._loop = None
            log.info("websocket server stopped")

    def request_stop(self) -> None:
        """Stop `serve()`; safe to call from any thread, and once it has stopped."""
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(stop.set)

    # --- HTTP -------------------------------------------------------------------------------

    async def _process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        """Answer plain HTTP (the page, its files, /healthz); let /ws go on to the upgrade."""
        path = urlsplit(request.path).path
        if path == WS_PATH and request.method == "GET":
            return None
        if request.method not in ("GET", "HEAD"):
            response = _response(HTTPStatus.METHOD_NOT_ALLOWED, b"method not allowed\n", ".txt")
            response.headers["Allow"] = "GET, HEAD"
        elif path == HEALTH_PATH:
            response = await self._health()
        else:
            response = await self._static(path)
        if request.method == "HEAD":
            response.body = b""
        log.debug(
            "http",
            extra=kv(method=request.method, path=request.path[:200], status=response.status_code),
        )
        return response

    async def _health(self) -> Response:
        try:
            snap = await asyncio.to_thread(self.broker.snapshot)
        except redis.RedisError as exc:
            log.warning("health: redis unreachable", extra=kv(error=exc))
            status, body = HTTPStatus.SERVICE_UNAVAILABLE, {"ok": False, "state": None}
            body["redis"] = "down"
        else:
            status, body = HTTPStatus.OK, {"ok": True, "state": str(snap.state), "redis": "ok"}
        body["pages"] = len(self.connections)
        return _response(status, json.dumps(body).encode(), ".json")

    async def _static(self, path: str) -> Response:
        file = self._web_file(path)
        if file is None:
            return _response(HTTPStatus.NOT_FOUND, b"not found\n", ".txt")
        try:
            body = await asyncio.to_thread(file.read_bytes)
        except OSError:
            return _response(HTTPStatus.NOT_FOUND, b"not found\n", ".txt")
        return _response(HTTPStatus.OK, body, file.suffix)

    def _web_file(self, path: str) -> Path | None:
        """The file under web/ that `path` names, or None: no '..', no dot-files, no escapes."""
        try:
            name = unquote(path, errors="strict")
        except UnicodeDecodeError:
            return None
        if name == "/":
            name = "/index.html"
        if not name.startswith("/"):
            return None
        parts = name[1:].split("/")
        for part in parts:
            if not part or part.startswith(".") or "\\" in part or "\x00" in part:
                return None
        try:
            file = self.web_dir.joinpath(*parts).resolve(strict=True)
        except (OSError, RuntimeError, ValueError):
            return None
        # A symlink inside web/ must not lead out of it either.
        if not file.is_relative_to(self.web_dir) or not file.is_file():
            return None
        return file

    # --- pages ------------------------------------------------------------------------------

    async def _handler(self, ws: ServerConnection) -> None:
        peer = _peer(ws)
        seen = self._broadcasts
        self.connections.add(ws)
        log.info("page connected", extra=kv(peer=peer, pages=len(self.connections)))
        try:
            await self._send_snapshot(ws, seen)
            gate = FrameRate()
            async for message in ws:
                if not await self._on_frame(ws, peer, message, gate):
                    await self._close_flooding(ws, peer)
                    break
        except ConnectionClosed:
            pass
        finally:
            self.connections.discard(ws)
            log.info(
                "page disconnected",
                extra=kv(peer=peer, code=ws.close_code, pages=len(self.connections)),
            )

    async def _send_snapshot(self, ws: ServerConnection, seen: int) -> None:
        """The current screen, to a page that just connected."""
        try:
            snap = await asyncio.to_thread(self.broker.snapshot)
        except redis.RedisError as exc:
            log.warning("snapshot: redis unreachable", extra=kv(error=exc))
            await ws.send(error_frame(ErrorCode.UNAVAILABLE, UNAVAILABLE_MESSAGE))
            return
        # The page was registered before the snapshot was read: a frame broadcast since then
        # with a newer version already reached it, and the snapshot would draw an older screen.
        if self._broadcasts > seen and self._broadcast_version > snap.version:
            return
        await ws.send(encode(snap.frame))

    async def _on_frame(
        self, ws: ServerConnection, peer: str, message: str | bytes, gate: FrameRate
    ) -> bool:
        """Handle one frame from a page. False: the page keeps flooding and must be closed."""
        verdict = gate.check(self.clock())
        if verdict is Verdict.CLOSE:
            return False
        if verdict is Verdict.LIMIT:
            await self._refuse(
                ws, peer, ErrorCode.RATE_LIMITED, f"more than {gate.per_s} frames per second"
            )
            return True
        log.debug("frame", extra=kv(peer=peer, size=len(message), text=_preview(message)))
        try:
            command = parse_client_frame(message)
        except ProtocolError as exc:
            await self._refuse(ws, peer, exc.code, exc.message)
            return True
        try:
            await asyncio.to_thread(self._execute, command)
        except CommandRefused as exc:
            await self._refuse(ws, peer, exc.code, exc.message)
        except redis.RedisError as exc:
            log.warning("command: redis unreachable", extra=kv(peer=peer, error=exc))
            await self._refuse(ws, peer, ErrorCode.UNAVAILABLE, UNAVAILABLE_MESSAGE)
        except Exception:
            log.exception("command failed", extra=kv(peer=peer, command=command.event))
            await self._refuse(ws, peer, ErrorCode.UNAVAILABLE, UNAVAILABLE_MESSAGE)
        return True

    async def _close_flooding(self, ws: ServerConnection, peer: str) -> None:
        """Close a page that keeps flooding with 1008 (policy violation)."""
        log.warning("page keeps flooding, closing it", extra=kv(peer=peer))
        # Reading pauses while the page's unread frames fill the queue, and the page's reply
        # to our close frame waits behind them: drain them, unhandled, so the close completes
        # now rather than after close_timeout.
        closing = asyncio.create_task(ws.close(CLOSE_POLICY_VIOLATION, "too many frames"))
        with contextlib.suppress(ConnectionClosed):
            async for _ in ws:
                pass
        await closing

    def _execute(self, command: Command) -> None:
        """Hand a valid command to the broker (in a thread: the client is synchronous)."""
        if command.event is ClientEvent.SHOW_MENU:
            self.broker.show_menu()
        elif command.event is ClientEvent.ORDER:
            if command.drink_id is None or command.quantity is None:  # parse guarantees both
                raise CommandRefused(ErrorCode.BAD_VALUES, "ORDER needs id and total")
            self.broker.place_order(command.drink_id, command.quantity)
        elif command.event is ClientEvent.CANCEL:
            self.broker.request_cancel()

    async def _refuse(self, ws: ServerConnection, peer: str, code: ErrorCode, message: str) -> None:
        log.debug("refused", extra=kv(peer=peer, code=code, message=message))
        await ws.send(error_frame(code, message))

    # --- relay ------------------------------------------------------------------------------

    async def _relay(self) -> None:
        """Broadcast every new entry of the events stream, for as long as the server runs."""
        loop = asyncio.get_running_loop()
        run = partial(loop.run_in_executor, self._relay_executor)
        last_id: str | None = None
        delay = RELAY_RETRY_MIN_S
        failing = False
        while True:
            try:
                if failing:
                    last_id = await self._resync(run)
                elif last_id is None:
                    last_id = await run(self.broker.last_event_id)
                entries = await run(self._read_events, last_id)
            except redis.RedisError as exc:
                log.warning(
                    "events stream unreachable, retrying",
                    extra=kv(error=exc, retry_in_s=round(delay, 2)),
                )
                failing = True
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, RELAY_RETRY_MAX_S)
                continue
            except Exception:
                # Keep relaying whatever went wrong; a traceback is worth a line in the log.
                log.exception("relay failed, retrying")
                failing = True
                await asyncio.sleep(RELAY_RETRY_MAX_S)
                continue
            if failing:
                log.info("events stream reachable again")
                failing = False
                delay = RELAY_RETRY_MIN_S
            for entry_id, fields in entries:
                last_id = entry_id
                self._relay_entry(entry_id, fields)

    async def _resync(self, run: Callable[..., Any]) -> str:
        """After an outage: send every page the current screen, then follow the stream anew.

        The stream may have lost entries (a Redis restarted without its data), so the relay
        starts again from its newest entry rather than from where it stopped.
        """
        last_id = await run(self.broker.last_event_id)
        snap = await run(self.broker.snapshot)
        self._broadcast(encode(snap.frame), snap.version)
        return last_id

    def _read_events(self, last_id: str) -> list[tuple[str, dict]]:
        """Block (at most REDIS_BLOCK_MAX_MS, so a stop is seen) for entries after `last_id`."""
        stream = self.broker.events_key
        answer = self.broker.redis.xread(
            {stream: last_id}, count=RELAY_BATCH, block=REDIS_BLOCK_MAX_MS
        )
        if not answer:
            return []
        if isinstance(answer, dict):  # RESP3
            return list(answer.get(stream, [[]])[0])
        return [entry for _, entries in answer for entry in entries]

    def _relay_entry(self, entry_id: str, fields: dict) -> None:
        text = fields.get("frame")
        try:
            frame = json.loads(text) if isinstance(text, str) else None
        except ValueError:
            frame = None
        if not isinstance(frame, dict) or not isinstance(frame.get("event"), str):
            log.warning("events entry without a frame, skipped", extra=kv(entry=entry_id))
            return
        try:
            version = int(fields.get("version", 0))
        except ValueError:
            version = 0
        log.debug(
            "relay",
            extra=kv(
                entry=entry_id,
                event=frame["event"],
                order_id=fields.get("order_id") or "-",
                pages=len(self.connections),
            ),
        )
        self._broadcast(text, version)

    def _broadcast(self, text: str, version: int) -> None:
        # broadcast() writes without awaiting: one slow page cannot stall the others.
        self._broadcasts += 1
        self._broadcast_version = version
        broadcast(self.connections, text)


def _response(status: HTTPStatus, body: bytes, suffix: str) -> Response:
    headers = Headers(
        [
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Connection", "close"),
            ("Content-Type", CONTENT_TYPES.get(suffix.lower(), "application/octet-stream")),
            ("Content-Length", str(len(body))),
            # The kiosk must pick up a new page or asset at once after an update.
            ("Cache-Control", "no-cache"),
            ("X-Content-Type-Options", "nosniff"),
        ]
    )
    return Response(status.value, status.phrase, headers, body)


def _peer(ws: ServerConnection) -> str:
    address = ws.remote_address
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return str(address)


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
        # Above the relay's longest BLOCK (shared/TESTING.md: redis-py's default is 5 s).
        socket_timeout=REDIS_BLOCK_MAX_MS / 1000 + 5,
        socket_connect_timeout=3,
        health_check_interval=30,
        # Fail fast when Redis is down: a page gets ERROR unavailable in well under a second
        # (redis-py's default retries for several), and the relay retries on its own schedule.
        retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), 2),
    )
    server = WebsocketServer(settings, client)
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
    return 0


__all__ = ["WebsocketServer", "run"]
