"""The kiosk websocket protocol: what a page may send, and the frames the server writes.

Pure: text in, a `Command` or a `ProtocolError` out; no sockets, no Redis, no clock reads.
The websocket server (services/websocket_service.py) is the glue around it.

Every frame is one JSON object `{"event": NAME, "values": ...}` (shared/DESIGN.md,
"Websocket protocol"). A page may send only:

    {"event": "SHOW_MENU", "values": {}}
    {"event": "ORDER", "values": {"id": "cola", "total": 1}}
    {"event": "CANCEL", "values": {}}

Anything else is refused with a `ProtocolError` whose code is the ERROR frame's `code`:

    ProtocolError
      malformed_frame  not a UTF-8 text JSON object of at most CLIENT_FRAME_MAX_BYTES,
                       duplicate or unknown top-level keys, too deeply nested
      unknown_event    "event" is not a kiosk event (state events such as PAYMENT_SUCCESS
                       come only from the backend)
      bad_values       "values" of the wrong shape for its event

`FloodGate` is the per-connection flood gate: two token buckets fed by the arrival times the
caller stamps (the server stamps each frame as it comes off the socket, so its own lag never
counts against a page), and says whether to handle a frame, refuse it (rate_limited) or close
the connection:

    bucket    rate                         burst                    empty means
    handle    CLIENT_FRAMES_PER_S          CLIENT_FRAMES_BURST      LIMIT (ERROR rate_limited)
    close     x FLOOD_CLOSE_FACTOR         x FLOOD_CLOSE_FACTOR     CLOSE (1008)

`origin_allowed` decides the websocket handshake's Origin check (DESIGN, "Websocket protocol").
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from constants.states import ERROR_EVENT, ClientEvent, ErrorCode, State
from constants.tunables import CLIENT_FRAME_MAX_BYTES, CLIENT_FRAMES_BURST, CLIENT_FRAMES_PER_S

#: A drink id as the menu spells it: lower-case letters, digits, '_' and '-'.
DRINK_ID = re.compile(r"[a-z0-9_-]{1,40}")
DRINK_ID_MAX_CHARS = 40
#: The only quantity accepted for now (DESIGN: "only 1 is accepted for now").
ORDER_QUANTITY = 1
#: A connection sending more than this many times CLIENT_FRAMES_PER_S (and its burst) is closed.
FLOOD_CLOSE_FACTOR = 5

_TOP_LEVEL_KEYS = frozenset({"event", "values"})
_ORDER_KEYS = frozenset({"id", "total"})


class ProtocolError(Exception):
    """A client frame was refused; `code` and `message` go back in an ERROR frame."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code.value}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Command:
    """A valid kiosk command. `drink_id` and `quantity` are set for ORDER only."""

    event: ClientEvent
    drink_id: str | None = None
    quantity: int | None = None


def parse_client_frame(text: str | bytes) -> Command:
    """Validate one frame received from a page and return its command.

    Raises `ProtocolError` for anything but the three kiosk commands, exactly shaped.
    """
    if not isinstance(text, str):
        raise ProtocolError(ErrorCode.MALFORMED_FRAME, "frames must be UTF-8 text, not binary")
    # Size first, before any parsing: a str has at least as many UTF-8 bytes as characters.
    if len(text) > CLIENT_FRAME_MAX_BYTES:
        raise _too_large()
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise ProtocolError(ErrorCode.MALFORMED_FRAME, "frames must be valid UTF-8") from None
    if size > CLIENT_FRAME_MAX_BYTES:
        raise _too_large()

    try:
        frame = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_refuse_constant)
    except RecursionError:
        raise ProtocolError(ErrorCode.MALFORMED_FRAME, "frame is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, duplicate keys, NaN/Infinity
        raise ProtocolError(ErrorCode.MALFORMED_FRAME, f"frame is not valid JSON: {exc}") from None

    if not isinstance(frame, dict):
        raise ProtocolError(
            ErrorCode.MALFORMED_FRAME, 'a frame is a JSON object {"event": ..., "values": ...}'
        )
    extra = frame.keys() - _TOP_LEVEL_KEYS
    if extra:
        raise ProtocolError(
            ErrorCode.MALFORMED_FRAME,
            f"unexpected keys in frame: {', '.join(sorted(map(ascii, extra)))}",
        )
    event = _client_event(frame.get("event"))
    if event is ClientEvent.ORDER:
        return _order(frame.get("values"), "values" in frame)
    values = frame.get("values", {})
    if not isinstance(values, dict) or values:
        raise ProtocolError(ErrorCode.BAD_VALUES, f"{event.value} takes empty values {{}}")
    return Command(event)


def _client_event(name: object) -> ClientEvent:
    if not isinstance(name, str):
        raise ProtocolError(ErrorCode.MALFORMED_FRAME, '"event" must be a string')
    try:
        return ClientEvent(name)
    except ValueError:
        pass
    shown = name if len(name) <= 40 else name[:40] + "..."
    if name in State.__members__ or name == ERROR_EVENT:
        # DESIGN: "Clients cannot send state events".
        raise ProtocolError(
            ErrorCode.UNKNOWN_EVENT, f"{shown} is sent by the machine, not by a page"
        ) from None
    raise ProtocolError(
        ErrorCode.UNKNOWN_EVENT,
        f"unknown event {shown!r}: expected {', '.join(e.value for e in ClientEvent)}",
    ) from None


def _order(values: object, present: bool) -> Command:
    if not present:
        raise ProtocolError(ErrorCode.BAD_VALUES, 'ORDER needs values {"id": ..., "total": 1}')
    if not isinstance(values, dict):
        raise ProtocolError(ErrorCode.BAD_VALUES, "ORDER values must be an object")
    extra = values.keys() - _ORDER_KEYS
    if extra:
        raise ProtocolError(
            ErrorCode.BAD_VALUES,
            f"unexpected keys in ORDER values: {', '.join(sorted(map(ascii, extra)))}",
        )
    drink_id = values.get("id")
    if not isinstance(drink_id, str) or not DRINK_ID.fullmatch(drink_id):
        raise ProtocolError(
            ErrorCode.BAD_VALUES,
            f"ORDER id must be a drink id of 1 to {DRINK_ID_MAX_CHARS} characters a-z, 0-9, _ or -",
        )
    if "total" not in values:
        raise ProtocolError(ErrorCode.BAD_VALUES, "ORDER needs a total (1)")
    total = values["total"]
    # bool is a subclass of int, and 1.0 == 1: accept only the integer 1 itself.
    if type(total) is not int or total != ORDER_QUANTITY:
        raise ProtocolError(ErrorCode.BAD_VALUES, "only one drink per order")
    return Command(ClientEvent.ORDER, drink_id=drink_id, quantity=total)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name, value in pairs:
        if name in result:
            raise ValueError(f"duplicate key {name[:40]!r}")
        result[name] = value
    return result


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


def _too_large() -> ProtocolError:
    return ProtocolError(
        ErrorCode.MALFORMED_FRAME, f"frame larger than {CLIENT_FRAME_MAX_BYTES} bytes"
    )


def encode(frame: dict) -> str:
    """One frame as compact JSON text (UTF-8 characters kept as they are)."""
    return json.dumps(frame, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def error_frame(code: ErrorCode, message: str) -> str:
    """The ERROR frame sent to one page whose frame was refused."""
    return encode({"event": ERROR_EVENT, "values": {"code": code.value, "message": message}})


class Verdict(StrEnum):
    """What to do with a frame, according to the flood gate."""

    HANDLE = "handle"
    LIMIT = "limit"  # refuse with ERROR rate_limited, change nothing
    CLOSE = "close"  # the page keeps flooding: close the connection (1008)


@dataclass
class TokenBucket:
    """`rate_per_s` tokens a second, at most `burst` held, full at first; a frame takes one.

    Pure: the caller passes `now` (seconds, monotonic). A clock that stands still or steps
    back refills nothing.
    """

    rate_per_s: float
    burst: float
    tokens: float = field(init=False)
    last: float | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.tokens = self.burst

    def take(self, now: float) -> bool:
        """Take a token for a frame that arrived at `now`; False when there is none left."""
        if self.has(now):
            self.tokens -= 1
            return True
        return False

    def has(self, now: float) -> bool:
        """Whether a token is left at `now`, taking none."""
        if self.last is None or now > self.last:
            if self.last is not None:
                self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate_per_s)
            self.last = now
        return self.tokens >= 1


class FloodGate:
    """One connection's flood gate, judged on the frames' arrival times.

    A page may send `per_s` frames a second on average and `burst` at once: beyond that its
    frames are LIMIT (refused, nothing changed). Every frame, refused or not, also takes a
    token of a bucket `close_factor` times as large and as fast: a page that empties that
    one keeps flooding and is CLOSEd. A page that stays under `per_s` is never refused, however
    late the server handles its frames, because the times are those of arrival.
    """

    def __init__(
        self,
        per_s: float = CLIENT_FRAMES_PER_S,
        burst: float = CLIENT_FRAMES_BURST,
        close_factor: float = FLOOD_CLOSE_FACTOR,
    ) -> None:
        self.per_s = per_s
        self._handle = TokenBucket(per_s, burst)
        self._close = TokenBucket(per_s * close_factor, burst * close_factor)

    def check(self, now: float) -> Verdict:
        """Judge a frame that arrived at `now` (seconds, monotonic)."""
        if not self._close.take(now):
            return Verdict.CLOSE
        if not self._handle.take(now):
            return Verdict.LIMIT
        return Verdict.HANDLE


# --- the handshake's Origin ------------------------------------------------------------------

#: The Origin a browser sends for a page opened from disk (file://), as the kiosk may be.
NULL_ORIGIN = "null"
_DEFAULT_PORTS = {"http": 80, "https": 443}


def origin_allowed(origin: str | None, host: str | None, listed: Iterable[str] = ()) -> bool:
    """Whether a websocket handshake carrying this Origin header may go on.

    Allowed: no Origin at all (not a browser: as websockets' own `origins` option with None),
    `null` (a kiosk page opened from file://), the page's own origin (http or https on the
    host and port of the request's Host header), and the `listed` origins
    (KIOSK_ALLOWED_ORIGINS). Anything else, including an Origin that does not parse, is
    refused: a page of another site must not drive the machine through a kiosk's browser.
    """
    if origin is None or origin == NULL_ORIGIN:
        return True
    seen = _origin_key(origin)
    if seen is None:
        return False
    if host and seen[1:] == _host_key(host, seen[0]):
        return True
    return any(seen == _origin_key(one) for one in listed)


def _origin_key(origin: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an http(s) origin, with the scheme's default port filled in."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if (
        scheme not in _DEFAULT_PORTS
        or not parts.hostname
        or parts.path
        or parts.query
        or parts.fragment
        or parts.username is not None
        or parts.password is not None
    ):
        return None
    return scheme, parts.hostname.lower(), port if port is not None else _DEFAULT_PORTS[scheme]


def _host_key(host: str, scheme: str) -> tuple[str, int] | None:
    """(host, port) of a Host header, the port defaulting to that of `scheme`."""
    try:
        parts = urlsplit("//" + host.strip())
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname or parts.path or parts.username is not None:
        return None
    return parts.hostname.lower(), port if port is not None else _DEFAULT_PORTS[scheme]
