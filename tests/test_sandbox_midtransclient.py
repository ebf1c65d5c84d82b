"""The official `midtransclient` works against the local sandbox unchanged but for the base URL
(shared/midtrans.md, "The official Python client"): proof that the sandbox speaks Midtrans.
Every method of its `transactions` object is driven here."""

from __future__ import annotations

import hashlib

import midtransclient
import pytest
from midtransclient.error_midtrans import MidtransAPIError
from midtransclient.transactions import Transactions

from cores import qris
from tests import sandbox_helpers

SERVER_KEY = "SB-Mid-server-test"
CANNOT_MODIFY = "Merchant cannot modify the status of the transaction"


@pytest.fixture
def core(sandbox):
    api = midtransclient.CoreApi(
        is_production=False, server_key=SERVER_KEY, client_key="SB-Mid-client-test"
    )
    api.api_config.CORE_SANDBOX_BASE_URL = sandbox.url
    return api


receiver = sandbox_helpers.receiver


def charge_params(order_id: str, payment_type: str = "qris") -> dict:
    return {
        "payment_type": payment_type,
        "transaction_details": {"order_id": order_id, "gross_amount": 7000},
        "item_details": [{"id": "cola", "price": 7000, "quantity": 1, "name": "Cola"}],
        "customer_details": {"first_name": "Kiosk", "email": "kiosk@example.com"},
    }


def test_official_client_charges_qris_and_reads_the_status(core):
    charged = core.charge(charge_params("mc-qris-1"))
    assert charged["status_code"] == "201"
    assert charged["transaction_status"] == "pending"
    assert qris.is_valid(charged["qr_string"])
    status = core.transactions.status("mc-qris-1")
    assert status["transaction_status"] == "pending"
    assert status["transaction_id"] == charged["transaction_id"]
    expected = hashlib.sha512(
        ("mc-qris-1" + status["status_code"] + status["gross_amount"] + SERVER_KEY).encode()
    ).hexdigest()
    assert status["signature_key"] == expected


def test_official_client_charges_gopay(core):
    charged = core.charge(charge_params("mc-gopay-1", "gopay"))
    assert charged["status_code"] == "201"
    assert charged["payment_type"] == "gopay"
    assert {a["name"] for a in charged["actions"]} >= {"generate-qr-code", "cancel"}


def test_official_client_cancels_a_pending_charge(core):
    core.charge(charge_params("mc-cancel-1"))
    cancelled = core.transactions.cancel("mc-cancel-1")
    assert (cancelled["status_code"], cancelled["transaction_status"]) == ("200", "cancel")


def test_official_client_expires_a_pending_charge(core):
    charged = core.charge(charge_params("mc-expire-1", "gopay"))
    expired = core.transactions.expire(charged["transaction_id"])
    assert (expired["status_code"], expired["transaction_status"]) == ("407", "expire")
    assert core.transactions.status("mc-expire-1")["transaction_status"] == "expire"


def test_official_client_refunds_a_paid_charge(core, sandbox):
    core.charge(charge_params("mc-refund-1"))
    sandbox.pay("mc-refund-1")
    assert core.transactions.status("mc-refund-1")["transaction_status"] == "settlement"
    refunded = core.transactions.refund(
        "mc-refund-1", {"refund_key": "mc-refund-1-r1", "amount": 7000, "reason": "test"}
    )
    assert (refunded["status_code"], refunded["transaction_status"]) == ("200", "refund")
    assert refunded["refund_amount"] == "7000.00"


def test_official_client_drives_every_transactions_method(core, sandbox, receiver):
    called: set[str] = set()

    def call(name: str, *args: object) -> dict:
        called.add(name)
        return getattr(core.transactions, name)(*args)

    core.api_config.custom_headers = {"X-Override-Notification": receiver.url}
    charged = core.charge(charge_params("mc-all-1"))
    tid = charged["transaction_id"]

    # notification: the client reads the status of what the sandbox posted
    [posted] = receiver.wait_count(1)
    checked = call("notification", posted)
    assert (checked["transaction_id"], checked["transaction_status"]) == (tid, "pending")

    status = call("status", "mc-all-1")
    assert (status["status_code"], status["transaction_status"]) == ("201", "pending")

    # approve / deny: only a card transaction in review may be judged; none is here
    for name in ("approve", "deny"):
        with pytest.raises(MidtransAPIError) as refused:
            call(name, tid)
        assert refused.value.http_status_code == 412
        assert refused.value.api_response_dict["status_message"] == CANNOT_MODIFY

    cancelled = call("cancel", "mc-all-1")
    assert (cancelled["status_code"], cancelled["transaction_status"]) == ("200", "cancel")
    again = core.charge(charge_params("mc-all-1"))  # an order_id may be charged after cancel
    b2b = call("statusb2b", "mc-all-1")
    assert b2b["status_code"] == "200"
    assert [(t["transaction_id"], t["transaction_status"]) for t in b2b["transactions"]] == [
        (again["transaction_id"], "pending"),
        (tid, "cancel"),
    ]
    expired = call("expire", again["transaction_id"])
    assert (expired["status_code"], expired["transaction_status"]) == ("407", "expire")

    core.charge(charge_params("mc-all-2"))
    sandbox.pay("mc-all-2")
    refund = {"refund_key": "mc-all-2-r1", "amount": 3000, "reason": "dispense failed"}
    partial = call("refund", "mc-all-2", refund)
    assert (partial["transaction_status"], partial["refund_amount"]) == (
        "partial_refund",
        "3000.00",
    )
    direct = {"refund_key": "mc-all-2-r2", "amount": 4000, "reason": "dispense failed"}
    rest = call("refundDirect", "mc-all-2", direct)
    assert (rest["transaction_status"], rest["refund_amount"]) == ("refund", "4000.00")
    assert call("status", "mc-all-2")["refund_amount"] == "7000.00"

    methods = {name for name in vars(Transactions) if not name.startswith("_")}
    assert called == methods


def test_official_client_raises_on_sandbox_errors(core):
    with pytest.raises(MidtransAPIError) as unknown:
        core.transactions.status("mc-unknown")
    assert unknown.value.http_status_code == 404
    with pytest.raises(MidtransAPIError) as unknown_b2b:
        core.transactions.statusb2b("mc-unknown")
    assert unknown_b2b.value.http_status_code == 404
    core.charge(charge_params("mc-dup-1"))
    with pytest.raises(MidtransAPIError) as duplicate:
        core.charge(charge_params("mc-dup-1"))
    assert duplicate.value.api_response_dict["status_code"] == "406"


def test_official_client_with_a_non_sandbox_key_is_refused(sandbox):
    api = midtransclient.CoreApi(is_production=False, server_key="Mid-server-live")
    api.api_config.CORE_SANDBOX_BASE_URL = sandbox.url
    with pytest.raises(MidtransAPIError) as refused:
        api.charge(charge_params("mc-live-1"))
    assert refused.value.http_status_code == 401
