"""sandbox.validation over real HTTP: every malformed request is refused with 400 and the
reasons in validation_messages, and changes nothing.
"""

from __future__ import annotations

import re

import pytest

from tests import sandbox_helpers
from tests.sandbox_helpers import details, good_charge

clock, receiver, sandbox, api, anon, paid = sandbox_helpers.FIXTURES


# --------------------------------------------------------------------------------------------
# Charges


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            good_charge(transaction_details=details(gross_amount=8000)),
            "transaction_details.gross_amount is not equal to the sum of item_details",
        ),
        (good_charge(transaction_details=details(gross_amount=0), item_details=None), "gross"),
        (good_charge(transaction_details=details(gross_amount=-7000), item_details=None), "gross"),
        (good_charge(transaction_details=details(gross_amount=7000.5)), "whole"),
        (good_charge(transaction_details=details(gross_amount="7000")), "number"),
        (good_charge(transaction_details=details(gross_amount=True)), "number"),
        (good_charge(transaction_details=details(order_id="a b")), "order_id"),
        (good_charge(transaction_details=details(order_id="a#b")), "order_id"),
        (good_charge(transaction_details=details(order_id="x" * 51)), "order_id"),
        (good_charge(transaction_details=details(order_id=123)), "order_id"),
        (good_charge(transaction_details={"gross_amount": 7000}), "order_id is required"),
        (good_charge(transaction_details={"order_id": "a"}), "gross_amount is required"),
        (good_charge(payment_type="credit_card"), "payment_type"),
        (good_charge(payment_type=None), "payment_type is required"),
        (good_charge(transaction_details=None), "transaction_details"),
        (good_charge(transaction_details=[1]), "transaction_details"),
        (good_charge(item_details=[{"price": 7000, "quantity": "1", "name": "C"}]), "quantity"),
        (good_charge(item_details=[{"price": 7000, "quantity": 1}]), "name"),
        (good_charge(item_details=[7000]), "item_details[0]"),
        (good_charge(item_details={"price": 7000}), "item_details"),
        (good_charge(custom_expiry={"expiry_duration": 5, "unit": "week"}), "unit"),
        (good_charge(custom_expiry={"expiry_duration": 0, "unit": "minute"}), "duration"),
        (good_charge(custom_expiry={"expiry_duration": 5, "unit": ["minute"]}), "unit"),
        (good_charge(custom_expiry="15m"), "custom_expiry"),
        (good_charge(qris={"acquirer": "bank"}), "acquirer"),
        (good_charge(metadata=["vm-1"]), "metadata"),
        (good_charge(customer_details="bob"), "customer_details"),
    ],
    ids=lambda v: None if isinstance(v, dict) else re.sub(r"\W+", "-", str(v))[:40],
)
def test_invalid_charge_gets_400_with_validation_messages_and_creates_nothing(
    api, sandbox, body, message
):
    body = {k: v for k, v in body.items() if v is not None}
    r = api.post("/v2/charge", json=body)
    assert r.status_code == 400
    answer = r.json()
    assert answer["status_code"] == "400"
    assert any(message in m for m in answer["validation_messages"]), answer
    assert sandbox.transactions() == []


def test_invalid_charge_lists_every_problem_at_once(api):
    r = api.post("/v2/charge", json={"transaction_details": {"gross_amount": -1}})
    assert len(r.json()["validation_messages"]) == 3


def test_non_json_charge_is_400(api, sandbox):
    for data in (b"not json", b"[1, 2]", b"", b'"text"', b"\xff\xfe", b"[" * 5000 + b"]" * 5000):
        r = api.post("/v2/charge", data=data, headers={"Content-Type": "application/json"})
        assert (r.status_code, r.json()["status_code"]) == (400, "400"), data[:10]
        assert r.json()["validation_messages"]
    assert sandbox.transactions() == []


def test_x_override_notification_must_be_http_urls(api, sandbox):
    r = api.charge("vm-1-ovbad", headers={"X-Override-Notification": "ftp://x"})
    assert r.status_code == 400
    assert sandbox.transactions() == []


# --------------------------------------------------------------------------------------------
# Refunds


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[1]", b'{"amount": "7000"}', b'{"refund_key": 5}', b'{"reason": 1}'],
)
def test_refund_with_a_malformed_body_is_400(api, paid, body):
    r = api.post(f"/v2/{paid}/refund", data=body, headers={"Content-Type": "application/json"})
    assert (r.status_code, r.json()["status_code"]) == (400, "400")
    assert api.status(paid).json()["transaction_status"] == "settlement"
