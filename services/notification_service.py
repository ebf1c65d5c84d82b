"""NOTIFICATION: the Midtrans HTTP notification receiver, and the late-payment desk beside it.

The receiver checks the signature (constant-time), puts the order_id in the RECHECK set
(durable, in Redis) and answers 200 at once, duplicates too. It never acts on the body: the
desk (services/late_payments.py) reads the status from Midtrans itself. Forged, replayed,
out-of-order and malformed notifications change nothing.

The receiver is a Starlette app under uvicorn (services/notification_http.py: the deadline
of a request, readable refusals, the lingering close). A forged notification costs a parse
and one SHA-512 on the event loop, so a flood of them cannot delay Midtrans's own, whose one
Redis write runs in a worker thread (the Redis client is synchronous).

    POST /notification (also / and /notification/)  200 ok | 400 | 401 | 411 | 413 | 503
    GET  /healthz                                    200 ok
    anything else                                    404 | 405
    every answer                                     {"status_code": "...", "status_message": "..."}
"""

from __future__ import annotations

import json
import logging
import threading

import redis
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from constants.tunables import (
    NOTIFICATION_LINGER_S,
    NOTIFICATION_MAX_BYTES,
    NOTIFICATION_REQUEST_DEADLINE_S,
    THREAD_BLOCK_MAX_S,
)
from cores.broker import Broker
from cores.config import Settings
from cores.logs import kv
from cores.midtrans import MidtransClient, verify_signature
from services.late_payments import Desk, LatePayments
from services.notification_http import GuardedProtocol, ServerThread, answer_body

log = logging.getLogger(__name__)

#: The paths Midtrans may be told to post to (shared/midtrans.md, "HTTP notifications").
NOTIFICATION_PATHS = ("/notification", "/notification/", "/")


def answer(status: int, message: str) -> Response:
    """A JSON answer; a refusal closes the connection (its body may be unread)."""
    headers = {"Connection": "close"} if status >= 400 else None
    return Response(answer_body(status, message), status, headers, "application/json")


class Refused(Exception):
    """A request the receiver answers with `status` and `message`, changing nothing."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


async def read_body(request: Request) -> bytes:
    """The body, whole and at most NOTIFICATION_MAX_BYTES, or Refused. An oversized body is
    refused before a byte of it is read (and before any `100 Continue`)."""
    declared = request.headers.get("content-length")
    chunked = "chunked" in request.headers.get("transfer-encoding", "").lower()
    if declared is None and not chunked:
        raise Refused(411, "Content-Length required")
    try:
        length = int(declared) if declared is not None else None
    except ValueError:  # h11 lets only digits through; kept for any other server
        raise Refused(400, "bad Content-Length") from None
    if length is not None and length > NOTIFICATION_MAX_BYTES:
        raise Refused(413, "body too large")
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > NOTIFICATION_MAX_BYTES:  # a chunked body, bounded as it comes
            raise Refused(413, "body too large")
    if length is not None and len(raw) < length:  # the sender shut its side early
        raise Refused(400, "body shorter than its Content-Length")
    return bytes(raw)


def parse(raw: bytes) -> dict:
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise Refused(400, "body is not JSON") from None
    if not isinstance(body, dict) or not isinstance(body.get("order_id"), str):
        raise Refused(400, "expected a notification object")
    return body


def make_app(desk: Desk, server_key: str) -> Starlette:
    """The receiver's ASGI app: verified notifications go on the desk's RECHECK set."""

    async def notification(request: Request) -> Response:
        try:
            body = parse(await read_body(request))
        except Refused as refused:
            return answer(refused.status, refused.message)
        except ClientDisconnect:  # gone mid-body: nobody to answer
            log.debug("notification sender went away")
            return answer(400, "incomplete request")
        order_id = body["order_id"]
        if not verify_signature(body, server_key):
            log.warning("forged notification", extra=kv(order_id=order_id[:60]))
            return answer(401, "invalid signature_key")
        try:  # durable before the 200: Midtrans does not send a notification twice
            await run_in_threadpool(desk.broker.schedule_recheck, order_id, desk.clock())
        except redis.RedisError as exc:
            log.warning("notification not acknowledged", extra=kv(order_id=order_id, error=exc))
            return answer(503, "try again later")
        log.info("recheck scheduled", extra=kv(order_id=order_id))
        return answer(200, "ok")

    async def healthz(request: Request) -> Response:
        return answer(200, "ok")

    async def refused(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        message = "method not allowed" if exc.status_code == 405 else "unknown path"
        return answer(exc.status_code, message)

    routes = [Route(path, notification, methods=["POST"]) for path in NOTIFICATION_PATHS]
    routes.append(Route("/healthz", healthz, methods=["GET"]))
    app = Starlette(routes=routes, exception_handlers={HTTPException: refused})
    app.router.redirect_slashes = False  # a redirect is no answer for Midtrans
    return app


class NotificationServer:
    """The receiver and the desk, startable in-process on port 0 for tests."""

    def __init__(
        self,
        broker: Broker,
        client: MidtransClient,
        server_key: str,
        host: str = "127.0.0.1",
        port: int = 0,
        deadline_s: float = NOTIFICATION_REQUEST_DEADLINE_S,
    ) -> None:
        self.desk = Desk(LatePayments(broker, client))
        protocol = GuardedProtocol.with_limits(deadline_s, NOTIFICATION_LINGER_S)
        self.http = ServerThread(make_app(self.desk, server_key), host, port, protocol)
        self.threads: list[threading.Thread] = []

    @property
    def port(self) -> int:
        return self.http.port

    @property
    def url(self) -> str:
        host = f"[{self.http.host}]" if ":" in self.http.host else self.http.host
        return f"http://{host}:{self.port}/notification"

    def start(self, desk: bool = True) -> NotificationServer:
        """Serve (returns once connections are accepted), and run the desk in a thread unless
        the caller runs it."""
        self.http.start()
        self.threads.append(self.http.thread)
        if desk:
            # No signal can interrupt a thread's sleep on Redis: keep it short, so that
            # stop() from another thread is seen promptly.
            self.desk.max_block_s = min(self.desk.max_block_s, THREAD_BLOCK_MAX_S)
            thread = threading.Thread(target=self.desk.run, name="desk", daemon=True)
            thread.start()
            self.threads.append(thread)
        return self

    def stop(self) -> None:
        self.desk.request_stop()
        self.http.stop()
        for thread in self.threads:
            thread.join(5)


def run(settings: Settings, fleet: bool = False) -> None:
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
