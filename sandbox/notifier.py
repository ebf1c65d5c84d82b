"""Signed HTTP notifications: POSTed to each of a transaction's notification URLs whenever its
transaction_status changes (shared/midtrans.md, "HTTP notifications").

Threads: a scheduler that sleeps on a condition until the next delivery is due, and
NOTIFY_LANES lanes per receiving URL, a transaction always in the same one (CRC-32 of its
id). A due delivery joins its lane; a lane's thread POSTs its deliveries one after the other
(so one receiver gets a transaction's notifications in order) and ends when its lane is
empty. Lanes run side by side, as Midtrans's senders do: a receiver that hangs holds up its
own lanes for at most `timeout_s`, never another receiver's, and a busy receiver (a fleet's
backend) is sent the notifications of several transactions at once rather than queued
behind one connection.

A failed attempt (no 2xx in `timeout_s`) is tried again after each delay of `retry_delays_s`
(Midtrans retries about 5 times over hours; locally the same number of attempts, over
seconds), then given up with a warning. The NOTIFY_* faults act here: NOTIFY_DELAY_S delays
every delivery, NOTIFY_DUPLICATE_RATE sends some twice, NOTIFY_REORDER holds a transaction's
pending notification back until its next change. Deliveries not made yet are lost when the
sandbox stops.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import socket
import threading
import time
import zlib
from collections import deque
from dataclasses import dataclass, field
from http.client import HTTPConnection, HTTPSConnection
from urllib.parse import urlsplit

from cores.logs import kv
from sandbox.faults import FaultSwitches

log = logging.getLogger(__name__)

#: Timeout of one POST; the delays between attempts when a receiver fails.
NOTIFY_TIMEOUT_S = 5.0
NOTIFY_RETRY_DELAYS_S = (0.2, 1.0, 3.0, 10.0)
#: Deliveries made at once to one receiving URL (each transaction's in order, in one lane).
NOTIFY_LANES = 8
#: A duplicate notification (NOTIFY_DUPLICATE_RATE) follows the original this much later.
NOTIFY_DUPLICATE_GAP_S = 0.05
HEADERS = {
    "Content-Type": "application/json",
    "Accept": "application/json",
    "User-Agent": "Midtrans-local-sandbox",
}


@dataclass(order=True)
class Delivery:
    due: float  # monotonic seconds
    seq: int
    url: str = field(compare=False)
    body: bytes = field(compare=False)
    attempt: int = field(default=0, compare=False)
    label: str = field(default="", compare=False)
    #: The URL's lane of its transaction.
    lane: int = field(default=0, compare=False)


class Notifier:
    """Delivers notifications in background threads between `start()` and `stop()`."""

    def __init__(self, faults: FaultSwitches) -> None:
        self.faults = faults
        #: Delays between attempts, and the timeout of one; tests may shorten them.
        self.retry_delays_s: tuple[float, ...] = NOTIFY_RETRY_DELAYS_S
        self.timeout_s = NOTIFY_TIMEOUT_S
        self._lock = threading.Lock()
        self._due = threading.Condition(self._lock)
        self._outbox: list[Delivery] = []
        self._seq = itertools.count()
        #: Notifications held back by NOTIFY_REORDER, per transaction_id: (url, body).
        self._held: dict[str, list[tuple[str, bytes]]] = {}
        self._lanes: dict[tuple[str, int], deque[Delivery]] = {}
        self._lane_threads: dict[tuple[str, int], threading.Thread] = {}
        self._open: set[HTTPConnection] = set()
        self._scheduler: threading.Thread | None = None
        self._stopping = False

    def start(self) -> None:
        self._scheduler = threading.Thread(
            target=self._schedule, name="sandbox-notify", daemon=True
        )
        self._scheduler.start()

    def stop(self) -> None:
        """End the threads: deliveries in progress are cut off, those not made are dropped."""
        with self._lock:
            self._stopping = True
            self._due.notify_all()
            connections = list(self._open)
            threads = list(self._lane_threads.values())
        for conn in connections:
            if conn.sock is not None:
                with contextlib.suppress(OSError):
                    conn.sock.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + self.timeout_s + 1
        for thread in [self._scheduler, *threads]:
            if thread is not None:
                thread.join(timeout=max(deadline - time.monotonic(), 0))

    def notify(
        self, transaction_id: str, order_id: str, status: str, urls: list[str], body: bytes
    ) -> None:
        """Queue the notification `body` of a change to `status` for each URL."""
        if not urls:
            return
        fresh = [(url, body) for url in urls]
        label = f"{order_id} {status}"
        lane = zlib.crc32(transaction_id.encode()) % NOTIFY_LANES
        with self._lock:
            if self.faults["NOTIFY_REORDER"] and status == "pending":
                # Held back until the transaction's next change, then sent after it.
                self._held.setdefault(transaction_id, []).extend(fresh)
                return
            batch = fresh + self._held.pop(transaction_id, [])[::-1]
            due = time.monotonic() + self.faults["NOTIFY_DELAY_S"]
            for url, payload in batch:
                self._queue(Delivery(due, next(self._seq), url, payload, 0, label, lane))
                if self.faults.roll("NOTIFY_DUPLICATE_RATE"):
                    gap = due + NOTIFY_DUPLICATE_GAP_S
                    self._queue(Delivery(gap, next(self._seq), url, payload, 0, label, lane))
            self._due.notify_all()

    def _queue(self, delivery: Delivery) -> None:
        heapq.heappush(self._outbox, delivery)

    def _schedule(self) -> None:
        """Move each due delivery to its URL's lane, starting the lane's thread if idle."""
        with self._lock:
            while not self._stopping:
                if not self._outbox:
                    self._due.wait()
                    continue
                wait = self._outbox[0].due - time.monotonic()
                if wait > 0:
                    self._due.wait(wait)
                    continue
                delivery = heapq.heappop(self._outbox)
                key = (delivery.url, delivery.lane)
                self._lanes.setdefault(key, deque()).append(delivery)
                if key not in self._lane_threads:
                    thread = threading.Thread(
                        target=self._run_lane,
                        args=(key,),
                        name="sandbox-notify-lane",
                        daemon=True,
                    )
                    self._lane_threads[key] = thread
                    thread.start()

    def _run_lane(self, key: tuple[str, int]) -> None:
        url = key[0]
        while True:
            with self._lock:
                lane = self._lanes.get(key)
                if self._stopping or not lane:
                    self._lanes.pop(key, None)
                    self._lane_threads.pop(key, None)
                    return
                delivery = lane.popleft()
            error = self._post(delivery)
            extra = kv(notification=delivery.label, url=url, attempt=delivery.attempt + 1)
            if error is None:
                log.debug("notification delivered", extra=extra)
                continue
            with self._lock:
                if delivery.attempt < len(self.retry_delays_s) and not self._stopping:
                    delivery.due = time.monotonic() + self.retry_delays_s[delivery.attempt]
                    delivery.attempt += 1
                    delivery.seq = next(self._seq)
                    self._queue(delivery)
                    self._due.notify_all()
                    log.info("notification failed, will retry: %s", error, extra=extra)
                else:
                    log.warning("notification failed, giving up: %s", error, extra=extra)

    def _post(self, delivery: Delivery) -> str | None:
        """POST one notification; None when the receiver answered 2xx, else the error."""
        parts = urlsplit(delivery.url)
        kind = HTTPSConnection if parts.scheme == "https" else HTTPConnection
        try:
            conn = kind(parts.hostname or "", parts.port, timeout=self.timeout_s)
        except ValueError as exc:  # a port out of range
            return f"{type(exc).__name__}: {exc}"
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        with self._lock:
            if self._stopping:
                return "stopping"
            self._open.add(conn)
        try:
            conn.request("POST", target, body=delivery.body, headers=HEADERS)
            response = conn.getresponse()
            response.read()
            status = response.status
        except Exception as exc:  # any failure is retried; the lane must live on
            return f"{type(exc).__name__}: {exc}"
        finally:
            with self._lock:
                self._open.discard(conn)
            conn.close()
        return None if 200 <= status < 300 else f"HTTP {status}"
