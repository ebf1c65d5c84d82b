"""NOTIFICATION: the Midtrans HTTP notification receiver, and the late-payment desk.

The receiver checks the signature (constant-time), puts the order_id in the RECHECK set
(durable, in Redis) and answers 200 at once, duplicates too. The desk never trusts the
notification's body: for the order on screen it wakes the ORDER_CREATED worker, which
re-reads the status itself; for an order already closed it re-reads the status from
Midtrans, and a settlement there is a late payment: recorded and refunded, or recorded as
owed when Midtrans refuses (money rule 4). Forged, replayed, out-of-order and malformed
notifications change nothing.

The same set holds the orders closed while money could still move (a cancel the gateway
never confirmed, a settlement of the wrong amount), so a late payment is found even where
no notification arrives (a machine behind NAT).
"""

from __future__ import annotations

import collections
import json
import logging
import signal
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import redis

from constants.services import Service
from constants.states import ORDER_STATES, Sale
from constants.tunables import (
    NOTIFICATION_MAX_BYTES,
    NOTIFICATION_READ_TIMEOUT_S,
    RECHECK_EVERY_S,
)
from cores import rules
from cores.broker import Broker, Snapshot
from cores.config import Settings
from cores.logs import kv
from cores.midtrans import GatewayRefused, MidtransClient, MidtransError, verify_signature
from cores.rules import Late, LateStatus
from services.worker import Worker

log = logging.getLogger(__name__)

#: The one result of LatePayments.handle that keeps an order in the RECHECK set.
DEFERRED = "deferred"


class LatePayments:
    """Decides what a notification or a recheck means for an order, by reading Midtrans."""

    def __init__(self, broker: Broker, client: MidtransClient,
                 clock: Callable[[], float] = time.time) -> None:
        self.broker = broker
        self.client = client
        self.clock = clock

    def handle(self, order_id: str) -> str:
        """Act on one order; returns what happened (for logs and tests)."""
        # State first: the transition that closes an order writes its outcome in the same
        # MULTI, so an order read after a snapshot that no longer shows it has its outcome.
        snap = self.broker.snapshot()
        order = self.broker.order(order_id)
        if order is None:
            return "unknown_order"
        on_screen = snap.order_id == order_id and snap.state in ORDER_STATES
        triage = rules.late_triage(on_screen, order.get("outcome"), order.get("late"))
        if triage is Late.WAKE_WORKER:
            self.broker.wake("CHECK", order_id)
        if triage is not Late.READ_STATUS:
            return triage.value
        try:
            txn = self.client.status(order_id)
        except GatewayRefused as exc:
            if exc.code == "404":
                return "no_transaction"
            return self._again(order_id, f"status refused {exc.code}")
        except MidtransError as exc:
            return self._again(order_id, str(exc))
        verdict = rules.late_status(order.get("late"), txn.transaction_status,
                                    txn.fraud_status, txn.amount_idr, order.amount)
        if verdict is LateStatus.RECORD_REFUNDED:
            return self._refunded(order_id, txn.amount_idr)
        if verdict is LateStatus.PENDING:
            return self._again(order_id, "still pending")
        if verdict is LateStatus.UNPAID:
            return "unpaid"
        # Settled after the order was closed: the customer paid and got nothing.
        if order.get("late") != "pending":
            self.broker.update_order(order_id, late="pending")
            self.broker.record_sale(order_id, Sale.LATE_PAYMENT, amount=txn.amount_idr,
                                    transaction_status=txn.transaction_status,
                                    transaction_id=txn.transaction_id)
        key = rules.refund_key(order_id)
        try:
            self.client.refund(order_id, refund_key=key, amount=txn.amount_idr,
                               reason="paid after the order was closed")
        except GatewayRefused as exc:
            self.broker.update_order(order_id, late="owed")
            self.broker.record_sale(order_id, Sale.REFUND_OWED, amount=txn.amount_idr,
                                    code=exc.code)
            self.broker.flag_for_operator(order_id, Sale.REFUND_OWED, amount=txn.amount_idr,
                                          drink=order.drink.id,
                                          detail=f"late payment, refund refused ({exc.code})")
            log.warning("late payment: refund owed", extra=kv(order_id=order_id))
            return "refund_owed"
        except MidtransError as exc:
            return self._again(order_id, f"refund failed: {exc}")
        return self._refunded(order_id, txn.amount_idr)

    def _refunded(self, order_id: str, amount: int) -> str:
        self.broker.update_order(order_id, late="refunded")
        self.broker.record_sale(order_id, Sale.REFUNDED, amount=amount,
                                refund_key=rules.refund_key(order_id))
        log.info("late payment refunded", extra=kv(order_id=order_id))
        return "refunded"

    def _again(self, order_id: str, why: str) -> str:
        """Not settled yet: the desk keeps the order in the RECHECK set (its lease stands)."""
        log.warning("late payment check deferred", extra=kv(order_id=order_id, why=why))
        return DEFERRED


class Desk(Worker):
    """The worker that works the RECHECK set: order_ids from notifications (due at once) and
    from orders closed while money could still move (due later).

    The set is the queue, in Redis: an order stays in it until it is settled for good, so a
    crash or a Redis outage loses nothing. Taking an order pushes its time forward (a lease);
    a final result removes it. The loop, heartbeat and error handling are the workers'.
    """

    service = Service.NOTIFICATION

    def __init__(self, late: LatePayments, clock: Callable[[], float] = time.time) -> None:
        super().__init__(late.broker, clock)
        self.late = late
        #: The latest results, for logs and tests.
        self.handled: collections.deque[tuple[str, str]] = collections.deque(maxlen=1000)

    def step(self, snap: Snapshot, entries: list) -> float | None:
        due, nxt = self.broker.rechecks_due(self.clock())
        for order_id in due:
            self.work(order_id)
        return nxt

    def work(self, order_id: str) -> None:
        self.broker.schedule_recheck(order_id, self.clock() + RECHECK_EVERY_S, wake=False)
        result = self.late.handle(order_id)
        self.handled.append((order_id, result))
        if result != DEFERRED:
            self.broker.recheck_done(order_id)
        log.info("late-payment desk", extra=kv(order_id=order_id, result=result))


def make_handler(desk: Desk, server_key: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = NOTIFICATION_READ_TIMEOUT_S  # a stalled sender cannot hold a thread

        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            if self.path.split("?")[0].rstrip("/") not in ("/notification", ""):
                return self._answer(HTTPStatus.NOT_FOUND, "unknown path")
            try:
                length = int(self.headers.get("Content-Length", ""))
            except ValueError:
                return self._answer(HTTPStatus.LENGTH_REQUIRED, "Content-Length required")
            if length < 0 or length > NOTIFICATION_MAX_BYTES:
                return self._answer(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "body too large")
            raw = self.rfile.read(length)
            try:
                body = json.loads(raw)
            except (ValueError, RecursionError):
                return self._answer(HTTPStatus.BAD_REQUEST, "body is not JSON")
            if not isinstance(body, dict) or not isinstance(body.get("order_id"), str):
                return self._answer(HTTPStatus.BAD_REQUEST, "expected a notification object")
            if not verify_signature(body, server_key):
                log.warning("forged notification", extra=kv(order_id=body["order_id"][:60]))
                return self._answer(HTTPStatus.UNAUTHORIZED, "invalid signature_key")
            try:  # durable before the 200: Midtrans does not send a notification twice
                desk.broker.schedule_recheck(body["order_id"], desk.clock())
            except redis.RedisError:
                return self._answer(HTTPStatus.SERVICE_UNAVAILABLE, "try again later")
            self._answer(HTTPStatus.OK, "ok")

        def do_GET(self) -> None:  # noqa: N802
            if self.path == "/healthz":
                return self._answer(HTTPStatus.OK, "ok")
            self._answer(HTTPStatus.NOT_FOUND, "unknown path")

        def _answer(self, status: HTTPStatus, message: str) -> None:
            data = json.dumps({"status_code": str(status.value),
                               "status_message": message}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if status >= HTTPStatus.BAD_REQUEST:
                # The body may be unread: never parse its rest as a next request.
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, fmt: str, *args: object) -> None:
            log.debug("http " + fmt, *args)

    return Handler


class NotificationServer:
    """The receiver and the desk, startable in-process on port 0 for tests."""

    def __init__(self, broker: Broker, client: MidtransClient, server_key: str,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        self.desk = Desk(LatePayments(broker, client))
        self.http = ThreadingHTTPServer((host, port), make_handler(self.desk, server_key))
        self.http.daemon_threads = True
        self.threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        host, port = self.http.server_address[:2]
        return f"http://{host}:{port}/notification"

    def start(self) -> NotificationServer:
        for target in (self.desk.run, lambda: self.http.serve_forever(poll_interval=0.1)):
            thread = threading.Thread(target=target, daemon=True)
            thread.start()
            self.threads.append(thread)
        return self

    def stop(self) -> None:
        self.desk.request_stop()
        self.http.shutdown()
        self.http.server_close()
        for thread in self.threads:
            thread.join(5)


def run(settings: Settings) -> None:
    from services.runtime import broker_for

    server = NotificationServer(broker_for(settings), MidtransClient.from_settings(settings),
                                settings.server_key, settings.notification_host,
                                settings.notification_port)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    server.start()
    log.info("notification receiver listening", extra=kv(url=server.url))
    while not stop.wait(1.0):
        pass
    server.stop()
