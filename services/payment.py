"""What the ORDER and ORDER_CREATED workers share: reading a payment and closing an order.

Money rule 3 (shared/DESIGN.md): before PAYMENT_FAILED for a timeout or a cancel, the
transaction is cancelled at Midtrans and its status read again; a payment that settled in
between is honoured. The decisions are cores.rules'; this module does the calls and writes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from constants.orders import OperatorKind, OrderField, Outcome
from constants.states import FailReason, Sale, State
from cores import rules
from cores.broker import Broker, Order
from cores.config import Settings
from cores.logs import kv
from cores.machine import Effects, Transition
from cores.midtrans import GatewayRefused, MidtransClient, MidtransError, Transaction
from cores.rules import Decision, Paid, Step
from services.worker import Worker

log = logging.getLogger(__name__)


class PaymentWorker(Worker):
    """A worker that asks Midtrans about the order on screen (ORDER, ORDER_CREATED)."""

    def __init__(
        self,
        broker: Broker,
        client: MidtransClient,
        settings: Settings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(broker, clock)
        self.client = client
        self.settings = settings


FAIL_MESSAGES = {
    FailReason.CANCELLED: "The order was cancelled.",
    FailReason.TIMEOUT: "No payment arrived in time.",
    FailReason.DENIED: "The payment was declined.",
    FailReason.EXPIRED: "The QR code expired.",
    FailReason.GATEWAY_UNREACHABLE: "The payment service could not be reached.",
    FailReason.GATEWAY_REFUSED: "The payment service refused the payment.",
    FailReason.AMOUNT_MISMATCH: "The amount paid does not match the price.",
}


def read_payment(
    client: MidtransClient, order: Order, *, closing: bool = False
) -> tuple[Paid | None, FailReason | None, Transaction | None]:
    """Status of the order at Midtrans, judged. (None, None, None) when it cannot be read.

    While closing, an unknown transaction (404) can no longer be paid: it counts as unpaid.
    """
    try:
        txn = client.status(order.order_id)
    except GatewayRefused as exc:
        if exc.code == "404":
            if closing:
                return Paid.UNPAID, FailReason.EXPIRED, None
            return Paid.PENDING, None, None
        log.warning("status refused", extra=kv(order_id=order.order_id, code=exc.code))
        return None, None, None
    except MidtransError as exc:
        log.warning("status unreadable", extra=kv(order_id=order.order_id, error=str(exc)))
        return None, None, None
    paid, reason = rules.judge_payment(
        txn.transaction_status, txn.fraud_status, txn.amount_idr, order.amount
    )
    return paid, reason, txn


def close_at_gateway(
    client: MidtransClient, order: Order, reason: FailReason, now: float
) -> tuple[Decision, Transaction | None]:
    """Cancel the charge at Midtrans, then re-read its status and decide."""
    try:
        client.cancel(order.order_id)
        log.info("cancelled at gateway", extra=kv(order_id=order.order_id, reason=reason))
    except GatewayRefused as exc:  # 412: not cancellable now (maybe paid); 404: no charge
        log.info("cancel refused", extra=kv(order_id=order.order_id, code=exc.code))
    except MidtransError as exc:
        log.warning("cancel failed", extra=kv(order_id=order.order_id, error=str(exc)))
    paid, status_reason, txn = read_payment(client, order, closing=True)
    return rules.decide_after_close(paid, status_reason, reason, now), txn


def succeed(broker: Broker, order: Order, txn: Transaction | None, from_state: State) -> bool:
    extra = {}
    if txn is not None:
        extra = {
            "transaction_id": txn.transaction_id,
            "transaction_status": txn.transaction_status,
            "settlement_time": txn.settlement_time,
            "payment_type": txn.payment_type,
        }
    return broker.transition(
        Transition(
            State.PAYMENT_SUCCESS,
            (from_state,),
            order.order_id,
            order.values(),
            Effects(
                sale={
                    "kind": Sale.PAID,
                    "amount": order.amount,
                    "drink_id": order.drink.id,
                    **extra,
                },
                order_fields={OrderField.OUTCOME: Outcome.PAID, OrderField.PAID_AT: broker.clock()},
            ),
        )
    )


def fail(
    broker: Broker,
    order: Order,
    reason: FailReason,
    from_state: State,
    detail: str | None = None,
    recheck_at: float | None = None,
) -> bool:
    """PAYMENT_FAILED. `recheck_at`: when the late-payment desk reads the payment again (in
    the same MULTI), for an order closed while money could still move."""
    now = broker.clock()
    kind, recheck_at = rules.failure_record(reason, now, recheck_at)
    message = FAIL_MESSAGES[reason] + (f" ({detail})" if detail else "")
    return broker.transition(
        Transition(
            State.PAYMENT_FAILED,
            (from_state,),
            order.order_id,
            {**order.values(), "reason": str(reason), "message": message},
            Effects(
                sale={
                    "kind": kind,
                    "amount": order.amount,
                    "reason": str(reason),
                    "detail": detail,
                },
                order_fields={
                    OrderField.OUTCOME: Outcome.FAILED.detail(reason),
                    OrderField.CLOSED_AT: now,
                },
                recheck_at=recheck_at,
            ),
        )
    )


def order_missing(broker: Broker, order_id: str | None, from_state: State) -> bool:
    """The state names an order whose record is gone: close it, and tell the operator."""
    log.error("order missing", extra=kv(order_id=order_id))
    return broker.transition(
        Transition(
            State.PAYMENT_FAILED,
            (from_state,),
            order_id,
            {
                "order_id": order_id,
                "drink": None,
                "amount": None,
                "reason": str(FailReason.GATEWAY_REFUSED),
                "message": "The order could not be found.",
            },
            Effects(
                operator={
                    "kind": OperatorKind.ORDER_MISSING,
                    "detail": "check this order at Midtrans",
                }
            ),
        )
    )


def act(
    broker: Broker, order: Order, decision: Decision, txn: Transaction | None, from_state: State
) -> bool:
    """Apply SUCCEED or FAIL; returns whether the transition was applied."""
    if decision.step is Step.SUCCEED:
        return succeed(broker, order, txn, from_state)
    if decision.step is Step.FAIL:
        return fail(
            broker,
            order,
            decision.reason or FailReason.GATEWAY_REFUSED,
            from_state,
            recheck_at=decision.recheck_at,
        )
    raise ValueError(f"not a final decision: {decision}")
