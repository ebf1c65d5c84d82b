"""The lifecycle every worker shares: block on Redis, step, heartbeat, stop on SIGTERM.

A worker is level-triggered: each time it wakes it reads the machine's state and does the
step that state asks of it. So a worker restarted after a crash carries on from what Redis
holds, and a lost wake-up costs at most one heartbeat period, never an order.

An idle worker costs nothing: it blocks on the events and commands streams until an entry
arrives, its step's timer falls due, or its next heartbeat (HEARTBEAT_EVERY_S): three Redis
commands per heartbeat period. SIGTERM interrupts the block at once; a step in hand is
finished first.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable
from typing import ClassVar

import redis

from constants.orders import Command
from constants.states import State
from constants.tunables import ERROR_BACKOFF_S, HEARTBEAT_EVERY_S, HEARTBEAT_TTL_S
from cores.broker import Broker, Snapshot
from cores.logs import kv

log = logging.getLogger(__name__)


class Stopping(BaseException):
    """Raised by the signal handler into a blocking read (never caught as an Exception)."""


class Worker:
    """Subclasses set `service` and implement `step`."""

    service = "WORKER"
    #: Fleet mode: the states and the commands this service acts on (None: any). The shard
    #: runner skips, without reading the machine, a hint of a transition to another state
    #: and a hint of another command: the step would do nothing for it
    #: (services/shard_runner.py, `must_step`).
    states: ClassVar[frozenset[State] | None] = None
    commands: ClassVar[frozenset[Command] | None] = None
    #: The longest sleep on Redis; tests that stop a worker from another thread shorten it.
    max_block_s: float = HEARTBEAT_EVERY_S

    def __init__(self, broker: Broker, clock: Callable[[], float] = time.time) -> None:
        self.broker = broker
        self.clock = clock
        self.stopping = threading.Event()
        self.steps = 0
        self._blocking = False

    def step(self, snap: Snapshot, entries: list[tuple[str, dict]]) -> float | None:
        """Do what `snap` asks of this worker. Return when to run again (None: on a change)."""
        raise NotImplementedError

    def request_stop(self, *_: object) -> None:
        """Stop after the step in hand. From another thread, a block in progress ends at its
        timeout (at most `max_block_s`); from a signal, at once (see `_on_signal`)."""
        self.stopping.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, *_: object) -> None:
        self.request_stop()
        if self._blocking:  # sleeping on Redis: nothing is in hand, leave now
            raise Stopping

    def run(self) -> None:
        """Serve until `request_stop` (SIGTERM finishes the step in hand, then returns)."""
        log.info("worker started", extra=kv(worker=self.service))
        with contextlib.suppress(Stopping):  # raised by _on_signal out of a block on Redis
            self._loop()
        log.info("worker stopped", extra=kv(worker=self.service))

    def _loop(self) -> None:
        failures = 0
        cursor: dict[str, str] | None = None
        entries: list[tuple[str, dict]] = []
        next_beat = 0.0
        while not self.stopping.is_set():
            try:
                if cursor is None:
                    cursor = self.broker.cursor()
                now = self.clock()
                if now >= next_beat:
                    self.broker.heartbeat(self.service, HEARTBEAT_TTL_S)
                    next_beat = now + HEARTBEAT_EVERY_S
                wake_at = self.step(self.broker.snapshot(), entries)
                self.steps += 1
                failures = 0
                until = next_beat if wake_at is None else min(next_beat, wake_at)
                cursor, entries = self._wait(cursor, min(until - self.clock(), self.max_block_s))
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

    def _wait(
        self, cursor: dict[str, str], block_s: float
    ) -> tuple[dict[str, str], list[tuple[str, dict]]]:
        try:
            self._blocking = True
            if self.stopping.is_set():
                return cursor, []
            return self.broker.wait(cursor, block_s)
        finally:
            self._blocking = False
