"""Sales reports from the sales stream (cores/sales.py): pure, entries in, rows and totals out."""

from __future__ import annotations

import csv
import io
from zoneinfo import ZoneInfo

import pytest

from constants.states import Sale
from cores import sales
from cores.console_errors import InvalidInput

JAKARTA = ZoneInfo("Asia/Jakarta")
#: 2027-01-15 00:00 in Jakarta (UTC+7).
DAY = 1_799_946_000.0


def story(order_id: str, at: float, *kinds: Sale, drink: str = "cola", amount: int = 7000):
    """The entries of one order, a second apart."""
    out = []
    for n, kind in enumerate(kinds):
        e = {"kind": str(kind), "order_id": order_id, "at": str(at + n), "amount": str(amount)}
        if kind in (Sale.ORDERED, Sale.PAID, Sale.DISPENSED):
            e["drink_id"] = drink
        if kind is Sale.CHARGED:
            e["payment_type"] = "qris"
        out.append(e)
    return out


SOLD = (Sale.ORDERED, Sale.CHARGED, Sale.PAID, Sale.DISPENSED)


def test_day_range_is_midnight_to_midnight_in_the_machines_time_zone():
    assert sales.day_range("2027-01-15", "2027-01-15", JAKARTA) == (DAY, DAY + 86400)
    with pytest.raises(InvalidInput):
        sales.day_range("2027-01-16", "2027-01-15", JAKARTA)
    with pytest.raises(InvalidInput) as caught:
        sales.day_range("15/01/2027", "2027-01-15", JAKARTA)
    assert caught.value.field == "from"


def test_each_order_becomes_one_row_with_where_its_money_went():
    entries = [
        *story("a", DAY + 10, *SOLD),
        *story("b", DAY + 20, Sale.ORDERED, Sale.CHARGED, Sale.CANCELLED),
        *story("c", DAY + 30, Sale.ORDERED, Sale.CHARGED, Sale.PAID, Sale.DISPENSE_FAILED),
        *story("c", DAY + 40, Sale.REFUNDED),
        *story("d", DAY + 50, Sale.ORDERED, Sale.CHARGE_FAILED),
        *story("e", DAY + 60, Sale.ORDERED, Sale.CHARGED),
    ]
    rows = {r.order_id: r for r in sales.rows(entries)}
    assert {k: str(r.status) for k, r in rows.items()} == {
        "a": "dispensed",
        "b": "cancelled",
        "c": "refunded",
        "d": "failed",
        "e": "pending",
    }
    a = rows["a"]
    assert (a.drink, a.amount, a.paid, a.payment_type) == ("cola", 7000, 7000, "qris")
    assert (a.ordered_at, a.paid_at, a.closed_at) == (DAY + 10, DAY + 12, DAY + 13)
    assert rows["c"].refund == "refunded" and rows["b"].paid == 0


def test_a_resolution_written_later_closes_the_order_and_names_the_operator():
    entries = story("a", DAY, Sale.ORDERED, Sale.CHARGED, Sale.PAID, Sale.VEND_UNKNOWN)
    entries.append({**story("a", DAY + 99, Sale.DISPENSED)[0], "resolved_by": "cli:ana"})
    [row] = sales.rows(entries)
    assert row.status is sales.Status.DISPENSED and row.resolved_by == "cli:ana"


def test_report_counts_takings_by_drink_hour_and_day_and_reconciles():
    entries = [
        *story("a", DAY + 3600 * 9, *SOLD),
        *story("b", DAY + 3600 * 9 + 60, *SOLD, drink="tea", amount=5000),
        *story("c", DAY + 86400 + 3600 * 20, Sale.ORDERED, Sale.PAID, Sale.REFUND_OWED),
        *story("d", DAY + 86400 + 3600 * 21, Sale.ORDERED, Sale.PAID, Sale.VEND_UNKNOWN),
        *story("e", DAY + 86400 + 3600 * 22, Sale.ORDERED, Sale.PAID),
        *story("f", DAY + 86400 + 3600 * 23, Sale.ORDERED, Sale.CANCELLED),
        *story("before", DAY - 10, *SOLD),
        *story("after", DAY + 2 * 86400 + 5, *SOLD),
    ]
    report = sales.report(entries, DAY, DAY + 2 * 86400, JAKARTA)
    assert report.orders == 6 and report.sales == 5
    assert report.takings == 7000 + 5000 + 3 * 7000
    assert report.by_drink == {
        "cola": {"count": 4, "takings": 28000},
        "tea": {"count": 1, "takings": 5000},
    }
    assert report.by_hour[9] == {"hour": 9, "count": 2, "takings": 12000}
    assert report.by_hour[20]["count"] == 1 and report.by_hour[0]["count"] == 0
    assert report.by_day == [
        {"date": "2027-01-15", "count": 2, "takings": 12000},
        {"date": "2027-01-16", "count": 3, "takings": 21000},
    ]
    assert report.reconciliation == {
        "paid": 33000,
        "dispensed": 12000,
        "refunded": 0,
        "owed": 7000,
        "unknown": 7000,
        "in_progress": 7000,
        "balanced": True,
    }


def test_an_order_that_crosses_midnight_counts_on_the_day_it_was_ordered_only():
    """Ordered at 23:59:59, paid after midnight: the next day's report, which reads only from
    its own midnight (it never sees the ORDERED entry), does not count the payment again."""
    entries = story("late", DAY + 86400 - 1, *SOLD)  # ordered 23:59:59, paid 00:00:01
    first = sales.report(entries, DAY, DAY + 86400, JAKARTA)
    assert (first.orders, first.sales, first.takings) == (1, 1, 7000)
    next_day = [e for e in entries if float(e["at"]) >= DAY + 86400]
    second = sales.report(next_day, DAY + 86400, DAY + 2 * 86400, JAKARTA)
    assert (second.orders, second.sales, second.takings) == (0, 0, 0)


def test_a_vend_recorded_without_its_payment_does_not_balance():
    entries = story("a", DAY + 10, Sale.ORDERED, Sale.DISPENSED)
    report = sales.report(entries, DAY, DAY + 86400, JAKARTA)
    assert report.reconciliation["balanced"] is False


def test_csv_has_a_header_naming_the_columns_and_one_line_per_order():
    entries = [*story("a", DAY + 10, *SOLD), *story("b", DAY + 20, Sale.ORDERED, Sale.CANCELLED)]
    text = sales.csv_text(sales.rows(entries), JAKARTA)
    lines = list(csv.DictReader(io.StringIO(text)))
    assert text.splitlines()[0].split(",")[0] == "order_id"
    assert [line["order_id"] for line in lines] == ["a", "b"]
    assert lines[0]["status"] == "dispensed" and lines[0]["amount"] == "7000"
    assert lines[0]["ordered_at"] == "2027-01-15T00:00:10+07:00"
    assert lines[1]["paid_at"] == ""
