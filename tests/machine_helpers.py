"""Helpers for tests that run the workers: wait on the events stream, read what happened."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable

from constants.states import State
from cores.broker import Broker, Snapshot
from services.worker import Worker

#: Workers run in a thread by a test sleep on Redis this long at most, so that a stop from
#: the test's thread is seen at once (a signal interrupts the sleep; a thread cannot).
TEST_BLOCK_S = 0.05


def start_worker(worker: Worker) -> threading.Thread:
    """Run `worker` in a daemon thread; stop it with `stop_worker`."""
    worker.max_block_s = TEST_BLOCK_S
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    return thread


def stop_worker(worker: Worker, thread: threading.Thread) -> None:
    worker.request_stop()
    thread.join(5)
    assert not thread.is_alive(), f"{worker.service} did not stop"


def run_until(worker: Worker, done: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Run `worker` in a thread until `done()` (checked on each of its steps' wake-ups, and
    at least every TEST_BLOCK_S), or fail the test after `timeout_s`; then stop it."""
    thread = start_worker(worker)
    try:
        eventually(done, timeout_s, what=f"{worker.service} to finish")
    finally:
        stop_worker(worker, thread)


def eventually(check: Callable[[], object], timeout_s: float = 10.0, what: str = "condition",
               interval_s: float = 0.01) -> object:
    """Return `check()`'s first truthy answer; fail the test after `timeout_s`.

    For what has no event to block on (another process's files, an HTTP peer): a short
    interval, never a sleep that stands in for the thing awaited.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        answer = check()
        if answer:
            return answer
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


def wait_for(broker: Broker, done: Callable[[Snapshot], bool], timeout_s: float = 15.0,
             what: str = "state") -> Snapshot:
    """Block on the events stream until `done(snapshot)`; fail the test after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    cursor = broker.cursor()
    while True:
        snap = broker.snapshot()
        if done(snap):
            return snap
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"timed out waiting for {what}; machine is {snap.state} "
                                 f"(events: {states_seen(broker)})")
        cursor, _ = broker.wait(cursor, min(left, 0.5))


def wait_state(broker: Broker, state: State, timeout_s: float = 15.0) -> Snapshot:
    return wait_for(broker, lambda s: s.state == state, timeout_s, what=str(state))


def states_seen(broker: Broker) -> list[str]:
    """Every state the machine went through, from the events stream."""
    return [f["state"] for _, f in broker.redis.xrange(broker.events_key)]


def frames_seen(broker: Broker) -> list[dict]:
    return [json.loads(f["frame"]) for _, f in broker.redis.xrange(broker.events_key)]


def sale_kinds(broker: Broker, order_id: str) -> list[str]:
    return [s["kind"] for s in broker.sales() if s["order_id"] == order_id]


def compress(states: list[str]) -> list[str]:
    """States with repeats folded (ORDER_CREATED is re-sent while a cancel is confirmed)."""
    out: list[str] = []
    for s in states:
        if not out or out[-1] != s:
            out.append(s)
    return out
