"""Logging as key=value lines with the service and machine_id, set up by entry scripts only."""

from __future__ import annotations

import logging
import sys
from pathlib import Path


class KeyValueFormatter(logging.Formatter):
    """`ts=... level=INFO service=ORDER machine_id=vm-1 logger=... msg="..." order_id=...`."""

    def __init__(self, service: str, machine_id: str) -> None:
        super().__init__()
        self.service = service
        self.machine_id = machine_id

    def format(self, record: logging.LogRecord) -> str:
        parts = [
            f"ts={self.formatTime(record, '%Y-%m-%dT%H:%M:%S')}.{int(record.msecs):03d}",
            f"level={record.levelname}",
            f"service={self.service}",
            f"machine_id={self.machine_id}",
            f"logger={record.name}",
            f"msg={_quote(record.getMessage())}",
        ]
        for name, value in getattr(record, "kv", {}).items():
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
