"""What a person does about the operator's queue: refund owed, vend outcome unknown.

A refund goes through Midtrans with the order's one refund key (cores.rules.refund_key), so a
retry is the same refund at Midtrans, never a second one (money rule 2). The writes (the entry
off the queue, the sales entry, the audit entry, in one MULTI) are cores.operations'.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from constants.orders import OperatorKind, Resolution
from constants.states import RefundOutcome
from cores import rules
from cores.console_errors import ActionRefused, InvalidInput, OperatorError
from cores.logs import kv
from cores.operations import Operations
from services.refunds import Refunder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Resolved:
    """How a resolution ended: `done` when the entry left the queue."""

    order_id: str
    action: Resolution
    done: bool
    message: str


def resolve(
    ops: Operations,
    refunder: Refunder | None,
    order_id: str,
    action: str,
    actor: str,
    note: str = "",
) -> Resolved:
    """Resolve the queue entry of `order_id` with `action` (constants.orders.Resolution).

    NotFound for an order not in the queue, ActionRefused for an action wrong for its kind
    (or a note missing): nothing changed. A refund Midtrans still refuses leaves the entry in
    the queue (a vend outcome unknown becomes a refund owed) and says why.
    """
    if action not in set(Resolution):
        names = ", ".join(Resolution)
        raise InvalidInput("action", f"unknown action {action!r}: one of {names}")
    act = Resolution(action)
    entry = ops.queue_entry(order_id)
    why = rules.check_resolution(entry.get("kind", ""), act, note)
    if why:
        raise ActionRefused(why)
    if act not in rules.REFUNDS_AT_GATEWAY:
        ops.close_entry(order_id, act, actor, note)
        return Resolved(order_id, act, True, f"{order_id}: {act} recorded")
    if refunder is None:
        raise ActionRefused("no payment gateway configured to refund through")
    amount = int(entry.get("amount") or 0)
    if amount <= 0:
        raise ActionRefused(f"the queue entry of {order_id} has no amount to refund")
    result = refunder.refund(order_id, amount, f"operator {actor}: {act}")
    if result is None:
        raise ActionRefused("stopped before the gateway answered: nothing recorded, try again")
    if result.outcome is RefundOutcome.REFUNDED:
        try:
            ops.close_entry(order_id, act, actor, note)
        except OperatorError:
            # Another resolution took or changed the entry while Midtrans was being asked: the
            # money moved all the same, so the refund is recorded, unless that resolution was this
            # same refund (the same key, which Midtrans answered twice) and recorded it.
            if not ops.record_refund({**entry, "order_id": order_id}, act, actor, note):
                return Resolved(order_id, act, True, f"{order_id}: refunded, recorded already")
            log.warning(
                "refunded after the entry was resolved meanwhile",
                extra=kv(order_id=order_id, actor=actor),
            )
            return Resolved(
                order_id, act, True, f"{order_id}: refunded; the entry was resolved meanwhile"
            )
        log.info("refunded by the operator", extra=kv(order_id=order_id, actor=actor))
        return Resolved(
            order_id, act, True, f"{order_id}: refunded (key {rules.refund_key(order_id)})"
        )
    detail = result.detail or "refund not done"
    if entry.get("kind") == OperatorKind.VEND_UNKNOWN:
        # The drink did not come out and the refund failed: the money is now owed.
        ops.close_entry(
            order_id,
            act,
            actor,
            note,
            requeue={"kind": str(OperatorKind.REFUND_OWED), "detail": detail},
            detail=detail,
        )
        return Resolved(order_id, act, False, f"{order_id}: refund owed ({detail})")
    ops.record_attempt(order_id, act, actor, detail)
    return Resolved(order_id, act, False, f"{order_id}: refund still owed ({detail})")
