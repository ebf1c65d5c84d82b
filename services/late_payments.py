"""The late-payment desk: money rule 4, a payment that settles after its order was closed.

It works the RECHECK set: order_ids from notifications (due at once) and from orders closed
while money could still move (a cancel the gateway never confirmed, a settlement of the
wrong amount), so a late payment is found even where no notification arrives (a machine
behind NAT). It never trusts a notification's body: for the order on screen it wakes the
ORDER_CREATED worker, which re-reads the status itself; for an order already closed it
re-reads the status from Midtrans, and a settlement there is recorded and refunded, or
recorded as owed (services/refunds.py, the one refund policy).

Each record goes with the order's LATE field in one MULTI, and is money-moving (cores/broker.py,
"Durability"): the late payment is known to be held by a replica before its refund is sent (a
retry that finds LATE pending confirms it first), and the refund or the refund owed is
acknowledged only once a replica holds it. A record not known durable (NotDurable) fails the
desk's step: the order stays in the RECHECK set and is looked at again from what Redis holds.
The operator's entry of a refund owed is written before its record, so a record held implies it.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable
from enum import StrEnum

from constants.orders import Command, LateRefund, OperatorKind, OrderField
from constants.services import Service
from constants.states import ORDER_STATES, RefundOutcome, Sale, State
from constants.tunables import RECHECK_EVERY_S
from cores import rules
from cores.broker import Broker, Snapshot
from cores.logs import kv
from cores.midtrans import GatewayRefused, MidtransClient, MidtransError
from cores.rules import Late, LateStatus
from services.refunds import Refunder
from services.worker import Worker

log = logging.getLogger(__name__)


class Result(StrEnum):
    """What LatePayments.handle did with an order (for logs and tests), besides rules.Late."""

    UNKNOWN_ORDER = "unknown_order"
    NO_TRANSACTION = "no_transaction"  # Midtrans never had it: nothing was paid
    UNPAID = "unpaid"
    REFUNDED = "refunded"
    REFUND_OWED = "refund_owed"
    DEFERRED = "deferred"  # the one result that keeps the order in the RECHECK set


DEFERRED = Result.DEFERRED


class LatePayments:
    """Decides what a notification or a recheck means for an order, by reading Midtrans."""

    def __init__(
        self,
        broker: Broker,
        client: MidtransClient,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        self.broker = broker
        self.client = client
        self.clock = clock
        self.refunder = Refunder(client, sleep)

    def handle(self, order_id: str) -> str:
        """Act on one order; returns what happened (for logs and tests)."""
        # State first: the transition that closes an order writes its outcome in the same
        # MULTI, so an order read after a snapshot that no longer shows it has its outcome.
        snap = self.broker.snapshot()
        order = self.broker.order(order_id)
        if order is None:
            return Result.UNKNOWN_ORDER
        on_screen = snap.order_id == order_id and snap.state in ORDER_STATES
        late = order.get(OrderField.LATE)
        triage = rules.late_triage(on_screen, order.get(OrderField.OUTCOME), late)
        if triage is Late.WAKE_WORKER:
            self.broker.wake(Command.CHECK, order_id)
        if triage is not Late.READ_STATUS:
            return triage.value
        try:
            txn = self.client.status(order_id)
        except GatewayRefused as exc:
            if exc.code == "404":
                return Result.NO_TRANSACTION
            return self._again(order_id, f"status refused {exc.code}")
        except MidtransError as exc:
            return self._again(order_id, str(exc))
        verdict = rules.late_status(
            late, txn.transaction_status, txn.fraud_status, txn.amount_idr, order.amount
        )
        if verdict is LateStatus.RECORD_REFUNDED:
            return self._refunded(order_id, txn.amount_idr)
        if verdict is LateStatus.PENDING:
            return self._again(order_id, "still pending")
        if verdict is LateStatus.UNPAID:
            return Result.UNPAID
        # Settled after the order was closed: the customer paid and got nothing.
        pending: dict[str, str] = {OrderField.LATE: LateRefund.PENDING}
        if late != LateRefund.PENDING:
            self.broker.record_sale_with_order(
                order_id,
                Sale.LATE_PAYMENT,
                pending,
                amount=txn.amount_idr,
                transaction_status=txn.transaction_status,
                transaction_id=txn.transaction_id,
            )
        else:  # recorded by an earlier try: known durable before the refund is sent
            self.broker.confirm_order(order_id, pending)
        result = self.refunder.refund(order_id, txn.amount_idr, "paid after the order was closed")
        if result is None:  # stopping: the next run reads the status again
            return self._again(order_id, "stopped during the refund")
        if result.outcome is RefundOutcome.REFUNDED:
            return self._refunded(order_id, txn.amount_idr)
        self.broker.flag_for_operator(
            order_id,
            OperatorKind.REFUND_OWED,
            amount=txn.amount_idr,
            drink=order.drink.id,
            detail=f"late payment, {result.detail}" + (f" ({result.code})" if result.code else ""),
        )
        self.broker.record_sale_with_order(
            order_id,
            Sale.REFUND_OWED,
            {OrderField.LATE: LateRefund.OWED},
            amount=txn.amount_idr,
            code=result.code,
        )
        log.warning("late payment: refund owed", extra=kv(order_id=order_id))
        return Result.REFUND_OWED

    def _refunded(self, order_id: str, amount: int) -> str:
        self.broker.record_sale_with_order(
            order_id,
            Sale.REFUNDED,
            {OrderField.LATE: LateRefund.REFUNDED},
            amount=amount,
            refund_key=rules.refund_key(order_id),
        )
        log.info("late payment refunded", extra=kv(order_id=order_id))
        return Result.REFUNDED

    def _again(self, order_id: str, why: str) -> str:
        """Not settled yet: the desk keeps the order in the RECHECK set (its lease stands)."""
        log.warning("late payment check deferred", extra=kv(order_id=order_id, why=why))
        return DEFERRED


class Desk(Worker):
    """The worker that works the RECHECK set.

    The set is the queue, in Redis: an order stays in it until it is settled for good, so a
    crash or a Redis outage loses nothing. Taking an order pushes its time forward (a lease);
    a final result removes it. The loop, heartbeat and error handling are the workers'.
    """

    service = Service.NOTIFICATION
    #: The RECHECK set is its queue, not the state: woken by RECHECK commands (and hints
    #: with neither a state nor a command), its timers and the sweep.
    states = frozenset[State]()
    commands = frozenset({Command.RECHECK})

    def __init__(self, late: LatePayments, clock: Callable[[], float] = time.time) -> None:
        super().__init__(late.broker, clock)
        self.late = late
        self.late.refunder.sleep = self.stopping.wait  # a stop cuts a refund's pause short
        #: The latest results, for logs and tests.
        self.handled: collections.deque[tuple[str, str]] = collections.deque(maxlen=1000)

    def step(self, snap: Snapshot, entries: list) -> float | None:
        due, nxt = self.broker.rechecks_due(self.clock())
        for order_id in due:
            self.work(order_id)
        return nxt

    def work(self, order_id: str) -> None:
        self.broker.schedule_recheck(order_id, self.clock() + RECHECK_EVERY_S, wake=False)
        result = self.late.handle(order_id)
        self.handled.append((order_id, result))
        if result != DEFERRED:
            self.broker.recheck_done(order_id)
        log.info("late-payment desk", extra=kv(order_id=order_id, result=result))
