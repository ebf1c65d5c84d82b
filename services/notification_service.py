"""NOTIFICATION: the Midtrans HTTP notification receiver, and the late-payment desk.

The receiver checks the signature (constant-time), answers 200 at once (duplicates too),
and hands the order_id to one desk thread. The desk never trusts the notification's body:
for the order on screen it wakes the ORDER_CREATED worker, which re-reads the status itself;
for an order already closed it re-reads the status from Midtrans, and a settlement there is
a late payment: recorded and refunded, or recorded as owed when Midtrans refuses (money
rule 4). Forged, replayed, out-of-order and malformed notifications change nothing.

The desk also re-reads, on schedule, orders closed without the gateway confirming the
cancel (the RECHECK set), so a late payment is found even where no notification arrives.
"""

from __future__ import annotations

import json
import logging
import queue
import signal
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from constants.states import ORDER_STATES, Sale
from constants.tunables import NOTIFICATION_MAX_BYTES, RECHECK_EVERY_S, REDIS_BLOCK_MAX_MS
from cores import rules
from cores.broker import Broker
from cores.config import Settings
from cores.logs import kv
from cores.midtrans import GatewayRefused, MidtransClient, MidtransError, verify_signature
from cores.rules import Paid

log = logging.getLogger(__name__)


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
        if snap.order_id == order_id and snap.state in ORDER_STATES:
            self.broker.wake("CHECK", order_id)  # the watching worker re-reads the status
            return "woke_worker"
        outcome = order.get("outcome") or ""
        if not outcome.startswith("failed:"):
            return "nothing_to_do"  # paid and dispensed, or refunded on its own path
        if order.get("late") in ("refunded", "owed"):
            self.broker.recheck_done(order_id)
            return "already_settled"
        try:
            txn = self.client.status(order_id)
        except GatewayRefused as exc:
            if exc.code == "404":
                self.broker.recheck_done(order_id)
                return "no_transaction"
            return self._again(order_id, f"status refused {exc.code}")
        except MidtransError as exc:
            return self._again(order_id, str(exc))
        paid, _ = rules.judge_payment(txn.transaction_status, txn.fraud_status,
                                      txn.amount_idr, order.amount)
        if paid is Paid.PENDING:
            return self._again(order_id, "still pending")
        if paid is Paid.UNPAID:
            self.broker.recheck_done(order_id)
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
            self.broker.recheck_done(order_id)
            log.warning("late payment: refund owed", extra=kv(order_id=order_id))
            return "refund_owed"
        except MidtransError as exc:
            return self._again(order_id, f"refund failed: {exc}")
        self.broker.update_order(order_id, late="refunded")
        self.broker.record_sale(order_id, Sale.REFUNDED, amount=txn.amount_idr, refund_key=key)
        self.broker.recheck_done(order_id)
        log.info("late payment refunded", extra=kv(order_id=order_id, refund_key=key))
        return "refunded"

    def _again(self, order_id: str, why: str) -> str:
        self.broker.schedule_recheck(order_id, self.clock() + RECHECK_EVERY_S)
        log.warning("late payment check deferred", extra=kv(order_id=order_id, why=why))
        return "deferred"


class Desk:
    """One thread that works the queue of order_ids from notifications and rechecks."""

    def __init__(self, late: LatePayments) -> None:
        self.late = late
        self.queue: queue.Queue[str] = queue.Queue()
        self.stopping = threading.Event()
        self.handled: list[tuple[str, str]] = []

    def submit(self, order_id: str) -> None:
        self.queue.put(order_id)

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                order_id = self.queue.get(timeout=0.5)
            except queue.Empty:
                continue
            try:
                result = self.late.handle(order_id)
                self.handled.append((order_id, result))
                log.info("notification handled", extra=kv(order_id=order_id, result=result))
            except Exception:
                log.exception("notification handling failed", extra=kv(order_id=order_id))
                self.late.broker.schedule_recheck(order_id, time.time() + RECHECK_EVERY_S)

    def run_rechecks(self) -> None:
        """Feed due rechecks to the queue; sleep on Redis until the next one falls due."""
        broker = self.late.broker
        cursor = None
        while not self.stopping.is_set():
            try:
                if cursor is None:
                    cursor = broker.cursor()
                due, nxt = broker.rechecks_due(time.time())
                for order_id in due:
                    broker.recheck_done(order_id)
                    self.submit(order_id)
                wait = REDIS_BLOCK_MAX_MS / 1000
                if nxt is not None:
                    wait = min(wait, max(0.0, nxt - time.time()))
                cursor, _ = broker.wait(cursor, wait)
            except Exception:
                log.exception("recheck loop failed")
                cursor = None
                self.stopping.wait(1.0)


def make_handler(desk: Desk, server_key: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

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
            self._answer(HTTPStatus.OK, "ok")
            desk.submit(body["order_id"])

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
        for target in (self.desk.run, self.desk.run_rechecks,
                       lambda: self.http.serve_forever(poll_interval=0.1)):
            thread = threading.Thread(target=target, daemon=True)
            thread.start()
            self.threads.append(thread)
        return self

    def stop(self) -> None:
        self.desk.stopping.set()
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
