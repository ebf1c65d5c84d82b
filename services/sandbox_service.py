"""The SANDBOX service: the local Midtrans sandbox (the sandbox/ package) as a process.

`python main.py --service SANDBOX` builds the settings and calls `run(settings)`, which serves
until SIGTERM or SIGINT and then stops cleanly (open connections closed, threads ended). The
ledger lives under VAR_DIR/sandbox and survives a restart.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

from cores.config import SANDBOX_KEY_PREFIX, Settings
from cores.logs import kv
from sandbox import Sandbox

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def build(settings: Settings) -> Sandbox:
    """The sandbox the settings describe (not started)."""
    return Sandbox(
        host=settings.sandbox_host,
        port=settings.sandbox_port,
        server_key=settings.midtrans_server_key,
        notification_url=settings.sandbox_notification_url,
        faults=settings.sandbox_faults,
        directory=settings.var_dir / "sandbox",
    )


def run(settings: Settings) -> None:
    """Serve the sandbox until SIGTERM / SIGINT (signals are handled when called from the
    main thread; elsewhere the caller stops it some other way)."""
    sandbox = build(settings)
    if settings.midtrans_server_key is None:
        log.warning(
            "MIDTRANS_SERVER_KEY is unset: the local sandbox accepts ANY key starting %s. "
            "It is a test double; no real money moves.",
            SANDBOX_KEY_PREFIX,
        )

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("sandbox stopping", extra=kv(signal=signal.Signals(signum).name))
        sandbox.request_stop()

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for signum in STOP_SIGNALS:
            previous[signum] = signal.signal(signum, on_signal)
    try:
        sandbox.start()
        log.info(
            "sandbox ready",
            extra=kv(url=sandbox.url, simulator=f"{sandbox.url}/simulator"),
        )
        sandbox.serve_forever()
    finally:
        sandbox.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
