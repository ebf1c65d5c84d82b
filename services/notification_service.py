"""NOTIFICATION: the Midtrans HTTP notification receiver, and the late-payment desk beside it.

The receiver checks the signature (constant-time), puts the order_id in the RECHECK set
(durable, in Redis) and answers 200 at once, duplicates too. It never acts on the body: the
desk (services/late_payments.py) reads the status from Midtrans itself. Forged, replayed,
out-of-order and malformed notifications change nothing.
"""

from __future__ import annotations

import json
import logging
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import redis

from constants.tunables import (
    NOTIFICATION_MAX_BYTES,
    NOTIFICATION_READ_TIMEOUT_S,
    THREAD_BLOCK_MAX_S,
)
from cores.broker import Broker
from cores.config import Settings
from cores.logs import kv
from cores.midtrans import MidtransClient, verify_signature
from services.late_payments import Desk, LatePayments

log = logging.getLogger(__name__)


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
            data = json.dumps(
                {"status_code": str(status.value), "status_message": message}
            ).encode()
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

    def __init__(
        self,
        broker: Broker,
        client: MidtransClient,
        server_key: str,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.desk = Desk(LatePayments(broker, client))
        self.http = ThreadingHTTPServer((host, port), make_handler(self.desk, server_key))
        self.http.daemon_threads = True
        self.threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        host = self.http.server_address[0]
        assert isinstance(host, str)  # an AF_INET server: (host, port), the host as text
        return f"http://{host}:{self.http.server_port}/notification"

    def start(self, desk: bool = True) -> NotificationServer:
        """Serve in threads: the receiver, and the desk unless the caller runs it."""
        targets = [lambda: self.http.serve_forever(poll_interval=0.1)]
        if desk:
            # No signal can interrupt a thread's sleep on Redis: keep it short, so that
            # stop() from another thread is seen promptly.
            self.desk.max_block_s = min(self.desk.max_block_s, THREAD_BLOCK_MAX_S)
            targets.append(self.desk.run)
        for target in targets:
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
    """The NOTIFICATION process: the receiver in a thread, the desk in the main thread (so
    that SIGTERM interrupts its sleep on Redis at once)."""
    from services.runtime import broker_for

    server = NotificationServer(
        broker_for(settings, name="notification"),
        MidtransClient.from_settings(settings),
        settings.server_key,
        settings.notification_host,
        settings.notification_port,
    )
    server.desk.install_signal_handlers()
    server.start(desk=False)
    log.info("notification receiver listening", extra=kv(url=server.url))
    try:
        server.desk.run()
    finally:
        server.stop()
