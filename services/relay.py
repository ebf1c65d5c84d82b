"""The relay: follows the machine's events stream and broadcasts each entry's frame to every page.

    events stream --Broker.read_events--> Relay.run --Pages.broadcast--> every connected page

It reads only through the broker (`read_events`, `last_event_id`, `snapshot`). The broker's
Redis client is synchronous, so the blocking read runs in a daemon thread of the relay's own
(see Relay). After an outage the relay sends every page the current screen and follows the
stream anew from its newest entry.

`Pages` is the set of connected pages, each with a page id of its connection (the fleet
agent names a page to the backend by it). `broadcast()` writes without awaiting, and so does
`send()` to one page, so one slow screen cannot stall the others (shared/STYLE.md); a page whose
unsent frames pass PAGE_WRITE_LIMIT_BYTES reads nothing and is closed (1008), its buffer
dropped with it. The relay is one source of frames for `Pages` (one machine, `main.py up`);
the fleet agent's link to the backend is the other (services/agent_service.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
from websockets.asyncio.server import ServerConnection, broadcast
from websockets.protocol import State as WsState

from constants.tunables import (
    PAGE_CLOSE_TIMEOUT_S,
    PAGE_WRITE_LIMIT_BYTES,
    REDIS_BLOCK_MAX_MS,
    RELAY_BATCH,
    RELAY_RETRY_MAX_S,
    RELAY_RETRY_MIN_S,
)
from cores.broker import Broker
from cores.logs import kv
from cores.protocol import encode

log = logging.getLogger(__name__)

#: Close code for a page that floods or stops reading (RFC 6455: policy violation).
CLOSE_POLICY_VIOLATION = 1008


@dataclass(frozen=True)
class Registered:
    """A page just registered: its page id, and the broadcast count then (for `missed_newer`)."""

    page: int
    seen: int


class Pages:
    """The connected pages. The server registers each in try/finally; the relay broadcasts.

    It also remembers how many frames were broadcast and the version of the newest, so that
    a page whose snapshot is older than a frame it already received does not get the snapshot.
    Each page gets a page id (1, 2, ...) for the life of its connection.
    """

    def __init__(self, write_limit: int = PAGE_WRITE_LIMIT_BYTES) -> None:
        self.write_limit = write_limit
        self.connections: set[ServerConnection] = set()
        self.broadcasts = 0
        self.version = 0
        self._closing: set[asyncio.Task[None]] = set()
        self._by_id: dict[int, ServerConnection] = {}
        self._ids: dict[ServerConnection, int] = {}
        self._last_id = 0

    def __len__(self) -> int:
        return len(self.connections)

    def add(self, ws: ServerConnection) -> Registered:
        """Register a page: its page id, and the broadcast count, for `missed_newer`."""
        self._last_id += 1
        self.connections.add(ws)
        self._by_id[self._last_id] = ws
        self._ids[ws] = self._last_id
        return Registered(self._last_id, self.broadcasts)

    def discard(self, ws: ServerConnection) -> None:
        self.connections.discard(ws)
        page = self._ids.pop(ws, None)
        if page is not None:
            self._by_id.pop(page, None)

    def send(self, page: int, text: str) -> bool:
        """Send `text` to one page without awaiting (False: no such page connected now)."""
        ws = self._by_id.get(page)
        if ws is None or ws not in self.connections:
            return False
        broadcast([ws], text)
        if unsent_bytes(ws) > self.write_limit:
            self.close_slow(ws, "unsent frames past the write limit")
        return True

    def missed_newer(self, seen: int, version: int) -> bool:
        """A frame newer than `version` was broadcast since the count `seen`."""
        return self.broadcasts > seen and self.version > version

    def broadcast(self, text: str, version: int) -> None:
        """Send `text` to every page, then close the pages that stopped reading."""
        self.broadcasts += 1
        self.version = version
        broadcast(self.connections, text)
        for ws in [ws for ws in self.connections if unsent_bytes(ws) > self.write_limit]:
            self.close_slow(ws, "unsent frames past the write limit")

    def close_slow(self, ws: ServerConnection, why: str) -> None:
        """Close a page that does not take its frames: 1008, then drop it if it cannot take that.

        It leaves the broadcast set at once, so its buffer grows no further meanwhile.
        """
        if ws not in self.connections:
            return
        self.connections.discard(ws)
        log.warning(
            "page stopped reading, closing it",
            extra=kv(peer=peer_name(ws), why=why, unsent=unsent_bytes(ws)),
        )
        task = asyncio.create_task(_close_slow(ws), name="close-slow-page")
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)


async def _close_slow(ws: ServerConnection) -> None:
    # close() waits for room in the write buffer first, which a page that reads nothing never
    # makes: past the deadline, drop the connection and its buffer.
    try:
        async with asyncio.timeout(PAGE_CLOSE_TIMEOUT_S):
            await ws.close(CLOSE_POLICY_VIOLATION, "page reads too slowly")
    except TimeoutError:
        ws.transport.abort()


def unsent_bytes(ws: ServerConnection) -> int:
    """Bytes written to the page's connection that its socket has not taken yet."""
    if ws.protocol.state is not WsState.OPEN:
        return 0
    return ws.transport.get_write_buffer_size()


def peer_name(ws: ServerConnection) -> str:
    address = ws.remote_address
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return str(address)


class Relay:
    """Broadcasts every new entry of the machine's events stream to `pages`, while `run()` runs.

    The blocking read runs in a daemon thread of its own, which hands what it reads to the
    event loop: an idle kiosk (no change on the machine) costs one XREAD per
    REDIS_BLOCK_MAX_MS, and a stop never waits for a read in progress (the thread ends with
    its next answer, or with the process).
    """

    def __init__(self, broker: Broker, pages: Pages) -> None:
        self.broker = broker
        self.pages = pages

    async def run(self) -> None:
        """Relay until cancelled; retries an unreachable stream with backoff and jitter."""
        loop = asyncio.get_running_loop()
        inbox: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        stop = threading.Event()

        def hand_over(kind: str, item: Any) -> None:
            if not stop.is_set():
                # The loop may close between the check and the call, at shutdown.
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(inbox.put_nowait, (kind, item))

        reader = threading.Thread(
            target=self._read, args=(hand_over, stop), daemon=True, name="ws-relay"
        )
        reader.start()
        try:
            while True:
                kind, item = await inbox.get()
                if kind == "snapshot":
                    self.pages.broadcast(encode(item.frame), item.version)
                else:
                    entry_id, fields = item
                    self._relay_entry(entry_id, fields)
        finally:
            stop.set()

    def _read(self, hand_over: Callable[[str, Any], None], stop: threading.Event) -> None:
        """The reader thread: follow the stream; after an outage, resync from the snapshot."""
        last_id: str | None = None
        delay = RELAY_RETRY_MIN_S
        failing = False
        while not stop.is_set():
            try:
                if failing:
                    last_id = self._resync(hand_over)
                elif last_id is None:
                    last_id = self.broker.last_event_id()
                entries = self.broker.read_events(last_id, REDIS_BLOCK_MAX_MS, RELAY_BATCH)
            except Exception as exc:
                if stop.is_set():
                    return
                if isinstance(exc, redis.RedisError):
                    log.warning(
                        "events stream unreachable, retrying",
                        extra=kv(error=exc, retry_in_s=round(delay, 2)),
                    )
                else:  # keep relaying whatever went wrong; a traceback is worth a line
                    log.exception("relay failed, retrying")
                failing = True
                stop.wait(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, RELAY_RETRY_MAX_S)
                continue
            if failing:
                log.info("events stream reachable again")
                failing = False
                delay = RELAY_RETRY_MIN_S
            for entry in entries:
                last_id = entry[0]
                hand_over("entry", entry)

    def _resync(self, hand_over: Callable[[str, Any], None]) -> str:
        """After an outage: send every page the current screen, then follow the stream anew.

        The stream may have lost entries (a Redis restarted without its data), so the relay
        starts again from its newest entry rather than from where it stopped.
        """
        last_id = self.broker.last_event_id()
        hand_over("snapshot", self.broker.snapshot())
        return last_id

    def _relay_entry(self, entry_id: str, fields: dict) -> None:
        text = fields.get("frame")
        try:
            frame = json.loads(text) if isinstance(text, str) else None
        except ValueError:
            frame = None
        if (
            not isinstance(text, str)
            or not isinstance(frame, dict)
            or not isinstance(frame.get("event"), str)
        ):
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
                pages=len(self.pages),
            ),
        )
        self.pages.broadcast(text, version)


__all__ = ["CLOSE_POLICY_VIOLATION", "Pages", "Registered", "Relay", "peer_name", "unsent_bytes"]
