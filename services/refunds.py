"""Refunds at Midtrans: one call and one policy for a failed vend and a late payment alike.

The refund key is derived from the order (cores.rules.refund_key), so a retry, or a refund
sent again after a crash, is the same refund at Midtrans. What to do after each attempt is
cores.rules.refund_next: done, owed (Midtrans refused), or try again after a pause.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from constants.states import RefundOutcome
from cores import rules
from cores.logs import kv
from cores.midtrans import GatewayRefused, MidtransClient, MidtransError
from cores.rules import RefundTry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RefundResult:
    outcome: RefundOutcome  # REFUNDED or OWED
    detail: str  # why it is owed, for the operator ("" when refunded)
    code: str | None = None  # Midtrans's status_code when it refused


class Refunder:
    """Refunds an order's payment, retrying an unreachable gateway on the one schedule.

    `sleep(seconds)` pauses between attempts and returns True when the pause was cut short
    by a stop (threading.Event.wait does): the refund then concludes nothing, so a stop never
    turns an unanswered refund into one recorded as owed.
    """

    def __init__(self, client: MidtransClient, sleep: Callable[[float], object]) -> None:
        self.client = client
        self.sleep = sleep

    def refund(self, order_id: str, amount: int, reason: str) -> RefundResult | None:
        """REFUNDED or OWED; None when a stop came first (nothing recorded: ask again)."""
        key = rules.refund_key(order_id)
        attempt = 0
        while True:
            result, code = self._once(order_id, key, amount, reason, attempt)
            outcome, pause = rules.refund_next(result, attempt)
            if outcome is not None:
                return RefundResult(outcome, _DETAILS[result], code)
            if self.sleep(pause or 0):
                log.info("refund paused by a stop", extra=kv(order_id=order_id))
                return None
            attempt += 1

    def _once(
        self, order_id: str, key: str, amount: int, reason: str, attempt: int
    ) -> tuple[RefundTry, str | None]:
        try:
            self.client.refund(order_id, refund_key=key, amount=amount, reason=reason)
        except GatewayRefused as exc:
            log.warning(
                "refund refused", extra=kv(order_id=order_id, code=exc.code, message=exc.message)
            )
            return RefundTry.REFUSED, exc.code
        except MidtransError as exc:
            log.warning(
                "refund failed", extra=kv(order_id=order_id, attempt=attempt, error=str(exc))
            )
            return RefundTry.UNREACHABLE, None
        log.info("refunded", extra=kv(order_id=order_id, refund_key=key, reason=reason))
        return RefundTry.DONE, None


_DETAILS = {
    RefundTry.DONE: "",
    RefundTry.REFUSED: "refund refused",
    RefundTry.UNREACHABLE: "gateway unreachable: retry the refund (same refund key)",
}
