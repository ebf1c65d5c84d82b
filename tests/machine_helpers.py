"""Helpers for tests that run the workers: wait on the events stream, read what happened."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from constants.states import State
from cores.broker import Broker, Snapshot


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
