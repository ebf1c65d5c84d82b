"""A small Midtrans Core API client: timeouts on every call, deliberate retries, typed errors.

The subset and its quirks are described in shared/midtrans.md: charge (qris, gopay), status,
cancel, expire, refund. The wire facts this client shares with the local sandbox (times,
amounts, the SHA-512 signature, status codes) live in `cores/midtrans_wire.py`; `signature`,
`verify_signature`, `JAKARTA` and the status sets are re-exported here. The official
`midtransclient` is not used: it has no timeouts, no retries, no Idempotency-Key and no
configurable base URL.

Errors: one tree, drawn in `cores/midtrans_errors.py` (MidtransError, GatewayUnreachable,
GatewayTimeout, GatewayRefused, MalformedAnswer); requests' and urllib3's errors are translated
into it here, at the boundary, with ``raise ... from exc``. Every answer is read into a
`Transaction` (`cores/transaction.py`). Both are re-exported here, so callers import all they
need from this module.

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
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypedDict
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
from cores.midtrans_errors import (
    GatewayRefused,
    GatewayTimeout,
    GatewayUnreachable,
    MalformedAnswer,
    MidtransError,
)
from cores.midtrans_wire import (
    FINAL_UNPAID_STATUSES,
    IDEMPOTENCY_KEY_MAX_LEN,
    JAKARTA,
    PAID_STATUSES,
    STATUS_READ_CODES,
    signature,
    verify_signature,
)
from cores.transaction import Transaction

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
    "CallObserver",
    "backoff_delay",
    "error_kind",
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


#: Told of every call once it ends: (op, elapsed seconds, the error or None). The workers
#: record metrics and the gateway's health with it (cores/metrics.py); it must not raise.
CallObserver = Callable[[str, float, "MidtransError | None"], None]


class _Where(TypedDict):
    """The call an error is about: the `op` and `order_id` keywords of every MidtransError."""

    op: str
    order_id: str


# --------------------------------------------------------------------------------------------
# Idempotency keys


def refund_idempotency_key(order_id: str, refund_key: str, amount: int) -> str:
    """The Idempotency-Key of a refund: a UUID (36 characters) fixed by the request.

    The amount is part of it so that a refund_key reused for another amount is not answered
    with the stored answer of the first refund, but reaches Midtrans and gets its 406.
    """
    return str(uuid.uuid5(_REFUND_KEY_NAMESPACE, f"{order_id}\n{refund_key}\n{amount}"))


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
        observer: CallObserver | None = None,
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
        self.observer = observer

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        session: requests.Session | None = None,
        *,
        notification_url: str | None = None,
        observer: CallObserver | None = None,
    ) -> MidtransClient:
        """A client for `settings.midtrans_base_url` with `settings.server_key`."""
        return cls(
            settings.midtrans_base_url,
            settings.server_key,
            session,
            read_timeout=settings.midtrans_timeout_s,
            retry_budget_s=2 * settings.midtrans_timeout_s,
            notification_url=notification_url,
            observer=observer,
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
                self._log(op, order_id, error_kind(exc), attempt, start, exc)
                raise
            if isinstance(result, Transaction):
                self._log(op, order_id, result.transaction_status, attempt, start)
                return result
            delay = backoff_delay(attempt, self.retry_base_s, self._rng)
            elapsed = self._clock() - start
            if attempt >= self.retry_attempts or elapsed + delay >= self.retry_budget_s:
                result.attempts = attempt
                self._log(op, order_id, error_kind(result), attempt, start, result)
                raise result from result.__cause__
            log.info(
                "midtrans retry",
                extra=kv(
                    op=op,
                    order_id=order_id,
                    attempt=attempt,
                    error=error_kind(result),
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
        where = _Where(op=op, order_id=order_id)
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

    def _log(
        self,
        op: str,
        order_id: str,
        outcome: str,
        attempts: int,
        start: float,
        error: MidtransError | None = None,
    ) -> None:
        elapsed = self._clock() - start
        elapsed_ms = round(elapsed * 1000)
        if self.observer is not None:
            try:  # metrics never cost a call's answer (or hide its error)
                self.observer(op, elapsed, error)
            except Exception:
                log.exception("call observer failed", extra=kv(op=op, order_id=order_id))
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


def error_kind(error: MidtransError) -> str:
    """A failed call's kind, as logged and counted: timeout, unreachable[_<code>],
    refused_<code>, malformed."""
    if isinstance(error, GatewayRefused):
        return f"refused_{error.code}"
    if isinstance(error, GatewayTimeout):
        return "timeout"
    if isinstance(error, GatewayUnreachable):
        return f"unreachable_{error.code}" if error.code else "unreachable"
    return "malformed"
