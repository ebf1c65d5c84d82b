"""A Midtrans transaction as read off an answer: the `Transaction` value and its parsing.

Charge, status, cancel, expire and refund answers, and HTTP notifications, share one shape
(shared/midtrans.md, "GET /v2/{order_id or transaction_id}/status" and "HTTP notifications");
`Transaction.from_body` reads any of them and raises `MalformedAnswer` when a field is missing
or mistyped. Plain values, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from cores.midtrans_errors import MalformedAnswer
from cores.midtrans_wire import (
    FINAL_UNPAID_STATUSES,
    REFUNDED_STATUSES,
    amount_text,
    jakarta_epoch,
)

__all__ = ["Transaction"]


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
    actions: dict[str, str] = {}
    for item in found:
        if isinstance(item, dict):
            name, url = item.get("name"), item.get("url")
            if isinstance(name, str) and isinstance(url, str):
                actions.setdefault(name, url)
    return actions
