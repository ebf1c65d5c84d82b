"""The errors of a Midtrans call: one tree, raised by `cores.midtrans.MidtransClient`.

Third-party errors (requests, urllib3, JSON) are translated at the boundary, in the client,
with ``raise ... from exc``; a caller catches only these::

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

GatewayUnreachable after a POST, or GatewayRefused("412") from cancel / expire, leaves the
transaction's state unknown: re-read its status before deciding anything (money rule 3 in
shared/DESIGN.md). The codes are those of shared/midtrans.md, "Status codes".
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "GatewayRefused",
    "GatewayTimeout",
    "GatewayUnreachable",
    "MalformedAnswer",
    "MidtransError",
]


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
