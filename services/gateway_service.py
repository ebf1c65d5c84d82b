"""GATEWAY (fleet mode): the backend's websocket endpoint for the machines' agents.

    agent of m ==/agent, X-Machine-Id + Bearer token==> Gateway --Broker(m, hints)--> Redis
    work shard streams (cores/work.py) --one reader thread per shard--> pump of m --> agent
    fleet:{fleet}:audit --one reader thread--> machine_revoke of m --> close m (4003)

A relay with a gate (shared/STYLE.md), for many machines at once; the wire is
cores/agent_protocol.py.

The gate. `/healthz` answers 200, `/agent` is the agents' endpoint, anything else 404. Before
the upgrade `process_request` checks `X-Machine-Id` and `Authorization: Bearer <token>` with
`Fleet.authenticate` (a Redis read and a SHA-256 digest compared in constant time: in a
thread, AUTH_AT_ONCE at a time, so that a whole fleet reconnecting at once cannot take every
thread). A missing, wrong or revoked token
gets 401 with the same short body whatever the reason; the token is never logged. A machine
has one live connection: a newer authenticated one closes the older with CLOSE_REPLACED. A
`machine_revoke` entry of the fleet's audit stream closes the revoked machine's connection
with agent_protocol.CLOSE_REVOKED; a revoke that lands between the token check and the
connection's registration is caught by a registry check made after registering.

Agent -> gateway. Each connection has a reader task that takes frames off the socket into a
bounded queue (INBOX_MAX: when it is full the socket is not read, and TCP slows the agent
down) stamping their arrival time, and a handler that works them one at a time, so an agent
occupies at most one thread of the pool whatever it sends. Every frame is parsed with
`agent_protocol.parse(raw, FROM_AGENT)`; a malformed one is logged (kind of error, a short
preview) and dropped. `hello` records the agent in FLEET_SEEN, and its dispenser (driver,
the board's firmware) in the machine's DISPENSER hash. `page` passes a token bucket
(AGENT_FRAMES_PER_S, burst AGENT_FRAMES_BURST, judged on arrival): beyond it the page gets
ERROR rate_limited; else `cores.protocol.parse_client_frame` and `kiosk_commands.execute` on
the connection's Broker, and a refusal goes back to that page as the ERROR frame the
one-machine server sends. `vend_result` is recorded in the machine's VEND hash, with the
reason of a failure for the slot's count (and a hint wakes its DISPENSE worker) only for the order the machine is DISPENSING now and only once;
anything else changes nothing and is logged. Every read and write goes through the keys of
the machine the handshake authenticated: no frame names a machine, so no frame reaches
another machine's keys.

Gateway -> agent. No blocking read per machine: one thread per work shard follows the shard's
hints (XREAD BLOCK, no consumer group: the gateway wants every hint, not a share of them). A
hint for a connected machine schedules that machine's pump, one at a time per machine (a hint
that arrives during a pump runs it again after). A transition's hint carries its state,
version and frame (cores/work.py): when the hints' versions follow the last one sent on the
link without a gap, the pump sends their frames as they are, reading nothing (`direct_frames`);
a gap (a hint lost, or hints out of order), a hint without a state, a DISPENSING state (the
`vend` below needs the order), a first pump or a resync reads Redis instead. A pump that
reads gets the machine's events stream after the last entry read (XRANGE) and sends each
entry's frame not sent yet (by version) as `frame`; when the machine
is DISPENSING an order whose result the VEND hash does not hold, it sends `vend` (with the
slot the DISPENSE worker chose for it) once per
connection (the link is ordered and lossless while it lasts; each new connection is told
again, and the agent answers a repeat from its journal). A connection's first pump reads the
state and the stream's newest id in one MULTI (one slot) and sends the snapshot's frame.
Every GATEWAY_RESYNC_S each connection is pumped without a hint (a hint lost to a crash
delays a screen by that much at most) and FLEET_SEEN refreshed; a shard reader back from a
Redis outage pumps its shard's connections.

Behind TLS: run the gateway on a private address and put a reverse proxy that terminates TLS
in front of it, forwarding the websocket upgrade; agents then use `BACKEND_URL=wss://host/agent`.
With Caddy `reverse_proxy /agent 127.0.0.1:3333` does it all (upgrade headers included); with
nginx a `location /agent { proxy_pass http://127.0.0.1:3333; proxy_http_version 1.1;
proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection "upgrade";
proxy_read_timeout 60s; }` in a `server` with `listen 443 ssl`. Keep the Authorization and
X-Machine-Id headers as they come (both proxies do by default) and do not log them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from http import HTTPStatus
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

import redis
from redis.typing import EncodableT, FieldT
from websockets.asyncio.server import ServerConnection
from websockets.asyncio.server import serve as ws_serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from constants import keys
from constants.orders import OperatorKind, OrderField
from constants.states import ErrorCode, State
from constants.tunables import (
    AGENT_FRAME_MAX_BYTES,
    AGENT_FRAMES_BURST,
    AGENT_FRAMES_PER_S,
    AGENT_PING_S,
    AGENT_PONG_TIMEOUT_S,
    GATEWAY_RESYNC_S,
    REDIS_BLOCK_MAX_MS,
    RELAY_RETRY_MAX_S,
    RELAY_RETRY_MIN_S,
    WORK_SHARDS,
)
from cores import agent_protocol
from cores.agent_protocol import (
    CLOSE_REVOKED,
    FROM_AGENT,
    MACHINE_HEADER,
    AgentProtocolError,
    Kind,
    Message,
)
from cores.broker import Broker, CommandRefused
from cores.config import Settings
from cores.fleet import Fleet
from cores.logs import kv
from cores.models import Snapshot
from cores.protocol import ProtocolError, TokenBucket, error_frame, parse_client_frame
from cores.protocol import encode as encode_frame
from cores.work import Change, WorkHints, hint_change, shard_of, work_key
from services import kiosk_commands
from services.kiosk_commands import UNAVAILABLE_MESSAGE
from services.relay import peer_name
from services.runtime import redis_client
from services.stoppable import Stoppable
from services.web_files import respond

log = logging.getLogger(__name__)


class _RedactAuthorization(logging.Filter):
    """websockets logs each handshake header at DEBUG: never the Authorization one's value."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 2 and str(args[0]).lower() == "authorization":
            record.args = (args[0], "[redacted]")
        return True


#: The websockets server's logger (its level follows `websockets`, cores/logs.py).
ws_log = logging.getLogger("websockets.gateway")
ws_log.addFilter(_RedactAuthorization())

T = TypeVar("T")

AGENT_PATH = "/agent"
HEALTH_PATH = "/healthz"
#: Close code of a connection that a newer one of the same machine replaced.
CLOSE_REPLACED = 4000
#: Close code when the registry cannot be read right after the handshake (try again later).
CLOSE_TRY_AGAIN = 1013
#: Token checks (one Redis read and a digest each) running at once.
AUTH_AT_ONCE = 2
#: Connections the kernel queues before they are accepted, and how long a handshake may take
#: from its connection to its answer: enough for a whole fleet reconnecting at once.
GATEWAY_BACKLOG = 4096
HANDSHAKE_TIMEOUT_S = 30.0
#: Threads for the synchronous Redis calls: commands, pumps, token checks. Each connection
#: uses at most one for its frames and one for its pump at a time.
THREADS = 16
#: Frames of one agent taken off its socket and not handled yet; beyond it TCP pushes back.
INBOX_MAX = 16
#: Events entries a pump reads at once (it reads again at once when there were more).
PUMP_BATCH = 100
#: Hints or audit entries a reader takes at once.
READ_BATCH = 500
#: A frame to an agent that cannot be written for this long drops the connection.
SEND_TIMEOUT_S = 10.0
#: An agent that does not finish the closing handshake within this long is dropped (a gone
#: agent whose frames were not all read yet is noticed only then: its socket is not read).
CLOSE_TIMEOUT_S = AGENT_PONG_TIMEOUT_S
#: Characters of a malformed frame shown in its log line.
PREVIEW_CHARS = 40
#: A connection's malformed or rate-limited frames are logged at the first and every this many.
LOG_EVERY = 1000


@dataclass(frozen=True)
class Arrival:
    """A frame as it came off an agent's socket, with its arrival time (monotonic s)."""

    at: float
    message: str | bytes


#: What an agent's reader queues when the agent stops sending.
END = None


class VendVerdict(StrEnum):
    """What becomes of an agent's vend_result (money rule 6: record it once, for its order)."""

    RECORDED = "recorded"
    NOT_DISPENSING = "not_dispensing"  # not the order the machine is vending now
    REPEAT = "repeat"  # a result is recorded for it already
    #: After the deadline: the order waits in the operator's queue as a vend outcome unknown;
    #: the journal's answer is noted there for the person who resolves it (nothing else moves).
    LATE = "late"


def judge_vend_result(
    snap: Snapshot, order_id: str, recorded: bool, awaits_operator: bool = False
) -> VendVerdict:
    """A vend result counts only for the machine's DISPENSING order, and only once; one that
    comes after the order went to the operator (vend outcome unknown) is noted there, once."""
    if recorded:
        return VendVerdict.REPEAT
    if snap.state is State.DISPENSING and snap.order_id == order_id:
        return VendVerdict.RECORDED
    return VendVerdict.LATE if awaits_operator else VendVerdict.NOT_DISPENSING


@dataclass
class Catch:
    """What a pump read for a connection: the texts to send and where the link is now."""

    texts: list[str]
    cursor: str
    vend_order: str | None
    more: bool = False
    #: The version of the newest frame sent or skipped as sent already (None: none read).
    version: int | None = None


@dataclass(eq=False)
class Link:
    """One agent's live connection and what has been sent on it."""

    machine_id: str
    ws: ServerConnection
    broker: Broker
    peer: str
    bucket: TokenBucket = field(
        default_factory=lambda: TokenBucket(AGENT_FRAMES_PER_S, AGENT_FRAMES_BURST)
    )
    #: Id of the newest events entry sent (None until the snapshot was sent).
    cursor: str | None = None
    #: The order `vend` was sent for on this connection.
    vend_sent: str | None = None
    #: The state version of the newest frame sent (None until the snapshot was sent).
    sent_version: int | None = None
    #: Transitions told by hints since the last pump, to send without reading Redis.
    hinted: list[Change] = field(default_factory=list)
    #: The next pump reads Redis (a first pump, a hint without a state, a resync).
    read: bool = True
    version: str | None = None
    #: False until the registry check after registration passed, and once closed.
    open: bool = False
    pumping: bool = False
    again: bool = False
    malformed: int = 0
    limited: int = 0


class Gateway(Stoppable):
    """The agents' gateway. Start it with `serve()`; stop it with `request_stop()`.

    `client`: a synchronous redis-py client with decode_responses=True and a short socket
    timeout; `blocking`: the client of the readers' XREAD BLOCK (`block_ms`), whose timeout
    outlasts it. `clock` stamps frames for the flood bucket; `resync_s` is GATEWAY_RESYNC_S.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        blocking: redis.Redis | None = None,
        clock: Callable[[], float] = time.monotonic,
        block_ms: int = REDIS_BLOCK_MAX_MS,
        resync_s: float = GATEWAY_RESYNC_S,
        shards: int = WORK_SHARDS,
    ) -> None:
        self.redis = client
        self.blocking = blocking or client
        self.fleet = Fleet(client)
        self.hints = WorkHints(client, shards)
        self.clock = clock
        self.block_ms = block_ms
        self.resync_s = resync_s
        self.shards = shards
        self.links: dict[str, Link] = {}
        self.port: int | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._auth: asyncio.Semaphore | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

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
        stop the gateway; agents are closed with 1001 (going away) and reconnect elsewhere.
        """
        pool = self._pool = ThreadPoolExecutor(THREADS, thread_name_prefix="gateway")
        self._auth = asyncio.Semaphore(AUTH_AT_ONCE)
        readers_stop = threading.Event()
        try:
            with self.stoppable(stop, handle_signals) as stopping:
                await self._listen(host, port, ready, stopping, readers_stop)
        finally:
            readers_stop.set()
            pool.shutdown(wait=False, cancel_futures=True)
            log.info("gateway stopped")

    async def _listen(
        self,
        host: str,
        port: int,
        ready: Callable[[int], None] | None,
        stopping: asyncio.Event,
        readers_stop: threading.Event,
    ) -> None:
        async with ws_serve(
            self._handler,
            host,
            port,
            process_request=self._process_request,
            max_size=AGENT_FRAME_MAX_BYTES,
            ping_interval=AGENT_PING_S,
            ping_timeout=AGENT_PONG_TIMEOUT_S,
            close_timeout=CLOSE_TIMEOUT_S,
            # A fleet reconnecting at once (after a restart of the backend): the kernel
            # queues the connections, and a handshake may wait its turn for the token check.
            open_timeout=HANDSHAKE_TIMEOUT_S,
            backlog=GATEWAY_BACKLOG,
            server_header=None,
            logger=ws_log,
        ) as server:
            self.port = server.sockets[0].getsockname()[1]
            self._start_readers(readers_stop)
            resync = asyncio.create_task(self._resync(), name="gateway-resync")
            log.info("gateway listening", extra=kv(host=host, port=self.port))
            if ready is not None:
                ready(self.port)
            try:
                await stopping.wait()
            finally:
                log.info("gateway stopping", extra=kv(agents=len(self.links)))
                for link in self.links.values():
                    link.open = False  # frames not handled yet are dropped
                readers_stop.set()
                resync.cancel()
                await asyncio.gather(resync, return_exceptions=True)

    async def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a synchronous (Redis) call in the gateway's pool."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- handshake --------------------------------------------------------------------------

    async def _process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        """Let an authenticated /agent upgrade go on; answer anything else as plain HTTP."""
        path = urlsplit(request.path).path
        if path == HEALTH_PATH:
            body = json.dumps({"status": "ok", "agents": len(self.links)}).encode()
            return respond(HTTPStatus.OK, body + b"\n", ".json")
        if path != AGENT_PATH:
            return respond(HTTPStatus.NOT_FOUND, b"not found\n", ".txt")
        ids = request.headers.get_all(MACHINE_HEADER)
        machine_id = ids[0] if len(ids) == 1 else None
        token = _bearer(request.headers.get_all("Authorization"))
        peer = peer_name(connection)
        if machine_id is None or token is None:
            ok = False  # nothing to check: no hash spent on it
        else:
            assert self._auth is not None  # set by serve()
            try:
                async with self._auth:
                    ok = await self._in_thread(self.fleet.authenticate, machine_id, token)
            except redis.RedisError as exc:
                log.warning("agent refused: redis unreachable", extra=kv(peer=peer, error=exc))
                return respond(HTTPStatus.SERVICE_UNAVAILABLE, b"unavailable\n", ".txt")
        if not ok:
            log.warning(
                "agent refused",
                extra=kv(machine_id=(machine_id or "-")[:64], peer=peer),
            )
            return respond(HTTPStatus.UNAUTHORIZED, b"unauthorized\n", ".txt")
        return None

    # --- connections ------------------------------------------------------------------------

    async def _handler(self, ws: ServerConnection) -> None:
        # process_request authenticated exactly this header of this request.
        machine_id = ws.request.headers[MACHINE_HEADER] if ws.request else ""
        broker = Broker(self.redis, machine_id, hints=self.hints)
        link = Link(machine_id, ws, broker, peer_name(ws))
        older = self.links.get(machine_id)
        self.links[machine_id] = link
        if older is not None:
            older.open = False
            log.info("agent replaced", extra=kv(machine_id=machine_id, older=older.peer))
            self._spawn(older.ws.close(CLOSE_REPLACED, "replaced"), "close-replaced")
        log.info("agent connected", extra=kv(machine_id=machine_id, peer=link.peer))
        inbox: asyncio.Queue[Arrival | None] = asyncio.Queue(INBOX_MAX)
        reader = asyncio.create_task(self._read(ws, inbox), name=f"agent-reader {machine_id}")
        try:
            if not await self._still_active(link):
                return
            link.open = True
            self._schedule_pump(link)
            while (arrival := await inbox.get()) is not END:
                if link.open:  # a revoked or replaced link's last frames are dropped
                    await self._on_frame(link, arrival)
        except ConnectionClosed:
            pass
        finally:
            link.open = False
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            if self.links.get(machine_id) is link:
                del self.links[machine_id]
            log.info(
                "agent disconnected",
                extra=kv(machine_id=machine_id, peer=link.peer, code=ws.close_code),
            )

    async def _still_active(self, link: Link) -> bool:
        """After registering: the machine was not revoked since its token was checked (a
        revoke after this point reaches the audit reader, which finds the link)."""
        try:
            active = await self._in_thread(_registered, self.redis, link.machine_id)
        except redis.RedisError as exc:
            log.warning("registry unreachable", extra=kv(machine_id=link.machine_id, error=exc))
            await link.ws.close(CLOSE_TRY_AGAIN, "unavailable")
            return False
        if not active:
            link.open = False
            log.info("agent revoked, closing it", extra=kv(machine_id=link.machine_id))
            await link.ws.close(CLOSE_REVOKED, "revoked")
        return active

    async def _read(self, ws: ServerConnection, inbox: asyncio.Queue[Arrival | None]) -> None:
        """Take an agent's frames off its socket as they arrive, stamped; a full inbox stops
        the reading (and TCP the agent)."""
        try:
            async for message in ws:
                await inbox.put(Arrival(self.clock(), message))
        except ConnectionClosed:
            pass
        except Exception:
            # The handler must not wait for ever on a reader that died.
            log.exception("agent reader failed", extra=kv(peer=peer_name(ws)))
        await inbox.put(END)

    async def _on_frame(self, link: Link, arrival: Arrival) -> None:
        try:
            message = agent_protocol.parse(arrival.message, FROM_AGENT)
        except AgentProtocolError as exc:
            link.malformed += 1
            if link.malformed % LOG_EVERY == 1:
                log.warning(
                    "agent frame dropped",
                    extra=kv(
                        machine_id=link.machine_id,
                        error=str(exc)[:80],
                        preview=_preview(arrival.message),
                        dropped=link.malformed,
                    ),
                )
            return
        if message.kind is Kind.PAGE:
            await self._on_page(link, arrival.at, message)
        elif message.kind is Kind.HELLO:
            link.version = message.version
            log.info(
                "agent hello",
                extra=kv(
                    machine_id=link.machine_id,
                    version=message.version,
                    driver=message.driver,
                    firmware=message.firmware,
                ),
            )
            try:
                await self._in_thread(self.fleet.seen, link.machine_id, message.version)
                if message.driver is not None:
                    await self._in_thread(
                        record_dispenser, link.broker, message.driver, message.firmware
                    )
            except redis.RedisError as exc:
                log.warning("seen not recorded", extra=kv(machine_id=link.machine_id, error=exc))
        elif message.kind is Kind.VEND_RESULT:
            await self._on_vend_result(link, message)

    async def _on_page(self, link: Link, at: float, message: Message) -> None:
        """A kiosk page's frame: through the bucket, the parser and the machine's Broker."""
        page = cast(int, message.page)
        if not link.bucket.take(at):
            link.limited += 1
            if link.limited % LOG_EVERY == 1:
                log.warning(
                    "agent rate limited", extra=kv(machine_id=link.machine_id, limited=link.limited)
                )
            await self._reply(
                link,
                page,
                ErrorCode.RATE_LIMITED,
                f"more than {AGENT_FRAMES_PER_S} frames per second",
            )
            return
        try:
            command = parse_client_frame(cast(str, message.frame))
        except ProtocolError as exc:
            await self._reply(link, page, exc.code, exc.message)
            return
        try:
            await self._in_thread(kiosk_commands.execute, link.broker, command)
        except CommandRefused as exc:
            await self._reply(link, page, exc.code, exc.message)
        except redis.RedisError as exc:
            log.warning(
                "command: redis unreachable", extra=kv(machine_id=link.machine_id, error=exc)
            )
            await self._reply(link, page, ErrorCode.UNAVAILABLE, UNAVAILABLE_MESSAGE)
        except Exception:
            log.exception(
                "command failed", extra=kv(machine_id=link.machine_id, command=command.event)
            )
            await self._reply(link, page, ErrorCode.UNAVAILABLE, UNAVAILABLE_MESSAGE)

    async def _on_vend_result(self, link: Link, message: Message) -> None:
        order_id, result = cast(str, message.order_id), cast(str, message.result)
        try:
            verdict = await self._in_thread(
                record_vend_result,
                link.broker,
                self.hints,
                order_id,
                result,
                None,
                message.reason,
            )
        except redis.RedisError as exc:
            # The agent has let the result go: ask it again (the next pump sends `vend` anew),
            # and it answers from its journal, never vending twice.
            log.warning(
                "vend result not recorded, asking again",
                extra=kv(machine_id=link.machine_id, order_id=order_id[:64], error=exc),
            )
            if link.vend_sent == order_id:
                link.vend_sent = None
            self._schedule_pump(link)
            return
        line = {
            VendVerdict.RECORDED: "vend result",
            VendVerdict.LATE: "vend result after the deadline, noted for the operator",
        }.get(verdict, "vend result ignored")
        log.info(
            line,
            extra=kv(
                machine_id=link.machine_id, order_id=order_id[:64], result=result, verdict=verdict
            ),
        )

    async def _reply(self, link: Link, page: int, code: ErrorCode, message: str) -> None:
        frame = error_frame(code, message)
        await self._send(link, agent_protocol.encode(Message(Kind.REPLY, page=page, frame=frame)))

    async def _send(self, link: Link, text: str) -> None:
        """Send to one agent; one that takes nothing for SEND_TIMEOUT_S is dropped."""
        try:
            async with asyncio.timeout(SEND_TIMEOUT_S):
                await link.ws.send(text)
        except TimeoutError:
            log.warning("agent stopped reading, dropping it", extra=kv(machine_id=link.machine_id))
            link.ws.transport.abort()

    # --- gateway -> agent -------------------------------------------------------------------

    def _schedule_pump(self, link: Link, read: bool = True) -> None:
        """Pump `link` now, or again right after the pump in flight; `read`: reading Redis
        (False: only for the frames handed over by hints, unless they leave a gap)."""
        if read:
            link.read = True
        if not link.open:
            return
        if link.pumping:
            link.again = True
            return
        link.pumping = True
        self._spawn(self._pump(link), f"pump {link.machine_id}")

    async def _pump(self, link: Link) -> None:
        try:
            while link.open:
                link.again = False
                hinted, link.hinted = link.hinted, []
                direct = None if link.read else direct_frames(link.sent_version, hinted)
                if direct is not None:
                    for version, text in direct:
                        await self._send(link, text)
                        link.sent_version = version
                    if link.again:
                        continue
                    return
                link.read = False
                try:
                    catch = await self._in_thread(
                        read_for_agent, link.broker, link.cursor, link.vend_sent, link.sent_version
                    )
                except redis.RedisError as exc:
                    # The next hint, or the resync, pumps again (and reads).
                    link.read = True
                    log.warning("pump: redis unreachable", extra=kv(machine_id=link.machine_id))
                    log.debug("pump error", extra=kv(error=exc))
                    return
                # Marked before the send: the agent may answer at once, and a result that
                # cannot be recorded clears the mark (to ask again) before this line is reached.
                if catch.vend_order is not None:
                    link.vend_sent = catch.vend_order
                for text in catch.texts:
                    await self._send(link, text)
                link.cursor = catch.cursor
                if catch.version is not None:
                    link.sent_version = max(catch.version, link.sent_version or 0)
                if catch.vend_order is not None:
                    log.info(
                        "vend asked",
                        extra=kv(machine_id=link.machine_id, order_id=catch.vend_order),
                    )
                if not (link.again or catch.more):
                    return
        except ConnectionClosed:
            pass
        except Exception:
            link.read = True
            log.exception("pump failed", extra=kv(machine_id=link.machine_id))
        finally:
            link.pumping = False

    async def _resync(self) -> None:
        """Every resync_s: pump every connection, and refresh FLEET_SEEN."""
        while True:
            await asyncio.sleep(self.resync_s)
            links = [link for link in self.links.values() if link.open]
            for link in links:
                self._schedule_pump(link)
            try:
                await self._in_thread(self._seen_all, [(k.machine_id, k.version) for k in links])
            except redis.RedisError as exc:
                log.warning("seen not refreshed", extra=kv(error=exc))
            except Exception:  # the resync must outlive anything; a traceback is worth a line
                log.exception("seen not refreshed")

    def _seen_all(self, machines: list[tuple[str, str | None]]) -> None:
        for machine_id, version in machines:
            self.fleet.seen(machine_id, version)

    # --- readers: the work shards and the fleet's audit -------------------------------------

    def _start_readers(self, stop: threading.Event) -> None:
        loop = asyncio.get_running_loop()

        def to_loop(fn: Callable[..., None], *args: Any) -> None:
            if not stop.is_set():
                with contextlib.suppress(RuntimeError):  # the loop closed at shutdown
                    loop.call_soon_threadsafe(fn, *args)

        for shard in range(self.shards):
            reader = StreamReader(
                self.blocking,
                work_key(shard),
                functools.partial(to_loop, self._on_hints, shard),
                stop,
                self.block_ms,
            )
            reader.start(f"gateway-shard-{shard}")
        audit = StreamReader(
            self.blocking,
            keys.FLEET_AUDIT,
            lambda entries: to_loop(self._on_audit, entries),
            stop,
            self.block_ms,
        )
        audit.start("gateway-audit")

    def _on_hints(self, shard: int, entries: list[tuple[str, dict]] | None) -> None:
        """Hints of a shard (None: the reader resumed after an outage: pump the whole shard,
        reading). A transition's hint hands its frame to the pump; any other makes it read."""
        if entries is None:
            for machine_id, link in list(self.links.items()):
                if shard_of(machine_id, self.shards) == shard:
                    self._schedule_pump(link)
            return
        pumped: dict[str, Link] = {}
        for _, fields in entries:
            hinted = self.links.get(str(fields.get("m")))
            if hinted is None:
                continue
            change = hint_change(fields)
            if change is None:
                hinted.read = True
            else:
                hinted.hinted.append(change)
            pumped[hinted.machine_id] = hinted
        for link in pumped.values():
            self._schedule_pump(link, read=False)

    def _on_audit(self, entries: list[tuple[str, dict]] | None) -> None:
        """Registry changes: close a revoked machine's connection (None: after an outage,
        check every connection against the registry)."""
        if entries is None:
            for link in list(self.links.values()):
                self._spawn(self._still_active(link), "recheck-registry")
            return
        for _, fields in entries:
            revoked = self.links.get(str(fields.get("target")))
            if fields.get("action") != "machine_revoke" or revoked is None:
                continue
            revoked.open = False
            log.info("agent revoked, closing it", extra=kv(machine_id=revoked.machine_id))
            self._spawn(revoked.ws.close(CLOSE_REVOKED, "revoked"), "close-revoked")


# --- the synchronous Redis work (in the pool's threads) ----------------------------------------


def direct_frames(sent: int | None, hinted: list[Change]) -> list[tuple[int, str]] | None:
    """The frames of hinted transitions to send as they are, as (version, agent frame): those
    newer than `sent`, when their versions follow it without a gap; None when Redis must be
    read instead (nothing sent yet, a gap, DISPENSING: its `vend` needs the order, a frame too
    large to relay)."""
    if sent is None:
        return None
    out: list[tuple[int, str]] = []
    for change in sorted({c.version: c for c in hinted if c.version > sent}.values(), key=_v):
        if change.version != sent + len(out) + 1 or change.state == State.DISPENSING:
            return None
        if len(change.frame.encode()) > AGENT_FRAME_MAX_BYTES - 64:
            return None
        out.append((change.version, _frame(change.frame)))
    return out


def _v(change: Change) -> int:
    return change.version


def read_for_agent(
    broker: Broker, cursor: str | None, vend_sent: str | None, sent_version: int | None = None
) -> Catch:
    """What to send a machine's agent: the snapshot (first pump, `cursor` None) or the events
    after `cursor` whose version is above `sent_version` (sent from hints already); and `vend`
    for the DISPENSING order when no result is recorded for it and it was not asked on this
    connection yet (`vend_sent`)."""
    client = broker.redis
    texts: list[str] = []
    more = False
    version: int | None = None
    if cursor is None:
        # The screen and the stream's newest id together (one slot): no event falls between.
        with client.pipeline(transaction=True) as pipe:
            pipe.hgetall(broker.state_key)
            pipe.xrevrange(broker.events_key, count=1)
            raw, newest = pipe.execute()
        snap = Snapshot.parse(raw)
        cursor = newest[0][0] if newest else "0-0"
        texts.append(_frame(encode_frame(snap.frame)))
        version = snap.version
    else:
        entries = cast(
            list[tuple[str, dict[str, str]]],
            client.xrange(broker.events_key, min="(" + cursor, count=PUMP_BATCH),
        )
        more = len(entries) == PUMP_BATCH
        for entry_id, fields in entries:
            cursor = entry_id
            entry_version = _int(fields.get("version"))
            if entry_version is not None:
                version = max(entry_version, version or 0)
                if sent_version is not None and entry_version <= sent_version:
                    continue  # sent from its hint
            text = fields.get("frame")
            if not isinstance(text, str) or len(text.encode()) > AGENT_FRAME_MAX_BYTES - 64:
                log.warning(
                    "events entry not sent", extra=kv(machine_id=broker.machine_id, entry=entry_id)
                )
                continue
            texts.append(_frame(text))
        snap = broker.snapshot()
    vend_order = None
    order_id = snap.order_id
    if (
        snap.state is State.DISPENSING
        and order_id
        and order_id != vend_sent
        and not client.hexists(vend_key(broker.machine_id), order_id)
    ):
        order = broker.order(order_id)
        if order is None:
            log.warning("dispensing order missing", extra=kv(order_id=order_id))
        elif order.get(OrderField.VEND_DURABLE_AT) is None:
            # Not known durable yet (cores/broker.py, "Durability"): the DISPENSE worker marks
            # it once a replica holds it, and its hint pumps again.
            log.debug("dispensing not known durable yet", extra=kv(order_id=order_id))
        else:
            slot = order.get(OrderField.SLOT)
            message = Message(
                Kind.VEND,
                order_id=order_id,
                drink_id=order.drink.id,
                slot=int(slot) if slot and slot.isdigit() and int(slot) > 0 else None,
            )
            texts.append(agent_protocol.encode(message))
            vend_order = order_id
    return Catch(texts, cursor, vend_order, more, version)


def record_vend_result(
    broker: Broker,
    hints: WorkHints,
    order_id: str,
    result: str,
    now: float | None = None,
    reason: str | None = None,
) -> VendVerdict:
    """Record an agent's vend result in its machine's VEND hash, if `judge_vend_result` says
    so (read and written under WATCH: the state, the hash and the operator's queue share the
    machine's slot), then wake the machine's workers. A LATE result is recorded too, and noted
    on the order's entry of the operator's queue (`journal`, and in its detail). `reason`:
    why a failed vend failed (the agent's journal), kept in the record for the slot's count.

    A recorded result is money-moving (it decides a vend or a refund): NotDurable (a
    RedisError) when no replica is known to hold it; the caller asks the agent again should
    the record be gone (cores/broker.py, "Durability")."""
    client = broker.redis
    key = vend_key(broker.machine_id)
    with client.pipeline() as pipe:
        while True:
            try:
                pipe.watch(broker.state_key, key, broker.operator_key)
                snap = Snapshot.parse(cast(dict[str, str], pipe.hgetall(broker.state_key)))
                raw = cast(str | None, pipe.hget(broker.operator_key, order_id))
                entry = json.loads(raw) if raw else {}
                awaits = entry.get("kind") == OperatorKind.VEND_UNKNOWN
                recorded = bool(pipe.hexists(key, order_id))
                verdict = judge_vend_result(snap, order_id, recorded, awaits)
                if verdict not in (VendVerdict.RECORDED, VendVerdict.LATE):
                    pipe.unwatch()
                    return verdict
                at = time.time() if now is None else now
                fields: dict[str, object] = {"result": result, "at": at}
                if reason is not None and result == "failed":
                    fields["reason"] = reason
                record = json.dumps(fields)
                pipe.multi()
                pipe.hset(key, order_id, record)
                if verdict is VendVerdict.LATE:
                    said = f"the machine's journal says {result} (reported after the deadline)"
                    entry["journal"] = result
                    entry["detail"] = "; ".join(filter(None, [entry.get("detail"), said]))
                    pipe.hset(broker.operator_key, order_id, json.dumps(entry))
                pipe.execute()
                break
            except redis.WatchError:
                continue
    hints.hint(broker.machine_id)
    broker.confirm_durable(key, {order_id: record})
    return verdict


def record_dispenser(broker: Broker, driver: str, firmware: str | None) -> None:
    """The agent's dispenser as its hello said (driver, the board's firmware), seen now, in
    the machine's DISPENSER hash (one key: the machine's slot)."""
    key = keys.key(keys.DISPENSER, broker.machine_id)
    now = str(time.time())
    fields = {"driver": driver, "firmware": firmware or "", "checked_at": now}
    if firmware:  # the board answered the agent's PING
        fields["last_seen"] = now
        fields["alive"] = "1"
    with broker.redis.pipeline() as pipe:  # MULTI on one key; last_seen stays if unanswered
        pipe.hdel(key, "alive")
        pipe.hset(key, mapping=cast(dict[FieldT, EncodableT], fields))
        pipe.execute()


def vend_key(machine_id: str) -> str:
    return keys.key(keys.VEND, machine_id)


def _registered(client: redis.Redis, machine_id: str) -> bool:
    """Whether `machine_id` is registered and not revoked (cores/fleet.py's registry)."""
    raw = client.hget(keys.FLEET_MACHINES, machine_id)
    return bool(raw) and json.loads(cast(str, raw)).get("revoked_at") is None


class StreamReader:
    """Follows one stream in a daemon thread: XREAD BLOCK from its newest entry at start,
    handing each batch of entries to `deliver`; after an outage it resumes from the newest
    entry again and calls `deliver(None)` first (whatever was missed is re-derived)."""

    def __init__(
        self,
        client: redis.Redis,
        stream: str,
        deliver: Callable[[list[tuple[str, dict]] | None], None],
        stop: threading.Event,
        block_ms: int,
    ) -> None:
        self.redis = client
        self.stream = stream
        self.deliver = deliver
        self.stop = stop
        self.block_ms = block_ms

    def start(self, name: str) -> threading.Thread:
        thread = threading.Thread(target=self.run, daemon=True, name=name)
        thread.start()
        return thread

    def run(self) -> None:
        # From the newest entry by id, not `$`: a `$` read again after each BLOCK would miss
        # what was added between two reads.
        last: str | None = None
        delay = RELAY_RETRY_MIN_S
        failing = False
        while not self.stop.is_set():
            try:
                if last is None:
                    newest = cast(list, self.redis.xrevrange(self.stream, count=1))
                    last = newest[0][0] if newest else "0-0"
                    if failing:
                        self.deliver(None)
                answer = self.redis.xread(
                    {self.stream: last}, count=READ_BATCH, block=self.block_ms
                )
            except Exception as exc:
                if self.stop.is_set():
                    return
                if isinstance(exc, redis.RedisError):
                    log.warning(
                        "stream unreachable, retrying",
                        extra=kv(stream=self.stream, error=exc, retry_in_s=round(delay, 2)),
                    )
                else:
                    log.exception("stream reader failed, retrying", extra=kv(stream=self.stream))
                last = None
                failing = True
                self.stop.wait(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, RELAY_RETRY_MAX_S)
                continue
            if failing:
                log.info("stream reachable again", extra=kv(stream=self.stream))
                failing, delay = False, RELAY_RETRY_MIN_S
            entries = _entries(answer)
            if entries:
                last = entries[-1][0]
                self.deliver(entries)


def _entries(answer: Any) -> list[tuple[str, dict]]:
    """The entries of a one-stream XREAD answer (RESP2 list or RESP3 dict)."""
    if not answer:
        return []
    if isinstance(answer, dict):
        return [entry for found in answer.values() for entry in found[0]]
    return [entry for _, entries in answer for entry in entries]


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _frame(text: str) -> str:
    return agent_protocol.encode(Message(Kind.FRAME, frame=text))


def _bearer(values: list[str]) -> str | None:
    """The token of exactly one `Authorization: Bearer <token>` header, else None."""
    if len(values) != 1:
        return None
    scheme, _, token = values[0].partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def _preview(message: str | bytes) -> str:
    if isinstance(message, bytes):
        return f"<{len(message)} bytes binary>"
    return message[:PREVIEW_CHARS]


# --- the process -----------------------------------------------------------------------------


def run(settings: Settings) -> int:
    """`main.py --service GATEWAY`: serve the agents until SIGTERM or SIGINT; 0, or 1 when it
    cannot listen. Raises ConfigError when no Redis is configured."""
    client = redis_client(settings, "gateway")
    blocking = redis_client(settings, "gateway", blocking=True)
    gateway = Gateway(client, blocking=blocking)
    try:
        asyncio.run(gateway.serve(settings.ws_host, settings.ws_port, handle_signals=True))
    except OSError as exc:
        log.error(
            "cannot listen", extra=kv(host=settings.ws_host, port=settings.ws_port, error=exc)
        )
        return 1
    finally:
        client.close()
        blocking.close()
    return 0


__all__ = ["Gateway", "VendVerdict", "direct_frames", "judge_vend_result", "read_for_agent", "run"]
