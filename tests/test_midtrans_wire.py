"""cores.midtrans_wire: the Midtrans facts the client and the local sandbox share."""

from __future__ import annotations

import hashlib
from decimal import Decimal

from cores import midtrans, midtrans_wire
from cores.midtrans_wire import (
    FINAL_UNPAID_STATUSES,
    NOTIFICATION_CODES,
    ORDER_ID,
    STATUS_CODES,
    STATUS_READ_CODES,
    amount_text,
    jakarta_epoch,
    jakarta_time,
    signature,
    verify_signature,
)


def test_a_jakarta_time_is_written_without_a_zone_and_read_back_to_the_second():
    # 2026-11-26 03:15:00 UTC is 10:15:00 in Jakarta (UTC+7).
    assert jakarta_time(1795662900) == "2026-11-26 10:15:00"
    assert jakarta_epoch("2026-11-26 10:15:00") == 1795662900
    assert jakarta_epoch(" 2026-11-26 03:15:00+00:00 ") == 1795662900


def test_an_unreadable_time_reads_as_none():
    assert jakarta_epoch("tomorrow") is None
    assert jakarta_epoch("") is None


def test_amounts_are_written_with_two_decimals():
    assert amount_text(7000) == "7000.00"
    assert amount_text(Decimal("7000")) == "7000.00"


def test_the_signature_is_sha512_of_the_plain_concatenation_and_verifies():
    expected = hashlib.sha512(b"vm-1-1" + b"200" + b"7000.00" + b"SB-Mid-server-k").hexdigest()
    assert signature("vm-1-1", "200", "7000.00", "SB-Mid-server-k") == expected
    body = {"order_id": "vm-1-1", "status_code": "200", "gross_amount": "7000.00"}
    assert verify_signature({**body, "signature_key": expected.upper()}, "SB-Mid-server-k")
    assert not verify_signature({**body, "signature_key": expected}, "SB-Mid-server-other")
    assert not verify_signature({**body, "gross_amount": 7000, "signature_key": expected}, "k")


def test_notifications_say_202_for_cancel_and_expire_where_status_reads_do_not():
    changed = {s for s in STATUS_CODES if STATUS_CODES[s] != NOTIFICATION_CODES[s]}
    assert changed == {"cancel", "expire"}
    assert set(NOTIFICATION_CODES.values()) < STATUS_READ_CODES
    assert {"200", "201", "202", "407"} == STATUS_READ_CODES
    assert FINAL_UNPAID_STATUSES.issubset(STATUS_CODES)


def test_order_ids_are_at_most_50_letters_digits_and_four_marks():
    assert ORDER_ID.fullmatch("aZ09-_~." * 6 + "ab")
    assert not ORDER_ID.fullmatch("x" * 51)
    assert not ORDER_ID.fullmatch("a b")


def test_the_client_module_re_exports_the_shared_facts_rather_than_copying_them():
    assert midtrans.signature is midtrans_wire.signature
    assert midtrans.verify_signature is midtrans_wire.verify_signature
    assert midtrans.JAKARTA is midtrans_wire.JAKARTA
    assert midtrans.PAID_STATUSES is midtrans_wire.PAID_STATUSES
