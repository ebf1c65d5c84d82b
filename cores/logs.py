"""Logging as key=value lines with the service and machine_id, set up by entry scripts only.

Files under VAR_DIR/logs are size-capped (LOG_MAX_BYTES, LOG_BACKUPS rotated copies: the
standard library's RotatingFileHandler). A process started by systemd (JOURNAL_STREAM set) also
has its lines in the journal, through its stderr.

A line's machine_id is, first found: the line's own `machine_id=` field; the machine a fleet
process is working on in this thread (`for_machine`); the process's own machine (`setup`),
which is `-` for fleet mode's shared processes.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import logging.handlers
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from constants.tunables import LOG_BACKUPS, LOG_MAX_BYTES

#: The machine a shared process (fleet mode) is working on in this thread, if any.
_machine: contextvars.ContextVar[str | None] = contextvars.ContextVar("machine_id", default=None)


@contextlib.contextmanager
def for_machine(machine_id: str) -> Iterator[None]:
    """Lines logged inside carry `machine_id` (a shared worker stepping one machine)."""
    token = _machine.set(machine_id)
    try:
        yield
    finally:
        _machine.reset(token)


class KeyValueFormatter(logging.Formatter):
    """`ts=... level=INFO service=ORDER machine_id=vm-1 logger=... msg="..." order_id=...`."""

    def __init__(self, service: str, machine_id: str) -> None:
        super().__init__()
        self.service = service
        self.machine_id = machine_id

    def format(self, record: logging.LogRecord) -> str:
        fields = dict(getattr(record, "kv", {}))
        machine = fields.pop("machine_id", None) or _machine.get() or self.machine_id
        parts = [
            f"ts={self.formatTime(record, '%Y-%m-%dT%H:%M:%S')}.{int(record.msecs):03d}",
            f"level={record.levelname}",
            f"service={self.service}",
            f"machine_id={_quote(str(machine))}",
            f"logger={record.name}",
            f"msg={_quote(record.getMessage())}",
        ]
        for name, value in fields.items():
            parts.append(f"{name}={_quote(str(value))}")
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _quote(text: str) -> str:
    if text and all(c not in text for c in ' "=\n'):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def kv(**fields: object) -> dict:
    """`log.info("charged", extra=kv(order_id=...))` adds key=value pairs to the line."""
    return {"kv": fields}


def setup(service: str, machine_id: str, level: str = "INFO", log_dir: Path | None = None) -> None:
    """Send key=value lines to stderr and, when `log_dir` is given, to log_dir/<service>.log."""
    formatter = KeyValueFormatter(service, machine_id)
    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(level)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root.addHandler(handler)
    if log_dir is not None:
        file_handler = rotating_file(log_dir / f"{service.lower()}.log")
        file_handler.setFormatter(formatter)
        root.addHandler(file_handler)
    for noisy in ("urllib3", "websockets"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def rotating_file(
    path: Path, max_bytes: int = LOG_MAX_BYTES, backups: int = LOG_BACKUPS
) -> logging.handlers.RotatingFileHandler:
    """A handler writing to `path`, rotated past `max_bytes` (`backups` copies kept)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return logging.handlers.RotatingFileHandler(
        path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8"
    )


def under_journald() -> bool:
    """Started by systemd with its output going to the journal."""
    return bool(os.environ.get("JOURNAL_STREAM"))


def follow_output(
    stream: IO[bytes],
    path: Path,
    echo: IO[bytes] | None = None,
    max_bytes: int = LOG_MAX_BYTES,
    backups: int = LOG_BACKUPS,
) -> threading.Thread:
    """A daemon thread copying a child process's output, line by line, to the size-capped
    file `path` (and to `echo`, e.g. the journal through our stderr), until the stream ends.
    It always reads, so a child never blocks on a full pipe."""
    handler = rotating_file(path, max_bytes, backups)
    handler.setFormatter(logging.Formatter("%(message)s"))

    def copy() -> None:
        with stream:
            for raw in iter(stream.readline, b""):
                line = raw.decode("utf-8", "replace").rstrip("\n")
                handler.emit(logging.makeLogRecord({"msg": line, "levelno": logging.INFO}))
                if echo is not None:
                    with contextlib.suppress(OSError, ValueError):
                        echo.write(raw)
                        echo.flush()
        handler.close()

    thread = threading.Thread(target=copy, name=f"log {path.name}", daemon=True)
    thread.start()
    return thread
