"""Sales reports from the append-only sales stream: one row per order, totals, and the check
that every Rupiah paid is accounted for (paid = dispensed + refunded + owed + unknown + in
progress). Pure: entries in, rows and totals out; the broker reads the stream.

An order's entries (constants.states.Sale) tell its story: ORDERED (drink, amount), CHARGED
(payment type), PAID or LATE_PAYMENT (money in), then DISPENSED, REFUNDED, REFUND_OWED or
VEND_UNKNOWN (where the money went; the last one wins, so an operator's resolution, written
later with `resolved_by`, closes it), or CANCELLED / PAYMENT_FAILED / CHARGE_FAILED (no money).
An order belongs to the day (in the machine's time zone) it was ordered.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta, tzinfo
from enum import StrEnum
from typing import Any

from constants.states import Sale
from cores.console_errors import InvalidInput

#: The longest range a report covers, in days.
MAX_DAYS = 3660


class Status(StrEnum):
    """Where an order's money ended up (or why there was none)."""

    DISPENSED = "dispensed"
    REFUNDED = "refunded"
    REFUND_OWED = "refund_owed"
    VEND_UNKNOWN = "vend_unknown"
    IN_PROGRESS = "in_progress"  # paid; not vended nor refunded yet
    PENDING = "pending"  # not paid yet, not closed
    CANCELLED = "cancelled"
    FAILED = "failed"


#: Where paid money went, per final status.
_MONEY = {
    Sale.PAID: Status.IN_PROGRESS,
    Sale.LATE_PAYMENT: Status.IN_PROGRESS,
    Sale.DISPENSE_FAILED: Status.IN_PROGRESS,
    Sale.DISPENSED: Status.DISPENSED,
    Sale.REFUNDED: Status.REFUNDED,
    Sale.REFUND_OWED: Status.REFUND_OWED,
    Sale.VEND_UNKNOWN: Status.VEND_UNKNOWN,
}
_NO_MONEY = {
    Sale.CANCELLED: Status.CANCELLED,
    Sale.PAYMENT_FAILED: Status.FAILED,
    Sale.CHARGE_FAILED: Status.FAILED,
}
_CLOSING = {Sale.DISPENSED, Sale.REFUNDED, Sale.REFUND_OWED, Sale.VEND_UNKNOWN, *_NO_MONEY}

#: The CSV's columns, in order.
COLUMNS = (
    "order_id",
    "drink",
    "amount",
    "paid",
    "payment_type",
    "status",
    "ordered_at",
    "paid_at",
    "closed_at",
    "refund",
    "resolved_by",
)


@dataclass
class Row:
    """One order, from its sales entries. Times are unix s (None: not yet)."""

    order_id: str
    drink: str = ""
    amount: int = 0  # the price when ordered
    paid: int = 0  # what the customer paid (0: nothing)
    payment_type: str = ""
    status: Status = Status.PENDING
    ordered_at: float | None = None
    paid_at: float | None = None
    closed_at: float | None = None
    refund: str = ""  # refunded, owed, or ""
    resolved_by: str = ""  # the operator who resolved it from the queue
    _money: Status | None = field(default=None, repr=False)
    _unpaid: Status | None = field(default=None, repr=False)

    def add(self, e: Mapping[str, str]) -> None:
        kind, at = e.get("kind", ""), float(e.get("at") or 0)
        if e.get("drink_id") and not self.drink:
            self.drink = e["drink_id"]
        if kind == Sale.ORDERED:
            self.amount, self.ordered_at = int(e.get("amount") or 0), at
        if e.get("payment_type"):
            self.payment_type = e["payment_type"]
        if kind in (Sale.PAID, Sale.LATE_PAYMENT):
            self.paid, self.paid_at = int(e.get("amount") or self.amount), at
        if kind in _MONEY:
            self._money = _MONEY[Sale(kind)]
        if kind in _NO_MONEY:
            self._unpaid = _NO_MONEY[Sale(kind)]
        if kind == Sale.REFUNDED:
            self.refund = "refunded"
        elif kind == Sale.REFUND_OWED:
            self.refund = "owed"
        if kind in _CLOSING:
            self.closed_at = at
        if e.get("resolved_by"):
            self.resolved_by = e["resolved_by"]
        self.status = self._money or self._unpaid or Status.PENDING

    @property
    def money(self) -> int:
        """The Rupiah this order moved: what was paid, or the price where the money's end
        is recorded without its payment (the reconciliation then shows it)."""
        return self.paid or (self.amount if self._money else 0)

    def values(self) -> dict:
        out = asdict(self)
        out.pop("_money")
        out.pop("_unpaid")
        out["status"] = str(self.status)
        return out


def rows(entries: Iterable[Mapping[str, str]]) -> list[Row]:
    """One row per order, in the order of each order's first entry."""
    found: dict[str, Row] = {}
    for e in entries:
        order_id = e.get("order_id")
        if not order_id:
            continue
        row = found.get(order_id)
        if row is None:
            row = found[order_id] = Row(order_id)
        row.add(e)
    return list(found.values())


@dataclass(frozen=True)
class Report:
    start: float  # unix s, included
    end: float  # unix s, excluded
    timezone: str
    rows: list[Row]
    orders: int  # orders placed
    sales: int  # orders paid
    takings: int  # Rupiah paid
    by_drink: dict[str, dict[str, int]]  # drink -> {count, takings} of paid orders
    by_hour: list[dict]  # 24 x {hour, count, takings}
    by_day: list[dict]  # each day of the range: {date, count, takings}
    reconciliation: dict  # Rupiah: paid, dispensed, refunded, owed, unknown, in_progress, balanced

    def values(self) -> dict:
        out = asdict(self)
        out["rows"] = [r.values() for r in self.rows]
        return out


def report(entries: Iterable[Mapping[str, str]], start: float, end: float, tz: tzinfo) -> Report:
    """The orders placed in [start, end) and their totals, by drink, hour and day in `tz`."""
    chosen = [r for r in rows(entries) if r.ordered_at is not None and start <= r.ordered_at < end]
    paid = [r for r in chosen if r.paid]
    by_drink: dict[str, dict[str, Any]] = {}
    hours: list[dict[str, Any]] = [{"hour": h, "count": 0, "takings": 0} for h in range(24)]
    first = datetime.fromtimestamp(start, tz).date()
    last = datetime.fromtimestamp(end - 1e-3, tz).date()
    days: dict[date, dict[str, Any]] = {
        first + timedelta(days=n): {
            "date": (first + timedelta(days=n)).isoformat(),
            "count": 0,
            "takings": 0,
        }
        for n in range((last - first).days + 1)
    }
    for r in paid:
        local = datetime.fromtimestamp(r.ordered_at or 0, tz)
        for bucket in (
            by_drink.setdefault(r.drink, {"count": 0, "takings": 0}),
            hours[local.hour],
            days.get(local.date(), {"count": 0, "takings": 0}),
        ):
            bucket["count"] += 1
            bucket["takings"] += r.paid

    def total(status: Status) -> int:
        return sum(r.money for r in chosen if r.status is status)

    money = {
        "paid": sum(r.paid for r in chosen),
        "dispensed": total(Status.DISPENSED),
        "refunded": total(Status.REFUNDED),
        "owed": total(Status.REFUND_OWED),
        "unknown": total(Status.VEND_UNKNOWN),
        "in_progress": total(Status.IN_PROGRESS),
    }
    accounted = sum(v for k, v in money.items() if k != "paid")
    return Report(
        start=start,
        end=end,
        timezone=str(tz),
        rows=chosen,
        orders=len(chosen),
        sales=len(paid),
        takings=money["paid"],
        by_drink=dict(sorted(by_drink.items())),
        by_hour=hours,
        by_day=list(days.values()),
        reconciliation={**money, "balanced": money["paid"] == accounted},
    )


def parse_day(field_name: str, text: str) -> date:
    try:
        return date.fromisoformat(text.strip())
    except (ValueError, AttributeError):
        raise InvalidInput(field_name, f"{text!r} is not a date (YYYY-MM-DD)") from None


def day_range(first: str, last: str, tz: tzinfo) -> tuple[float, float]:
    """[start, end) in unix s of the days `first`..`last` (YYYY-MM-DD, both included) in `tz`."""
    a, b = parse_day("from", first), parse_day("to", last)
    if b < a:
        raise InvalidInput("to", "the range ends before it starts")
    if (b - a).days >= MAX_DAYS:
        raise InvalidInput("to", f"a report covers at most {MAX_DAYS} days")
    start = datetime.combine(a, datetime.min.time(), tz)
    end = datetime.combine(b + timedelta(days=1), datetime.min.time(), tz)
    return start.timestamp(), end.timestamp()


def local_time(at: float | None, tz: tzinfo) -> str:
    """A unix time as `YYYY-MM-DD HH:MM:SS` in `tz` ("" for none)."""
    if at is None:
        return ""
    return datetime.fromtimestamp(at, tz).strftime("%Y-%m-%d %H:%M:%S")


def csv_text(found: Iterable[Row], tz: tzinfo) -> str:
    """A header line naming COLUMNS, then one line per order; times ISO 8601 in `tz`."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for r in found:
        v = r.values()
        for name in ("ordered_at", "paid_at", "closed_at"):
            at = v[name]
            v[name] = (
                "" if at is None else datetime.fromtimestamp(at, tz).isoformat(timespec="seconds")
            )
        writer.writerow([v[c] for c in COLUMNS])
    return out.getvalue()
