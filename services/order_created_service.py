"""ORDER_CREATED worker: watches the payment of the QR on screen until it settles, fails or
times out; at the deadline or on a kiosk CANCEL it cancels at Midtrans first (money rule 3).

Status checks follow the schedule of cores/rules.py (fast first, then backing off); a
notification (command CHECK) or a CANCEL cuts the wait short.
"""

from __future__ import annotations

import json
import logging

import requests

from constants.orders import Command, OrderField
from constants.states import FailReason, State
from cores import rules
from cores.broker import Broker, Order, Snapshot
from cores.config import Settings
from cores.logs import kv
from cores.machine import Effects, Transition
from cores.metrics import GatewayRecorder
from cores.midtrans import MidtransClient
from cores.rules import Paid, Step, Watch
from services import payment
from services.payment import PaymentWorker

log = logging.getLogger(__name__)


class OrderCreatedWorker(PaymentWorker):
    service = "ORDER_CREATED"
    states = frozenset({State.ORDER_CREATED})
    commands = frozenset({Command.CANCEL, Command.CHECK})  # rules.watch_schedule
    #: The read schedule of the order on screen (in memory; a new process starts afresh).
    watch: Watch | None = None

    def step(self, snap: Snapshot, entries: list) -> float | None:
        if snap.state != State.ORDER_CREATED or not snap.order_id:
            self.watch = None
            return None
        order = self.broker.order(snap.order_id)
        if order is None:
            payment.order_missing(self.broker, snap.order_id, State.ORDER_CREATED)
            return None
        now = self.clock()
        closing_text = order.get(OrderField.CLOSING)
        closing = FailReason(closing_text) if closing_text else None
        commands = {f.get("command", "") for _, f in entries if f.get("order_id") == order.order_id}
        self.watch = rules.watch_schedule(
            self.watch, order.order_id, now, commands, closing is not None
        )
        deadline = order.number(OrderField.EXPIRES_AT) or (
            order.created_at + self.settings.payment_deadline_s
        )
        decision = rules.next_payment_step(
            now, self.watch, deadline, order.flag(OrderField.CANCEL_REQUESTED), closing
        )
        if decision.step is Step.READ:
            paid, reason, txn = payment.read_payment(self.client, order)
            self.watch = rules.after_read(self.watch, now)
            decision = rules.decide_payment(
                now,
                deadline,
                order.flag(OrderField.CANCEL_REQUESTED),
                paid or Paid.PENDING,
                reason,
                self.watch.next_check,
            )
            log.info(
                "payment checked",
                extra=kv(
                    order_id=order.order_id,
                    status=txn.transaction_status if txn else "-",
                    step=decision.step.value,
                ),
            )
            if decision.step in (Step.SUCCEED, Step.FAIL):
                payment.act(self.broker, order, decision, txn, State.ORDER_CREATED)
                return None
        if decision.step is Step.CLOSE:
            return self.close(order, decision.reason or FailReason.TIMEOUT)
        return decision.at

    def close(self, order: Order, reason: FailReason) -> float | None:
        if order.get(OrderField.CLOSING) != str(reason):
            self.show_closing(order, reason)
        decision, txn = payment.close_at_gateway(self.client, order, reason, self.clock())
        now = self.clock()
        decision = rules.closing_outcome(
            decision,
            now,
            order.number(OrderField.GATEWAY_EXPIRY),
            transaction_found=txn is not None,
        )
        if decision.step is Step.CLOSE:
            log.warning(
                "close not confirmed, will retry", extra=kv(order_id=order.order_id, reason=reason)
            )
            at = decision.at or now
            if self.watch is not None:
                self.watch = Watch(self.watch.order_id, self.watch.checks, at)
            return at
        if decision.recheck_at is not None and decision.reason is FailReason.GATEWAY_UNREACHABLE:
            log.warning(
                "gateway silent past the charge's expiry; order closed, recheck scheduled",
                extra=kv(order_id=order.order_id),
            )
        payment.act(self.broker, order, decision, txn, State.ORDER_CREATED)
        return None

    def show_closing(self, order: Order, reason: FailReason) -> None:
        """Pages show "checking payment" instead of the countdown while the cancel is confirmed."""
        values = json.loads(order.get(OrderField.FRAME_VALUES) or "{}") or order.values()
        values["closing"] = True
        self.broker.transition(
            Transition(
                State.ORDER_CREATED,
                (State.ORDER_CREATED,),
                order.order_id,
                values,
                Effects(order_fields={OrderField.CLOSING: str(reason)}),
            )
        )


def build(
    settings: Settings, broker: Broker, session: requests.Session | None = None
) -> OrderCreatedWorker:
    """The worker of `broker`'s machine; fleet mode passes the process's shared `session`."""
    client = MidtransClient.from_settings(settings, session, observer=GatewayRecorder(broker))
    return OrderCreatedWorker(broker, client, settings)
