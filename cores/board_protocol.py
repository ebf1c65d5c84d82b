"""The vending board's serial line protocol (shared/DESIGN.md "Dispenser drivers"), pure.

ASCII, one message per `\\n`-terminated line (a `\\r` before it is tolerated), 115200 8N1.
Order ids have no spaces. The host (cores/serial_dispenser.py) sends:

    PING                          -> PONG <firmware>
    VEND <order_id> <slot>        -> ACK <order_id> within 1 s, then DONE <order_id> OK
                                     or DONE <order_id> FAIL <reason>;
                                     or BUSY / ERR <text>: refused, nothing moved
    RESULT <order_id>             -> RESULT <order_id> OK | FAIL <reason> | UNKNOWN | BUSY

Reasons are JAM, EMPTY, NO_DROP and TIMEOUT. `parse` turns a board line into one of the
message classes below, or `Unknown` for a line the host does not understand (the driver logs
and ignores it). The reference firmware (firmware/main.py) and the simulated board of the
tests (tests/board_sim.py) speak exactly this.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

BAUDRATE = 115200
#: The board answers VEND (ACK, BUSY or ERR) within this long.
ACK_WITHIN_S = 1.0
#: A board silent this long after a VEND (or a PING, a RESULT) has not answered at all.
SILENT_AFTER_S = 2.0
#: The longest line either side sends; a longer one is garbage.
MAX_LINE = 200

#: What an order id may be on the wire: printable ASCII without spaces.
ORDER_ID = re.compile(r"^[!-~]{1,64}$")


class Reason(Enum):
    """Why the board gave nothing."""

    JAM = "JAM"
    EMPTY = "EMPTY"
    NO_DROP = "NO_DROP"
    TIMEOUT = "TIMEOUT"


class Memory(Enum):
    """RESULT's answers that are not a finished vend."""

    UNKNOWN = "UNKNOWN"  # the board does not remember that order
    BUSY = "BUSY"  # the board is vending that order right now


# --- host -> board ----------------------------------------------------------------------------


def _order(order_id: str) -> str:
    if not ORDER_ID.fullmatch(order_id):
        raise ValueError(f"order id {order_id!r} cannot go on the wire (no spaces, 1 to 64)")
    return order_id


def ping() -> bytes:
    return b"PING\n"


def vend(order_id: str, slot: int) -> bytes:
    if isinstance(slot, bool) or not isinstance(slot, int) or not 0 < slot < 1000:
        raise ValueError(f"slot {slot!r} is not 1 to 999")
    return f"VEND {_order(order_id)} {slot}\n".encode("ascii")


def result(order_id: str) -> bytes:
    return f"RESULT {_order(order_id)}\n".encode("ascii")


# --- board -> host ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Pong:
    firmware: str


@dataclass(frozen=True)
class Ack:
    order_id: str


@dataclass(frozen=True)
class Done:
    """The end of a vend: `ok`, or the `reason` nothing was given."""

    order_id: str
    ok: bool
    reason: Reason | None = None


@dataclass(frozen=True)
class Result:
    """The board's memory of a vend: finished (`ok`, `reason`) or `memory` (UNKNOWN, BUSY)."""

    order_id: str
    ok: bool = False
    reason: Reason | None = None
    memory: Memory | None = None


@dataclass(frozen=True)
class Busy:
    """VEND refused: the board is vending another order. Nothing moved."""


@dataclass(frozen=True)
class Err:
    """VEND (or any line) refused with a text. Nothing moved."""

    text: str


@dataclass(frozen=True)
class Unknown:
    """A line the host does not understand."""

    line: str


BoardLine = Pong | Ack | Done | Result | Busy | Err | Unknown


def parse(raw: bytes | str) -> BoardLine:
    """One board line (with or without its line end) -> its message; never raises."""
    if isinstance(raw, bytes):
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            return Unknown(raw.decode("ascii", "replace"))
    else:
        text = raw
    line = text.rstrip("\r\n")
    if len(line) > MAX_LINE or any(not c.isprintable() for c in line):
        return Unknown(line[:MAX_LINE])
    words = line.split(" ")
    head, args = words[0], words[1:]
    if head == "PONG" and args and all(args):
        return Pong(" ".join(args))
    if head == "BUSY" and not args:
        return Busy()
    if head == "ERR" and args:
        return Err(" ".join(args))
    if not args or not ORDER_ID.fullmatch(args[0]):
        return Unknown(line)
    order_id, rest = args[0], args[1:]
    if head == "ACK" and not rest:
        return Ack(order_id)
    if head == "DONE":
        finished = _finished(rest)
        if finished is not None:
            ok, reason = finished
            return Done(order_id, ok, reason)
    if head == "RESULT":
        if len(rest) == 1 and rest[0] in Memory.__members__:
            return Result(order_id, memory=Memory(rest[0]))
        finished = _finished(rest)
        if finished is not None:
            ok, reason = finished
            return Result(order_id, ok, reason)
    return Unknown(line)


def _finished(words: list[str]) -> tuple[bool, Reason | None] | None:
    """`OK` -> (True, None); `FAIL <reason>` -> (False, reason); else None."""
    if words == ["OK"]:
        return True, None
    if len(words) == 2 and words[0] == "FAIL" and words[1] in Reason.__members__:
        return False, Reason(words[1])
    return None
