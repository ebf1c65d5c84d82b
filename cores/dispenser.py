"""Dispenser drivers. A driver vends and keeps its own journal by order_id (money rule 6).

The simulated driver takes DISPENSE_S, fails at DISPENSE_FAILURE_RATE, and appends one JSON
line per vend attempt to VAR_DIR/vends.jsonl:
`{"order_id", "drink", "result": "vended" | "failed", "at"}`.

Fleet mode's agent (services/agent_service.py) also journals the start of a vend, fsync'd
before the drink drops: `{"order_id", "drink", "result": "started", "at", "slot"}` (`begin`,
the slot when the vend has one). So
`outcome` answers, for an order:

    a "vended" line                      VENDED (it wins over an earlier failed attempt)
    a "failed" line, no "vended"         FAILED
    only a "started" line                UNKNOWN: the process died mid-vend; only a person
                                         can tell whether the drink dropped (money rule 6)
    no line                              None: never vended

One machine's DISPENSE worker never calls `begin` (its DISPENSING state, written before the
vend, says a vend may have begun), so for it nothing changed: VENDED, FAILED or None.

`VendJournal` is that file, shared by every driver (`DISPENSER`): the simulated one here,
cores/serial_dispenser.py (a vending board on a serial port) and cores/gpio_dispenser.py
(relays and a drop sensor). The hardware drivers journal "started" themselves before they
move anything, and add fields to a line: `slot`, and the `reason` of a failed vend (JAM,
EMPTY, NO_DROP, TIMEOUT, BUSY, ERR, NO_SLOT, PORT...). Readers ignore fields they do not
know, so the format stays what it was.

A driver is given the slot to vend from (`vend(order_id, drink_id, slot)`); a caller that
does not pass one yet still works with the simulated driver, while the hardware drivers
refuse such a vend as FAILED (reason NO_SLOT, journaled, nothing moved).
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from cores.logs import kv
from cores.rules import Vend

if TYPE_CHECKING:
    from cores.config import Settings

log = logging.getLogger(__name__)

JOURNAL_NAME = "vends.jsonl"
#: The journal's "result" of a vend that began and has no result yet.
STARTED = "started"


class Dispenser(Protocol):
    def vend(self, order_id: str, drink_id: str, slot: int | None = None) -> Vend:
        """Drop one drink from `slot`; VENDED, FAILED or UNKNOWN (the hardware could not
        tell), recorded in the journal before returning."""

    def outcome(self, order_id: str) -> Vend | None:
        """What the journal says of this order (None: no record)."""


class JournaledDispenser(Dispenser, Protocol):
    """A driver that also journals the start of a vend (fleet mode's agent)."""

    def begin(self, order_id: str, drink_id: str, slot: int | None = None) -> None:
        """Record that the vend of this order (from `slot`) begins (durable before returning)."""


class VendJournal:
    """VAR_DIR/vends.jsonl: one JSON line per vend event, fsync'd; read whole to answer.

    Safe to share between threads of one process (a lock around each append)."""

    def __init__(self, var_dir: Path, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(var_dir) / JOURNAL_NAME
        self.clock = clock
        self._lock = threading.Lock()

    def record(self, order_id: str, drink_id: str, result: str, **extra: object) -> None:
        """Append `{"order_id", "drink", "result", "at", **extra}` (extra: slot, reason),
        durable before returning. Extra fields that are None are left out."""
        entry: dict[str, object] = {
            "order_id": order_id,
            "drink": drink_id,
            "result": result,
            "at": self.clock(),
        }
        entry.update({k: v for k, v in extra.items() if v is not None})
        self.append(entry)

    def outcome(self, order_id: str) -> Vend | None:
        found = None
        for entry in self.entries():
            if entry.get("order_id") != order_id:
                continue
            if entry.get("result") == STARTED:
                found = found or Vend.UNKNOWN
                continue
            result = Vend(entry["result"])
            if result is Vend.VENDED:
                return result
            found = result
        return found

    def started(self, order_id: str) -> dict | None:
        """The last "started" line of this order (its drink and slot), or None."""
        found = None
        for entry in self.entries():
            if entry.get("order_id") == order_id and entry.get("result") == STARTED:
                found = entry
        return found

    def entries(self) -> list[dict]:
        if not self.path.exists():
            return []
        out = []
        with self.path.open(encoding="utf-8") as f:
            for line in f:
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # a line torn by a crash mid-write records nothing
        return out

    def append(self, entry: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = (json.dumps(entry, separators=(",", ":")) + "\n").encode()
        with self._lock, self.path.open("a+b") as f:
            if f.seek(0, os.SEEK_END) > 0:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    line = b"\n" + line  # end a line torn by a crash, so this one is whole
            f.write(line)
            f.flush()
            os.fsync(f.fileno())


class SimulatedDispenser:
    """A dispenser without hardware: a delay, a failure rate, a journal file."""

    def __init__(
        self,
        var_dir: Path,
        duration_s: float = 2.0,
        failure_rate: float = 0.0,
        rng: random.Random | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.vends = VendJournal(var_dir, clock)
        self.journal = self.vends.path
        self.duration_s = duration_s
        self.failure_rate = failure_rate
        self.rng = rng or random.Random()
        self.sleep = sleep
        self.clock = clock

    def vend(self, order_id: str, drink_id: str, slot: int | None = None) -> Vend:
        self.sleep(self.duration_s)
        result = Vend.FAILED if self.rng.random() < self.failure_rate else Vend.VENDED
        self.vends.record(order_id, drink_id, result.value, slot=slot)
        log.info("vend", extra=kv(order_id=order_id, drink=drink_id, result=result.value))
        return result

    def begin(self, order_id: str, drink_id: str, slot: int | None = None) -> None:
        self.vends.record(order_id, drink_id, STARTED, slot=slot)
        log.info("vend started", extra=kv(order_id=order_id, drink=drink_id, slot=slot))

    def outcome(self, order_id: str) -> Vend | None:
        return self.vends.outcome(order_id)

    def entries(self) -> list[dict]:
        return self.vends.entries()

    def _append(self, entry: dict) -> None:
        self.vends.append(entry)


def from_settings(settings: Settings, start: bool = True) -> JournaledDispenser:
    """The driver DISPENSER names. `start`: a serial driver opens its port and pings the
    board now and every minute (a silent board is logged, not fatal)."""
    if settings.dispenser == "serial":
        from cores.serial_dispenser import SerialDispenser

        serial_driver = SerialDispenser.from_settings(settings)
        if start:
            serial_driver.start()
        return serial_driver
    if settings.dispenser == "gpio":
        from cores.gpio_dispenser import GpioDispenser

        return GpioDispenser.from_settings(settings)
    return SimulatedDispenser(settings.var_dir, settings.dispense_s, settings.dispense_failure_rate)
