"""The notification receiver and the late-payment desk, over real HTTP with the sandbox.

A notification is only a hint: it is verified, answered at once, and the status is read from
Midtrans before anything is done. A settlement for an order already closed is refunded, or
recorded as owed when Midtrans refuses.
"""

from __future__ import annotations

import itertools
import json
import time

import pytest
import requests

from constants.states import FailReason, Sale, State
from cores.broker import Broker
from cores.config import LOCAL_SANDBOX_KEY
from cores.machine import Effects, Transition
from cores.midtrans import MidtransClient, signature
from services import payment
from services.notification_service import NotificationServer
from services.order_created_service import OrderCreatedWorker
from tests.machine_helpers import (
    desk_result,
    eventually,
    machine_state,
    run_until,
    sale_kinds,
    wait_entry,
    wait_state,
)


@pytest.fixture
def receiver(notification_server: NotificationServer) -> NotificationServer:
    return notification_server


@pytest.fixture
def charging(sandbox, receiver):
    """A client whose charges ask the sandbox to notify our receiver."""
    client = MidtransClient(sandbox.url, LOCAL_SANDBOX_KEY, notification_url=receiver.url)
    yield client
    client.close()


@pytest.fixture
def quiet(sandbox):
    """A client whose charges bring no notification: the receiver hears only the test."""
    client = MidtransClient(sandbox.url, LOCAL_SANDBOX_KEY)
    yield client
    client.close()


def closed_unconfirmed_order(broker: Broker, client: MidtransClient) -> str:
    """An order charged at Midtrans but closed on our side without a confirmed cancel
    (the gateway stopped answering): the customer can still pay it, late."""
    broker.show_menu()
    order_id = broker.place_order("cola")
    order = broker.order(order_id)
    client.charge(
        order_id,
        7000,
        [{"id": "cola", "price": 7000, "quantity": 1, "name": "Cola"}],
        idempotency_key=order.idempotency_key,
    )
    assert payment.fail(broker, order, FailReason.GATEWAY_UNREACHABLE, State.MENU_CLICKED)
    return order_id


def signed(body: dict) -> dict:
    return {
        **body,
        "signature_key": signature(
            body["order_id"], body["status_code"], body["gross_amount"], LOCAL_SANDBOX_KEY
        ),
    }


#: What the desk says of the charge's own "pending" notification, depending on when it lands.
PASSING = ("woke_worker", "deferred", "nothing_to_do")


def wait_result(receiver: NotificationServer, order_id: str) -> str:
    """The desk's first conclusive result for this order."""
    return desk_result(receiver, order_id, skip=PASSING)


def test_late_payment_on_a_closed_order_is_recorded_and_refunded(
    broker, sandbox, receiver, charging
):
    order_id = closed_unconfirmed_order(broker, charging)
    sandbox.pay(order_id)  # the sandbox notifies the receiver of the settlement
    assert wait_result(receiver, order_id) == "refunded"
    assert sale_kinds(broker, order_id)[-2:] == [Sale.LATE_PAYMENT, Sale.REFUNDED]
    [txn] = [t for t in sandbox.transactions() if t["order_id"] == order_id]
    assert txn["transaction_status"] == "refund"


def test_late_payment_whose_refund_midtrans_refuses_is_recorded_as_owed(
    broker, sandbox, receiver, charging
):
    sandbox.set_faults(REFUND_DISABLED=1)
    order_id = closed_unconfirmed_order(broker, charging)
    sandbox.pay(order_id)
    assert wait_result(receiver, order_id) == "refund_owed"
    assert sale_kinds(broker, order_id)[-2:] == [Sale.LATE_PAYMENT, Sale.REFUND_OWED]
    assert broker.operator_queue()[order_id]["kind"] == Sale.REFUND_OWED


def test_late_payment_is_found_by_the_scheduled_recheck_without_any_notification(
    broker, sandbox, receiver, quiet
):
    order_id = closed_unconfirmed_order(broker, quiet)
    sandbox.pay(order_id)
    broker.schedule_recheck(order_id, time.time())
    assert wait_result(receiver, order_id) == "refunded"
    assert broker.redis.zscore(broker.recheck_key, order_id) is None


def test_forged_notification_is_refused_and_changes_nothing(broker, sandbox, receiver, charging):
    order_id = closed_unconfirmed_order(broker, charging)
    desk_result(receiver, order_id)  # the genuine "pending" notification of the charge
    handled = len(receiver.desk.handled)
    before = machine_state(broker)
    forged = {
        "order_id": order_id,
        "status_code": "200",
        "gross_amount": "7000.00",
        "transaction_status": "settlement",
        "signature_key": "0" * 128,
    }
    answer = requests.post(receiver.url, json=forged, timeout=5)
    assert answer.status_code == 401
    tampered = signed(
        {
            "order_id": order_id,
            "status_code": "200",
            "gross_amount": "7000.00",
            "transaction_status": "settlement",
        }
    )
    tampered["gross_amount"] = "1.00"
    assert requests.post(receiver.url, json=tampered, timeout=5).status_code == 401
    # Nothing can follow a refusal: the receiver writes to Redis before its answer or never.
    assert machine_state(broker) == before
    assert len(receiver.desk.handled) == handled  # never reached the desk


@pytest.mark.parametrize(
    "raw", [b"not json", b"[]", b'{"order_id": 5}', b"{" * 5000, b'"just a string"']
)
def test_malformed_notification_gets_400_and_changes_nothing(broker, receiver, raw):
    before = machine_state(broker)
    answer = requests.post(
        receiver.url, data=raw, timeout=5, headers={"Content-Type": "application/json"}
    )
    assert answer.status_code == 400
    assert machine_state(broker) == before


def test_oversized_notification_is_refused(receiver):
    answer = requests.post(receiver.url, data=b"x" * (65 * 1024), timeout=5)
    assert answer.status_code == 413


def test_replayed_settlement_of_a_dispensed_order_changes_nothing(broker, sandbox, receiver, quiet):
    broker.show_menu()
    order_id = broker.place_order("cola")
    order = broker.order(order_id)
    quiet.charge(
        order_id,
        7000,
        [{"id": "cola", "price": 7000, "quantity": 1, "name": "Cola"}],
        idempotency_key=order.idempotency_key,
    )
    broker.update_order(order_id, outcome="dispensed")
    path = (State.MENU_CLICKED, State.PAYMENT_SUCCESS, State.DISPENSING, State.DISPENSED)
    for frm, to in itertools.pairwise(path):
        assert broker.transition(Transition(to, (frm,), order_id, {}))
    assert broker.transition(
        Transition(State.IDLE, (State.DISPENSED,), order_id, {}, new_order_id=None)
    )
    sandbox.pay(order_id)
    before = machine_state(broker)
    body = signed(
        {
            "order_id": order_id,
            "status_code": "200",
            "gross_amount": "7000.00",
            "transaction_status": "settlement",
        }
    )
    for _ in range(3):  # a replay, and duplicates, are answered 200 at once
        assert requests.post(receiver.url, json=body, timeout=5).status_code == 200
    assert desk_result(receiver, order_id) == "nothing_to_do"
    eventually(
        lambda: broker.redis.zscore(broker.recheck_key, order_id) is None,
        5,
        f"the desk to take {order_id} off the RECHECK set",
    )
    after = machine_state(broker)
    assert after.pop("commands")[0] == before.pop("commands")[0] + 3  # a hint to the desk each
    assert after == before
    assert {r for oid, r in receiver.desk.handled if oid == order_id} == {"nothing_to_do"}


def test_out_of_order_pending_after_settlement_does_not_regress_a_paid_order(broker, receiver):
    broker.show_menu()
    order_id = broker.place_order("cola")
    broker.update_order(order_id, outcome="paid")
    broker.transition(Transition(State.PAYMENT_SUCCESS, (State.MENU_CLICKED,), order_id, {}))
    before = machine_state(broker)
    body = signed(
        {
            "order_id": order_id,
            "status_code": "201",
            "gross_amount": "7000.00",
            "transaction_status": "pending",
        }
    )
    assert requests.post(receiver.url, json=body, timeout=5).status_code == 200
    eventually(lambda: receiver.desk.handled, 5, "the desk to handle the notification")
    assert machine_state(broker)["state"] == before["state"]
    assert machine_state(broker)["sales"] == before["sales"]


def test_notification_for_the_order_on_screen_wakes_the_payment_worker(broker, receiver):
    broker.show_menu()
    order_id = broker.place_order("cola")
    cursor = broker.cursor()
    body = signed(
        {
            "order_id": order_id,
            "status_code": "200",
            "gross_amount": "7000.00",
            "transaction_status": "settlement",
        }
    )
    assert requests.post(receiver.url, json=body, timeout=5).status_code == 200
    hint = {"command": "CHECK", "order_id": order_id}
    wait_entry(broker, cursor, lambda fields: fields == hint, timeout_s=2, what=str(hint))
    assert broker.snapshot().state == State.MENU_CLICKED  # the body itself decided nothing
    assert json.loads(broker.redis.hget(broker.order_key(order_id), "drink"))["id"] == "cola"


def test_a_settlement_of_the_wrong_amount_is_not_vended_but_refunded(
    broker, sandbox, receiver, quiet, settings
):
    client = quiet
    broker.show_menu()
    order_id = broker.place_order("cola")
    order = broker.order(order_id)
    client.charge(
        order_id,
        7000,
        [{"id": "cola", "price": 7000, "quantity": 1, "name": "Cola"}],
        idempotency_key=order.idempotency_key,
    )
    broker.update_order(order_id, amount=6000)  # the price we expect differs from the charge
    broker.transition(
        Transition(
            State.ORDER_CREATED,
            (State.MENU_CLICKED,),
            order_id,
            {},
            Effects(order_fields={"expires_at": time.time() + 30}),
        )
    )
    sandbox.pay(order_id)
    worker = OrderCreatedWorker(broker, client, settings)
    run_until(worker, lambda: broker.snapshot().state == State.PAYMENT_FAILED)
    snap = wait_state(broker, State.PAYMENT_FAILED, timeout_s=1)
    assert snap.frame["values"]["reason"] == FailReason.AMOUNT_MISMATCH
    assert wait_result(receiver, order_id) == "refunded"
    assert Sale.PAID not in sale_kinds(broker, order_id)
    [txn] = [t for t in sandbox.transactions() if t["order_id"] == order_id]
    assert txn["transaction_status"] == "refund" and txn["refund_amount"] == "7000.00"
