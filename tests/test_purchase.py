"""A purchase through the real workers, in-process: real Redis, real HTTP to the sandbox.

Each test drives the kiosk commands through the Broker (as the websocket server does) and
the payment through the sandbox's simulator, then checks the states the machine went
through, the sales record, the stock, the vend journal and the gateway's ledger.
"""

from __future__ import annotations

import json
import threading
import time

import pytest

from constants.states import FailReason, RefundOutcome, Sale, State
from cores.broker import Broker
from cores.dispenser import SimulatedDispenser
from cores.machine import Transition
from cores.midtrans import MidtransClient
from sandbox import Sandbox
from services.dispense_service import DispenseWorker
from services.order_created_service import OrderCreatedWorker
from services.order_service import OrderWorker
from services.screen_service import ScreenWorker
from services.worker import Worker
from tests.machine_helpers import (
    compress,
    run_until,
    sale_kinds,
    start_worker,
    states_seen,
    stop_worker,
    wait_state,
)


class Machine:
    """The four workers in threads around one Broker, as `main.py up` runs them."""

    def __init__(self, broker: Broker, sandbox: Sandbox, settings, failure_rate: float = 0.0):
        self.settings = settings.replace(
            midtrans_base_url_override=sandbox.url, dispense_failure_rate=failure_rate
        )
        self.broker = broker
        self.sandbox = sandbox
        self.client = MidtransClient.from_settings(self.settings)
        self.dispenser = SimulatedDispenser(
            self.settings.var_dir, self.settings.dispense_s, failure_rate
        )
        self.workers = [
            OrderWorker(self.broker, self.client, self.settings),
            OrderCreatedWorker(self.broker, self.client, self.settings),
            DispenseWorker(self.broker, self.client, self.dispenser, sleep=lambda s: None),
            ScreenWorker(self.broker, self.settings),
        ]
        self.threads: dict[Worker, threading.Thread] = {}

    def start(self, *only: type) -> Machine:
        for worker in self.workers:
            if (not only or type(worker) in only) and worker not in self.threads:
                self.threads[worker] = start_worker(worker)
        return self

    def stop(self) -> None:
        for worker, thread in self.threads.items():
            stop_worker(worker, thread)
        self.threads.clear()
        self.client.close()

    def order(self, drink: str = "cola") -> str:
        self.broker.show_menu()
        order_id = self.broker.place_order(drink)
        snap = wait_state(self.broker, State.ORDER_CREATED)
        assert snap.order_id == order_id
        return order_id


@pytest.fixture
def machine(broker, sandbox, settings):
    m = Machine(broker, sandbox, settings).start()
    yield m
    m.stop()


def gateway_status(sandbox: Sandbox, order_id: str) -> str:
    [txn] = [t for t in sandbox.transactions() if t["order_id"] == order_id]
    return txn["transaction_status"]


def test_paid_cola_is_dispensed_once_stock_drops_and_sales_record_it(machine):
    stock_before = machine.broker.stock()["cola"]
    order_id = machine.order("cola")
    frame = machine.broker.snapshot().frame["values"]
    assert frame["qr_string"].startswith("000201")
    assert frame["amount"] == 7000 and frame["drink"]["id"] == "cola"
    assert frame["expires_at"] > 0 and frame["closing"] is False

    machine.sandbox.pay(order_id)
    wait_state(machine.broker, State.DISPENSED)
    wait_state(machine.broker, State.IDLE)

    assert compress(states_seen(machine.broker)) == [
        "IDLE",
        "SHOW_MENU",
        "MENU_CLICKED",
        "ORDER_CREATED",
        "PAYMENT_SUCCESS",
        "DISPENSING",
        "DISPENSED",
        "IDLE",
    ]
    assert sale_kinds(machine.broker, order_id) == [
        Sale.ORDERED,
        Sale.CHARGED,
        Sale.PAID,
        Sale.DISPENSED,
    ]
    assert machine.broker.stock()["cola"] == stock_before - 1
    vends = [e for e in machine.dispenser.entries() if e["order_id"] == order_id]
    assert [v["result"] for v in vends] == ["vended"]


def test_cancel_on_the_qr_screen_cancels_at_midtrans_and_fails_with_cancelled(machine):
    order_id = machine.order()
    machine.broker.request_cancel()
    snap = wait_state(machine.broker, State.PAYMENT_FAILED)
    assert snap.frame["values"]["reason"] == FailReason.CANCELLED
    assert gateway_status(machine.sandbox, order_id) == "cancel"
    assert Sale.CANCELLED in sale_kinds(machine.broker, order_id)
    assert not machine.dispenser.entries()


def test_deadline_without_payment_cancels_at_midtrans_then_fails_with_timeout(
    broker, sandbox, settings
):
    m = Machine(broker, sandbox, settings.replace(payment_deadline_s=2)).start()
    try:
        order_id = m.order()
        snap = wait_state(m.broker, State.PAYMENT_FAILED, timeout_s=10)
        assert snap.frame["values"]["reason"] == FailReason.TIMEOUT
        assert gateway_status(sandbox, order_id) == "cancel"
    finally:
        m.stop()


def test_payment_settling_while_the_cancel_is_under_way_is_honoured_and_dispensed(machine):
    # Paid, but status reads still say pending for a while (a real sandbox fault): the cancel
    # is refused since the money has settled, and the order must not be shown as failed.
    machine.sandbox.set_faults(PENDING_AFTER_PAY_S=2)
    order_id = machine.order()
    machine.sandbox.pay(order_id)
    machine.broker.request_cancel()
    wait_state(machine.broker, State.DISPENSED, timeout_s=15)
    seen = states_seen(machine.broker)
    assert "PAYMENT_FAILED" not in seen
    assert gateway_status(machine.sandbox, order_id) == "settlement"
    assert sale_kinds(machine.broker, order_id)[-2:] == [Sale.PAID, Sale.DISPENSED]


def test_denied_payment_fails_with_denied_and_vends_nothing(machine):
    order_id = machine.order()
    machine.sandbox.deny(order_id)
    snap = wait_state(machine.broker, State.PAYMENT_FAILED)
    assert snap.frame["values"]["reason"] == FailReason.DENIED
    assert not machine.dispenser.entries()


def test_gateway_refusal_of_the_charge_shows_its_reason(machine):
    machine.sandbox.set_faults(CHANNEL_DISABLED=1)
    machine.broker.show_menu()
    order_id = machine.broker.place_order("lemon")
    snap = wait_state(machine.broker, State.PAYMENT_FAILED)
    assert snap.frame["values"]["reason"] == FailReason.GATEWAY_REFUSED
    assert "402" in snap.frame["values"]["message"]
    assert Sale.CHARGE_FAILED in sale_kinds(machine.broker, order_id)


def test_dispense_failure_refunds_with_a_key_derived_from_the_order(broker, sandbox, settings):
    m = Machine(broker, sandbox, settings, failure_rate=1.0).start()
    try:
        order_id = m.order()
        sandbox.pay(order_id)
        snap = wait_state(m.broker, State.DISPENSE_FAILED)
        assert snap.frame["values"]["refund"] == RefundOutcome.REFUNDED
        assert gateway_status(sandbox, order_id) == "refund"
        kinds = sale_kinds(m.broker, order_id)
        assert kinds[-2:] == [Sale.DISPENSE_FAILED, Sale.REFUNDED]
        refund = [s for s in m.broker.sales() if s["kind"] == Sale.REFUNDED][0]
        assert refund["refund_key"] == f"{order_id}-r1"
        assert m.broker.stock()["cola"] == 10
    finally:
        m.stop()


def test_refund_refused_by_midtrans_is_recorded_as_owed_for_the_operator(broker, sandbox, settings):
    sandbox.set_faults(REFUND_DISABLED=1)
    m = Machine(broker, sandbox, settings, failure_rate=1.0).start()
    try:
        order_id = m.order()
        sandbox.pay(order_id)
        snap = wait_state(m.broker, State.DISPENSE_FAILED)
        assert snap.frame["values"]["refund"] == RefundOutcome.OWED
        assert Sale.REFUND_OWED in sale_kinds(m.broker, order_id)
        assert m.broker.operator_queue()[order_id]["kind"] == Sale.REFUND_OWED
    finally:
        m.stop()


def paid_then_dispense_worker_died(m: Machine) -> str:
    """A paid order left in DISPENSING by a DISPENSE worker that died mid-vend."""
    m.start(OrderWorker, OrderCreatedWorker)
    order_id = m.order()
    m.sandbox.pay(order_id)
    wait_state(m.broker, State.PAYMENT_SUCCESS)
    order = m.broker.order(order_id)
    assert m.broker.transition(
        Transition(State.DISPENSING, (State.PAYMENT_SUCCESS,), order_id, order.values())
    )
    return order_id


def test_restart_mid_vend_without_journal_entry_goes_to_operator_not_revended(
    broker, sandbox, settings
):
    m = Machine(broker, sandbox, settings)
    try:
        order_id = paid_then_dispense_worker_died(m)
        m.start(DispenseWorker)
        snap = wait_state(m.broker, State.DISPENSE_FAILED)
        assert snap.frame["values"]["refund"] == RefundOutcome.VEND_UNKNOWN
        assert m.dispenser.entries() == []
        assert gateway_status(sandbox, order_id) == "settlement"  # not refunded on a guess
        assert m.broker.operator_queue()[order_id]["kind"] == Sale.VEND_UNKNOWN
    finally:
        m.stop()


def test_restart_mid_vend_with_journal_entry_finishes_without_vending_again(
    broker, sandbox, settings
):
    m = Machine(broker, sandbox, settings)
    try:
        order_id = paid_then_dispense_worker_died(m)
        m.dispenser._append({"order_id": order_id, "drink": "cola", "result": "vended", "at": 0})
        m.start(DispenseWorker)
        wait_state(m.broker, State.DISPENSED)
        assert len(m.dispenser.entries()) == 1
    finally:
        m.stop()


def test_order_worker_restarted_mid_charge_resends_the_same_key_and_one_charge_exists(
    broker, sandbox, settings
):
    m = Machine(broker, sandbox, settings)
    try:
        m.broker.show_menu()
        order_id = m.broker.place_order("cola")
        order = m.broker.order(order_id)
        # The first worker sent the charge and died before storing the answer.
        m.client.charge(
            order_id,
            7000,
            [{"id": "cola", "price": 7000, "quantity": 1, "name": "Cola"}],
            idempotency_key=order.idempotency_key,
        )
        m.broker.update_order(order_id, charge_sent=1)
        m.start()
        snap = wait_state(m.broker, State.ORDER_CREATED)
        assert snap.frame["values"]["qr_string"]
        assert [t["order_id"] for t in sandbox.transactions()].count(order_id) == 1
    finally:
        m.stop()


def test_cancel_before_any_charge_was_sent_fails_without_calling_midtrans(
    broker, sandbox, settings
):
    m = Machine(broker, sandbox, settings)
    try:
        m.broker.show_menu()
        order_id = m.broker.place_order("cola")
        m.broker.request_cancel()
        m.start()
        snap = wait_state(m.broker, State.PAYMENT_FAILED)
        assert snap.frame["values"]["reason"] == FailReason.CANCELLED
        assert sandbox.transactions() == []
        assert (
            json.loads(m.broker.redis.hget(m.broker.order_key(order_id), "drink"))["id"] == "cola"
        )
    finally:
        m.stop()


def test_menu_returns_to_idle_after_inactivity(broker, sandbox, settings):
    m = Machine(broker, sandbox, settings.replace(menu_idle_s=0.5)).start(ScreenWorker)
    try:
        m.broker.show_menu()
        wait_state(m.broker, State.SHOW_MENU)
        wait_state(m.broker, State.IDLE, timeout_s=5)
    finally:
        m.stop()


@pytest.mark.slow
def test_a_gateway_silent_past_the_charge_expiry_ends_the_order_with_a_recheck(
    broker, sandbox, settings
):
    m = Machine(broker, sandbox, settings)
    m.start(OrderWorker)
    try:
        order_id = m.order()
        m.stop()
        sandbox.set_faults(DROP_RATE=1)  # every gateway call is lost
        expiry = float(m.broker.order(order_id).get("gateway_expiry"))
        late = OrderCreatedWorker(
            m.broker,
            m.client,
            m.settings,
            clock=lambda: time.time() + (expiry - time.time()) + 3600,
        )
        run_until(late, lambda: m.broker.snapshot().state == State.PAYMENT_FAILED, 30)
        snap = m.broker.snapshot()
        assert snap.state == State.PAYMENT_FAILED
        assert snap.frame["values"]["reason"] == FailReason.GATEWAY_UNREACHABLE
        assert m.broker.redis.zscore(m.broker.recheck_key, order_id) is not None
    finally:
        m.stop()
