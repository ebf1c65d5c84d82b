"""Dispenser drivers. A driver vends and keeps its own journal by order_id (money rule 6).

The simulated driver takes DISPENSE_S, fails at DISPENSE_FAILURE_RATE, and appends one JSON
line per vend attempt to VAR_DIR/vends.jsonl:
`{"order_id", "drink", "result": "vended" | "failed", "at"}`.

Fleet mode's agent (services/agent_service.py) also journals the start of a vend, fsync'd
before the drink drops: `{"order_id", "drink", "result": "started", "at"}` (`begin`). So
`outcome` answers, for an order:

    a "vended" line                      VENDED (it wins over an earlier failed attempt)
    a "failed" line, no "vended"         FAILED
    only a "started" line                UNKNOWN: the process died mid-vend; only a person
                                         can tell whether the drink dropped (money rule 6)
    no line                              None: never vended

One machine's DISPENSE worker never calls `begin` (its DISPENSING state, written before the
vend, says a vend may have begun), so for it nothing changed: VENDED, FAILED or None.
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
from typing import Protocol

from cores.logs import kv
from cores.rules import Vend

log = logging.getLogger(__name__)

JOURNAL_NAME = "vends.jsonl"
#: The journal's "result" of a vend that began and has no result yet.
STARTED = "started"


class Dispenser(Protocol):
    def vend(self, order_id: str, drink_id: str) -> Vend:
        """Drop one drink; VENDED or FAILED, recorded in the journal before returning."""

    def outcome(self, order_id: str) -> Vend | None:
        """What the journal says of this order (None: no record)."""


class JournaledDispenser(Dispenser, Protocol):
    """A driver that also journals the start of a vend (fleet mode's agent)."""

    def begin(self, order_id: str, drink_id: str) -> None:
        """Record that the vend of this order begins (durable before returning)."""


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
        self.journal = Path(var_dir) / JOURNAL_NAME
        self.duration_s = duration_s
        self.failure_rate = failure_rate
        self.rng = rng or random.Random()
        self.sleep = sleep
        self.clock = clock
        self._lock = threading.Lock()

    def vend(self, order_id: str, drink_id: str) -> Vend:
        self.sleep(self.duration_s)
        result = Vend.FAILED if self.rng.random() < self.failure_rate else Vend.VENDED
        self._append(
            {"order_id": order_id, "drink": drink_id, "result": result.value, "at": self.clock()}
        )
        log.info("vend", extra=kv(order_id=order_id, drink=drink_id, result=result.value))
        return result

    def begin(self, order_id: str, drink_id: str) -> None:
        self._append(
            {"order_id": order_id, "drink": drink_id, "result": STARTED, "at": self.clock()}
        )
        log.info("vend started", extra=kv(order_id=order_id, drink=drink_id))

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

    def entries(self) -> list[dict]:
        if not self.journal.exists():
            return []
        out = []
        with self.journal.open(encoding="utf-8") as f:
            for line in f:
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # a line torn by a crash mid-write records nothing
        return out

    def _append(self, entry: dict) -> None:
        self.journal.parent.mkdir(parents=True, exist_ok=True)
        line = (json.dumps(entry, separators=(",", ":")) + "\n").encode()
        with self._lock, self.journal.open("a+b") as f:
            if f.seek(0, os.SEEK_END) > 0:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    line = b"\n" + line  # end a line torn by a crash, so this one is whole
            f.write(line)
            f.flush()
            os.fsync(f.fileno())


def from_settings(settings) -> SimulatedDispenser:
    return SimulatedDispenser(settings.var_dir, settings.dispense_s, settings.dispense_failure_rate)
