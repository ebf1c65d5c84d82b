"""Request body checks: a charge, a refund, a notification URL list. Plain functions, no state.

A check either returns the request as values the ledger can use, or raises SandboxError 400
listing every problem it found (Midtrans answers all of them at once, in
`validation_messages`). The order of checks between body and state (404, 412 before 400 on
cancel / expire / refund) is the ledger's: see shared/midtrans.md, "The local sandbox".
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, TypeGuard
from urllib.parse import urlsplit

from cores import qris
from cores.config import PAYMENT_TYPES
from cores.midtrans_wire import ORDER_ID
from sandbox.messages import invalid

#: QR expiry without custom_expiry (shared/midtrans.md, "POST /v2/charge").
DEFAULT_EXPIRY_S = 15 * 60
#: custom_expiry units and the longest expiry accepted.
EXPIRY_UNITS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
MAX_EXPIRY_S = 366 * 86400
#: Largest gross_amount accepted, in rupiah.
MAX_AMOUNT = 999_999_999_999
#: Objects echoed back (metadata) may nest this deep at most.
MAX_OBJECT_DEPTH = 10
#: qris.acquirer values.
ACQUIRERS = tuple(qris.GUIDS)
#: At most this many notification URLs per transaction (X-Override-Notification).
MAX_NOTIFICATION_URLS = 3
#: Longest refund_key and reason.
MAX_REFUND_KEY_LEN = 50
MAX_REASON_LEN = 255


@dataclass
class Charge:
    """A valid charge request."""

    payment_type: str
    order_id: str
    gross_amount: int
    acquirer: str
    expiry_s: int
    metadata: dict[str, Any] | None


@dataclass
class RefundAsk:
    """A refund request as sent, checked only once the transaction allows a refund:
    `refund_key` and `amount` are raw (a replayed key is answered before the body is
    judged), `problem` says why the body is unusable, if it is."""

    refund_key: object
    amount: object
    reason: object
    problem: str | None


def is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def try_json(raw: bytes) -> tuple[Any, str | None]:
    """(value, None), or (None, problem); an empty body is (None, None)."""
    if not raw.strip():
        return None, None
    try:
        return json.loads(raw.decode("utf-8")), None
    except (ValueError, RecursionError):
        return None, "request body is not valid JSON"


def json_object(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object, or SandboxError 400."""
    value, problem = try_json(raw)
    if problem is not None:
        raise invalid(problem)
    if not isinstance(value, dict):
        raise invalid("request body must be a JSON object")
    return value


def optional_object_problem(raw: bytes) -> str | None:
    """Why a body that may be empty, null or an object is none of these; None when fine."""
    value, problem = try_json(raw)
    if problem is None and not isinstance(value, dict | None):
        problem = "request body must be a JSON object"
    return problem


def read_refund(raw: bytes) -> RefundAsk:
    """The refund request's fields as sent; never raises (see `check_refund`)."""
    parsed, problem = try_json(raw)
    if problem is None and not isinstance(parsed, dict | None):
        problem = "request body must be a JSON object"
    data = parsed if isinstance(parsed, dict) else {}
    return RefundAsk(data.get("refund_key"), data.get("amount"), data.get("reason", ""), problem)


def check_refund(ask: RefundAsk) -> None:
    """SandboxError 400 when the refund body or one of its fields is malformed. The amount's
    value (whole, positive, not more than is left) is the ledger's to judge: 414."""
    if ask.problem is not None:
        raise invalid(ask.problem)
    messages = []
    key = ask.refund_key
    if key is not None and (not isinstance(key, str) or not 0 < len(key) <= MAX_REFUND_KEY_LEN):
        messages.append(f"refund_key must be a string of 1 to {MAX_REFUND_KEY_LEN} characters")
    if not isinstance(ask.reason, str) or len(ask.reason) > MAX_REASON_LEN:
        messages.append(f"reason must be a string of at most {MAX_REASON_LEN} characters")
    if ask.amount is not None and not is_number(ask.amount):
        messages.append("amount must be a number")
    if messages:
        raise invalid(*messages)


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


def validate_charge(data: dict[str, Any]) -> Charge:
    """The charge request, or SandboxError 400 listing every problem found."""
    messages: list[str] = []
    payment_type = data.get("payment_type")
    if payment_type is None:
        messages.append("payment_type is required")
    elif payment_type not in PAYMENT_TYPES:
        messages.append("payment_type is not supported: use qris or gopay")
    order_id, gross = _transaction_details(data.get("transaction_details"), messages)
    _item_details(data.get("item_details"), gross, messages)
    expiry_s = _expiry(data.get("custom_expiry"), messages)
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
        elif data.get(name) is not None and depth(data[name]) > MAX_OBJECT_DEPTH:
            messages.append(f"{name} is nested too deeply")
    if messages:
        raise invalid(*messages)
    return Charge(
        payment_type=str(payment_type),
        order_id=order_id,
        gross_amount=gross,
        acquirer=acquirer,
        expiry_s=expiry_s,
        metadata=data.get("metadata"),
    )


def _transaction_details(details: object, messages: list[str]) -> tuple[str, int]:
    """(order_id, gross_amount), "" and 0 where they are wrong (and `messages` says why)."""
    if not isinstance(details, dict):
        messages.append("transaction_details is required and must be an object")
        return "", 0
    order_id = details.get("order_id")
    if order_id is None:
        messages.append("transaction_details.order_id is required")
    elif not isinstance(order_id, str) or not ORDER_ID.fullmatch(order_id):
        messages.append(
            "transaction_details.order_id must be 1 to 50 letters, digits, '-', '_', '~' or '.'"
        )
    amount = details.get("gross_amount")
    gross = 0
    if amount is None:
        messages.append("transaction_details.gross_amount is required")
    elif not is_number(amount):
        messages.append("transaction_details.gross_amount must be a number")
    elif amount != int(amount):
        messages.append("transaction_details.gross_amount must be whole rupiah")
    elif amount <= 0:
        messages.append("transaction_details.gross_amount must be greater than 0")
    elif amount > MAX_AMOUNT:
        messages.append(f"transaction_details.gross_amount must be at most {MAX_AMOUNT}")
    else:
        gross = int(amount)
    return (order_id if isinstance(order_id, str) else ""), gross


def _item_details(items: object, gross: int, messages: list[str]) -> None:
    """Each item's price, quantity and name; their sum must be the gross amount."""
    if items is None:
        return
    if not isinstance(items, list) or not items:
        messages.append("item_details must be a non-empty list")
        return
    total: int | None = 0
    for i, item in enumerate(items):
        where = f"item_details[{i}]"
        if not isinstance(item, dict):
            messages.append(f"{where} must be an object")
            total = None
            continue
        price, quantity, name = item.get("price"), item.get("quantity"), item.get("name")
        if not is_number(price) or price != int(price) or abs(price) > MAX_AMOUNT:
            messages.append(f"{where}.price must be whole rupiah")
            price = None
        if isinstance(quantity, bool) or not isinstance(quantity, int) or quantity < 1:
            messages.append(f"{where}.quantity must be a whole number >= 1")
            quantity = None
        if not isinstance(name, str) or not 0 < len(name) <= 50:
            messages.append(f"{where}.name is required (at most 50 characters)")
        if "id" in item and not isinstance(item["id"], str | int):
            messages.append(f"{where}.id must be a string")
        if total is None or price is None or quantity is None:
            total = None
        else:
            total += int(price) * quantity
    if total is not None and gross and total != gross:
        messages.append("transaction_details.gross_amount is not equal to the sum of item_details")


def _expiry(custom: object, messages: list[str]) -> int:
    """Seconds until the QR expires: custom_expiry, or 15 minutes."""
    if custom is None:
        return DEFAULT_EXPIRY_S
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
        return duration * EXPIRY_UNITS[unit]
    return DEFAULT_EXPIRY_S


def depth(value: object, limit: int = MAX_OBJECT_DEPTH + 1) -> int:
    """How deeply `value` nests (counting stops past `limit`, so it never recurses far)."""
    if limit <= 0 or not isinstance(value, dict | list):
        return 0
    children = value.values() if isinstance(value, dict) else value
    return 1 + max((depth(child, limit - 1) for child in children), default=0)
