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

Fleet mode (`run(settings, fleet=True)`, one backend for many machines): the same receiver
routes a verified notification to its machine by the order id (Broker.new_order_id makes
`{machine_id}-{YYYYmmddHHMMSS}-{seq:06d}-{hex4}`; machine ids may hold '-', so it is read from
the right) and schedules the recheck on that machine's keys only, with a hint on its work
shard. An id that names no registered machine is logged and answered 200 without a write:
there is nothing to do, and another answer would have Midtrans retry it for days. The desk
runs per machine under a ShardRunner (services/shard_runner.py) in the same process.
"""

from __future__ import annotations

import collections
import ipaddress
import json
import logging
import re
import threading
import time
from collections.abc import Callable

import redis
import requests
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from constants import keys
from constants.services import Service
from constants.tunables import (
    NOTIFICATION_LINGER_S,
    NOTIFICATION_MAX_BYTES,
    NOTIFICATION_REFUSALS_BURST,
    NOTIFICATION_REFUSALS_PER_S,
    NOTIFICATION_REQUEST_DEADLINE_S,
    NOTIFICATION_SENDERS_KEPT,
    THREAD_BLOCK_MAX_S,
)
from cores.broker import Broker
from cores.config import MACHINE_ID, Settings
from cores.logs import kv
from cores.midtrans import MidtransClient, verify_signature
from cores.protocol import TokenBucket
from cores.work import WorkHints
from services.late_payments import Desk, LatePayments
from services.notification_http import GuardedProtocol, ServerThread, answer_body
from services.shard_runner import ShardRunner

log = logging.getLogger(__name__)

#: The paths Midtrans may be told to post to (shared/midtrans.md, "HTTP notifications").
NOTIFICATION_PATHS = ("/notification", "/notification/", "/")
#: An order id as Broker.new_order_id makes it: the machine is everything before the last
#: three parts (greedy, so a machine id with '-' in it stays whole).
ORDER_ID = re.compile(r"(?P<machine>.+)-\d{14}-\d{6,}-[0-9a-f]{4}")

#: What the app does with a verified notification's order id: schedule its recheck on its
#: machine (True), or nothing when no machine of this backend has it (False).
Schedule = Callable[[str], bool]


def machine_of(order_id: str) -> str | None:
    """The machine id an order id names, or None when it is not one of ours."""
    found = ORDER_ID.fullmatch(order_id)
    if found is None or not MACHINE_ID.fullmatch(found["machine"]):
        return None
    return found["machine"]


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


class RefusalBox:
    """The request rate limit of a public receiver, aimed at bad senders only: an address may
    have NOTIFICATION_REFUSALS_PER_S requests refused a second (burst
    NOTIFICATION_REFUSALS_BURST); past that, its requests are answered 429 before a byte of
    their body is read, until its bucket refills. Midtrans signs its notifications, so none
    is refused and Midtrans is never held back, however many notifications it sends; a
    forger's flood costs a dictionary lookup a request. The sender's address is the peer's,
    or the X-Forwarded-For of a proxy on 127.0.0.1 (uvicorn's proxy headers). Loopback and
    private addresses are never boxed: behind a proxy that does not forward the client's
    address every sender has the proxy's, and boxing it would hold Midtrans back with the
    forgers. At most `senders` addresses are remembered, the longest quiet forgotten first."""

    def __init__(
        self,
        per_s: float = NOTIFICATION_REFUSALS_PER_S,
        burst: float = NOTIFICATION_REFUSALS_BURST,
        senders: int = NOTIFICATION_SENDERS_KEPT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_s, self.burst, self.senders, self.clock = per_s, burst, senders, clock
        self.buckets: collections.OrderedDict[str, TokenBucket] = collections.OrderedDict()

    def boxed(self, address: str) -> bool:
        bucket = self.buckets.get(address)
        return bucket is not None and not bucket.has(self.clock())

    def refused(self, address: str) -> None:
        if _local(address):
            return
        bucket = self.buckets.pop(address, None) or TokenBucket(self.per_s, self.burst)
        self.buckets[address] = bucket  # the newest at the end
        bucket.take(self.clock())
        while len(self.buckets) > self.senders:
            self.buckets.popitem(last=False)


def _local(address: str) -> bool:
    """A loopback or private address (a proxy's, most likely), or not an address at all."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return True
    return ip.is_loopback or ip.is_private


def sender(request: Request) -> str:
    return request.client.host if request.client else "-"


def make_app(schedule: Schedule, server_key: str, box: RefusalBox | None = None) -> Starlette:
    """The receiver's ASGI app: verified notifications go on their machine's RECHECK set
    (`schedule`, which runs in a worker thread: it talks to Redis). Refusals go through
    `box` (RefusalBox): a sender refused too often is answered 429 unread."""
    box = box if box is not None else RefusalBox()

    async def notification(request: Request) -> Response:
        address = sender(request)
        if box.boxed(address):
            return answer(429, "too many refused requests: slow down")
        response = await handle(request)
        if response.status_code in (400, 401, 411, 413):
            box.refused(address)
        return response

    async def handle(request: Request) -> Response:
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
            scheduled = await run_in_threadpool(schedule, order_id)
        except redis.RedisError as exc:
            log.warning("notification not acknowledged", extra=kv(order_id=order_id, error=exc))
            return answer(503, "try again later")
        if not scheduled:  # nothing of ours to recheck; a refusal would only be retried
            log.warning("notification for no registered machine", extra=kv(order_id=order_id))
            return answer(200, "ok")
        log.info("recheck scheduled", extra=kv(order_id=order_id))
        return answer(200, "ok")

    async def healthz(request: Request) -> Response:
        return answer(200, "ok")

    async def refused(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        address = sender(request)
        if box.boxed(address):
            return answer(429, "too many refused requests: slow down")
        box.refused(address)
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
        box: RefusalBox | None = None,
    ) -> None:
        self.desk = Desk(LatePayments(broker, client))
        protocol = GuardedProtocol.with_limits(deadline_s, NOTIFICATION_LINGER_S)
        app = make_app(self.schedule, server_key, box)
        self.http = ServerThread(app, host, port, protocol)
        self.threads: list[threading.Thread] = []

    def schedule(self, order_id: str) -> bool:
        """One machine: every verified notification is this machine's to recheck."""
        self.desk.broker.schedule_recheck(order_id, self.desk.clock())
        return True

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


class FleetRoutes:
    """Fleet mode: a verified notification's machine, by its order id, among the registered
    machines (active or revoked: a revoked machine's late payment is still refunded)."""

    def __init__(
        self, client: redis.Redis, hints: WorkHints, clock: Callable[[], float] = time.time
    ) -> None:
        self.redis = client
        self.hints = hints
        self.clock = clock

    def broker(self, order_id: str) -> Broker | None:
        machine = machine_of(order_id)
        if machine is None or not self.redis.hexists(keys.FLEET_MACHINES, machine):
            return None
        return Broker(self.redis, machine, clock=self.clock, hints=self.hints)

    def schedule(self, order_id: str) -> bool:
        """Schedule the recheck on the order's machine alone (its keys, its shard's hint)."""
        broker = self.broker(order_id)
        if broker is None:
            return False
        broker.schedule_recheck(order_id, self.clock())
        return True


class FleetNotificationServer:
    """Fleet mode's NOTIFICATION process: the receiver, routing by order id, and the desks of
    every machine under a ShardRunner. Startable in-process on port 0 for tests."""

    def __init__(
        self,
        client: redis.Redis,
        blocking: redis.Redis,
        make_client: Callable[[Broker], MidtransClient],
        server_key: str,
        host: str = "127.0.0.1",
        port: int = 0,
        deadline_s: float = NOTIFICATION_REQUEST_DEADLINE_S,
        consumer: str | None = None,
    ) -> None:
        hints = WorkHints(client)
        self.routes = FleetRoutes(client, hints)
        self.runner = ShardRunner(
            Service.NOTIFICATION,
            client,
            blocking,
            lambda broker: Desk(LatePayments(broker, make_client(broker))),
            consumer=consumer,
            hints=hints,
        )
        protocol = GuardedProtocol.with_limits(deadline_s, NOTIFICATION_LINGER_S)
        self.http = ServerThread(make_app(self.routes.schedule, server_key), host, port, protocol)

    @property
    def url(self) -> str:
        host = f"[{self.http.host}]" if ":" in self.http.host else self.http.host
        return f"http://{host}:{self.http.port}/notification"

    def start(self, runner: bool = True) -> FleetNotificationServer:
        """Serve, and run the desks' runner in a thread unless the caller runs it."""
        self.http.start()
        if runner:
            self.runner.start()
        return self

    def stop(self) -> None:
        self.runner.stop()
        self.http.stop()


def run(settings: Settings, fleet: bool = False) -> None:
    """The NOTIFICATION process: the receiver in a thread, the desk in the main thread (so
    that SIGTERM interrupts its sleep on Redis at once). `fleet`: every registered machine's
    notifications and desks; several such processes (each on its own address, behind one
    URL) share the desks' shards."""
    if fleet:
        run_fleet(settings)
        return
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


def run_fleet(settings: Settings) -> None:
    """Fleet mode: the receiver in a thread, the desks' ShardRunner in the main thread until
    SIGTERM; one HTTP session for every machine's Midtrans client."""
    from services.runtime import redis_client

    session = requests.Session()
    server = FleetNotificationServer(
        redis_client(settings, "notification-fleet"),
        redis_client(settings, "notification-fleet", blocking=True),
        lambda broker: MidtransClient.from_settings(settings, session),
        settings.server_key,
        settings.notification_host,
        settings.notification_port,
    )
    server.runner.install_signal_handlers()
    server.start(runner=False)
    log.info("notification receiver listening", extra=kv(url=server.url, fleet=True))
    try:
        server.runner.run()
    finally:
        server.http.stop()
        session.close()
