"""The wire between a machine's agent and the backend's gateway (fleet mode), pure.

    kiosk page --/ws--> agent (main.py machine) ==BACKEND_URL, one websocket==> gateway (backend)

Handshake: the agent opens BACKEND_URL (ws:// or wss://) with two headers,
`X-Machine-Id: <id>` and `Authorization: Bearer <token>`. The gateway answers a missing, wrong
or revoked token with HTTP 401 before any upgrade; a revoked machine's live connection is
closed with CLOSE_REVOKED. The token is sent in this header only: never in a frame, a URL or
a log line.

Then JSON text frames, each one object with a `kind`:

agent -> gateway
    {"kind": "hello", "version": V, ["driver": D,      first frame: the agent's version, and
     "firmware": F]}                                   its dispenser (driver; the board's
                                                       firmware from its PING, when known)
    {"kind": "page", "page": N, "frame": TEXT}         a kiosk page's frame, as the page sent
                                                       it (the agent checked size and flood)
    {"kind": "vend_result", "order_id": O, "result": R, ["reason": W]}
                                                       R: vended | failed | unknown, from
                                                       the agent's journal (money rule 6);
                                                       W: why a failed vend failed (JAM,
                                                       EMPTY... as the journal says)
gateway -> agent
    {"kind": "frame", "frame": TEXT}                   a kiosk frame for every page
    {"kind": "reply", "page": N, "frame": TEXT}        a kiosk frame for page N (an ERROR)
    {"kind": "vend", "order_id": O, "drink_id": D, ["slot": S]}
                                                       vend order O from slot S: paid,
                                                       DISPENSING (no slot: the driver's
                                                       choice, as before slots)

No frame names a machine: the gateway acts for the machine the handshake authenticated and no
other, so an agent cannot reach another machine's data whatever it sends. The gateway sends
`vend` for the machine's DISPENSING order whenever it sees that state (on the event, and on
each connect), so it may send it more than once: the agent vends an order at most once and
answers a repeated `vend` from its journal (`unknown` when a vend began and no result was
recorded: the agent died mid-vend).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from constants.tunables import AGENT_FRAME_MAX_BYTES, CLIENT_FRAME_MAX_BYTES, SLOTS_MAX

#: The handshake's header that names the machine (the token goes in Authorization: Bearer).
MACHINE_HEADER = "X-Machine-Id"
#: Close code of a live connection whose machine was revoked (4000-4999: application codes).
CLOSE_REVOKED = 4003
#: A page id is a small positive integer the agent assigns; larger ones are refused.
PAGE_ID_MAX = 2**31
#: Order ids are at most this long (midtrans.md: 50 characters).
ORDER_ID_MAX_CHARS = 50
VERSION_MAX_CHARS = 40
FIRMWARE_MAX_CHARS = 64
DRIVER_MAX_CHARS = 20
#: A failure's reason: a word of the board's or the driver's (JAM, EMPTY, NO_DROP, PORT...).
REASON = re.compile(r"^[A-Z][A-Z0-9_]{0,31}$")


class Kind(StrEnum):
    HELLO = "hello"
    PAGE = "page"
    VEND_RESULT = "vend_result"
    FRAME = "frame"
    REPLY = "reply"
    VEND = "vend"


#: What an agent may send, and what a gateway may send.
FROM_AGENT = frozenset({Kind.HELLO, Kind.PAGE, Kind.VEND_RESULT})
FROM_GATEWAY = frozenset({Kind.FRAME, Kind.REPLY, Kind.VEND})
#: The results an agent reports (cores.rules.Vend values).
VEND_RESULTS = frozenset({"vended", "failed", "unknown"})


class AgentProtocolError(ValueError):
    """A frame on the agent link that is not one of the above; the receiver drops it."""


@dataclass(frozen=True)
class Message:
    kind: Kind
    page: int | None = None
    frame: str | None = None
    order_id: str | None = None
    drink_id: str | None = None
    result: str | None = None
    version: str | None = None
    slot: int | None = None
    reason: str | None = None
    driver: str | None = None
    firmware: str | None = None


#: The optional fields, each sent only when set.
FIELDS = (
    "page",
    "frame",
    "order_id",
    "drink_id",
    "result",
    "version",
    "slot",
    "reason",
    "driver",
    "firmware",
)


def encode(message: Message) -> str:
    fields: dict[str, Any] = {"kind": str(message.kind)}
    for name in FIELDS:
        value = getattr(message, name)
        if value is not None:
            fields[name] = value
    return json.dumps(fields, separators=(",", ":"))


def parse(raw: str | bytes, allowed: frozenset[Kind]) -> Message:
    """One frame of the link, checked: its kind among `allowed` and every field well formed."""
    if isinstance(raw, bytes):
        raise AgentProtocolError("binary frame")
    if len(raw.encode()) > AGENT_FRAME_MAX_BYTES:
        raise AgentProtocolError("frame too large")
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise AgentProtocolError("not JSON") from None
    if not isinstance(body, dict):
        raise AgentProtocolError("not an object")
    try:
        kind = Kind(str(body.get("kind")))
    except ValueError:
        raise AgentProtocolError(f"unknown kind {str(body.get('kind'))[:40]!r}") from None
    if kind not in allowed:
        raise AgentProtocolError(f"{kind} is not sent this way")
    if kind is Kind.HELLO:
        return Message(
            kind,
            version=_text(body, "version", VERSION_MAX_CHARS),
            driver=_optional_text(body, "driver", DRIVER_MAX_CHARS),
            firmware=_optional_text(body, "firmware", FIRMWARE_MAX_CHARS),
        )
    if kind is Kind.PAGE:
        return Message(kind, page=_page(body), frame=_text(body, "frame", CLIENT_FRAME_MAX_BYTES))
    if kind is Kind.VEND_RESULT:
        result = _text(body, "result", 10)
        if result not in VEND_RESULTS:
            raise AgentProtocolError("result must be vended, failed or unknown")
        reason = _optional_text(body, "reason", 32)
        if reason is not None and not REASON.match(reason):
            raise AgentProtocolError("reason must be a word in capitals (JAM, EMPTY...)")
        return Message(
            kind,
            order_id=_text(body, "order_id", ORDER_ID_MAX_CHARS),
            result=result,
            reason=reason,
        )
    if kind is Kind.FRAME:
        return Message(kind, frame=_text(body, "frame", AGENT_FRAME_MAX_BYTES))
    if kind is Kind.REPLY:
        return Message(kind, page=_page(body), frame=_text(body, "frame", AGENT_FRAME_MAX_BYTES))
    slot = body.get("slot")
    if slot is not None and (
        isinstance(slot, bool) or not isinstance(slot, int) or not 1 <= slot <= SLOTS_MAX
    ):
        raise AgentProtocolError(f"slot must be an integer from 1 to {SLOTS_MAX}")
    return Message(
        kind,
        order_id=_text(body, "order_id", ORDER_ID_MAX_CHARS),
        drink_id=_text(body, "drink_id", 64),
        slot=slot,
    )


def _optional_text(body: dict, name: str, limit: int) -> str | None:
    """An optional text field: absent (or null) is None; present, it is checked as `_text`
    checks (a firmware string is printable ASCII: it is shown on the console)."""
    if body.get(name) is None:
        return None
    value = _text(body, name, limit)
    if not value.isprintable() or not value.isascii():
        raise AgentProtocolError(f"{name} must be printable ASCII")
    return value


def _text(body: dict, name: str, limit: int) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value or len(value) > limit:
        raise AgentProtocolError(f"{name} must be a string of 1 to {limit} characters")
    return value


def _page(body: dict) -> int:
    page = body.get("page")
    if isinstance(page, bool) or not isinstance(page, int) or not 0 < page < PAGE_ID_MAX:
        raise AgentProtocolError("page must be a positive integer")
    return page
