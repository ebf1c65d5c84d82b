"""ORDER_CREATED worker: watches the payment of the QR on screen until it settles, fails or
times out; at the deadline or on a kiosk CANCEL it cancels at Midtrans first (money rule 3).

Status checks follow the schedule of cores/rules.py (fast first, then backing off); a
notification (command CHECK) or a CANCEL cuts the wait short.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from constants.states import FailReason, State
from constants.tunables import RECHECK_AFTER_EXPIRY_S, RECHECK_EVERY_S
from cores import rules
from cores.broker import Broker, Order, Snapshot
from cores.config import Settings
from cores.logs import kv
from cores.midtrans import MidtransClient
from cores.rules import Paid, Step
from services import payment
from services.worker import Worker

log = logging.getLogger(__name__)


@dataclass
class Watch:
    """In-memory schedule of the order being watched (rebuilt from Redis after a restart)."""

    order_id: str
    checks: int
    next_check: float


class OrderCreatedWorker(Worker):
    service = "ORDER_CREATED"

    def __init__(self, broker: Broker, client: MidtransClient, settings: Settings,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(broker, clock)
        self.client = client
        self.settings = settings
        self.watch: Watch | None = None

    def step(self, snap: Snapshot, entries: list) -> float | None:
        if snap.state != State.ORDER_CREATED or not snap.order_id:
            self.watch = None
            return None
        order = self.broker.order(snap.order_id)
        if order is None:
            log.error("order missing", extra=kv(order_id=snap.order_id))
            payment.order_missing(self.broker, snap.order_id, State.ORDER_CREATED)
            return None
        now = self.clock()
        if self.watch is None or self.watch.order_id != order.order_id:
            self.watch = Watch(order.order_id, 0, now + rules.poll_delay(0))
        commands = {f.get("command") for _, f in entries if f.get("order_id") == order.order_id}
        if commands & {"CHECK", "CANCEL"} and not order.get("closing"):
            self.watch.next_check = now  # a notification or a cancel: look now
        elif "CHECK" in commands:
            self.watch.next_check = now  # closing: only news from the gateway cuts the wait
        deadline = order.number("expires_at") or (order.created_at
                                                   + self.settings.payment_deadline_s)
        closing = order.get("closing")
        cancel = order.flag("cancel_requested")
        if closing:
            if now < self.watch.next_check:
                return self.watch.next_check
            return self.close(order, FailReason(closing))
        if now < self.watch.next_check and now < deadline and not cancel:
            return min(self.watch.next_check, deadline)
        paid, reason, txn = payment.read_payment(self.client, order)
        self.watch.checks += 1
        self.watch.next_check = now + rules.poll_delay(self.watch.checks)
        decision = rules.decide_payment(now, deadline, cancel, paid or Paid.PENDING, reason,
                                        self.watch.next_check)
        log.info("payment checked", extra=kv(order_id=order.order_id,
                                             status=txn.transaction_status if txn else "-",
                                             step=decision.step.value))
        if decision.step is Step.WAIT:
            return decision.at
        if decision.step is Step.CLOSE:
            return self.close(order, decision.reason or FailReason.TIMEOUT)
        payment.act(self.broker, order, decision, txn, State.ORDER_CREATED)
        return None

    def close(self, order: Order, reason: FailReason) -> float | None:
        if order.get("closing") != str(reason):
            self.show_closing(order, reason)
        decision, txn = payment.close_at_gateway(self.client, order, reason, self.clock())
        if decision.step is Step.CLOSE:
            now = self.clock()
            if rules.stop_closing(now, order.number("gateway_expiry"), RECHECK_AFTER_EXPIRY_S):
                log.warning("gateway silent past the charge's expiry; order closed, recheck "
                            "scheduled", extra=kv(order_id=order.order_id))
                payment.fail(self.broker, order, FailReason.GATEWAY_UNREACHABLE,
                             State.ORDER_CREATED, recheck_at=now)
                return None
            log.warning("close not confirmed, will retry",
                        extra=kv(order_id=order.order_id, reason=reason))
            self.watch.next_check = decision.at or now
            return decision.at
        # No transaction at the gateway (404): nothing can be paid, but look once more later.
        recheck_at = self.clock() + RECHECK_EVERY_S if txn is None else None
        payment.act(self.broker, order, decision, txn, State.ORDER_CREATED, recheck_at)
        return None

    def show_closing(self, order: Order, reason: FailReason) -> None:
        """Pages show "checking payment" instead of the countdown while the cancel is confirmed."""
        values = json.loads(order.get("frame_values") or "{}") or order.values()
        values["closing"] = True
        self.broker.transition(State.ORDER_CREATED, from_states=(State.ORDER_CREATED,),
                               order_id=order.order_id, values=values,
                               order_fields={"closing": str(reason)})


def build(settings: Settings, broker: Broker) -> OrderCreatedWorker:
    return OrderCreatedWorker(broker, MidtransClient.from_settings(settings), settings)
