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

`FrameRate` is the per-connection flood gate: it counts frames against a clock the caller
reads, and says whether to handle a frame, refuse it (rate_limited) or close the connection.
"""

from __future__ import annotations

import json
import re
from collections import deque
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from constants.states import ERROR_EVENT, ClientEvent, ErrorCode, State
from constants.tunables import CLIENT_FRAME_MAX_BYTES, CLIENT_FRAMES_PER_S

#: A drink id as the menu spells it: lower-case letters, digits, '_' and '-'.
DRINK_ID = re.compile(r"[a-z0-9_-]{1,40}")
DRINK_ID_MAX_CHARS = 40
#: The only quantity accepted for now (DESIGN: "only 1 is accepted for now").
ORDER_QUANTITY = 1
#: A connection sending more than this many times CLIENT_FRAMES_PER_S in a second is closed.
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
            ErrorCode.MALFORMED_FRAME, f"unexpected keys in frame: {', '.join(sorted(map(ascii, extra)))}"
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
            ErrorCode.BAD_VALUES, f"unexpected keys in ORDER values: {', '.join(sorted(map(ascii, extra)))}"
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


class FrameRate:
    """Counts one connection's frames over the last second (a sliding window).

    More than `per_s` frames in a second: LIMIT. More than `per_s * close_factor`: CLOSE.
    Refused frames count too, so a page cannot flood with garbage either. The window holds
    at most `per_s * close_factor + 1` timestamps.
    """

    def __init__(
        self, per_s: int = CLIENT_FRAMES_PER_S, close_factor: int = FLOOD_CLOSE_FACTOR
    ) -> None:
        self.per_s = per_s
        self.close_after = per_s * close_factor
        self._times: deque[float] = deque()

    def check(self, now: float) -> Verdict:
        """Count a frame received at `now` (seconds, monotonic) and judge it."""
        times = self._times
        while times and times[0] <= now - 1.0:
            times.popleft()
        times.append(now)
        if len(times) > self.close_after:
            return Verdict.CLOSE
        if len(times) > self.per_s:
            return Verdict.LIMIT
        return Verdict.HANDLE
