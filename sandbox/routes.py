"""The Core API routes: what `/v2/...` and the `/v4` QR image answer.

Routes::

    POST /v2/charge                          qris, gopay; X-Override-Notification, X-Append-Notification
    GET  /v2/{id}/status                     id: order_id or transaction_id
    GET  /v2/{id}/status/b2b[?page=0&per_page=10]   every transaction of the order, newest first
    POST /v2/{id}/cancel, /v2/{id}/expire
    POST /v2/{id}/refund, /v2/{id}/refund/online/direct   the same refund, by either door
    POST /v2/{id}/approve, /v2/{id}/deny     card challenges only: 404 unknown, else 412
    GET  /v2/qris/{transaction_id}/qr-code, /v2/gopay/{transaction_id}/qr-code   PNG, no auth
    GET  /v4/qris/{ref}/qr-code              PNG, no auth (the generate-qr-code-v2 action)

Every `/v2` call goes: fault draw (ERROR_RATE answers 500 / 503 / 429 instead of the call;
DROP_RATE carries it out and loses the answer), route (404, 405), auth (401), then for a POST
with an Idempotency-Key the stored answer or HTTP 202 (sandbox/faults.py), then the call.
LATENCY_MS is slept before the call's answer; HTTP200_ERRORS sends errors with HTTP 200.
The order of checks inside a call is the ledger's (sandbox/ledger.py).
"""

from __future__ import annotations

import base64
import hmac
import time
from collections.abc import Callable
from email.message import Message
from urllib.parse import unquote

from cores.config import PAYMENT_TYPES, SANDBOX_KEY_PREFIX
from sandbox.faults import FAULT_ANSWERS, FaultSwitches, IdempotencyKeys
from sandbox.ledger import B2B_MAX_PER_PAGE, B2B_PER_PAGE, Ledger
from sandbox.messages import (
    MSG_NO_ROUTE,
    Reply,
    Request,
    SandboxError,
    error_reply,
    invalid,
    json_reply,
    ok,
)
from sandbox.validation import (
    MAX_NOTIFICATION_URLS,
    json_object,
    optional_object_problem,
    parse_notification_urls,
    read_refund,
    validate_charge,
)

MSG_UNAUTHORIZED = "Transaction cannot be authorized with the current client/server key."

Handler = Callable[[Request, str, str], Reply]


class Api:
    """The `/v2` routes over `ledger`. `server_key`: the one key accepted; None accepts any
    key starting "SB-Mid-server-". `notification_urls`: where a charge's notifications go
    unless its headers say otherwise."""

    def __init__(
        self,
        ledger: Ledger,
        faults: FaultSwitches,
        keys: IdempotencyKeys,
        server_key: str | None,
        notification_urls: list[str],
    ) -> None:
        self.ledger = ledger
        self.faults = faults
        self.keys = keys
        self.server_key = server_key
        self.notification_urls = notification_urls
        #: /v2/{id}/<rest>: (method, handler).
        self._actions: dict[tuple[str, ...], tuple[str, Handler]] = {
            ("status",): ("GET", self._status),
            ("status", "b2b"): ("GET", self._status_b2b),
            ("cancel",): ("POST", self._cancel),
            ("expire",): ("POST", self._expire),
            ("refund",): ("POST", self._refund),
            ("refund", "online", "direct"): ("POST", self._refund),
            ("approve",): ("POST", self._judge_challenge),
            ("deny",): ("POST", self._judge_challenge),
        }

    def handle(self, req: Request) -> Reply:
        """A `/v2/...` request: faults, then the call."""
        roll = self.faults.roll_api()
        if roll.fail_code:
            time.sleep(roll.latency_s)
            error = SandboxError(roll.fail_code, FAULT_ANSWERS[roll.fail_code])
            return self.finish(error_reply(error))
        try:
            reply = self._call(req, roll.latency_s)
        except SandboxError as exc:
            reply = error_reply(exc)
        reply = self.finish(reply)
        # The call was carried out; only its answer is lost (the case an Idempotency-Key
        # exists for).
        reply.drop = roll.drop
        return reply

    def finish(self, reply: Reply) -> Reply:
        """HTTP200_ERRORS: errors come with HTTP 200, the code in the body alone."""
        if reply.status >= 400 and self.faults["HTTP200_ERRORS"]:
            reply.status = 200
        return reply

    def qr_image(self, tid: str | None = None, ref: str | None = None) -> Reply:
        """A transaction's QR as PNG (no auth); 404 JSON when unknown."""
        png = self.ledger.qr_png(tid=tid, ref=ref)
        return Reply(200, png, "image/png", code="200", headers={"Cache-Control": "no-store"})

    # -- dispatch ----------------------------------------------------------------------------

    def _route(self, parts: list[str]) -> tuple[str, Handler, str] | None:
        """(method, handler, id) of a /v2 path split after "/v2/"; None when unknown."""
        if parts == ["charge"]:
            return "POST", self._charge, ""
        if len(parts) < 2 or not parts[0]:
            return None
        found = self._actions.get(tuple(parts[1:]))
        return (found[0], found[1], parts[0]) if found else None

    def _call(self, req: Request, delay: float) -> Reply:
        parts = [unquote(p) for p in req.path.split("/")[2:]]
        if len(parts) == 3 and parts[0] in PAYMENT_TYPES and parts[2] == "qr-code" and parts[1]:
            time.sleep(delay)
            if req.method != "GET":
                raise SandboxError("405", "Method not allowed")
            return self.qr_image(tid=parts[1])
        route = self._route(parts)
        if route is None:
            time.sleep(delay)
            raise SandboxError("404", MSG_NO_ROUTE)
        method, handler, ident = route
        if req.method != method:
            time.sleep(delay)
            raise SandboxError("405", f"Method not allowed: use {method}")
        key = self._authorize(req.headers.get("Authorization"))
        if key is None:
            time.sleep(delay)
            raise SandboxError("401", MSG_UNAUTHORIZED)
        idem_key = req.headers.get("Idempotency-Key") if method == "POST" else None
        if idem_key is None:
            time.sleep(delay)
            return handler(req, key, ident)
        stored = self.keys.claim(req.path, idem_key)
        time.sleep(delay)
        if stored is not None:
            http, body = stored
            return json_reply(http, body, str(body.get("status_code")))
        reply: Reply | None = None
        try:
            try:
                reply = handler(req, key, ident)
            except SandboxError as exc:
                reply = error_reply(exc)
            return reply
        finally:
            if reply is None:
                self.keys.release(req.path, idem_key, 0, "", b"")
            else:
                self.keys.release(req.path, idem_key, reply.status, reply.code, reply.body)

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

    # -- calls -------------------------------------------------------------------------------

    def _charge(self, req: Request, key: str, ident: str) -> Reply:
        charge = validate_charge(json_object(req.body))
        urls = self._charge_urls(req.headers)
        if self.faults["CHANNEL_DISABLED"]:
            raise SandboxError("402", "Payment channel is not activated.")
        bad_qr = bool(self.faults["BAD_QR"])
        return ok(self.ledger.charge(charge, key, urls, req.base, bad_qr=bad_qr))

    def _charge_urls(self, headers: Message) -> list[str]:
        """X-Override-Notification replaces the configured URLs, X-Append-Notification adds
        to them; 400 when one is not an http(s) URL."""
        urls = list(self.notification_urls)
        try:
            override = headers.get("X-Override-Notification")
            append = headers.get("X-Append-Notification")
            if override is not None:
                urls = parse_notification_urls(override)
            elif append is not None:
                urls = (urls + parse_notification_urls(append))[:MAX_NOTIFICATION_URLS]
        except ValueError as exc:
            raise invalid(str(exc)) from None
        return urls

    def _status(self, req: Request, key: str, ident: str) -> Reply:
        return ok(self.ledger.status(ident, self.faults["PENDING_AFTER_PAY_S"]))

    def _status_b2b(self, req: Request, key: str, ident: str) -> Reply:
        page = _whole(req.query, "page", 0, 0, None)
        per_page = _whole(req.query, "per_page", B2B_PER_PAGE, 1, B2B_MAX_PER_PAGE)
        hide = self.faults["PENDING_AFTER_PAY_S"]
        return ok(self.ledger.status_b2b(ident, page, per_page, hide))

    def _cancel(self, req: Request, key: str, ident: str) -> Reply:
        return ok(self.ledger.end(ident, "cancel", optional_object_problem(req.body)))

    def _expire(self, req: Request, key: str, ident: str) -> Reply:
        return ok(self.ledger.end(ident, "expire", optional_object_problem(req.body)))

    def _refund(self, req: Request, key: str, ident: str) -> Reply:
        enabled = not self.faults["REFUND_DISABLED"]
        return ok(self.ledger.refund(ident, read_refund(req.body), enabled=enabled))

    def _judge_challenge(self, req: Request, key: str, ident: str) -> Reply:
        self.ledger.judge_challenge(ident)


def _whole(query: dict[str, list[str]], name: str, default: int, low: int, high: int | None) -> int:
    """The query parameter `name` as a whole number from `low` to `high`; 400 otherwise."""
    values = query.get(name)
    if not values:
        return default
    text = values[-1]
    if not text.isascii() or not text.isdigit() or len(text) > 9:
        raise invalid(f"{name} must be a whole number")
    value = int(text)
    if value < low or (high is not None and value > high):
        limit = f"from {low} to {high}" if high is not None else f"at least {low}"
        raise invalid(f"{name} must be {limit}")
    return value
