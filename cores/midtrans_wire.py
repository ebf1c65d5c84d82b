"""Midtrans wire facts: what both ends of the Core API agree on, written once.

The client (`cores/midtrans.py`) reads these off Midtrans's answers; the local sandbox
(`sandbox/`) writes them into its own. Each fact cites shared/midtrans.md. Plain functions and
tables, no I/O.

- Times: "YYYY-MM-DD HH:MM:SS" in Jakarta time (WIB, UTC+7), no zone suffix.
- Amounts: whole rupiah written with two decimals, "7000.00" (the string a signature covers).
- Signatures: lowercase hex SHA-512 of order_id + status_code + gross_amount + server_key.
- status_code of each transaction_status, in status answers and in notifications.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

__all__ = [
    "FINAL_UNPAID_STATUSES",
    "IDEMPOTENCY_KEY_MAX_LEN",
    "JAKARTA",
    "NOTIFICATION_CODES",
    "ORDER_ID",
    "PAID_STATUSES",
    "REFUNDED_STATUSES",
    "STATUS_CODES",
    "STATUS_READ_CODES",
    "amount_text",
    "jakarta_epoch",
    "jakarta_time",
    "signature",
    "verify_signature",
]

#: Midtrans writes times as "YYYY-MM-DD HH:MM:SS" in Jakarta time (WIB, UTC+7), no zone suffix.
JAKARTA = timezone(timedelta(hours=7), "WIB")
_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"

#: status_code of each transaction_status in a status answer (shared/midtrans.md,
#: "GET /v2/{order_id or transaction_id}/status").
STATUS_CODES: Mapping[str, str] = {
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
#: The same in notifications, where cancel and expire say 202 ("HTTP notifications").
NOTIFICATION_CODES: Mapping[str, str] = {**STATUS_CODES, "cancel": "202", "expire": "202"}
#: The status_code values of a successful status read (407 "expired" included).
STATUS_READ_CODES = frozenset(STATUS_CODES.values())

#: transaction_status values meaning the money arrived ("capture" only with fraud_status accept).
PAID_STATUSES = frozenset({"settlement", "capture"})
#: transaction_status values meaning the order is over and was not paid; after one of these
#: the order_id may be charged again.
FINAL_UNPAID_STATUSES = frozenset({"deny", "cancel", "expire", "failure"})
#: transaction_status values of a paid transaction refunded in whole or in part.
REFUNDED_STATUSES = frozenset({"refund", "partial_refund"})

#: Idempotency-Key: at most 46 characters ("Hosts, auth, headers").
IDEMPOTENCY_KEY_MAX_LEN = 46
#: order_id: at most 50 letters, digits and "- _ ~ ." ("POST /v2/charge").
ORDER_ID = re.compile(r"^[A-Za-z0-9\-_~.]{1,50}$")


def jakarta_time(ts: float) -> str:
    """Unix seconds as Midtrans writes them: "2026-11-26 10:00:00" (Jakarta, no zone)."""
    return datetime.fromtimestamp(ts, JAKARTA).strftime(_TIME_FORMAT)


def jakarta_epoch(text: str) -> int | None:
    """A Midtrans time (Jakarta when it has no zone) as Unix seconds; None when unreadable."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=JAKARTA)
    return int(moment.timestamp())


def amount_text(amount: int | Decimal) -> str:
    """Whole rupiah as Midtrans writes amounts: 7000 -> "7000.00"."""
    return f"{amount:.2f}"


def signature(order_id: str, status_code: str, gross_amount: str, server_key: str) -> str:
    """Lowercase hex SHA-512 of the plain concatenation, as Midtrans signs its notifications
    and status answers (shared/midtrans.md, "HTTP notifications")."""
    text = order_id + status_code + gross_amount + server_key
    return hashlib.sha512(text.encode("utf-8")).hexdigest()


def verify_signature(body: Mapping[str, Any], server_key: str) -> bool:
    """True when `body["signature_key"]` is the signature of its own fields; never raises.

    The fields must be the exact strings Midtrans sent (gross_amount "7000.00", not a number):
    a missing or mistyped field, or an empty server key, is a failed verification. The compare
    takes constant time.
    """
    if not isinstance(body, Mapping) or not isinstance(server_key, str) or not server_key:
        return False
    order_id, status_code = body.get("order_id"), body.get("status_code")
    gross_amount, given = body.get("gross_amount"), body.get("signature_key")
    if not (
        isinstance(order_id, str)
        and isinstance(status_code, str)
        and isinstance(gross_amount, str)
        and isinstance(given, str)
    ):
        return False
    try:
        expected = signature(order_id, status_code, gross_amount, server_key)
        return hmac.compare_digest(expected.encode(), given.strip().lower().encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate cannot be a genuine Midtrans value
        return False
