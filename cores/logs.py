"""Logging as key=value lines with the service and machine_id, set up by entry scripts only.

A line's machine_id is, first found: the line's own `machine_id=` field; the machine a fleet
process is working on in this thread (`for_machine`); the process's own machine (`setup`),
which is `-` for fleet mode's shared processes.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

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
        log_dir.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(log_dir / f"{service.lower()}.log", encoding="utf-8")
        file_handler.setFormatter(formatter)
        root.addHandler(file_handler)
    for noisy in ("urllib3", "websockets"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
