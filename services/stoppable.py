"""The lifecycle of the process's asyncio servers (the kiosk gate, the agents' gateway).

`serve()` runs inside `stoppable()` until its stop event is set: by `request_stop()` from any
thread, or, with `handle_signals`, by SIGTERM / SIGINT.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Iterator

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stoppable:
    """Mixed into a server whose `serve()` waits on the event `stoppable()` yields."""

    _stop: asyncio.Event | None = None
    _loop: asyncio.AbstractEventLoop | None = None

    @contextlib.contextmanager
    def stoppable(
        self, stop: asyncio.Event | None, handle_signals: bool
    ) -> Iterator[asyncio.Event]:
        """The stop event (`stop`, or a new one) for the running loop's serve()."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._stop = stop if stop is not None else asyncio.Event()
        if handle_signals:
            for sig in SIGNALS:
                loop.add_signal_handler(sig, self._stop.set)
        try:
            yield self._stop
        finally:
            if handle_signals:
                for sig in SIGNALS:
                    loop.remove_signal_handler(sig)
            self._loop = None

    def request_stop(self) -> None:
        """Stop `serve()`; safe to call from any thread, and once it has stopped."""
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(stop.set)
