"""A local Midtrans Core API sandbox: the subset of shared/midtrans.md, in memory, over HTTP.

It answers what the project's client and the official `midtransclient` send, with Midtrans's
shapes, codes and auth, and does what the real sandbox does around it: QR codes that expire,
signed HTTP notifications, and a payment simulator for testers and tests. Where Midtrans is
silent, it follows shared/midtrans.md, "The local sandbox: where Midtrans is silent".

Routes::

    POST /v2/charge                      qris, gopay; Idempotency-Key; X-Override-Notification
    GET  /v2/{order_id|transaction_id}/status
    POST /v2/{id}/cancel, /v2/{id}/expire, /v2/{id}/refund
    GET  /v2/qris/{transaction_id}/qr-code, /v2/gopay/{transaction_id}/qr-code   PNG, no auth
    GET  /v4/qris/{ref}/qr-code          PNG, no auth (the generate-qr-code-v2 action)
    GET  /simulator                      HTML page: pending transactions, Pay / Deny, faults
    GET  /simulator/transactions[?status=pending]   JSON ledger (status bodies)
    POST /simulator/pay/{order_id}, /simulator/deny/{order_id}
    GET  /simulator/faults, POST /simulator/faults  fault switches (names of midtrans.md)

Threads: the HTTP server (one daemon thread per connection), an expiry timer that sleeps on a
condition until the next QR expiry, and a notification sender that sleeps on another condition
until the next delivery is due. All state is guarded by one lock, shared by both conditions.

Expiry is also computed lazily from the injectable clock on every call, so a test that moves
its clock past an expiry sees `expire` (and its notification) on the next read without waiting.
Notification delays and retries use real (monotonic) time.

Faults (shared/midtrans.md table; `/v2/...` only, never the simulator). Where the table leaves
room, this is what they do:
- DROP_RATE: the call is carried out, then the connection is closed with no answer (the case
  an Idempotency-Key exists for). ERROR_RATE: the call is not carried out.
- LATENCY_MS: slept after an Idempotency-Key is claimed, so a repeat arriving meanwhile sees it
  in flight (HTTP 202).
- PENDING_AFTER_PAY_S: GET /status says pending; cancel / expire answer 412 (it is paid);
  notifications and the simulator's ledger tell the truth.
- NOTIFY_REORDER: a transaction's pending notification is held back until its next change
  and sent right after that one.
- BAD_QR (not in the table): new charges get a qr_string with a wrong CRC, the real sandbox's
  "unparsable QR".
"""

from __future__ import annotations

import base64
import contextlib
import copy
import hashlib
import heapq
import hmac
import html
import io
import itertools
import json
import logging
import math
import random
import re
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.message import Message
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import segno

from cores import qris
from cores.config import SANDBOX_FAULTS, SANDBOX_KEY_PREFIX
from cores.logs import kv

log = logging.getLogger(__name__)

#: Midtrans times: "YYYY-MM-DD HH:MM:SS" in Jakarta time (UTC+7), no zone suffix.
JAKARTA = timezone(timedelta(hours=7))
#: QR expiry without custom_expiry (shared/midtrans.md, "POST /v2/charge").
DEFAULT_EXPIRY_S = 15 * 60
#: custom_expiry units and the longest expiry accepted.
EXPIRY_UNITS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
MAX_EXPIRY_S = 366 * 86400
#: How long an Idempotency-Key's successful answer is remembered, and its longest length.
IDEMPOTENCY_TTL_S = 5 * 60
IDEMPOTENCY_KEY_MAX_LEN = 46
#: Request bodies above this are refused with 400 (and read no further than DRAIN_MAX_BYTES).
MAX_BODY_BYTES = 64 * 1024
DRAIN_MAX_BYTES = 1024 * 1024
#: A connection idle (or a body stalled) this long is closed.
CONNECTION_TIMEOUT_S = 15.0
#: Before closing a connection whose request was not read in full, wait this long for the
#: client to close its side.
LINGER_S = 1.0
#: Largest gross_amount accepted, in rupiah.
MAX_AMOUNT = 999_999_999_999
#: Objects echoed back (metadata) may nest this deep at most.
MAX_OBJECT_DEPTH = 10
ORDER_ID = re.compile(r"^[A-Za-z0-9\-_~.]{1,50}$")
PAYMENT_TYPES = ("qris", "gopay")
ACQUIRERS = tuple(qris.GUIDS)
#: Notifications: at most this many URLs per transaction; timeout of one POST; the delays
#: between attempts when a receiver fails (Midtrans retries ~5 times over hours; locally the
#: same number of attempts, over seconds).
MAX_NOTIFICATION_URLS = 3
NOTIFY_TIMEOUT_S = 5.0
NOTIFY_RETRY_DELAYS_S = (0.2, 1.0, 3.0, 10.0)
#: A duplicate notification (NOTIFY_DUPLICATE_RATE) follows the original this much later.
NOTIFY_DUPLICATE_GAP_S = 0.05
#: The expiry timer re-checks at least this often (an injected or adjusted clock may jump).
EXPIRY_WAIT_MAX_S = 60.0

#: Fault switches: the SANDBOX_FAULT_* names of shared/midtrans.md, plus BAD_QR (1: the
#: qr_string of new charges carries a wrong CRC, as the real sandbox's "unparsable QR").
FAULTS: dict[str, type] = {**SANDBOX_FAULTS, "BAD_QR": int}
RATE_FAULTS = frozenset({"ERROR_RATE", "DROP_RATE", "NOTIFY_DUPLICATE_RATE"})
FAULT_ENV_PREFIX = "SANDBOX_FAULT_"

#: status_code of each transaction_status in status answers, and in notifications (where
#: cancel and expire say 202; shared/midtrans.md, "HTTP notifications").
STATUS_CODES = {
    "pending": "201",
    "settlement": "200",
    "capture": "200",
    "deny": "202",
    "cancel": "200",
    "expire": "407",
    "failure": "202",
    "refund": "200",
    "partial_refund": "200",
}
NOTIFY_CODES = {**STATUS_CODES, "cancel": "202", "expire": "202"}
#: After these an order_id may be charged again.
REUSABLE = frozenset({"cancel", "expire", "deny", "failure"})
PAID = frozenset({"settlement", "refund", "partial_refund"})
REFUNDABLE = frozenset({"settlement", "partial_refund"})

#: HTTP status of an error body's status_code (midtrans.md: 414 comes with HTTP 400).
_HTTP_OF_CODE = {
    "400": 400,
    "401": 401,
    "402": 402,
    "404": 404,
    "405": 405,
    "406": 406,
    "412": 412,
    "414": 400,
    "429": 429,
    "500": 500,
    "503": 503,
}
_SUCCESS_CODES = frozenset({"200", "201", "202", "407"})
_HOST = re.compile(r"^[A-Za-z0-9.\-]+(:\d{1,5})?$|^\[[0-9A-Fa-f:.]+\](:\d{1,5})?$")

MSG_FOUND = "Success, transaction is found"
MSG_INVALID = "One or more parameters in the payload is invalid."
MSG_NOT_FOUND = "Transaction doesn't exist."
MSG_CANNOT_MODIFY = "Merchant cannot modify the status of the transaction"
MSG_DUPLICATE_ORDER = (
    "The request could not be completed due to a conflict with the current state of the "
    "target resource, please try again"
)
MSG_NOTIFICATION = "midtrans payment notification"
FAULT_ANSWERS = {
    "500": "Sorry. Our system is recovering from unexpected issues. Please retry.",
    "503": "Sorry, the service is temporarily unavailable. Please try again later.",
    "429": "Too many requests. Rate limit exceeded, please try again later.",
}


class SandboxError(Exception):
    """A refused call, as Midtrans would answer it: `status_code` ("404", "412", ...), the
    `message`, and for 400 the `validation_messages`."""

    def __init__(
        self, status_code: str, message: str, validation_messages: list[str] | None = None
    ) -> None:
        super().__init__(f"{status_code}: {message}")
        self.status_code = status_code
        self.message = message
        self.validation_messages = validation_messages

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"status_code": self.status_code, "status_message": self.message}
        if self.validation_messages is not None:
            body["validation_messages"] = self.validation_messages
        body["id"] = str(uuid.uuid4())
        return body


def _invalid(*messages: str) -> SandboxError:
    return SandboxError("400", MSG_INVALID, list(messages))


def signature(order_id: str, status_code: str, gross_amount: str, server_key: str) -> str:
    """Lowercase hex SHA-512 of order_id + status_code + gross_amount + server_key."""
    return hashlib.sha512((order_id + status_code + gross_amount + server_key).encode()).hexdigest()


def jakarta_time(ts: float) -> str:
    """Unix seconds as Midtrans writes them: "2026-11-26 10:00:00" (Jakarta, no zone)."""
    return datetime.fromtimestamp(ts, JAKARTA).strftime("%Y-%m-%d %H:%M:%S")


def money(amount: int) -> str:
    """Whole rupiah as Midtrans writes amounts: 7000 -> "7000.00"."""
    return f"{amount}.00"


def check_faults(faults: Mapping[str, object]) -> dict[str, float]:
    """Validated fault settings; names with or without the SANDBOX_FAULT_ prefix.

    Raises ValueError naming the first bad entry: an unknown name, a value that is not a
    number >= 0, a rate above 1, or a fraction where a whole number is expected.
    """
    clean: dict[str, float] = {}
    for raw_name, value in faults.items():
        name = str(raw_name).upper().removeprefix(FAULT_ENV_PREFIX)
        if name not in FAULTS:
            raise ValueError(f"unknown fault {raw_name!r}; known: {', '.join(FAULTS)}")
        if isinstance(value, bool):
            value = int(value)
        if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
            raise ValueError(f"fault {name} must be a number >= 0, not {value!r}")
        if name in RATE_FAULTS and value > 1:
            raise ValueError(f"fault {name} is a share from 0 to 1, not {value!r}")
        if FAULTS[name] is int:
            if value != int(value):
                raise ValueError(f"fault {name} must be a whole number, not {value!r}")
            clean[name] = int(value)
        else:
            clean[name] = float(value)
    return clean


def parse_notification_urls(text: str) -> list[str]:
    """`url[,url2,url3]` as in X-Override-Notification; ValueError when one is not http(s)."""
    urls = [part.strip() for part in text.split(",") if part.strip()]
    if len(urls) > MAX_NOTIFICATION_URLS:
        raise ValueError(f"at most {MAX_NOTIFICATION_URLS} notification URLs")
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc or " " in url:
            raise ValueError(f"notification URL {url!r} is not an http(s) URL")
    return urls


# --------------------------------------------------------------------------------------------
# State


@dataclass
class _Refund:
    key: str
    amount: int
    reason: str
    at: float
    chargeback_id: int
    chargeback_uuid: str
    answer: dict[str, Any] = field(default_factory=dict)

    def body(self) -> dict[str, str]:
        return {
            "refund_chargeback_id": str(self.chargeback_id),
            "refund_chargeback_uuid": self.chargeback_uuid,
            "refund_amount": money(self.amount),
            "created_at": jakarta_time(self.at),
            "reason": self.reason,
            "refund_key": self.key,
        }


@dataclass
class _Txn:
    order_id: str
    transaction_id: str
    charged_type: str  # payment_type of the charge
    acquirer: str
    gross_amount: int
    created_at: float
    expires_at: float
    server_key: str
    notify_urls: list[str]
    qr_string: str
    qr_ref: str
    metadata: dict[str, Any] | None
    payment_type: str = ""  # changes to "qris" when a gopay QR is paid by scanning
    status: str = "pending"
    paid_at: float | None = None
    refunds: list[_Refund] = field(default_factory=list)
    #: Notifications held back by NOTIFY_REORDER: (url, body).
    held: list[tuple[str, bytes]] = field(default_factory=list)
    png: bytes | None = None

    def __post_init__(self) -> None:
        self.payment_type = self.payment_type or self.charged_type

    @property
    def refunded(self) -> int:
        return sum(r.amount for r in self.refunds)


@dataclass
class _Idem:
    in_flight: bool
    at: float
    http: int = 0
    body: dict[str, Any] | None = None


@dataclass(order=True)
class _Delivery:
    due: float
    seq: int
    url: str = field(compare=False)
    body: bytes = field(compare=False)
    attempt: int = field(default=0, compare=False)
    label: str = field(default="", compare=False)


@dataclass
class _Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: Message
    body: bytes
    base: str


@dataclass
class _Reply:
    status: int
    body: bytes
    content_type: str = "application/json"
    code: str = ""
    close: bool = False
    drop: bool = False
    headers: dict[str, str] = field(default_factory=dict)


def _json_reply(status: int, body: Any, code: str = "") -> _Reply:
    return _Reply(status, json.dumps(body).encode(), code=code)


def _ok(body: dict[str, Any]) -> _Reply:
    return _json_reply(200, body, str(body.get("status_code", "200")))


def _error_reply(error: SandboxError) -> _Reply:
    return _json_reply(_HTTP_OF_CODE.get(error.status_code, 200), error.body(), error.status_code)


# --------------------------------------------------------------------------------------------
# The sandbox


class Sandbox:
    """The local Midtrans sandbox. `start()` serves in background threads; `stop()` ends them.

    `server_key`: the one key accepted; None accepts any key starting "SB-Mid-server-" (each
    transaction is then signed with the key that charged it). `notification_url`: where
    notifications go unless a charge names its own (a comma list is accepted). `faults`: the
    fault switches (names of shared/midtrans.md without the SANDBOX_FAULT_ prefix). `clock`:
    Unix seconds, for transaction times, expiries and the Idempotency-Key memory. `seed`: makes
    the fault rolls repeatable.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        server_key: str | None = None,
        notification_url: str | None = None,
        faults: Mapping[str, float] | None = None,
        clock: Callable[[], float] = time.time,
        merchant_id: str = "G000000001",
        *,
        seed: int | None = None,
        merchant_name: str = "DRINK MACHINE",
        merchant_city: str = "JAKARTA",
    ) -> None:
        if server_key is not None and not server_key.strip():
            raise ValueError("server_key must not be empty (None accepts any sandbox key)")
        self.host = host
        self._port = port
        self.server_key = server_key
        self.notification_urls = (
            parse_notification_urls(notification_url) if notification_url else []
        )
        self.merchant_id = merchant_id
        self.merchant_name = merchant_name
        self.merchant_city = merchant_city
        #: Delays between notification attempts; tests may shorten them.
        self.notify_retry_delays_s: tuple[float, ...] = NOTIFY_RETRY_DELAYS_S
        self.notify_timeout_s = NOTIFY_TIMEOUT_S
        self._clock = clock
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._expiry_cond = threading.Condition(self._lock)
        self._outbox_cond = threading.Condition(self._lock)
        self._faults: dict[str, float] = dict.fromkeys(FAULTS, 0)
        self._faults.update(check_faults(faults or {}))
        self._txns: list[_Txn] = []
        self._by_tid: dict[str, _Txn] = {}
        self._by_order: dict[str, _Txn] = {}
        self._by_ref: dict[str, _Txn] = {}
        self._pending: dict[str, _Txn] = {}
        self._next_expiry: float | None = None
        self._idem: dict[tuple[str, str], _Idem] = {}
        self._refund_keys: dict[str, tuple[_Txn, _Refund]] = {}
        self._chargeback_seq = itertools.count(1)
        self._outbox: list[_Delivery] = []
        self._outbox_seq = itertools.count()
        self._connections: set[socket.socket] = set()
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        self._server: _Server | None = None
        self._threads: list[threading.Thread] = []
        self._started = False
        self._stopping = False
        self._stop_requested = threading.Event()

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound port (after start), else the configured one."""
        return self._server.server_address[1] if self._server else self._port

    @property
    def url(self) -> str:
        """Base URL of the API and the simulator, e.g. "http://127.0.0.1:3334"."""
        host = self.host if self.host not in ("", "0.0.0.0", "::") else "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    def start(self) -> Sandbox:
        """Bind and serve in background daemon threads. Returns self."""
        if self._started:
            raise RuntimeError("a Sandbox starts once")
        self._started = True
        self._server = server = _Server((self.host, self._port), _Handler, self)
        for name, target in (
            ("sandbox-http", lambda: server.serve_forever(poll_interval=None)),
            ("sandbox-expiry", self._expiry_loop),
            ("sandbox-notify", self._sender_loop),
        ):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        if self.server_key is None:
            log.warning(
                "sandbox accepts ANY server key starting %s (no MIDTRANS_SERVER_KEY given)",
                SANDBOX_KEY_PREFIX,
                extra=kv(url=self.url),
            )
        log.info(
            "sandbox listening",
            extra=kv(url=self.url, simulator=self.url + "/simulator", faults=self._active()),
        )
        return self

    def stop(self) -> None:
        """Stop serving, close open connections, end the background threads. Idempotent."""
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
            self._expiry_cond.notify_all()
            self._outbox_cond.notify_all()
            connections = list(self._connections)
        self._stop_requested.set()
        if self._server is not None:
            self._shutdown_server(self._server)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(timeout=self.notify_timeout_s + 1)
        log.info("sandbox stopped", extra=kv(url=self.url))

    def _shutdown_server(self, server: _Server) -> None:
        """End serve_forever. It blocks in select() with no timeout (no polling), so wake it
        with connections until it has seen the shutdown request."""
        done = threading.Event()

        def shutdown() -> None:
            server.shutdown()
            done.set()

        threading.Thread(target=shutdown, name="sandbox-shutdown", daemon=True).start()
        host = self.url.split("//", 1)[1].rsplit(":", 1)[0].strip("[]")
        while not done.wait(0.01):
            with contextlib.suppress(OSError):
                socket.create_connection((host, self.port), timeout=1).close()
        server.server_close()

    def request_stop(self) -> None:
        """Make `serve_forever` return (safe to call from a signal handler)."""
        self._stop_requested.set()

    def serve_forever(self) -> None:
        """Start (unless started), block until `request_stop()` or `stop()`, then stop."""
        if not self._started:
            self.start()
        self._stop_requested.wait()
        self.stop()

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- faults ------------------------------------------------------------------------------

    @property
    def faults(self) -> dict[str, float]:
        """A copy of the current fault settings (every name, 0 when off)."""
        with self._lock:
            return dict(self._faults)

    def set_faults(self, **faults: float) -> dict[str, float]:
        """Change some fault settings (ValueError on a bad one; nothing changes then)."""
        clean = check_faults(faults)
        with self._lock:
            self._faults.update(clean)
            result = dict(self._faults)
        log.info("sandbox faults", extra=kv(**clean))
        return result

    def _active(self) -> str:
        return ",".join(f"{k}={v}" for k, v in self._faults.items() if v) or "none"

    # -- programmatic simulator ----------------------------------------------------------------

    def pay(self, order_id: str) -> dict[str, Any]:
        """The customer scanned the QR and paid: settlement. SandboxError 404 / 412."""
        return self._settle(order_id, "settlement")

    def deny(self, order_id: str) -> dict[str, Any]:
        """The payment was refused: deny. SandboxError 404 / 412."""
        return self._settle(order_id, "deny")

    def transactions(self, status: str | None = None) -> list[dict[str, Any]]:
        """Every transaction (the ledger) as status bodies with its true status, QR image URL,
        qr_string and refunds, oldest first; only those with `status` when given."""
        return self._ledger(self.url, status)

    def check_expiries(self) -> None:
        """Expire what is due by the clock now (the timer and every call do it too)."""
        with self._lock:
            self._expire_due(self._clock())

    def _pending_txn(self, ident: str) -> tuple[_Txn, float]:
        """The pending transaction `ident` and the time now (call with the lock held);
        404 when unknown, 412 when it is no longer pending."""
        now = self._clock()
        self._expire_due(now)
        txn = self._find(ident)
        if txn.status != "pending":
            raise SandboxError("412", MSG_CANNOT_MODIFY)
        return txn, now

    def _settle(self, ident: str, status: str) -> dict[str, Any]:
        with self._lock:
            txn, now = self._pending_txn(ident)
            if status == "settlement":
                txn.paid_at = now
                # A GoPay QR scanned by any QRIS app settles as qris (shared/midtrans.md).
                txn.payment_type = "qris"
            self._change(txn, status)
            return self._ledger_body(txn, self.url)

    # -- state helpers (lock held) -----------------------------------------------------------

    def _find(self, ident: str) -> _Txn:
        txn = self._by_tid.get(ident) or self._by_order.get(ident)
        if txn is None:
            raise SandboxError("404", MSG_NOT_FOUND)
        return txn

    def _change(self, txn: _Txn, status: str) -> None:
        """Move `txn` to `status`, log it, notify."""
        txn.status = status
        if status != "pending":
            self._pending.pop(txn.transaction_id, None)
        log.info(
            "transaction %s",
            status,
            extra=kv(
                order_id=txn.order_id,
                transaction_id=txn.transaction_id,
                status=status,
                payment_type=txn.payment_type,
                amount=txn.gross_amount,
                refunded=txn.refunded,
            ),
        )
        self._notify(txn)

    def _expire_due(self, now: float) -> None:
        if self._next_expiry is None or now < self._next_expiry:
            return
        for txn in list(self._pending.values()):
            if txn.expires_at <= now:
                self._change(txn, "expire")
        self._next_expiry = min((t.expires_at for t in self._pending.values()), default=None)

    def _expiry_loop(self) -> None:
        with self._lock:
            while not self._stopping:
                now = self._clock()
                self._expire_due(now)
                timeout = None
                if self._next_expiry is not None:
                    timeout = min(max(self._next_expiry - now, 0.01), EXPIRY_WAIT_MAX_S)
                self._expiry_cond.wait(timeout)

    # -- bodies (lock held) ------------------------------------------------------------------

    def _body(
        self, txn: _Txn, status: str, code: str, message: str, payment_type: str
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "status_code": code,
            "status_message": message,
            "transaction_id": txn.transaction_id,
            "order_id": txn.order_id,
            "merchant_id": self.merchant_id,
            "gross_amount": money(txn.gross_amount),
            "currency": "IDR",
            "payment_type": payment_type,
            "transaction_time": jakarta_time(txn.created_at),
            "transaction_status": status,
            "fraud_status": "accept",
            "acquirer": txn.acquirer,
            "expiry_time": jakarta_time(txn.expires_at),
        }
        if status in PAID and txn.paid_at is not None:
            body["settlement_time"] = jakarta_time(txn.paid_at)
            body["issuer"] = "gopay"
            body["transaction_type"] = "on-us" if txn.acquirer == "gopay" else "off-us"
        if status in ("refund", "partial_refund"):
            body["refund_amount"] = money(txn.refunded)
            body["refunds"] = [r.body() for r in txn.refunds]
        if txn.metadata is not None:
            body["metadata"] = copy.deepcopy(txn.metadata)
        body["signature_key"] = signature(txn.order_id, code, body["gross_amount"], txn.server_key)
        return body

    def _status_body(self, txn: _Txn, now: float) -> dict[str, Any]:
        """What GET /status answers; PENDING_AFTER_PAY_S hides a recent payment."""
        hide = self._faults["PENDING_AFTER_PAY_S"]
        if txn.paid_at is not None and hide and now < txn.paid_at + hide:
            return self._body(txn, "pending", "201", MSG_FOUND, txn.charged_type)
        return self._body(txn, txn.status, STATUS_CODES[txn.status], MSG_FOUND, txn.payment_type)

    def _ledger_body(self, txn: _Txn, base: str) -> dict[str, Any]:
        body = self._body(txn, txn.status, STATUS_CODES[txn.status], MSG_FOUND, txn.payment_type)
        body["qr_image_url"] = self._qr_url(txn, base)
        body["qr_string"] = txn.qr_string
        body["refunds"] = [r.body() for r in txn.refunds]
        return body

    def _ledger(self, base: str, status: str | None) -> list[dict[str, Any]]:
        with self._lock:
            self._expire_due(self._clock())
            return [
                self._ledger_body(t, base)
                for t in self._txns
                if status is None or t.status == status
            ]

    @staticmethod
    def _qr_url(txn: _Txn, base: str) -> str:
        return f"{base}/v2/{txn.charged_type}/{txn.transaction_id}/qr-code"

    # -- notifications -----------------------------------------------------------------------

    def _notify(self, txn: _Txn) -> None:
        """Queue the notification of txn's current status for each of its URLs (lock held)."""
        if not txn.notify_urls:
            return
        code = NOTIFY_CODES[txn.status]
        body = self._body(txn, txn.status, code, MSG_NOTIFICATION, txn.payment_type)
        data = json.dumps(body).encode()
        fresh = [(url, data) for url in txn.notify_urls]
        if self._faults["NOTIFY_REORDER"] and txn.status == "pending":
            # Held back until the transaction's next change, then sent after it.
            txn.held.extend(fresh)
            return
        batch = fresh + txn.held[::-1]
        txn.held.clear()
        due = time.monotonic() + self._faults["NOTIFY_DELAY_S"]
        rate = self._faults["NOTIFY_DUPLICATE_RATE"]
        label = f"{txn.order_id} {txn.status}"
        for url, payload in batch:
            self._queue(_Delivery(due, next(self._outbox_seq), url, payload, 0, label))
            if rate and self._rng.random() < rate:
                gap = due + NOTIFY_DUPLICATE_GAP_S
                self._queue(_Delivery(gap, next(self._outbox_seq), url, payload, 0, label))
        self._outbox_cond.notify_all()

    def _queue(self, delivery: _Delivery) -> None:
        heapq.heappush(self._outbox, delivery)

    def _sender_loop(self) -> None:
        while True:
            with self._lock:
                while True:
                    if self._stopping:
                        return
                    if not self._outbox:
                        self._outbox_cond.wait()
                        continue
                    wait = self._outbox[0].due - time.monotonic()
                    if wait > 0:
                        self._outbox_cond.wait(wait)
                        continue
                    delivery = heapq.heappop(self._outbox)
                    break
            error = self._deliver(delivery)
            extra = kv(notification=delivery.label, url=delivery.url, attempt=delivery.attempt + 1)
            if error is None:
                log.debug("notification delivered", extra=extra)
                continue
            with self._lock:
                if delivery.attempt < len(self.notify_retry_delays_s) and not self._stopping:
                    delivery.due = time.monotonic() + self.notify_retry_delays_s[delivery.attempt]
                    delivery.attempt += 1
                    delivery.seq = next(self._outbox_seq)
                    self._queue(delivery)
                    log.info("notification failed, will retry: %s", error, extra=extra)
                else:
                    log.warning("notification failed, giving up: %s", error, extra=extra)

    def _deliver(self, delivery: _Delivery) -> str | None:
        """POST one notification; None when the receiver answered 2xx, else the error."""
        request = urllib.request.Request(
            delivery.url,
            data=delivery.body,
            method="POST",
            headers={
                "Content-Type": "application/json",
                "Accept": "application/json",
                "User-Agent": "Midtrans-local-sandbox",
            },
        )
        try:
            with self._opener.open(request, timeout=self.notify_timeout_s) as response:
                response.read()
                status = response.status
        except urllib.error.HTTPError as exc:
            exc.close()
            return f"HTTP {exc.code}"
        except Exception as exc:  # any failure is retried; the sender thread must live on
            return f"{type(exc).__name__}: {exc}"
        return None if 200 <= status < 300 else f"HTTP {status}"

    # -- HTTP dispatch -----------------------------------------------------------------------

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def _handle(self, req: _Request) -> _Reply:
        if req.path.startswith("/v2/"):
            return self._api(req)
        if req.path == "/simulator" or req.path.startswith("/simulator/"):
            return self._simulator(req)
        parts = req.path.split("/")
        if len(parts) == 5 and parts[1:3] == ["v4", "qris"] and parts[4] == "qr-code":
            if req.method != "GET":
                return _error_reply(SandboxError("405", "Method not allowed"))
            return self._qr_image(ref=unquote(parts[3]))
        if req.path == "/" and req.method == "GET":
            return _Reply(302, b"", "text/plain", headers={"Location": "/simulator"})
        return _error_reply(SandboxError("404", "The requested resource is not found"))

    def _finish_api(self, reply: _Reply) -> _Reply:
        """HTTP200_ERRORS: errors come with HTTP 200, the code in the body alone."""
        if reply.status >= 400 and self.faults["HTTP200_ERRORS"]:
            reply.status = 200
        return reply

    def _api(self, req: _Request) -> _Reply:
        """/v2/...: faults, auth, Idempotency-Key, then the call."""
        with self._lock:
            faults = dict(self._faults)
            drop = bool(faults["DROP_RATE"]) and self._rng.random() < faults["DROP_RATE"]
            fail = bool(faults["ERROR_RATE"]) and self._rng.random() < faults["ERROR_RATE"]
            fail_code = self._rng.choice(sorted(FAULT_ANSWERS)) if fail else ""
        delay = faults["LATENCY_MS"] / 1000
        if fail_code:
            time.sleep(delay)
            return self._finish_api(_error_reply(SandboxError(fail_code, FAULT_ANSWERS[fail_code])))
        try:
            reply = self._api_call(req, delay)
        except SandboxError as exc:
            reply = _error_reply(exc)
        reply = self._finish_api(reply)
        if drop:
            # The call was carried out; only its answer is lost (the case an Idempotency-Key
            # exists for).
            reply.drop = True
        return reply

    def _api_call(self, req: _Request, delay: float) -> _Reply:
        parts = [unquote(p) for p in req.path.split("/")[2:]]
        if len(parts) == 3 and parts[0] in PAYMENT_TYPES and parts[2] == "qr-code" and parts[1]:
            time.sleep(delay)
            if req.method != "GET":
                raise SandboxError("405", "Method not allowed")
            return self._qr_image(tid=parts[1])
        route: Callable[..., _Reply] | None = None
        method = "POST"
        args: tuple[str, ...] = ()
        if parts == ["charge"]:
            route = self._charge
        elif len(parts) == 2 and parts[0] and parts[1] == "status":
            route, method, args = self._status, "GET", (parts[0],)
        elif len(parts) == 2 and parts[0] and parts[1] in ("cancel", "expire"):
            route, args = self._cancel_or_expire, (parts[0], parts[1])
        elif len(parts) == 2 and parts[0] and parts[1] == "refund":
            route, args = self._refund, (parts[0],)
        if route is None:
            time.sleep(delay)
            raise SandboxError("404", "The requested resource is not found")
        if req.method != method:
            time.sleep(delay)
            raise SandboxError("405", f"Method not allowed: use {method}")
        key = self._authorize(req.headers.get("Authorization"))
        if key is None:
            time.sleep(delay)
            raise SandboxError(
                "401", "Transaction cannot be authorized with the current client/server key."
            )
        idem_key = req.headers.get("Idempotency-Key") if method == "POST" else None
        if idem_key is None:
            time.sleep(delay)
            return route(req, key, *args)
        slot = (req.path, idem_key)
        stored = self._claim(slot, idem_key)
        time.sleep(delay)
        if stored is not None:
            return stored
        reply: _Reply | None = None
        try:
            try:
                reply = route(req, key, *args)
            except SandboxError as exc:
                reply = _error_reply(exc)
            return reply
        finally:
            self._release(slot, reply)

    def _claim(self, slot: tuple[str, str], idem_key: str) -> _Reply | None:
        """Mark an Idempotency-Key in flight; or the stored answer / 202 for a repeat."""
        if not 0 < len(idem_key) <= IDEMPOTENCY_KEY_MAX_LEN:
            raise _invalid(f"Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_MAX_LEN} characters")
        with self._lock:
            now = self._clock()
            for old in [s for s, e in self._idem.items() if now - e.at >= IDEMPOTENCY_TTL_S]:
                if not self._idem[old].in_flight:
                    del self._idem[old]
            entry = self._idem.get(slot)
            if entry is None:
                self._idem[slot] = _Idem(in_flight=True, at=now)
                return None
            if entry.in_flight:
                return _json_reply(
                    202,
                    {
                        "status_code": "202",
                        "status_message": "Request with this Idempotency-Key is being processed",
                    },
                    "202",
                )
            assert entry.body is not None
            return _json_reply(entry.http, entry.body, str(entry.body.get("status_code")))

    def _release(self, slot: tuple[str, str], reply: _Reply | None) -> None:
        """Store a successful answer for the key; forget the key after a failed one."""
        with self._lock:
            if reply is not None and reply.status == 200 and reply.code in _SUCCESS_CODES:
                self._idem[slot] = _Idem(
                    in_flight=False, at=self._clock(), http=200, body=json.loads(reply.body)
                )
            else:
                self._idem.pop(slot, None)

    def _authorize(self, header: str | None) -> str | None:
        """The server key of a valid `Authorization: Basic base64(key:)`, else None."""
        if not header or not header.startswith("Basic "):
            return None
        try:
            decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
        except ValueError:
            return None
        user = decoded.partition(":")[0]
        if self.server_key is not None:
            return user if hmac.compare_digest(user.encode(), self.server_key.encode()) else None
        return user if user.startswith(SANDBOX_KEY_PREFIX) and user != SANDBOX_KEY_PREFIX else None

    # -- /v2 calls ---------------------------------------------------------------------------

    def _charge(self, req: _Request, key: str) -> _Reply:
        data = _json_object(req.body)
        charge = _validate_charge(data)
        urls = list(self.notification_urls)
        try:
            override = req.headers.get("X-Override-Notification")
            append = req.headers.get("X-Append-Notification")
            if override is not None:
                urls = parse_notification_urls(override)
            elif append is not None:
                urls = (urls + parse_notification_urls(append))[:MAX_NOTIFICATION_URLS]
        except ValueError as exc:
            raise _invalid(str(exc)) from None
        with self._lock:
            if self._faults["CHANNEL_DISABLED"]:
                raise SandboxError("402", "Payment channel is not activated.")
            now = self._clock()
            self._expire_due(now)
            existing = self._by_order.get(charge.order_id)
            if existing is not None and existing.status not in REUSABLE:
                raise SandboxError("406", MSG_DUPLICATE_ORDER)
            tid = str(uuid.uuid4())
            ref = "A" + tid.replace("-", "")[:24].upper()
            qr_string = qris.build(
                merchant_name=self.merchant_name,
                merchant_city=self.merchant_city,
                merchant_id=self.merchant_id,
                reference=ref,
                amount=charge.gross_amount,
                acquirer=charge.acquirer,
            )
            if self._faults["BAD_QR"]:
                qr_string = qr_string[:-4] + ("0000" if qr_string[-4:] != "0000" else "FFFF")
            txn = _Txn(
                order_id=charge.order_id,
                transaction_id=tid,
                charged_type=charge.payment_type,
                acquirer=charge.acquirer,
                gross_amount=charge.gross_amount,
                created_at=now,
                expires_at=now + charge.expiry_s,
                server_key=key,
                notify_urls=urls,
                qr_string=qr_string,
                qr_ref=ref,
                metadata=charge.metadata,
            )
            self._txns.append(txn)
            self._by_tid[tid] = txn
            self._by_order[txn.order_id] = txn
            self._by_ref[ref] = txn
            self._pending[tid] = txn
            if self._next_expiry is None or txn.expires_at < self._next_expiry:
                self._next_expiry = txn.expires_at
            self._expiry_cond.notify_all()
            self._change(txn, "pending")
            return _ok(self._charge_answer(txn, req.base))

    def _charge_answer(self, txn: _Txn, base: str) -> dict[str, Any]:
        is_qris = txn.charged_type == "qris"
        answer: dict[str, Any] = {
            "status_code": "201",
            "status_message": "QRIS transaction is created"
            if is_qris
            else "GO-PAY transaction is created",
            "transaction_id": txn.transaction_id,
            "order_id": txn.order_id,
            "merchant_id": self.merchant_id,
            "gross_amount": money(txn.gross_amount),
            "currency": "IDR",
            "payment_type": txn.charged_type,
            "transaction_time": jakarta_time(txn.created_at),
            "transaction_status": "pending",
            "fraud_status": "accept",
        }
        qr_url = self._qr_url(txn, base)
        if is_qris:
            answer["acquirer"] = txn.acquirer
            answer["actions"] = [
                {"name": "generate-qr-code", "method": "GET", "url": qr_url},
                {
                    "name": "generate-qr-code-v2",
                    "method": "GET",
                    "url": f"{base}/v4/qris/{txn.qr_ref}/qr-code",
                },
            ]
            answer["qr_string"] = txn.qr_string
        else:
            answer["actions"] = [
                {"name": "generate-qr-code", "method": "GET", "url": qr_url},
                {
                    "name": "deeplink-redirect",
                    "method": "GET",
                    "url": f"{base}/simulator?order_id={txn.order_id}",
                },
                {
                    "name": "get-status",
                    "method": "GET",
                    "url": f"{base}/v2/{txn.transaction_id}/status",
                },
                {
                    "name": "cancel",
                    "method": "POST",
                    "url": f"{base}/v2/{txn.transaction_id}/cancel",
                },
            ]
        answer["expiry_time"] = jakarta_time(txn.expires_at)
        return answer

    def _status(self, req: _Request, key: str, ident: str) -> _Reply:
        with self._lock:
            now = self._clock()
            self._expire_due(now)
            return _ok(self._status_body(self._find(ident), now))

    def _cancel_or_expire(self, req: _Request, key: str, ident: str, action: str) -> _Reply:
        parsed, problem = _try_json(req.body)
        with self._lock:
            txn, now = self._pending_txn(ident)
            if problem is not None or not isinstance(parsed, dict | None):
                raise _invalid(problem or "request body must be a JSON object")
            if action == "cancel":
                self._change(txn, "cancel")
                code, message = "200", "Success, transaction is canceled"
            else:
                self._change(txn, "expire")
                code, message = "407", "Success, transaction is expired"
            body = self._body(txn, txn.status, code, message, txn.payment_type)
            del body["signature_key"]
            return _ok(body)

    def _refund(self, req: _Request, key: str, ident: str) -> _Reply:
        parsed, problem = _try_json(req.body)
        data = parsed if isinstance(parsed, dict) else {}
        refund_key = data.get("refund_key")
        amount = data.get("amount")
        with self._lock:
            now = self._clock()
            self._expire_due(now)
            txn = self._find(ident)
            if isinstance(refund_key, str) and refund_key in self._refund_keys:
                used_txn, used = self._refund_keys[refund_key]
                if used_txn is txn and (amount is None or amount == used.amount):
                    return _ok(dict(used.answer))
                raise SandboxError(
                    "406", f"refund_key {refund_key} has already been used for another refund"
                )
            if txn.status not in REFUNDABLE or self._faults["REFUND_DISABLED"]:
                raise SandboxError("412", MSG_CANNOT_MODIFY)
            if problem is not None:
                raise _invalid(problem)
            if not isinstance(parsed, dict | None):
                raise _invalid("request body must be a JSON object")
            messages = []
            if refund_key is not None and (
                not isinstance(refund_key, str) or not 0 < len(refund_key) <= 50
            ):
                messages.append("refund_key must be a string of 1 to 50 characters")
            reason = data.get("reason", "")
            if not isinstance(reason, str) or len(reason) > 255:
                messages.append("reason must be a string of at most 255 characters")
            if amount is not None and (isinstance(amount, bool) or not _is_number(amount)):
                messages.append("amount must be a number")
            if messages:
                raise _invalid(*messages)
            left = txn.gross_amount - txn.refunded
            if amount is None:
                amount = left
            if amount != int(amount) or not 0 < amount <= left:
                raise SandboxError("414", "Refund amount is invalid")
            amount = int(amount)
            if refund_key is None:
                refund_key = f"sb-{uuid.uuid4()}"
            refund = _Refund(
                key=refund_key,
                amount=amount,
                reason=reason,
                at=now,
                chargeback_id=next(self._chargeback_seq),
                chargeback_uuid=str(uuid.uuid4()),
            )
            txn.refunds.append(refund)
            self._refund_keys[refund_key] = (txn, refund)
            self._change(txn, "refund" if txn.refunded >= txn.gross_amount else "partial_refund")
            refund.answer = {
                "status_code": "200",
                "status_message": "Success, refund request is approved",
                "transaction_id": txn.transaction_id,
                "order_id": txn.order_id,
                "merchant_id": self.merchant_id,
                "gross_amount": money(txn.gross_amount),
                "currency": "IDR",
                "payment_type": txn.payment_type,
                "transaction_time": jakarta_time(txn.created_at),
                "transaction_status": txn.status,
                "refund_chargeback_id": str(refund.chargeback_id),
                "refund_chargeback_uuid": refund.chargeback_uuid,
                "refund_amount": money(amount),
                "refund_key": refund_key,
            }
            return _ok(dict(refund.answer))

    def _qr_image(self, tid: str | None = None, ref: str | None = None) -> _Reply:
        with self._lock:
            txn = self._by_tid.get(tid or "") if tid else self._by_ref.get(ref or "")
            if txn is None:
                raise SandboxError("404", MSG_NOT_FOUND)
            png, payload = txn.png, txn.qr_string
        if png is None:
            buffer = io.BytesIO()
            segno.make_qr(payload, error="m").save(buffer, kind="png", scale=6, border=4)
            png = buffer.getvalue()
            with self._lock:
                txn.png = png
        return _Reply(200, png, "image/png", code="200", headers={"Cache-Control": "no-store"})

    # -- simulator ---------------------------------------------------------------------------

    def _simulator(self, req: _Request) -> _Reply:
        try:
            return self._simulator_call(req)
        except SandboxError as exc:
            return _error_reply(exc)

    def _simulator_call(self, req: _Request) -> _Reply:
        parts = [unquote(p) for p in req.path.split("/")[2:]]
        get, post = req.method == "GET", req.method == "POST"
        if parts in ([], [""]) and get:
            only = req.query.get("part", [""])[0]
            page = self._list_html(req.base) if only == "list" else self._page(req.base)
            return _Reply(200, page.encode(), "text/html; charset=utf-8")
        if parts == ["transactions"] and get:
            status = req.query.get("status", [None])[0] or None
            return _json_reply(200, self._ledger(req.base, status))
        if len(parts) == 2 and parts[0] in ("pay", "deny") and parts[1] and post:
            body = self._settle(parts[1], "settlement" if parts[0] == "pay" else "deny")
            return _json_reply(200, body, "200")
        if parts == ["faults"] and get:
            return _json_reply(200, self.faults)
        if parts == ["faults"] and post:
            data = _json_object(req.body)
            try:
                return _json_reply(200, self.set_faults(**data))
            except ValueError as exc:
                raise _invalid(str(exc)) from None
        if len(parts) == 2 and parts[0] == "qr" and get:
            return self._qr_image(tid=parts[1])
        known = parts and parts[0] in ("transactions", "pay", "deny", "faults", "qr", "")
        if known:
            raise SandboxError("405", "Method not allowed")
        raise SandboxError("404", "The requested resource is not found")

    def _list_html(self, base: str) -> str:
        pending = self._ledger(base, "pending")
        if not pending:
            return '<p class="empty">No pending transactions. Order a drink on the kiosk.</p>'
        cards = []
        for t in pending:
            oid = html.escape(t["order_id"], quote=True)
            tid = html.escape(t["transaction_id"], quote=True)
            cards.append(
                f'<div class="card"><img alt="QR of {oid}" width="180" height="180" '
                f'src="/simulator/qr/{tid}"><div><b>{oid}</b><br>'
                f"{html.escape(t['payment_type'])} &middot; Rp {html.escape(t['gross_amount'])}"
                f"<br><small>created {html.escape(t['transaction_time'])}, expires "
                f"{html.escape(t['expiry_time'])} (Jakarta)</small><br>"
                f'<button data-act="pay" data-order="{oid}">Pay</button> '
                f'<button data-act="deny" data-order="{oid}">Deny</button></div></div>'
            )
        return "".join(cards)

    def _page(self, base: str) -> str:
        faults = self.faults
        rows = "".join(
            f'<label>{name} <input name="{name}" value="{value}" size="6"></label> '
            for name, value in faults.items()
        )
        return _PAGE.format(list=self._list_html(base), faults=rows, base=html.escape(base))


# --------------------------------------------------------------------------------------------
# Request validation


@dataclass
class _Charge:
    payment_type: str
    order_id: str
    gross_amount: int
    acquirer: str
    expiry_s: int
    metadata: dict[str, Any] | None


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _try_json(raw: bytes) -> tuple[Any, str | None]:
    """(value, None), or (None, problem); an empty body is (None, None)."""
    if not raw.strip():
        return None, None
    try:
        return json.loads(raw.decode("utf-8")), None
    except (ValueError, RecursionError):
        return None, "request body is not valid JSON"


def _json_object(raw: bytes) -> dict[str, Any]:
    value, problem = _try_json(raw)
    if problem is not None:
        raise _invalid(problem)
    if not isinstance(value, dict):
        raise _invalid("request body must be a JSON object")
    return value


def _validate_charge(data: dict[str, Any]) -> _Charge:
    """The charge request, or SandboxError 400 listing every problem found."""
    messages: list[str] = []
    payment_type = data.get("payment_type")
    if payment_type is None:
        messages.append("payment_type is required")
    elif payment_type not in PAYMENT_TYPES:
        messages.append("payment_type is not supported: use qris or gopay")
    order_id, gross = "", 0
    details = data.get("transaction_details")
    if not isinstance(details, dict):
        messages.append("transaction_details is required and must be an object")
    else:
        order_id = details.get("order_id")
        if order_id is None:
            messages.append("transaction_details.order_id is required")
        elif not isinstance(order_id, str) or not ORDER_ID.fullmatch(order_id):
            messages.append(
                "transaction_details.order_id must be 1 to 50 letters, digits, '-', '_', '~' or '.'"
            )
        amount = details.get("gross_amount")
        if amount is None:
            messages.append("transaction_details.gross_amount is required")
        elif not _is_number(amount):
            messages.append("transaction_details.gross_amount must be a number")
        elif amount != int(amount):
            messages.append("transaction_details.gross_amount must be whole rupiah")
        elif amount <= 0:
            messages.append("transaction_details.gross_amount must be greater than 0")
        elif amount > MAX_AMOUNT:
            messages.append(f"transaction_details.gross_amount must be at most {MAX_AMOUNT}")
        else:
            gross = int(amount)
    items = data.get("item_details")
    if items is not None:
        total: int | None = 0
        if not isinstance(items, list) or not items:
            messages.append("item_details must be a non-empty list")
            total = None
        else:
            for i, item in enumerate(items):
                where = f"item_details[{i}]"
                if not isinstance(item, dict):
                    messages.append(f"{where} must be an object")
                    total = None
                    continue
                price, quantity, name = item.get("price"), item.get("quantity"), item.get("name")
                if not _is_number(price) or price != int(price) or abs(price) > MAX_AMOUNT:
                    messages.append(f"{where}.price must be whole rupiah")
                    total = None
                if isinstance(quantity, bool) or not isinstance(quantity, int) or quantity < 1:
                    messages.append(f"{where}.quantity must be a whole number >= 1")
                    total = None
                if not isinstance(name, str) or not 0 < len(name) <= 50:
                    messages.append(f"{where}.name is required (at most 50 characters)")
                if "id" in item and not isinstance(item["id"], str | int):
                    messages.append(f"{where}.id must be a string")
                if total is not None:
                    total += int(price) * quantity
        if total is not None and gross and total != gross:
            messages.append(
                "transaction_details.gross_amount is not equal to the sum of item_details"
            )
    expiry_s = DEFAULT_EXPIRY_S
    custom = data.get("custom_expiry")
    if custom is not None:
        duration = custom.get("expiry_duration") if isinstance(custom, dict) else None
        unit = custom.get("unit", "minute") if isinstance(custom, dict) else None
        if not isinstance(custom, dict):
            messages.append("custom_expiry must be an object")
        elif isinstance(duration, bool) or not isinstance(duration, int) or duration < 1:
            messages.append("custom_expiry.expiry_duration must be a whole number >= 1")
        elif not isinstance(unit, str) or unit not in EXPIRY_UNITS:
            messages.append("custom_expiry.unit must be second, minute, hour or day")
        elif duration * EXPIRY_UNITS[unit] > MAX_EXPIRY_S:
            messages.append("custom_expiry is longer than 366 days")
        else:
            expiry_s = duration * EXPIRY_UNITS[unit]
    acquirer = "gopay"
    options = data.get("qris")
    if options is not None:
        if not isinstance(options, dict):
            messages.append("qris must be an object")
        elif options.get("acquirer", "gopay") not in ACQUIRERS:
            messages.append("qris.acquirer must be gopay or airpay shopee")
        elif payment_type == "qris":
            acquirer = options.get("acquirer", "gopay")
    for name in ("customer_details", "gopay", "metadata"):
        if data.get(name) is not None and not isinstance(data[name], dict):
            messages.append(f"{name} must be an object")
        elif data.get(name) is not None and _depth(data[name]) > MAX_OBJECT_DEPTH:
            messages.append(f"{name} is nested too deeply")
    if messages:
        raise _invalid(*messages)
    return _Charge(
        payment_type=str(payment_type),
        order_id=str(order_id),
        gross_amount=gross,
        acquirer=acquirer,
        expiry_s=expiry_s,
        metadata=data.get("metadata"),
    )


# --------------------------------------------------------------------------------------------
# HTTP plumbing


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], handler: type, sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        super().__init__(address, handler)

    def handle_error(self, request: object, client_address: object) -> None:
        # A client that went away mid-answer (or stop() closing its connection) is routine.
        log.debug("connection error from %s", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "MidtransLocalSandbox/1.0"
    timeout = CONNECTION_TIMEOUT_S
    server: _Server

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in two writes: without this, Nagle's algorithm and the
        # client's delayed ACK add ~40 ms to every answer.
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.sandbox._track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.sandbox._track(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http %s", format % args)

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Malformed requests (bad request line, headers too long, unknown method): JSON."""
        try:
            phrase = HTTPStatus(code).phrase
        except ValueError:
            phrase = "Error"
        body = json.dumps(
            {"status_code": str(code), "status_message": message or phrase, "id": str(uuid.uuid4())}
        ).encode()
        self.close_connection = True
        if self.request_version == "HTTP/0.9":
            # An unreadable request line leaves the 0.9 default, which would drop the headers.
            self.request_version = "HTTP/1.0"
        self.send_response(code, message)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD" and code >= 200 and code not in (204, 304):
            self.wfile.write(body)

    def _dispatch(self) -> None:
        sandbox = self.server.sandbox
        split = urlsplit(self.path)
        path = split.path or "/"
        try:
            body = self._read_body(path)
            if isinstance(body, _Reply):
                reply = body
                if path.startswith("/v2/"):
                    reply = sandbox._finish_api(reply)
            else:
                host = self.headers.get("Host", "")
                base = f"http://{host}" if _HOST.match(host) else sandbox.url
                request = _Request(
                    self.command, path, parse_qs(split.query), self.headers, body, base
                )
                reply = sandbox._handle(request)
        except Exception:
            log.exception("sandbox error", extra=kv(method=self.command, path=path))
            reply = _error_reply(SandboxError("500", "Internal sandbox error"))
            reply.close = True
        self._send(reply)

    def _read_body(self, path: str) -> bytes | _Reply:
        """The request body, or a 400 reply when it cannot be read as one."""
        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding"):
            return self._bad("Transfer-Encoding is not supported: send Content-Length", True)
        if length is None:
            # Simulator buttons (and curl -X POST) send no body and may omit the header.
            parts = path.split("/")
            no_body = len(parts) == 4 and parts[1] == "simulator" and parts[2] in ("pay", "deny")
            if self.command == "POST" and not no_body:
                return self._bad("Content-Length is required", True)
            return b""
        try:
            size = int(length)
            if size < 0:
                raise ValueError(length)
        except ValueError:
            return self._bad("Content-Length is not a number", True)
        if size > MAX_BODY_BYTES:
            if size > DRAIN_MAX_BYTES:
                return self._bad(f"request body is larger than {MAX_BODY_BYTES} bytes", True)
            # Read and drop it, so that the answer is not lost to a reset connection.
            try:
                drained = len(self.rfile.read(size))
            except OSError:
                drained = -1
            return self._bad(f"request body is larger than {MAX_BODY_BYTES} bytes", drained != size)
        try:
            data = self.rfile.read(size)
        except OSError:
            data = b""
        if len(data) != size:
            return self._bad("request body is shorter than its Content-Length", True)
        return data

    @staticmethod
    def _bad(message: str, close: bool) -> _Reply:
        reply = _error_reply(SandboxError("400", MSG_INVALID, [message]))
        reply.close = close
        return reply

    def _send(self, reply: _Reply) -> None:
        if reply.drop:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        for name, value in reply.headers.items():
            self.send_header(name, value)
        if reply.close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(reply.body)
        if reply.close:
            self._linger()

    def _linger(self) -> None:
        """Before closing with request bytes unread, let the client read the answer: closing
        a socket with unread input sends a reset, which may destroy the answer in transit."""
        try:
            self.connection.shutdown(socket.SHUT_WR)
            self.connection.settimeout(LINGER_S)
            drained = 0
            while drained < DRAIN_MAX_BYTES:
                chunk = self.connection.recv(65536)
                if not chunk:
                    break
                drained += len(chunk)
        except OSError:
            pass


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Midtrans local sandbox: payment simulator</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5rem; background: #f5f6f8; color: #222; }}
h1 {{ font-size: 1.4rem; }} h2 {{ font-size: 1.1rem; margin-top: 2rem; }}
.card {{ display: flex; gap: 1rem; align-items: center; background: #fff; padding: .8rem;
  margin: .6rem 0; border-radius: 8px; box-shadow: 0 1px 3px #0002; }}
button {{ font-size: 1rem; padding: .4rem 1.2rem; margin-top: .5rem; cursor: pointer; }}
button[data-act=pay] {{ background: #0a7d32; color: #fff; border: 0; border-radius: 4px; }}
button[data-act=deny] {{ background: #b3261e; color: #fff; border: 0; border-radius: 4px; }}
.empty {{ color: #666; }} label {{ display: inline-block; margin: .2rem .6rem .2rem 0; }}
#msg {{ margin-left: 1rem; color: #555; }}
</style></head>
<body>
<h1>Payment simulator</h1>
<p>Pending QRIS / GoPay transactions of the local Midtrans sandbox at {base}.
Pay means the customer scanned the QR and paid; Deny means the payment was refused.
Ledger as JSON: <a href="/simulator/transactions">/simulator/transactions</a>.</p>
<div id="list">{list}</div>
<h2>Faults</h2>
<form id="faults">{faults}<button type="submit">Apply</button><span id="msg"></span></form>
<script>
"use strict";
const list = document.getElementById("list");
const msg = document.getElementById("msg");
async function refresh() {{
  try {{
    const r = await fetch("/simulator?part=list");
    if (r.ok) list.innerHTML = await r.text();
  }} catch (e) {{ /* sandbox restarting: try again on the next tick */ }}
}}
list.addEventListener("click", async (ev) => {{
  const b = ev.target.closest("button[data-act]");
  if (!b) return;
  b.disabled = true;
  const r = await fetch("/simulator/" + b.dataset.act + "/" + encodeURIComponent(b.dataset.order),
                        {{method: "POST"}});
  msg.textContent = r.ok ? "" : (await r.json()).status_message;
  refresh();
}});
document.getElementById("faults").addEventListener("submit", async (ev) => {{
  ev.preventDefault();
  const data = {{}};
  for (const input of ev.target.querySelectorAll("input")) data[input.name] = Number(input.value);
  const r = await fetch("/simulator/faults", {{method: "POST", body: JSON.stringify(data),
                        headers: {{"Content-Type": "application/json"}}}});
  const answer = await r.json();
  msg.textContent = r.ok ? "faults applied" : answer.validation_messages.join("; ");
}});
setInterval(refresh, 2000);
</script>
</body></html>
"""


def _depth(value: object, limit: int = MAX_OBJECT_DEPTH + 1) -> int:
    """How deeply `value` nests (counting stops past `limit`, so it never recurses far)."""
    if limit <= 0 or not isinstance(value, dict | list):
        return 0
    children = value.values() if isinstance(value, dict) else value
    return 1 + max((_depth(child, limit - 1) for child in children), default=0)
