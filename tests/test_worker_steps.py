"""One step of each worker on fakeredis, with a scripted gateway and dispenser: the state it
reads, the calls it makes, the transition it writes. (The same workers run against the real
sandbox and a real Redis in test_purchase.py and test_machine_up.py.)"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from constants.orders import Command, LateRefund, OperatorKind, OrderField
from constants.states import FailReason, RefundOutcome, Sale, State
from cores.broker import Broker
from cores.machine import Effects, Transition
from cores.midtrans import GatewayRefused, GatewayUnreachable, Transaction
from cores.rules import Vend
from services.dispense_service import DispenseWorker
from services.late_payments import Desk, LatePayments
from services.order_created_service import OrderCreatedWorker
from services.order_service import OrderWorker
from services.screen_service import ScreenWorker
from tests.machine_helpers import T0


def txn(order_id: str, status: str, amount: int = 7000, **extra: str) -> Transaction:
    code = {"pending": "201", "settlement": "200", "cancel": "200", "refund": "200"}[status]
    return Transaction.from_body(
        {
            "order_id": order_id,
            "transaction_id": f"t-{order_id}",
            "status_code": code,
            "transaction_status": status,
            "gross_amount": f"{amount}.00",
            "payment_type": "qris",
            **extra,
        }
    )


@dataclass
class Gateway:
    """A scripted Midtrans: answers from `statuses`, raises what `errors` holds per call."""

    statuses: dict[str, str] = field(default_factory=dict)
    errors: dict[str, Exception] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)
    #: The customer pays just as the cancel arrives: the cancel finds it settled.
    paid_before_cancel: bool = False

    def _call(self, op: str, order_id: str) -> None:
        self.calls.append((op, order_id))
        if op in self.errors:
            raise self.errors[op]

    def charge(self, order_id: str, amount: int, items: list, **_: object) -> Transaction:
        self._call("charge", order_id)
        self.statuses[order_id] = "pending"
        return txn(order_id, "pending", amount, qr_string="00020101021226")

    def status(self, order_id: str) -> Transaction:
        self._call("status", order_id)
        return txn(order_id, self.statuses[order_id])

    def cancel(self, order_id: str) -> Transaction:
        self._call("cancel", order_id)
        if self.paid_before_cancel:
            self.statuses[order_id] = "settlement"
        if self.statuses.get(order_id) == "pending":
            self.statuses[order_id] = "cancel"
        return txn(order_id, self.statuses[order_id])

    def refund(self, order_id: str, **_: object) -> Transaction:
        self._call("refund", order_id)
        self.statuses[order_id] = "refund"
        return txn(order_id, "refund")


@dataclass
class Dispenser:
    result: Vend = Vend.VENDED
    journal: dict[str, Vend] = field(default_factory=dict)

    slots: list[int | None] = field(default_factory=list)

    def vend(self, order_id: str, drink_id: str, slot: int | None = None) -> Vend:
        self.slots.append(slot)
        self.journal[order_id] = self.result
        return self.result

    def outcome(self, order_id: str) -> Vend | None:
        return self.journal.get(order_id)


@pytest.fixture
def broker(fake_redis, menu, settings, clock):
    """The machine on fakeredis, on the test's clock."""
    b = Broker(fake_redis, settings.machine_id, clock=clock)
    b.ensure_ready(menu)
    return b


def ordered(broker: Broker) -> str:
    broker.show_menu()
    return broker.place_order("cola")


def step(worker) -> float | None:
    return worker.step(worker.broker.snapshot(), [])


def charged(broker: Broker, gateway: Gateway, settings, clock) -> str:
    order_id = ordered(broker)
    step(OrderWorker(broker, gateway, settings, clock))
    assert broker.snapshot().state == State.ORDER_CREATED
    return order_id


def paid(broker: Broker, gateway: Gateway, settings, clock) -> str:
    order_id = charged(broker, gateway, settings, clock)
    gateway.statuses[order_id] = "settlement"
    notified = [("commands", {"command": Command.CHECK, "order_id": order_id})]
    OrderCreatedWorker(broker, gateway, settings, clock).step(broker.snapshot(), notified)
    assert broker.snapshot().state == State.PAYMENT_SUCCESS
    return order_id


def kinds(broker: Broker, order_id: str) -> list[str]:
    return [s["kind"] for s in broker.sales() if s["order_id"] == order_id]


# --- ORDER ----------------------------------------------------------------------------------


def test_order_step_charges_with_the_stored_key_and_shows_the_qr(broker, settings, clock):
    gateway = Gateway()
    order_id = charged(broker, gateway, settings, clock)
    snap = broker.snapshot()
    assert gateway.calls == [("charge", order_id)]
    assert snap.frame["values"]["qr_string"] == "00020101021226"
    assert snap.frame["values"]["expires_at"] == int(T0 + settings.payment_deadline_s)
    assert kinds(broker, order_id) == [Sale.ORDERED, Sale.CHARGED]


def test_order_step_fails_a_refused_charge_and_records_it(broker, settings, clock):
    gateway = Gateway(errors={"charge": GatewayRefused("400", "bad", {})})
    order_id = ordered(broker)
    step(OrderWorker(broker, gateway, settings, clock))
    snap = broker.snapshot()
    assert snap.state == State.PAYMENT_FAILED
    assert snap.frame["values"]["reason"] == FailReason.GATEWAY_REFUSED
    assert kinds(broker, order_id) == [Sale.ORDERED, Sale.CHARGE_FAILED, Sale.PAYMENT_FAILED]


def test_order_step_cancels_an_unanswered_charge_before_failing_it(broker, settings, clock):
    gateway = Gateway(statuses={}, errors={"charge": GatewayUnreachable("down")})
    order_id = ordered(broker)
    gateway.statuses[order_id] = "pending"
    step(OrderWorker(broker, gateway, settings, clock))
    assert [op for op, _ in gateway.calls] == ["charge", "cancel", "status"]
    assert broker.snapshot().frame["values"]["reason"] == FailReason.GATEWAY_UNREACHABLE


def test_order_step_sends_no_charge_for_an_order_cancelled_before_it(broker, settings, clock):
    gateway = Gateway()
    ordered(broker)
    broker.request_cancel()
    step(OrderWorker(broker, gateway, settings, clock))
    assert gateway.calls == []
    assert broker.snapshot().frame["values"]["reason"] == FailReason.CANCELLED


# --- ORDER_CREATED ---------------------------------------------------------------------------


def test_payment_step_waits_for_the_next_read_while_pending(broker, settings, clock):
    gateway = Gateway()
    charged(broker, gateway, settings, clock)
    worker = OrderCreatedWorker(broker, gateway, settings, clock)
    wake_at = step(worker)
    assert wake_at is not None and wake_at > clock.now
    assert broker.snapshot().state == State.ORDER_CREATED
    assert ("status", broker.snapshot().order_id) not in gateway.calls


def test_payment_step_honours_a_settlement(broker, settings, clock):
    order_id = paid(broker, Gateway(), settings, clock)
    assert broker.order(order_id).get(OrderField.OUTCOME) == "paid"
    assert kinds(broker, order_id)[-1] == Sale.PAID


def test_payment_step_cancels_at_midtrans_before_showing_a_cancel(broker, settings, clock):
    gateway = Gateway()
    order_id = charged(broker, gateway, settings, clock)
    broker.request_cancel()
    worker = OrderCreatedWorker(broker, gateway, settings, clock)
    worker.step(
        broker.snapshot(), [("commands", {"command": Command.CANCEL, "order_id": order_id})]
    )
    assert [op for op, _ in gateway.calls][-3:] == ["status", "cancel", "status"]
    assert broker.snapshot().frame["values"]["reason"] == FailReason.CANCELLED


def test_payment_step_past_the_deadline_closes_and_honours_a_late_settlement(
    broker, settings, clock
):
    gateway = Gateway()
    order_id = charged(broker, gateway, settings, clock)
    clock.now += settings.payment_deadline_s + 1
    gateway.statuses[order_id] = "pending"
    gateway.paid_before_cancel = True
    step(OrderCreatedWorker(broker, gateway, settings, clock))
    assert [op for op, _ in gateway.calls][-3:] == ["status", "cancel", "status"]
    assert broker.snapshot().state == State.PAYMENT_SUCCESS


# --- DISPENSE --------------------------------------------------------------------------------


def test_dispense_step_vends_once_and_takes_one_from_stock(broker, settings, clock):
    order_id = paid(broker, Gateway(), settings, clock)
    stock = broker.stock()["cola"]
    dispenser = Dispenser()
    worker = DispenseWorker(broker, Gateway(), dispenser, clock, sleep=lambda s: None)
    step(worker)
    assert broker.snapshot().state == State.DISPENSED
    assert broker.stock()["cola"] == stock - 1
    assert dispenser.journal == {order_id: Vend.VENDED}


def test_dispense_step_refunds_a_failed_vend(broker, settings, clock):
    gateway = Gateway()
    order_id = paid(broker, gateway, settings, clock)
    worker = DispenseWorker(broker, gateway, Dispenser(Vend.FAILED), clock, sleep=lambda s: None)
    step(worker)
    assert broker.snapshot().frame["values"]["refund"] == RefundOutcome.REFUNDED
    assert ("refund", order_id) in gateway.calls
    assert kinds(broker, order_id)[-2:] == [Sale.DISPENSE_FAILED, Sale.REFUNDED]


def test_dispense_step_records_a_refused_refund_as_owed_for_the_operator(broker, settings, clock):
    gateway = Gateway()
    order_id = paid(broker, gateway, settings, clock)
    gateway.errors["refund"] = GatewayRefused("412", "no", {})
    worker = DispenseWorker(broker, gateway, Dispenser(Vend.FAILED), clock, sleep=lambda s: None)
    step(worker)
    assert broker.snapshot().frame["values"]["refund"] == RefundOutcome.OWED
    assert broker.operator_queue()[order_id]["kind"] == OperatorKind.REFUND_OWED


def test_dispense_step_after_a_crash_mid_vend_asks_a_person(broker, settings, clock):
    order_id = paid(broker, Gateway(), settings, clock)
    assert broker.transition(Transition(State.DISPENSING, (State.PAYMENT_SUCCESS,), order_id, {}))
    dispenser = Dispenser()
    step(DispenseWorker(broker, Gateway(), dispenser, clock, sleep=lambda s: None))
    assert dispenser.journal == {}  # never re-vended on a guess
    assert broker.operator_queue()[order_id]["kind"] == OperatorKind.VEND_UNKNOWN


# --- SCREEN ----------------------------------------------------------------------------------


def test_screen_step_returns_the_menu_to_idle_only_after_its_timeout(broker, settings, clock):
    worker = ScreenWorker(broker, settings, clock)
    broker.show_menu()
    assert step(worker) == T0 + settings.menu_idle_s
    assert broker.snapshot().state == State.SHOW_MENU
    clock.now += settings.menu_idle_s
    assert step(worker) is None
    assert broker.snapshot().state == State.IDLE


# --- the late-payment desk -------------------------------------------------------------------


def test_desk_step_refunds_a_payment_that_settled_after_its_order_closed(broker, settings, clock):
    gateway = Gateway()
    order_id = ordered(broker)
    assert broker.transition(
        Transition(
            State.PAYMENT_FAILED,
            (State.MENU_CLICKED,),
            order_id,
            {},
            Effects(order_fields={OrderField.OUTCOME: "failed:timeout"}, recheck_at=T0),
        )
    )
    gateway.statuses[order_id] = "settlement"
    desk = Desk(LatePayments(broker, gateway, clock), clock)
    step(desk)
    assert desk.handled[-1] == (order_id, "refunded")
    assert broker.order(order_id).get(OrderField.LATE) == LateRefund.REFUNDED
    assert kinds(broker, order_id)[-2:] == [Sale.LATE_PAYMENT, Sale.REFUNDED]
    assert broker.rechecks_due(T0 + 10**6) == ([], None)


def stopped(seconds: float) -> bool:
    """A pause cut short by a stop, as threading.Event.wait answers once the event is set."""
    return True


def test_a_stop_during_a_refunds_pause_records_nothing_as_owed(broker, settings, clock):
    """The gateway does not answer the refund; a stop cuts the pause before the next attempt
    short: the order stays in DISPENSING (the next start refunds again with the same key),
    and no refund is recorded as owed on a guess."""
    gateway = Gateway()
    order_id = paid(broker, gateway, settings, clock)
    gateway.errors["refund"] = GatewayUnreachable("down")
    step(DispenseWorker(broker, gateway, Dispenser(Vend.FAILED), clock, sleep=stopped))
    assert broker.snapshot().state == State.DISPENSING
    assert [op for op, _ in gateway.calls].count("refund") == 1
    assert Sale.REFUND_OWED not in kinds(broker, order_id)
    assert broker.operator_queue() == {}


def test_a_stop_during_a_late_refunds_pause_keeps_the_order_for_the_next_run(
    broker, settings, clock
):
    gateway = Gateway(errors={"refund": GatewayUnreachable("down")})
    order_id = ordered(broker)
    assert broker.transition(
        Transition(
            State.PAYMENT_FAILED,
            (State.MENU_CLICKED,),
            order_id,
            {},
            Effects(order_fields={OrderField.OUTCOME: "failed:timeout"}, recheck_at=T0),
        )
    )
    gateway.statuses[order_id] = "settlement"
    late = LatePayments(broker, gateway, clock, sleep=stopped)
    assert late.handle(order_id) == "deferred"
    assert broker.order(order_id).get(OrderField.LATE) == LateRefund.PENDING
    assert Sale.REFUND_OWED not in kinds(broker, order_id)
