"""DISPENSE worker: on PAYMENT_SUCCESS vends exactly once; on failure refunds (money rules 2, 6).

PAYMENT_SUCCESS -> DISPENSING is applied before the vend starts, so a worker that finds the
machine DISPENSING on start knows a vend may have begun: it asks the driver's journal and,
where the journal cannot tell, hands the order to the operator (vend outcome unknown),
neither re-vending nor refunding on a guess.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from constants.states import RefundOutcome, Sale, State
from constants.tunables import REFUND_ATTEMPTS, REFUND_RETRY_S
from cores import rules
from cores.broker import Broker, Order, Snapshot
from cores.config import Settings
from cores.dispenser import Dispenser
from cores.dispenser import from_settings as dispenser_from_settings
from cores.logs import kv
from cores.midtrans import GatewayRefused, MidtransClient, MidtransError
from cores.rules import Vend
from services.worker import Worker

log = logging.getLogger(__name__)



class DispenseWorker(Worker):
    service = "DISPENSE"

    def __init__(self, broker: Broker, client: MidtransClient, dispenser: Dispenser,
                 clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] | None = None) -> None:
        super().__init__(broker, clock)
        self.client = client
        self.dispenser = dispenser
        self.sleep = sleep or self.stopping.wait

    def step(self, snap: Snapshot, entries: list) -> float | None:
        if snap.state not in (State.PAYMENT_SUCCESS, State.DISPENSING) or not snap.order_id:
            return None
        order = self.broker.order(snap.order_id)
        if order is None:
            log.error("order missing", extra=kv(order_id=snap.order_id))
            self.broker.transition(
                State.DISPENSE_FAILED, from_states=(snap.state,), order_id=snap.order_id,
                values={"order_id": snap.order_id, "drink": None, "amount": None,
                        "refund": str(RefundOutcome.VEND_UNKNOWN)},
                operator={"kind": str(Sale.VEND_UNKNOWN), "detail": "order record missing"})
            return None
        journal = self.dispenser.outcome(order.order_id)
        if journal is not None:
            # The driver already vended (or failed) this order: a state rolled back, or a
            # second worker; never vend it again (money rule 6).
            if snap.state == State.PAYMENT_SUCCESS:
                self.broker.transition(State.DISPENSING, from_states=(State.PAYMENT_SUCCESS,),
                                       order_id=order.order_id, values=order.values())
            log.warning("journal already has this order", extra=kv(
                order_id=order.order_id, vend=journal.value))
            self.finish(order, journal)
            return None
        if snap.state == State.PAYMENT_SUCCESS:
            if not self.broker.transition(
                    State.DISPENSING, from_states=(State.PAYMENT_SUCCESS,),
                    order_id=order.order_id, values=order.values(),
                    order_fields={"vend_started_at": self.clock()}):
                return None
            try:
                vend = self.dispenser.vend(order.order_id, order.drink.id)
            except Exception:
                log.exception("vend raised", extra=kv(order_id=order.order_id))
                vend = self.dispenser.outcome(order.order_id) or Vend.UNKNOWN
        else:
            # Restarted mid-vend and the journal has no result: only a person can tell.
            vend = Vend.UNKNOWN
            log.warning("resuming vend", extra=kv(order_id=order.order_id, vend=vend.value))
        self.finish(order, vend)
        return None

    def finish(self, order: Order, vend: Vend) -> None:
        to, refund, outcome = rules.after_vend(vend)
        if to == State.DISPENSED:
            self.broker.transition(
                State.DISPENSED, from_states=(State.DISPENSING,), order_id=order.order_id,
                values=order.values(), stock_drink=order.drink.id,
                sale={"kind": Sale.DISPENSED, "amount": order.amount, "drink_id": order.drink.id},
                order_fields={"outcome": "dispensed"})
            return
        operator = None
        if refund:
            if not order.flag("dispense_failed_recorded"):
                self.broker.record_sale(order.order_id, Sale.DISPENSE_FAILED, amount=order.amount)
                self.broker.update_order(order.order_id, dispense_failed_recorded=1)
            outcome = self.refund(order)
        if outcome is RefundOutcome.REFUNDED:
            sale = {"kind": Sale.REFUNDED, "amount": order.amount,
                    "refund_key": rules.refund_key(order.order_id)}
        elif outcome is RefundOutcome.OWED:
            sale = {"kind": Sale.REFUND_OWED, "amount": order.amount}
            operator = {"kind": str(Sale.REFUND_OWED), "amount": order.amount,
                        "drink": order.drink.id, "detail": "refund refused or unreachable"}
        else:
            sale = {"kind": Sale.VEND_UNKNOWN, "amount": order.amount}
            operator = {"kind": str(Sale.VEND_UNKNOWN), "amount": order.amount,
                        "drink": order.drink.id, "detail": "check the machine, then refund"}
        self.broker.transition(
            State.DISPENSE_FAILED, from_states=(State.DISPENSING,), order_id=order.order_id,
            values={**order.values(), "refund": str(outcome)}, sale=sale, operator=operator,
            order_fields={"outcome": f"dispense_failed:{outcome}"})

    def refund(self, order: Order) -> RefundOutcome:
        key = rules.refund_key(order.order_id)
        for attempt in range(REFUND_ATTEMPTS):
            try:
                self.client.refund(order.order_id, refund_key=key, amount=order.amount,
                                   reason="dispense failed")
                log.info("refunded", extra=kv(order_id=order.order_id, refund_key=key))
                return RefundOutcome.REFUNDED
            except GatewayRefused as exc:
                log.warning("refund refused", extra=kv(order_id=order.order_id, code=exc.code,
                                                      message=exc.message))
                return RefundOutcome.OWED
            except MidtransError as exc:
                log.warning("refund failed", extra=kv(order_id=order.order_id, attempt=attempt,
                                                     error=str(exc)))
                if attempt + 1 < REFUND_ATTEMPTS:
                    self.sleep(REFUND_RETRY_S)
        return RefundOutcome.OWED


def build(settings: Settings, broker: Broker) -> DispenseWorker:
    return DispenseWorker(broker, MidtransClient.from_settings(settings),
                          dispenser_from_settings(settings))
