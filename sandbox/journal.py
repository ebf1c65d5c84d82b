"""The ledger's journal: an append-only JSON Lines file, so the ledger survives a restart.

Format: ``<directory>/ledger.jsonl``, one line per change, each line a whole transaction
record (`Transaction.record()`) with ``"v": 1``. Replaying the file in order and keeping the
last line of each transaction_id gives the ledger back, oldest transaction first.

- Writes: one line per change, flushed to the operating system before the call that made
  the change answers, so a killed sandbox loses nothing. No fsync: a power cut may lose the
  last changes (this is a test double, not a bank).
- A crash in the middle of a line leaves a torn last line: replay skips it with a warning.
- At open, the replayed ledger is written back compacted (one line per transaction) to a
  temporary file that replaces the journal atomically (os.replace), so the file does not
  grow across restarts.
- One sandbox per directory: an exclusive lock on ``<directory>/sandbox.lock`` (released by
  the kernel when the process dies).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import IO, Any

from cores.logs import kv
from cores.process import InstanceLock

log = logging.getLogger(__name__)

FILE_NAME = "ledger.jsonl"
LOCK_NAME = "sandbox.lock"
VERSION = 1


class Journal:
    """The journal in `directory` (created when missing). `open()` replays and locks it."""

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)
        self.path = self.directory / FILE_NAME
        self._lock = InstanceLock(self.directory / LOCK_NAME)
        self._file: IO[str] | None = None

    def open(self) -> list[dict[str, Any]]:
        """Lock the directory, replay the journal, compact it and open it for appending.
        Returns the latest record of each transaction, in the order they were created.
        RuntimeError when another sandbox holds the directory."""
        self.directory.mkdir(parents=True, exist_ok=True)
        if not self._lock.acquire():
            raise RuntimeError(f"another sandbox (pid {self._lock.holder()}) uses {self.directory}")
        records = self._replay()
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("w", encoding="utf-8") as out:
            for record in records:
                out.write(_line(record))
        os.replace(tmp, self.path)
        self._file = self.path.open("a", encoding="utf-8")
        log.info("sandbox ledger replayed", extra=kv(path=self.path, transactions=len(records)))
        return records

    def append(self, record: dict[str, Any]) -> None:
        """Write one transaction's record (a no-op once closed)."""
        if self._file is None:
            return
        self._file.write(_line(record))
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._lock.release()

    def _replay(self) -> list[dict[str, Any]]:
        latest: dict[str, dict[str, Any]] = {}
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        lines = text.splitlines()
        for number, line in enumerate(lines, 1):
            try:
                record = json.loads(line)
                tid = record["transaction_id"]
                if record.pop("v") != VERSION:
                    raise ValueError("unknown version")
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                log.warning(
                    "sandbox ledger line skipped: %s",
                    exc,
                    extra=kv(path=self.path, line=number, last=number == len(lines)),
                )
                continue
            latest[tid] = record  # a later line replaces it in its first place
        return list(latest.values())


def _line(record: dict[str, Any]) -> str:
    return json.dumps({"v": VERSION, **record}, separators=(",", ":")) + "\n"
