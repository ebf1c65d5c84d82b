"""One sandbox transaction: its record, and the bodies Midtrans answers about it.

`Transaction` and `Refund` hold what the ledger knows; `record()` / `from_record()` write and
read them as plain JSON for the journal. The body functions build the answers of
shared/midtrans.md from a transaction (call them with the ledger's lock held: a transaction
changes under it). Values are strings as Midtrans sends them, `metadata` is echoed as the
object it was, and status answers and notifications carry `signature_key`.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Any

from cores.midtrans_wire import (
    NOTIFICATION_CODES,
    PAID_STATUSES,
    REFUNDED_STATUSES,
    STATUS_CODES,
    amount_text,
    jakarta_time,
    signature,
)
from sandbox.messages import MSG_FOUND, MSG_NOTIFICATION

#: Statuses whose answers carry the settlement fields: paid, then perhaps refunded.
SETTLED = PAID_STATUSES | REFUNDED_STATUSES


@dataclass
class Refund:
    key: str
    amount: int
    reason: str
    at: float
    chargeback_id: int
    chargeback_uuid: str
    #: The answer of the refund call, repeated to a replay of its refund_key.
    answer: dict[str, Any] = field(default_factory=dict)

    def body(self) -> dict[str, str]:
        """The refund as listed in a status answer's `refunds`."""
        return {
            "refund_chargeback_id": str(self.chargeback_id),
            "refund_chargeback_uuid": self.chargeback_uuid,
            "refund_amount": amount_text(self.amount),
            "created_at": jakarta_time(self.at),
            "reason": self.reason,
            "refund_key": self.key,
        }


@dataclass
class Transaction:
    order_id: str
    transaction_id: str
    merchant_id: str
    charged_type: str  # payment_type of the charge
    acquirer: str
    gross_amount: int
    created_at: float
    expires_at: float
    #: The key that charged it, which signs its answers.
    server_key: str
    notify_urls: list[str]
    qr_string: str
    qr_ref: str
    metadata: dict[str, Any] | None
    payment_type: str = ""  # changes to "qris" when a gopay QR is paid by scanning
    status: str = "pending"
    paid_at: float | None = None
    refunds: list[Refund] = field(default_factory=list)
    #: The QR's PNG, drawn on the first request for it (not recorded).
    png: bytes | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.payment_type = self.payment_type or self.charged_type

    @property
    def refunded(self) -> int:
        return sum(r.amount for r in self.refunds)

    def record(self) -> dict[str, Any]:
        """Everything but the PNG, as JSON values."""
        record = asdict(self)
        del record["png"]
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Transaction:
        """The transaction `record()` wrote; KeyError / TypeError when it is not one."""
        fields = dict(record)
        fields["refunds"] = [Refund(**r) for r in fields.get("refunds", [])]
        return cls(**fields)


def qr_url(txn: Transaction, base: str) -> str:
    """The QR's PNG (the generate-qr-code action)."""
    return f"{base}/v2/{txn.charged_type}/{txn.transaction_id}/qr-code"


def body(
    txn: Transaction, status: str, code: str, message: str, payment_type: str
) -> dict[str, Any]:
    """A signed status body of `txn` as it would read with `status` and `code`."""
    answer: dict[str, Any] = {
        "status_code": code,
        "status_message": message,
        "transaction_id": txn.transaction_id,
        "order_id": txn.order_id,
        "merchant_id": txn.merchant_id,
        "gross_amount": amount_text(txn.gross_amount),
        "currency": "IDR",
        "payment_type": payment_type,
        "transaction_time": jakarta_time(txn.created_at),
        "transaction_status": status,
        "fraud_status": "accept",
        "acquirer": txn.acquirer,
        "expiry_time": jakarta_time(txn.expires_at),
    }
    if status in SETTLED and txn.paid_at is not None:
        answer["settlement_time"] = jakarta_time(txn.paid_at)
        answer["issuer"] = "gopay"
        answer["transaction_type"] = "on-us" if txn.acquirer == "gopay" else "off-us"
    if status in REFUNDED_STATUSES:
        answer["refund_amount"] = amount_text(txn.refunded)
        answer["refunds"] = [r.body() for r in txn.refunds]
    if txn.metadata is not None:
        answer["metadata"] = copy.deepcopy(txn.metadata)
    answer["signature_key"] = signature(txn.order_id, code, answer["gross_amount"], txn.server_key)
    return answer


def status_body(txn: Transaction, now: float, hide_paid_s: float = 0) -> dict[str, Any]:
    """What GET /status answers. `hide_paid_s` (the PENDING_AFTER_PAY_S fault): a payment
    younger than this still reads as pending."""
    if txn.paid_at is not None and hide_paid_s and now < txn.paid_at + hide_paid_s:
        return body(txn, "pending", STATUS_CODES["pending"], MSG_FOUND, txn.charged_type)
    return body(txn, txn.status, STATUS_CODES[txn.status], MSG_FOUND, txn.payment_type)


def notification_body(txn: Transaction) -> dict[str, Any]:
    """The notification of txn's current status."""
    code = NOTIFICATION_CODES[txn.status]
    return body(txn, txn.status, code, MSG_NOTIFICATION, txn.payment_type)


def ledger_body(txn: Transaction, base: str) -> dict[str, Any]:
    """The simulator's view: the true status, the QR (image URL and payload) and refunds."""
    answer = body(txn, txn.status, STATUS_CODES[txn.status], MSG_FOUND, txn.payment_type)
    answer["qr_image_url"] = qr_url(txn, base)
    answer["qr_string"] = txn.qr_string
    answer["refunds"] = [r.body() for r in txn.refunds]
    return answer


def action_answer(txn: Transaction, code: str, message: str) -> dict[str, Any]:
    """The answer of cancel / expire: the status body without its signature."""
    answer = body(txn, txn.status, code, message, txn.payment_type)
    del answer["signature_key"]
    return answer


def refund_answer(txn: Transaction, refund: Refund, status: str) -> dict[str, Any]:
    """The answer of a refund that moved `txn` to `status`."""
    return {
        "status_code": "200",
        "status_message": "Success, refund request is approved",
        "transaction_id": txn.transaction_id,
        "order_id": txn.order_id,
        "merchant_id": txn.merchant_id,
        "gross_amount": amount_text(txn.gross_amount),
        "currency": "IDR",
        "payment_type": txn.payment_type,
        "transaction_time": jakarta_time(txn.created_at),
        "transaction_status": status,
        "refund_chargeback_id": str(refund.chargeback_id),
        "refund_chargeback_uuid": refund.chargeback_uuid,
        "refund_amount": amount_text(refund.amount),
        "refund_key": refund.key,
    }


def charge_answer(txn: Transaction, base: str) -> dict[str, Any]:
    """The answer of POST /v2/charge (shared/midtrans.md draws both shapes)."""
    is_qris = txn.charged_type == "qris"
    answer: dict[str, Any] = {
        "status_code": "201",
        "status_message": "QRIS transaction is created"
        if is_qris
        else "GO-PAY transaction is created",
        "transaction_id": txn.transaction_id,
        "order_id": txn.order_id,
        "merchant_id": txn.merchant_id,
        "gross_amount": amount_text(txn.gross_amount),
        "currency": "IDR",
        "payment_type": txn.charged_type,
        "transaction_time": jakarta_time(txn.created_at),
        "transaction_status": "pending",
        "fraud_status": "accept",
    }
    qr = {"name": "generate-qr-code", "method": "GET", "url": qr_url(txn, base)}
    if is_qris:
        answer["acquirer"] = txn.acquirer
        answer["actions"] = [
            qr,
            {
                "name": "generate-qr-code-v2",
                "method": "GET",
                "url": f"{base}/v4/qris/{txn.qr_ref}/qr-code",
            },
        ]
        answer["qr_string"] = txn.qr_string
    else:
        answer["actions"] = [
            qr,
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
