"""The lifecycle every worker shares: block on Redis, step, heartbeat, stop on SIGTERM.

A worker is level-triggered: each time it wakes it reads the machine's state and does the
step that state asks of it. So a worker restarted after a crash carries on from what Redis
holds, and a lost wake-up costs at most one BLOCK period, never an order.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable

import redis

from constants.tunables import ERROR_BACKOFF_S, HEARTBEAT_TTL_S, REDIS_BLOCK_MAX_MS
from cores.broker import Broker, Snapshot
from cores.logs import kv

log = logging.getLogger(__name__)



class Worker:
    """Subclasses set `service` and implement `step`."""

    service = "WORKER"

    def __init__(self, broker: Broker, clock: Callable[[], float] = time.time) -> None:
        self.broker = broker
        self.clock = clock
        self.stopping = threading.Event()
        self.steps = 0

    def step(self, snap: Snapshot, entries: list[tuple[str, dict]]) -> float | None:
        """Do what `snap` asks of this worker. Return when to run again (None: on a change)."""
        raise NotImplementedError

    def request_stop(self, *_: object) -> None:
        self.stopping.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)

    def run(self) -> None:
        """Serve until `request_stop` (SIGTERM finishes the step in hand, then returns)."""
        log.info("worker started", extra=kv(worker=self.service))
        failures = 0
        cursor: dict[str, str] | None = None
        entries: list[tuple[str, dict]] = []
        last_beat = 0.0
        while not self.stopping.is_set():
            try:
                if cursor is None:
                    cursor = self.broker.cursor()
                now = self.clock()
                if now - last_beat >= HEARTBEAT_TTL_S / 3:
                    self.broker.heartbeat(self.service, HEARTBEAT_TTL_S)
                    last_beat = now
                wake_at = self.step(self.broker.snapshot(), entries)
                self.steps += 1
                failures = 0
                block_s = REDIS_BLOCK_MAX_MS / 1000
                if wake_at is not None:
                    block_s = min(block_s, wake_at - self.clock())
                cursor, entries = self.broker.wait(cursor, block_s)
            except Exception as exc:  # a failing step must not kill the worker
                delay = ERROR_BACKOFF_S[min(failures, len(ERROR_BACKOFF_S) - 1)]
                failures += 1
                if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
                    log.warning("redis unavailable", extra=kv(error=str(exc), retry_s=delay))
                    cursor = None
                else:
                    log.exception("step failed", extra=kv(worker=self.service, retry_s=delay))
                entries = []
                self.stopping.wait(delay)
        log.info("worker stopped", extra=kv(worker=self.service))

    def run_until(self, done: Callable[[], bool], timeout_s: float = 10.0) -> None:
        """For tests: run in a thread until `done()` or the timeout; then stop."""
        thread = threading.Thread(target=self.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + timeout_s
        try:
            while not done() and time.monotonic() < deadline:
                time.sleep(0.02)
        finally:
            self.request_stop()
            thread.join(5)
