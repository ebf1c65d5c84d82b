"""A small Midtrans Core API client: timeouts on every call, deliberate retries, typed errors.

The subset and its quirks are described in shared/midtrans.md: charge (qris, gopay), status,
cancel, expire, refund. The wire facts this client shares with the local sandbox (times,
amounts, the SHA-512 signature, status codes) live in `cores/midtrans_wire.py`; `signature`,
`verify_signature`, `JAKARTA` and the status sets are re-exported here. The official
`midtransclient` is not used: it has no timeouts, no retries, no Idempotency-Key and no
configurable base URL.

Errors (one tree; third-party errors are translated at the boundary with ``raise ... from exc``)::

    MidtransError               base of every failed call; .op, .order_id, .attempts
     |
     +-- GatewayUnreachable     no usable answer, so the outcome of a POST is unknown:
     |    |                     connection refused or dropped, or 5xx / 429 (as the HTTP status
     |    |                     or as the body's status_code) once the retries are spent, or a
     |    |                     POST still "being processed" (HTTP 202) once the retries are spent;
     |    |                     .code: the last "5xx" / "429" / "202" seen, or None
     |    +-- GatewayTimeout    the last attempt hit the connect or read timeout
     |
     +-- GatewayRefused         Midtrans answered with an error code: .code (str, e.g. "412"),
     |                          .message (its status_message), .body (the whole answer dict):
     |                            400 validation error (.validation_messages lists the reasons)
     |                            401 bad or missing server key, wrong environment
     |                            402 payment channel not enabled for this merchant
     |                            404 transaction does not exist
     |                            406 duplicate order_id, or refund_key reused for another refund
     |                            412 not allowed in the transaction's current state
     |                            414 refund rejected: invalid amount
     |                            429 only on a call that is not retried; every call of this
     |                                client retries 429, so when the retries run out it raises
     |                                GatewayUnreachable(code="429") instead
     |
     +-- MalformedAnswer        an answer that cannot be trusted: not JSON, not an object, no
                                status_code, missing or mistyped fields, a success code that this
                                call does not expect, or an answer about another order

Retries. Every call has a connect and a read timeout. Timeouts, connection errors, 5xx and 429
are retried with exponential backoff and full jitter (a delay drawn uniformly from
``[0, retry_base_s * 2**(attempt - 1)]``), for at most `retry_attempts` attempts and
`retry_budget_s` seconds in all (an attempt's timeouts are cut to what is left of the budget).

- `status` is a read: always safe to repeat.
- `charge` and `refund` carry an Idempotency-Key and are repeated only with that same key, so
  Midtrans answers a repeat with the stored answer of the first (shared/midtrans.md, "Hosts,
  auth, headers"). HTTP 202 on a POST means the first is still in flight: retry, same key.
- `cancel` and `expire` change nothing when repeated, but a repeat of one that did succeed
  (its answer lost on the way) gets 412. Each call sends a fresh Idempotency-Key of its own,
  kept across its retries, so a retry within the call gets the stored answer where the
  gateway honours the key. Still, a caller that receives GatewayRefused("412") from them, or
  GatewayUnreachable, must re-read the status before it decides anything (money rule 3 in
  shared/DESIGN.md): the transaction may well be cancelled already, or paid.

The body's status_code is always checked, whatever the HTTP status: Midtrans sends some
errors with HTTP 200. Each call logs one INFO line with the order_id, the outcome, the number
of attempts and the elapsed milliseconds; never the server key.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import requests
from requests.auth import HTTPBasicAuth
from urllib3.exceptions import ReadTimeoutError

from constants.tunables import (
    HTTP_CONNECT_TIMEOUT_S,
    HTTP_READ_TIMEOUT_S,
    HTTP_RETRY_ATTEMPTS,
    HTTP_RETRY_BASE_S,
    HTTP_RETRY_BUDGET_S,
)
from cores.logs import kv
from cores.midtrans_wire import (
    FINAL_UNPAID_STATUSES,
    IDEMPOTENCY_KEY_MAX_LEN,
    JAKARTA,
    PAID_STATUSES,
    REFUNDED_STATUSES,
    STATUS_READ_CODES,
    amount_text,
    jakarta_epoch,
    signature,
    verify_signature,
)

if TYPE_CHECKING:
    from cores.config import Settings

log = logging.getLogger(__name__)

__all__ = [
    "FINAL_UNPAID_STATUSES",
    "JAKARTA",
    "PAID_STATUSES",
    "GatewayRefused",
    "GatewayTimeout",
    "GatewayUnreachable",
    "MalformedAnswer",
    "MidtransClient",
    "MidtransError",
    "Transaction",
    "backoff_delay",
    "refund_idempotency_key",
    "signature",
    "verify_signature",
]

# Success status_code values per call (shared/midtrans.md, "Status codes").
_CHARGE_OK = frozenset({"200", "201", "202"})
_CANCEL_OK = frozenset({"200"})
_EXPIRE_OK = frozenset({"407", "200"})
_REFUND_OK = frozenset({"200"})
# Refund idempotency keys are UUIDs derived from (order_id, refund_key) in this namespace.
_REFUND_KEY_NAMESPACE = uuid.UUID("5b0f3c2e-8f51-4d3a-9a57-6c1d2e0b7a44")


# --------------------------------------------------------------------------------------------
# Errors


class MidtransError(Exception):
    """Base of every failed Midtrans call."""

    def __init__(self, message: str, *, op: str | None = None, order_id: str | None = None) -> None:
        super().__init__(message)
        self.op = op
        self.order_id = order_id
        #: How many HTTP attempts the call made before it gave up (0 when none was made).
        self.attempts = 0

    def __str__(self) -> str:
        where = " ".join(x for x in (self.op, self.order_id) if x)
        text = super().__str__()
        return f"{where}: {text}" if where else text


class GatewayUnreachable(MidtransError):
    """No usable answer: connection error, 5xx, 429 or an in-flight 202, retries spent."""

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        body: dict[str, Any] | None = None,
        op: str | None = None,
        order_id: str | None = None,
    ) -> None:
        super().__init__(message, op=op, order_id=order_id)
        self.code = code
        self.body = body


class GatewayTimeout(GatewayUnreachable):
    """The last attempt timed out (connect or read)."""


class GatewayRefused(MidtransError):
    """Midtrans answered with an error status_code (4xx), whatever the HTTP status."""

    def __init__(
        self,
        code: str,
        message: str,
        body: dict[str, Any],
        *,
        op: str | None = None,
        order_id: str | None = None,
    ) -> None:
        super().__init__(f"refused {code}: {message}", op=op, order_id=order_id)
        self.code = code
        self.message = message
        self.body = body

    @property
    def validation_messages(self) -> list[str]:
        """The reasons of a 400 answer (empty for other codes)."""
        found = self.body.get("validation_messages")
        return [str(m) for m in found] if isinstance(found, list) else []


class MalformedAnswer(MidtransError):
    """An answer that cannot be trusted: not JSON, not an object, fields missing or mistyped."""


# --------------------------------------------------------------------------------------------
# Idempotency keys


def refund_idempotency_key(order_id: str, refund_key: str, amount: int) -> str:
    """The Idempotency-Key of a refund: a UUID (36 characters) fixed by the request.

    The amount is part of it so that a refund_key reused for another amount is not answered
    with the stored answer of the first refund, but reaches Midtrans and gets its 406.
    """
    return str(uuid.uuid5(_REFUND_KEY_NAMESPACE, f"{order_id}\n{refund_key}\n{amount}"))


# --------------------------------------------------------------------------------------------
# Transactions


@dataclass(frozen=True)
class Transaction:
    """One Midtrans answer about a transaction (charge, status, cancel, expire, refund).

    Notifications have the same shape: `Transaction.from_body(notification)` reads them too.
    """

    order_id: str
    transaction_id: str
    #: Lower-cased: pending, settlement, capture, deny, cancel, expire, failure, refund, ...
    transaction_status: str
    status_code: str
    #: As Midtrans sends it, e.g. "7000.00" (the string the signature is computed over).
    gross_amount: str
    payment_type: str | None = None
    fraud_status: str | None = None
    #: The raw QRIS payload (qris charges only; status answers do not repeat it).
    qr_string: str | None = None
    #: Action name -> URL, e.g. "generate-qr-code" -> the PNG of the QR.
    actions: Mapping[str, str] = field(default_factory=dict)
    expiry_time: str | None = None
    settlement_time: str | None = None
    transaction_time: str | None = None
    refund_amount: str | None = None
    #: The whole answer, for the audit log.
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_body(cls, body: object) -> Transaction:
        """Read an answer body; MalformedAnswer when it is not a usable transaction."""
        if not isinstance(body, dict):
            raise MalformedAnswer(f"answer is not a JSON object but {type(body).__name__}")
        gross_amount = _amount_text(body, "gross_amount", required=True)
        assert gross_amount is not None
        return cls(
            order_id=_text(body, "order_id", required=True),
            transaction_id=_text(body, "transaction_id", required=True),
            transaction_status=_text(body, "transaction_status", required=True).lower(),
            status_code=_text(body, "status_code", required=True),
            gross_amount=gross_amount,
            payment_type=_opt_text(body, "payment_type"),
            fraud_status=_lower(_opt_text(body, "fraud_status")),
            qr_string=_opt_text(body, "qr_string"),
            actions=_actions(body),
            expiry_time=_opt_text(body, "expiry_time"),
            settlement_time=_opt_text(body, "settlement_time"),
            transaction_time=_opt_text(body, "transaction_time"),
            refund_amount=_amount_text(body, "refund_amount", required=False),
            raw=body,
        )

    @property
    def amount_idr(self) -> int:
        """gross_amount in whole rupiah: "7000.00" -> 7000."""
        return int(Decimal(self.gross_amount))

    @property
    def is_paid(self) -> bool:
        """Money arrived: settlement, or capture with fraud_status accept (money rule 1)."""
        if self.transaction_status == "settlement":
            return True
        return self.transaction_status == "capture" and self.fraud_status == "accept"

    @property
    def is_pending(self) -> bool:
        """Waiting for the customer to pay."""
        return self.transaction_status == "pending"

    @property
    def is_final_unpaid(self) -> bool:
        """Over without payment: deny, cancel, expire or failure."""
        return self.transaction_status in FINAL_UNPAID_STATUSES

    @property
    def is_refunded(self) -> bool:
        """Paid, then refunded in whole or in part."""
        return self.transaction_status in REFUNDED_STATUSES

    @property
    def qr_image_url(self) -> str | None:
        """URL of the QR's PNG (the `generate-qr-code` action), or None."""
        return self.actions.get("generate-qr-code")

    @property
    def expiry_epoch(self) -> int | None:
        """expiry_time (Jakarta time when it has no zone) as Unix seconds; None when absent
        or unreadable (Midtrans does not promise the field)."""
        return jakarta_epoch(self.expiry_time) if self.expiry_time else None


def _text(body: dict[str, Any], name: str, *, required: bool) -> str:
    value = _opt_text(body, name)
    if value is None or (required and not value):
        raise MalformedAnswer(f"answer has no {name}")
    return value


def _opt_text(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # a status_code sent as a number
    raise MalformedAnswer(f"answer field {name} is {type(value).__name__}, not text")


def _lower(value: str | None) -> str | None:
    return value.lower() if value is not None else None


def _amount_text(body: dict[str, Any], name: str, *, required: bool) -> str | None:
    """An amount as Midtrans sends it ("7000.00"); numbers are accepted and written that way."""
    value = body.get(name)
    if value is None:
        if required:
            raise MalformedAnswer(f"answer has no {name}")
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise MalformedAnswer(f"answer field {name} is {type(value).__name__}, not an amount")
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        raise MalformedAnswer(f"answer field {name} is not an amount: {value!r}") from None
    if not amount.is_finite() or amount < 0 or amount != amount.to_integral_value():
        raise MalformedAnswer(f"answer field {name} is not whole rupiah: {value!r}")
    return value if isinstance(value, str) else amount_text(amount)


def _actions(body: dict[str, Any]) -> dict[str, str]:
    found = body.get("actions")
    if found is None:
        return {}
    if not isinstance(found, list):
        raise MalformedAnswer(f"answer field actions is {type(found).__name__}, not a list")
    actions = {}
    for item in found:
        if isinstance(item, dict):
            name, url = item.get("name"), item.get("url")
            if isinstance(name, str) and isinstance(url, str):
                actions.setdefault(name, url)
    return actions


# --------------------------------------------------------------------------------------------
# The client


def backoff_delay(attempt: int, base_s: float, rng: random.Random) -> float:
    """Delay after failed attempt number `attempt` (1-based): full jitter, uniform in
    [0, base_s * 2**(attempt - 1)]."""
    return rng.uniform(0.0, base_s * 2 ** (attempt - 1))


class MidtransClient:
    """Calls the Midtrans Core API at `base_url` with `server_key` over one requests.Session.

    `sleep`, `rng` and `clock` (monotonic seconds) are there for tests of the retry schedule.
    A session passed in stays the caller's: `close()` closes only a session made here.
    """

    def __init__(
        self,
        base_url: str,
        server_key: str,
        session: requests.Session | None = None,
        *,
        connect_timeout: float = HTTP_CONNECT_TIMEOUT_S,
        read_timeout: float = HTTP_READ_TIMEOUT_S,
        retry_attempts: int = HTTP_RETRY_ATTEMPTS,
        retry_budget_s: float = HTTP_RETRY_BUDGET_S,
        retry_base_s: float = HTTP_RETRY_BASE_S,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        notification_url: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http(s) URL, not {base_url!r}")
        if connect_timeout <= 0 or read_timeout <= 0 or retry_budget_s <= 0:
            raise ValueError("timeouts and the retry budget must be positive")
        if retry_attempts < 1 or retry_base_s < 0:
            raise ValueError("retry_attempts must be >= 1 and retry_base_s >= 0")
        self.base_url = base_url.rstrip("/")
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.retry_attempts = retry_attempts
        self.retry_budget_s = retry_budget_s
        self.retry_base_s = retry_base_s
        self.notification_url = notification_url
        self._own_session = session is None
        self.session = session if session is not None else requests.Session()
        self._auth = HTTPBasicAuth(server_key, "")
        self._sleep = sleep
        self._rng = rng if rng is not None else random.Random()
        self._clock = clock

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        session: requests.Session | None = None,
        *,
        notification_url: str | None = None,
    ) -> MidtransClient:
        """A client for `settings.midtrans_base_url` with `settings.server_key`."""
        return cls(
            settings.midtrans_base_url,
            settings.server_key,
            session,
            read_timeout=settings.midtrans_timeout_s,
            retry_budget_s=2 * settings.midtrans_timeout_s,
            notification_url=notification_url,
        )

    def __repr__(self) -> str:
        return f"MidtransClient({self.base_url!r})"

    def __enter__(self) -> MidtransClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP session when this client made it."""
        if self._own_session:
            self.session.close()

    # -- calls -------------------------------------------------------------------------------

    def charge(
        self,
        order_id: str,
        gross_amount: int,
        item_details: list[dict[str, Any]],
        *,
        payment_type: str = "qris",
        idempotency_key: str,
        expiry_minutes: int | None = None,
        metadata: dict[str, Any] | None = None,
        customer_details: dict[str, Any] | None = None,
    ) -> Transaction:
        """POST /v2/charge. Pending (201) for a QR, or denied at once (202): both are answers.

        Store `idempotency_key` with the order before calling: a call repeated with the same
        key (after a crash, or by the retries here) gets the first call's answer.
        """
        _check_key(idempotency_key)
        if isinstance(gross_amount, bool) or not isinstance(gross_amount, int):
            raise TypeError("gross_amount is whole rupiah, an int")
        payload: dict[str, Any] = {
            "payment_type": payment_type,
            "transaction_details": {"order_id": order_id, "gross_amount": gross_amount},
            "item_details": item_details,
        }
        if customer_details is not None:
            payload["customer_details"] = customer_details
        if expiry_minutes is not None:
            payload["custom_expiry"] = {"expiry_duration": expiry_minutes, "unit": "minute"}
        if metadata is not None:
            payload["metadata"] = metadata
        headers = {"Idempotency-Key": idempotency_key}
        if self.notification_url:
            headers["X-Override-Notification"] = self.notification_url
        return self._call(
            "charge", "POST", "/v2/charge", order_id, _CHARGE_OK, payload=payload, headers=headers
        )

    def status(self, order_id: str) -> Transaction:
        """GET /v2/{order_id}/status. Unknown order: GatewayRefused code "404"."""
        return self._call("status", "GET", _path(order_id, "status"), order_id, STATUS_READ_CODES)

    def cancel(self, order_id: str) -> Transaction:
        """POST /v2/{order_id}/cancel of a pending transaction. Not pending (or cancelled by
        an earlier attempt whose answer was lost): GatewayRefused "412"; re-read the status."""
        return self._call(
            "cancel", "POST", _path(order_id, "cancel"), order_id, _CANCEL_OK, headers=_call_key()
        )

    def expire(self, order_id: str) -> Transaction:
        """POST /v2/{order_id}/expire of a pending transaction (success code "407"). Not
        pending: GatewayRefused "412"; re-read the status."""
        return self._call(
            "expire", "POST", _path(order_id, "expire"), order_id, _EXPIRE_OK, headers=_call_key()
        )

    def refund(self, order_id: str, *, refund_key: str, amount: int, reason: str) -> Transaction:
        """POST /v2/{order_id}/refund of a settled transaction.

        The same `refund_key` is the same refund, also across restarts; the Idempotency-Key
        is derived from it and the amount. The key reused for another amount: GatewayRefused
        "406"; more than is left: "414"; refunds off for the merchant (POS QRIS), or the
        transaction not settled: "412".
        """
        if not refund_key:
            raise ValueError("refund_key is required")
        if isinstance(amount, bool) or not isinstance(amount, int):
            raise TypeError("amount is whole rupiah, an int")
        payload = {"refund_key": refund_key, "amount": amount, "reason": reason}
        headers = {"Idempotency-Key": refund_idempotency_key(order_id, refund_key, amount)}
        return self._call(
            "refund",
            "POST",
            _path(order_id, "refund"),
            order_id,
            _REFUND_OK,
            payload=payload,
            headers=headers,
        )

    # -- machinery ---------------------------------------------------------------------------

    def _call(
        self,
        op: str,
        method: str,
        path: str,
        order_id: str,
        ok_codes: frozenset[str],
        *,
        payload: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Transaction:
        """Attempt the call until an answer, a final error, or the retries are spent."""
        url = self.base_url + path
        all_headers = {"Content-Type": "application/json", "Accept": "application/json"}
        all_headers.update(headers or {})
        start = self._clock()
        attempt = 0
        while True:
            attempt += 1
            remaining = self.retry_budget_s - (self._clock() - start)
            timeout = (
                max(min(self.connect_timeout, remaining), 0.001),
                max(min(self.read_timeout, remaining), 0.001),
            )
            try:
                result = self._attempt(
                    op, method, url, order_id, ok_codes, payload, all_headers, timeout
                )
            except MidtransError as exc:
                exc.attempts = attempt
                self._log(op, order_id, _outcome(exc), attempt, start)
                raise
            if isinstance(result, Transaction):
                self._log(op, order_id, result.transaction_status, attempt, start)
                return result
            delay = backoff_delay(attempt, self.retry_base_s, self._rng)
            elapsed = self._clock() - start
            if attempt >= self.retry_attempts or elapsed + delay >= self.retry_budget_s:
                result.attempts = attempt
                self._log(op, order_id, _outcome(result), attempt, start)
                raise result from result.__cause__
            log.info(
                "midtrans retry",
                extra=kv(
                    op=op,
                    order_id=order_id,
                    attempt=attempt,
                    error=_outcome(result),
                    delay_ms=round(delay * 1000),
                ),
            )
            self._sleep(delay)

    def _attempt(
        self,
        op: str,
        method: str,
        url: str,
        order_id: str,
        ok_codes: frozenset[str],
        payload: dict[str, Any] | None,
        headers: dict[str, str],
        timeout: tuple[float, float],
    ) -> Transaction | GatewayUnreachable:
        """One HTTP exchange: a Transaction, a retryable failure (returned), or a final error
        (raised)."""
        where = {"op": op, "order_id": order_id}
        try:
            response = self.session.request(
                method, url, json=payload, headers=headers, auth=self._auth, timeout=timeout
            )
        except (
            requests.exceptions.InvalidURL,
            requests.exceptions.InvalidSchema,
            requests.exceptions.MissingSchema,
        ) as exc:
            raise GatewayUnreachable(f"bad gateway URL {url!r}: {exc}", **where) from exc
        except requests.RequestException as exc:
            if _is_timeout(exc):
                error: GatewayUnreachable = GatewayTimeout(f"timed out: {exc}", **where)
            else:
                error = GatewayUnreachable(f"{type(exc).__name__}: {exc}", **where)
            error.__cause__ = exc
            return error

        http = response.status_code
        retryable_http = http >= 500 or http == 429
        try:
            body = response.json()
        except ValueError as exc:
            text = response.text[:200]
            if retryable_http:
                error = GatewayUnreachable(f"HTTP {http}: {text!r}", code=str(http), **where)
                error.__cause__ = exc
                return error
            raise MalformedAnswer(f"HTTP {http}, not JSON: {text!r}", **where) from exc
        if not isinstance(body, dict):
            if retryable_http:
                return GatewayUnreachable(f"HTTP {http}", code=str(http), **where)
            raise MalformedAnswer(f"HTTP {http}, not a JSON object: {body!r:.200}", **where)
        if retryable_http:
            return GatewayUnreachable(
                f"HTTP {http}: {body.get('status_message')}", code=str(http), body=body, **where
            )

        code = body.get("status_code")
        if isinstance(code, int) and not isinstance(code, bool):
            code = str(code)
        if not isinstance(code, str) or not code:
            raise MalformedAnswer(f"HTTP {http}, answer has no status_code", **where)
        message = body.get("status_message")
        message = message if isinstance(message, str) else ""

        # HTTP 202 on a POST: the first request with this Idempotency-Key is still being
        # processed (shared/midtrans.md, "The local sandbox"); a repeat gets its answer.
        if method == "POST" and "202" in (str(http), code) and "transaction_status" not in body:
            return GatewayUnreachable(f"in flight: {message}", code="202", body=body, **where)

        if code in ok_codes:
            if not 200 <= http < 300:
                raise MalformedAnswer(f"HTTP {http} with success status_code {code}", **where)
            try:
                transaction = Transaction.from_body(body)
            except MalformedAnswer as exc:
                exc.op, exc.order_id = op, order_id
                raise
            if order_id not in (transaction.order_id, transaction.transaction_id):
                raise MalformedAnswer(f"answer is about order {transaction.order_id!r}", **where)
            return transaction
        if code == "429" or (len(code) == 3 and code.startswith("5")):
            return GatewayUnreachable(f"{code}: {message}", code=code, body=body, **where)
        if len(code) == 3 and code.startswith("4"):
            raise GatewayRefused(code, message, body, **where)
        raise MalformedAnswer(f"unexpected status_code {code} ({message})", **where)

    def _log(self, op: str, order_id: str, outcome: str, attempts: int, start: float) -> None:
        elapsed_ms = round((self._clock() - start) * 1000)
        log.info(
            "midtrans %s",
            op,
            extra=kv(
                op=op,
                order_id=order_id,
                outcome=outcome,
                attempts=attempts,
                elapsed_ms=elapsed_ms,
            ),
        )


def _path(order_id: str, action: str) -> str:
    return f"/v2/{quote(order_id, safe='')}/{action}"


def _call_key() -> dict[str, str]:
    """A fresh Idempotency-Key for one cancel / expire call and its retries. Never reused
    across calls: an order_id may be charged again after a cancel (shared/midtrans.md), and
    a later cancel must not get the stored answer of an earlier one."""
    return {"Idempotency-Key": str(uuid.uuid4())}


def _check_key(key: str) -> None:
    if not isinstance(key, str) or not 0 < len(key) <= IDEMPOTENCY_KEY_MAX_LEN:
        raise ValueError(f"an Idempotency-Key has 1 to {IDEMPOTENCY_KEY_MAX_LEN} characters")
    if not key.isascii() or not key.isprintable() or " " in key:
        raise ValueError("an Idempotency-Key is printable ASCII without spaces")


def _is_timeout(exc: BaseException) -> bool:
    """requests raises Timeout before the headers, but ConnectionError(ReadTimeoutError)
    when the read times out in the middle of the body."""
    if isinstance(exc, requests.Timeout):
        return True
    return any(isinstance(arg, ReadTimeoutError) for arg in exc.args)


def _outcome(error: MidtransError) -> str:
    if isinstance(error, GatewayRefused):
        return f"refused_{error.code}"
    if isinstance(error, GatewayTimeout):
        return "timeout"
    if isinstance(error, GatewayUnreachable):
        return f"unreachable_{error.code}" if error.code else "unreachable"
    return "malformed"
