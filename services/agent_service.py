"""`main.py machine` (fleet mode): the agent on a vending machine.

    kiosk page --/ws--> KioskGate --Agent==BACKEND_URL, one websocket==> gateway (backend)
                        (the same gate     dispenser driver + vend journal (VAR_DIR/vends.jsonl)
                        as one machine's)

The agent serves the kiosk page and /ws on WS_HOST:WS_PORT with the one-machine server's page
gate (services/websocket_service.KioskGate: Origin check, flood gate, size and UTF-8 limits,
the page's files and headers, write limits). Behind the gate stands an `Agent` instead of
Redis: it holds one outbound websocket to BACKEND_URL (ws:// or wss://, certificates checked),
authenticated by `X-Machine-Id` and `Authorization: Bearer <MACHINE_TOKEN>`, and speaks
cores/agent_protocol.py on it:

    page frame, past the gate   -> {"kind": "page", "page": N, "frame": TEXT}
    {"kind": "frame"}           -> every page, and remembered as the current screen (a page
                                   that connects gets it)
    {"kind": "reply", "page"}   -> page N only
    {"kind": "vend"}            -> the driver, at most once per order (below)
    on each connect             <- {"kind": "hello", "version"}, then the results not sent yet

Offline: while the link is down (not connected yet, refused, dropped, or its pongs missing for
AGENT_PING_S + AGENT_PONG_TIMEOUT_S) every page shows OUT_OF_SERVICE and a tap gets ERROR
unavailable from the agent itself: no sale starts. When the link comes back the gateway sends
the current screen, which redraws the pages. Reconnects back off exponentially from
AGENT_RETRY_MIN_S to AGENT_RETRY_MAX_S with +-20 % jitter, from the minimum again after a
connection that lasted (through a keepalive round); a refused token (HTTP 401 at the
handshake, or a close with CLOSE_REVOKED) is logged once, "token refused", and tried again
every AGENT_REFUSED_RETRY_S, since only an operator can mend it.

Vends (money rule 6): on `vend {order_id, drink_id}` the agent

    vend of that order in progress here    does nothing (its result goes up when it ends)
    journal has a result                   answers vend_result with it, never vends again
    journal has "started", no result       answers unknown (the agent died mid-vend)
    nothing                                journals "started" (fsync'd), vends in a thread
                                           (the driver journals the result), answers it

A result that cannot be sent (link down) is kept and sent after the next hello; a restarted
agent answers from its journal when the gateway asks again.

The token is sent in the handshake header only: never to a page, in a frame or in a log line
(the websocket library's own DEBUG lines about the handshake are redacted).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import ssl
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from http import HTTPStatus
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from constants.states import State
from constants.tunables import (
    AGENT_FRAME_MAX_BYTES,
    AGENT_PING_S,
    AGENT_PONG_TIMEOUT_S,
    AGENT_REFUSED_RETRY_S,
    AGENT_RETRY_MAX_S,
    AGENT_RETRY_MIN_S,
    PAGE_SEND_TIMEOUT_S,
)
from cores import agent_protocol as wire
from cores.agent_protocol import CLOSE_REVOKED, FROM_GATEWAY, MACHINE_HEADER, Kind, Message
from cores.config import ConfigError, Settings
from cores.dispenser import JournaledDispenser
from cores.dispenser import from_settings as dispenser_from_settings
from cores.logs import kv
from cores.protocol import Command, encode
from cores.rules import Vend
from services.relay import Pages
from services.websocket_service import KioskGate, Screen, Unavailable

log = logging.getLogger(__name__)

#: The project's version, which the agent says in its hello (pyproject.toml is its one source).
PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
#: What every page shows while the backend link is down (web/kiosk.js draws it, reading no values).
OUT_OF_SERVICE_FRAME = encode({"event": str(State.OUT_OF_SERVICE), "values": {}})
#: How long the closing handshake of a dead link may take before it is dropped: with the
#: keepalive's ping and pong timeouts, a silent backend is offline within 5 s.
LINK_CLOSE_TIMEOUT_S = 0.5
LINK_OPEN_TIMEOUT_S = 5.0


def project_version(pyproject: Path = PYPROJECT) -> str:
    """The version in pyproject.toml ("unknown" when it cannot be read)."""
    try:
        version = str(tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["version"])
    except (OSError, KeyError, TypeError, ValueError):
        return "unknown"
    return version[: wire.VERSION_MAX_CHARS] or "unknown"


@dataclass(frozen=True)
class LinkTimings:
    """The link's keepalive and retry periods (seconds); tests shorten them."""

    ping_s: float = AGENT_PING_S
    pong_timeout_s: float = AGENT_PONG_TIMEOUT_S
    retry_min_s: float = AGENT_RETRY_MIN_S
    retry_max_s: float = AGENT_RETRY_MAX_S
    refused_retry_s: float = AGENT_REFUSED_RETRY_S

    @property
    def stable_s(self) -> float:
        """A connection up this long survived a keepalive round: the backoff starts over."""
        return self.ping_s + self.pong_timeout_s


class Backoff:
    """Exponential delays from `min_s` to `max_s`, each with +-20 % jitter. Pure but for `rng`."""

    def __init__(self, min_s: float, max_s: float, rng: random.Random) -> None:
        self.min_s = min_s
        self.max_s = max_s
        self.rng = rng
        self._next = min_s

    def delay(self) -> float:
        """The next delay; the one after it is twice as long, up to `max_s`."""
        delay = self._next * self.rng.uniform(0.8, 1.2)
        self._next = min(self._next * 2, self.max_s)
        return delay

    def reset(self) -> None:
        self._next = self.min_s


class LinkEnd(Enum):
    """How a connection attempt ended."""

    LOST = "lost"  # never made it, or dropped: back off and retry
    REFUSED = "refused"  # token refused (401) or revoked (CLOSE_REVOKED): retry slowly


class _Redact(logging.Filter):
    """Replaces the token in every line of the link's own logger (the library's DEBUG lines
    print the handshake's headers)."""

    def __init__(self, secret: str) -> None:
        super().__init__()
        self.secret = secret

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if self.secret in message:
            record.msg = message.replace(self.secret, "<token>")
            record.args = ()
        return True


class Agent:
    """The machine behind the page gate in fleet mode (services.websocket_service.Machine).

    `dispenser` is the driver with its journal; `rng` jitters the retries; `clock` is
    monotonic; `ssl_context` replaces the default certificate checks of wss:// (tests).
    """

    def __init__(
        self,
        settings: Settings,
        dispenser: JournaledDispenser,
        *,
        timings: LinkTimings = LinkTimings(),
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        ssl_context: ssl.SSLContext | None = None,
        version: str | None = None,
    ) -> None:
        check(settings)
        assert settings.backend_url is not None and settings.machine_token is not None
        self.settings = settings
        self.backend_url: str = settings.backend_url
        self._token: str = settings.machine_token
        self.dispenser = dispenser
        self.timings = timings
        self.rng = rng or random.Random()
        self.clock = clock
        self.ssl_context = ssl_context
        self.version = version or project_version()
        self.pages = Pages()
        self._link: ClientConnection | None = None
        self._online = False  # pages show OUT_OF_SERVICE until the gateway's first frame
        self._screen = Screen(OUT_OF_SERVICE_FRAME, 0)
        self._version = 0
        self._vending: set[str] = set()
        #: Results not sent yet: order id -> (result, reason of a failure).
        self._unsent: dict[str, tuple[Vend, str | None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._wire_log = logging.getLogger(f"{__name__}.link")

    @property
    def connected(self) -> bool:
        return self._link is not None

    @property
    def showing(self) -> str:
        """The frame every page shows now (OUT_OF_SERVICE_FRAME while offline)."""
        return self._screen.text

    # --- the page gate's side (websocket_service.Machine) -----------------------------------

    async def screen(self) -> Screen:
        return self._screen

    async def execute(self, page: int, text: str, command: Command) -> None:
        link = self._link
        if link is None:
            raise Unavailable("backend link down")
        try:
            async with asyncio.timeout(PAGE_SEND_TIMEOUT_S):
                await link.send(wire.encode(Message(Kind.PAGE, page=page, frame=text)))
        except (ConnectionClosed, TimeoutError) as exc:
            raise Unavailable(f"backend link lost: {exc}") from exc

    async def health(self) -> tuple[HTTPStatus, dict[str, object]]:
        # 200 while the agent serves: with the backend down its pages rightly show the
        # machine out of service; "backend" says whether the link is up.
        return HTTPStatus.OK, {"ok": True, "backend": "up" if self._link else "down"}

    async def follow(self, pages: Pages) -> None:
        """Hold the backend link until cancelled: connect, relay, reconnect with backoff."""
        self.pages = pages
        log.info("backend link connecting", extra=kv(backend=shown_url(self.backend_url)))
        redact = _Redact(self._token)
        self._wire_log.addFilter(redact)
        backoff = Backoff(self.timings.retry_min_s, self.timings.retry_max_s, self.rng)
        refused = False
        try:
            while True:
                began = self.clock()
                end, why = await self._connect_once()
                if end is LinkEnd.REFUSED:
                    if not refused:
                        log.error(
                            "token refused",
                            extra=kv(
                                backend=shown_url(self.backend_url),
                                retry_every_s=self.timings.refused_retry_s,
                            ),
                        )
                    refused = True
                    delay = self.timings.refused_retry_s * self.rng.uniform(1.0, 1.2)
                else:
                    refused = False
                    if self.clock() - began >= self.timings.stable_s:
                        backoff.reset()
                    delay = backoff.delay()
                    log.info("backend link retry", extra=kv(why=why, retry_in_s=round(delay, 2)))
                await asyncio.sleep(delay)
        finally:
            self._wire_log.removeFilter(redact)

    # --- the link ---------------------------------------------------------------------------

    async def _connect_once(self) -> tuple[LinkEnd, str]:
        """One connection: handshake, hello, relay until it ends; then the pages go offline.

        Returns how it ended, and why in a few words."""
        options: dict[str, object] = {}
        if self.ssl_context is not None:
            options["ssl"] = self.ssl_context
        try:
            async with connect(
                self.backend_url,
                additional_headers={
                    MACHINE_HEADER: self.settings.machine_id,
                    "Authorization": f"Bearer {self._token}",
                },
                user_agent_header=f"drink-machine-agent/{self.version}",
                open_timeout=LINK_OPEN_TIMEOUT_S,
                ping_interval=self.timings.ping_s,
                ping_timeout=self.timings.pong_timeout_s,
                close_timeout=LINK_CLOSE_TIMEOUT_S,
                max_size=AGENT_FRAME_MAX_BYTES,
                logger=self._wire_log,
                **options,  # type: ignore[arg-type]
            ) as ws:
                try:
                    await self._link_up(ws)
                    async for raw in ws:
                        await self._on_gateway(raw)
                except ConnectionClosed:
                    pass
                finally:
                    self._link = None
                code = ws.close_code
            end = LinkEnd.REFUSED if code == CLOSE_REVOKED else LinkEnd.LOST
            why = f"closed with {code}"
        except InvalidStatus as exc:
            status = exc.response.status_code
            end = LinkEnd.REFUSED if status == HTTPStatus.UNAUTHORIZED else LinkEnd.LOST
            why = f"handshake answered {status}"
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            why = f"{exc.__class__.__name__}: {exc}"
            end = LinkEnd.LOST
        except asyncio.CancelledError:
            self._link = None
            raise
        except Exception:
            log.exception("backend link failed")
            end, why = LinkEnd.LOST, "link failed"
        self._offline(why)
        return end, why

    async def _link_up(self, ws: ClientConnection) -> None:
        driver, firmware = await asyncio.to_thread(self._dispenser_status)
        hello = Message(Kind.HELLO, version=self.version, driver=driver, firmware=firmware)
        await ws.send(wire.encode(hello))
        self._link = ws
        self._online = True
        log.info("backend link up", extra=kv(backend=shown_url(self.backend_url)))
        await self._send_results()

    def _dispenser_status(self) -> tuple[str | None, str | None]:
        """The driver's name and its board's firmware (from its last PING), for the hello."""
        status_of = getattr(self.dispenser, "status", None)
        if status_of is None:
            return self.settings.dispenser, None
        try:
            status = status_of()
        except Exception:
            log.exception("dispenser status unreadable")
            return self.settings.dispenser, None
        firmware = status.get("firmware")
        shown = str(firmware)[: wire.FIRMWARE_MAX_CHARS] if firmware else None
        if shown is not None and not (shown.isascii() and shown.isprintable()):
            shown = None
        return str(status.get("driver") or self.settings.dispenser), shown

    def _offline(self, why: str) -> None:
        """The link is down: every page shows OUT_OF_SERVICE (once per outage)."""
        self._link = None
        if not self._online:
            return
        self._online = False
        log.warning("backend link down: pages out of service", extra=kv(why=why))
        self._version += 1
        self._screen = Screen(OUT_OF_SERVICE_FRAME, self._version)
        self.pages.broadcast(OUT_OF_SERVICE_FRAME, self._version)

    async def _on_gateway(self, raw: str | bytes) -> None:
        try:
            message = wire.parse(raw, FROM_GATEWAY)
        except wire.AgentProtocolError as exc:
            log.warning("gateway frame dropped", extra=kv(why=exc))
            return
        if message.kind is Kind.FRAME:
            assert message.frame is not None  # parse checks every field
            if not _is_kiosk_frame(message.frame):
                log.warning("gateway frame without a kiosk event, dropped")
                return
            self._version += 1
            self._screen = Screen(message.frame, self._version)
            self.pages.broadcast(message.frame, self._version)
        elif message.kind is Kind.REPLY:
            assert message.page is not None and message.frame is not None
            if not self.pages.send(message.page, message.frame):
                log.debug("reply to a page gone", extra=kv(page=message.page))
        elif message.kind is Kind.VEND:
            assert message.order_id is not None and message.drink_id is not None
            await self._on_vend(message.order_id, message.drink_id, message.slot)

    # --- vends (money rule 6) ---------------------------------------------------------------

    async def _on_vend(self, order_id: str, drink_id: str, slot: int | None = None) -> None:
        if order_id in self._vending:
            log.info("vend already in progress", extra=kv(order_id=order_id))
            return
        self._vending.add(order_id)
        try:
            known = await asyncio.to_thread(self.dispenser.outcome, order_id)
            if known is None:
                await asyncio.to_thread(self.dispenser.begin, order_id, drink_id, slot)
        except Exception:
            # No journal, no vend: the backend's deadline hands the order to a person.
            self._vending.discard(order_id)
            log.exception("vend journal unusable, not vending", extra=kv(order_id=order_id))
            return
        if known is not None:
            self._vending.discard(order_id)
            log.info(
                "vend answered from the journal",
                extra=kv(order_id=order_id, vend=known.value),
            )
            await self._report(order_id, known)
            return
        task = asyncio.create_task(self._vend(order_id, drink_id, slot), name=f"vend {order_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _vend(self, order_id: str, drink_id: str, slot: int | None) -> None:
        try:
            result = await asyncio.to_thread(self.dispenser.vend, order_id, drink_id, slot)
        except Exception:
            log.exception("vend raised", extra=kv(order_id=order_id))
            known = await asyncio.to_thread(self.dispenser.outcome, order_id)
            result = known or Vend.UNKNOWN
        finally:
            self._vending.discard(order_id)
        await self._report(order_id, result)

    async def _report(self, order_id: str, result: Vend) -> None:
        """Send a vend's result (with the journal's reason of a failure) now, or after the
        next hello when the link is down."""
        reason = await asyncio.to_thread(self._reason, order_id) if result is Vend.FAILED else None
        self._unsent[order_id] = (result, reason)
        await self._send_results()

    def _reason(self, order_id: str) -> str | None:
        """The reason of the order's failed vend in the journal, if it is a word the wire
        carries (agent_protocol.REASON)."""
        entries = getattr(self.dispenser, "entries", None)
        if entries is None:
            return None
        try:
            found = [
                e.get("reason")
                for e in entries()
                if e.get("order_id") == order_id and e.get("result") == Vend.FAILED.value
            ]
        except Exception:
            log.exception("vend journal unreadable", extra=kv(order_id=order_id))
            return None
        reason = found[-1] if found else None
        return reason if isinstance(reason, str) and wire.REASON.match(reason) else None

    async def _send_results(self) -> None:
        for order_id, sent in list(self._unsent.items()):
            result, reason = sent
            link = self._link
            if link is None:
                return
            message = Message(
                Kind.VEND_RESULT, order_id=order_id, result=result.value, reason=reason
            )
            try:
                await link.send(wire.encode(message))
            except ConnectionClosed:
                return
            if self._unsent.get(order_id) is sent:
                del self._unsent[order_id]
            log.info(
                "vend result sent", extra=kv(order_id=order_id, vend=result.value, reason=reason)
            )


def _is_kiosk_frame(text: str) -> bool:
    try:
        frame = json.loads(text)
    except ValueError:
        return False
    return isinstance(frame, dict) and isinstance(frame.get("event"), str)


def shown_url(url: str) -> str:
    """A URL fit for a log line or the console: no user, password, query or fragment."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


# --- the process -----------------------------------------------------------------------------


def check(settings: Settings) -> None:
    """Raise ConfigError naming what the agent lacks."""
    if not settings.backend_url:
        raise ConfigError("BACKEND_URL is not set: the backend's ws:// or wss:// URL")
    if not settings.machine_token:
        raise ConfigError("MACHINE_TOKEN is not set: the token `main.py fleet add ID` printed")


def run(settings: Settings) -> int:
    """The agent process: serve the kiosk and hold the backend link until SIGTERM or SIGINT.

    Returns 0, or 1 when it cannot listen. Raises ConfigError when BACKEND_URL or
    MACHINE_TOKEN is unset.
    """
    check(settings)
    agent = Agent(settings, dispenser_from_settings(settings))
    gate = KioskGate(settings, agent)
    backend = shown_url(agent.backend_url)

    def ready(port: int) -> None:
        print(f"Kiosk: http://{settings.ws_host}:{port}/", flush=True)
        print(f"Backend: {backend}", flush=True)

    log.info("agent starting", extra=kv(backend=backend, version=agent.version))
    try:
        asyncio.run(
            gate.serve(settings.ws_host, settings.ws_port, ready=ready, handle_signals=True)
        )
    except OSError as exc:
        log.error(
            "cannot listen",
            extra=kv(host=settings.ws_host, port=settings.ws_port, error=exc),
        )
        return 1
    return 0


__all__ = ["OUT_OF_SERVICE_FRAME", "Agent", "Backoff", "LinkTimings", "project_version", "run"]
