"""Dispenser drivers. A driver vends and keeps its own journal by order_id (money rule 6).

The simulated driver takes DISPENSE_S, fails at DISPENSE_FAILURE_RATE, and appends one JSON
line per vend attempt to VAR_DIR/vends.jsonl:
`{"order_id", "drink", "result": "vended" | "failed", "at"}`.
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


class Dispenser(Protocol):
    def vend(self, order_id: str, drink_id: str) -> Vend:
        """Drop one drink; VENDED or FAILED, recorded in the journal before returning."""

    def outcome(self, order_id: str) -> Vend | None:
        """What the journal says of this order (None: no record)."""


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

    def outcome(self, order_id: str) -> Vend | None:
        found = None
        for entry in self.entries():
            if entry.get("order_id") == order_id:
                found = Vend(entry["result"])
                if found is Vend.VENDED:
                    return found
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


def from_settings(settings) -> Dispenser:
    return SimulatedDispenser(settings.var_dir, settings.dispense_s, settings.dispense_failure_rate)
