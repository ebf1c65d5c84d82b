"""The vending and money rules, as plain functions: no Redis, no HTTP, no sleeping.

Each takes the current state, an event and `now`, and returns what to do. The services do
the I/O around them (shared/STYLE.md, "Decisions apart from I/O"). The money rules cited are
those of shared/DESIGN.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

from constants.states import RESULT_STATES, ErrorCode, FailReason, RefundOutcome, State
from constants.tunables import (
    CHARGE_EXPIRY_MARGIN_MIN,
    CLOSE_RETRY_S,
    PAYMENT_POLL_MAX_S,
    PAYMENT_POLL_SCHEDULE_S,
)

# --- kiosk commands --------------------------------------------------------------------------

#: Kiosk SHOW_MENU: from which state to which. A tap on a result screen dismisses it.
SHOW_MENU_MOVES: dict[State, State] = {
    State.IDLE: State.SHOW_MENU,
    State.SHOW_MENU: State.SHOW_MENU,
    **{result: State.IDLE for result in RESULT_STATES},
}

#: Kiosk ORDER is accepted on the menu only.
ORDER_FROM = (State.SHOW_MENU,)

#: Kiosk CANCEL on the menu goes straight back to IDLE; with an order it asks the workers.
CANCEL_TO_IDLE_FROM = (State.SHOW_MENU,)
CANCEL_REQUEST_FROM = (State.MENU_CLICKED, State.ORDER_CREATED)

#: Operator maintenance: only when no customer is in the middle of something.
OUT_OF_SERVICE_FROM = (State.IDLE, State.SHOW_MENU, *RESULT_STATES)


@dataclass(frozen=True)
class Refusal:
    code: ErrorCode
    message: str


def check_order(state: State, drink_known: bool, stock: int, quantity: int) -> Refusal | None:
    """Why a kiosk ORDER must be refused, or None when it may go ahead."""
    if quantity != 1:
        return Refusal(ErrorCode.BAD_VALUES, "only one drink per order")
    if state not in ORDER_FROM:
        return Refusal(ErrorCode.WRONG_STATE, f"cannot order while the machine is {state}")
    if not drink_known:
        return Refusal(ErrorCode.UNKNOWN_DRINK, "no such drink on the menu")
    if stock <= 0:
        return Refusal(ErrorCode.SOLD_OUT, "this drink is sold out")
    return None


def wrong_state(command: str, state: State) -> Refusal:
    return Refusal(ErrorCode.WRONG_STATE, f"{command} is not possible while the machine is {state}")


# --- timers of the screens -------------------------------------------------------------------


def screen_deadline(state: State, since: float, menu_idle_s: float,
                    result_screen_s: float) -> float | None:
    """When the backend moves this screen back to IDLE on its own (None: never)."""
    if state == State.SHOW_MENU:
        return since + menu_idle_s
    if state in RESULT_STATES:
        return since + result_screen_s
    return None


# --- payment ---------------------------------------------------------------------------------


def poll_delay(attempt: int) -> float:
    """Seconds before status check number `attempt` (0-based): fast first, then backing off."""
    if attempt < len(PAYMENT_POLL_SCHEDULE_S):
        return PAYMENT_POLL_SCHEDULE_S[attempt]
    return PAYMENT_POLL_MAX_S


def charge_expiry_minutes(payment_deadline_s: float) -> int:
    """The Midtrans charge's own expiry: a little beyond the kiosk deadline, in whole minutes.

    The kiosk cancels at its deadline itself (midtrans.md: Midtrans may expire late); the
    charge's expiry bounds how long a QR could be paid if that cancel never gets through.
    """
    return math.ceil(payment_deadline_s / 60) + CHARGE_EXPIRY_MARGIN_MIN


def kiosk_deadline(created_at: float, payment_deadline_s: float,
                   gateway_expiry: float | None) -> float:
    """The instant every page counts down to: the sooner of our deadline and Midtrans's."""
    ours = created_at + payment_deadline_s
    return ours if gateway_expiry is None else min(ours, gateway_expiry)


class Paid(Enum):
    """What a status read says about the money of an order."""

    PAID = "paid"
    PENDING = "pending"
    UNPAID = "unpaid"
    MISMATCH = "mismatch"


FINAL_UNPAID = {
    "deny": FailReason.DENIED,
    "failure": FailReason.DENIED,
    "cancel": FailReason.CANCELLED,
    "expire": FailReason.EXPIRED,
}


def judge_payment(transaction_status: str, fraud_status: str | None, paid_amount: int | None,
                  order_amount: int) -> tuple[Paid, FailReason | None]:
    """Money rule 1: paid only on settlement (or capture + fraud accept) of the right amount."""
    status = transaction_status.lower()
    if status == "settlement" or (status == "capture" and (fraud_status or "").lower() == "accept"):
        if paid_amount != order_amount:
            return Paid.MISMATCH, FailReason.AMOUNT_MISMATCH
        return Paid.PAID, None
    if status in FINAL_UNPAID:
        return Paid.UNPAID, FINAL_UNPAID[status]
    if status in ("refund", "partial_refund", "chargeback", "partial_chargeback"):
        return Paid.UNPAID, FailReason.GATEWAY_REFUSED
    return Paid.PENDING, None


class Step(Enum):
    SUCCEED = "succeed"  # -> PAYMENT_SUCCESS
    FAIL = "fail"  # -> PAYMENT_FAILED with a reason
    CLOSE = "close"  # cancel at Midtrans, then re-read the status (money rule 3)
    WAIT = "wait"  # check again at `at`


@dataclass(frozen=True)
class Decision:
    step: Step
    reason: FailReason | None = None
    at: float | None = None


def decide_payment(now: float, deadline: float, cancel_requested: bool, paid: Paid,
                   reason: FailReason | None, next_check: float) -> Decision:
    """One step of watching a payment, after a status read (`paid`, `reason`).

    A read that failed (gateway unreachable) is passed as Paid.PENDING: keep watching.
    """
    if paid is Paid.PAID:
        return Decision(Step.SUCCEED)
    if paid is Paid.MISMATCH:
        return Decision(Step.FAIL, FailReason.AMOUNT_MISMATCH)
    if paid is Paid.UNPAID:
        return Decision(Step.FAIL, reason)
    if cancel_requested:
        return Decision(Step.CLOSE, FailReason.CANCELLED)
    if now >= deadline:
        return Decision(Step.CLOSE, FailReason.TIMEOUT)
    return Decision(Step.WAIT, at=min(next_check, deadline))


def decide_after_close(paid: Paid | None, reason: FailReason | None, closing_reason: FailReason,
                       now: float) -> Decision:
    """After the cancel at Midtrans and a fresh status read (money rule 3).

    `paid` is None when the status could not be read. A payment that settled in between is
    honoured; a transaction still pending (the cancel did not get through) is closed again
    later, never shown as failed while its QR can still be paid.
    """
    if paid is Paid.PAID:
        return Decision(Step.SUCCEED)
    if paid is Paid.MISMATCH:
        return Decision(Step.FAIL, FailReason.AMOUNT_MISMATCH)
    if paid is Paid.UNPAID:
        # Our own cancel shows as "cancel"; say why we cancelled, not how Midtrans names it.
        if reason in (FailReason.CANCELLED, FailReason.EXPIRED):
            return Decision(Step.FAIL, closing_reason)
        return Decision(Step.FAIL, reason)
    return Decision(Step.CLOSE, closing_reason, at=now + CLOSE_RETRY_S)


def stop_closing(now: float, gateway_expiry: float | None, grace_s: float) -> bool:
    """Give up confirming a cancel: the gateway has not answered, and the charge's own expiry
    (plus a grace) has passed, so its QR can no longer be paid (money rule 3). The order is
    then failed with a recheck, and a late settlement is refunded (money rule 4)."""
    return gateway_expiry is not None and now >= gateway_expiry + grace_s


# --- late payments (money rule 4) -----------------------------------------------------------


class Late(Enum):
    """What a notification or a recheck means for an order, before any gateway call."""

    WAKE_WORKER = "woke_worker"  # the order is on screen: its worker reads the status
    NOTHING = "nothing_to_do"  # paid and vended, or refunded on its own path
    SETTLED = "already_settled"  # a late payment already refunded, or owed
    READ_STATUS = "read_status"  # closed as failed: did money move after all?


def late_triage(on_screen: bool, outcome: str | None, late: str | None) -> Late:
    if on_screen:
        return Late.WAKE_WORKER
    if not (outcome or "").startswith("failed:"):
        return Late.NOTHING
    if late in ("refunded", "owed"):
        return Late.SETTLED
    return Late.READ_STATUS


class LateStatus(Enum):
    """What the gateway's status of a closed order asks for."""

    REFUND = "refund"  # settled after the order was closed: refund what was paid
    RECORD_REFUNDED = "record_refunded"  # our refund went through, its answer was lost
    PENDING = "pending"  # look again later
    UNPAID = "unpaid"  # nothing moved: done


def late_status(late: str | None, transaction_status: str, fraud_status: str | None,
                paid_amount: int | None, order_amount: int) -> LateStatus:
    status = transaction_status.lower()
    if late == "pending" and status in ("refund", "partial_refund"):
        return LateStatus.RECORD_REFUNDED
    paid, _ = judge_payment(status, fraud_status, paid_amount, order_amount)
    if paid is Paid.PENDING:
        return LateStatus.PENDING
    if paid is Paid.UNPAID:
        return LateStatus.UNPAID
    return LateStatus.REFUND  # paid, of the right amount or not: it was not vended


# --- dispensing ------------------------------------------------------------------------------


class Vend(Enum):
    """What the dispenser driver knows about an order (money rule 6)."""

    VENDED = "vended"
    FAILED = "failed"
    UNKNOWN = "unknown"  # started, outcome not recorded: only a person can tell


def after_vend(vend: Vend) -> tuple[State, bool, RefundOutcome | None]:
    """(next state, refund it?, outcome for the screen when not refunding)."""
    if vend is Vend.VENDED:
        return State.DISPENSED, False, None
    if vend is Vend.FAILED:
        return State.DISPENSE_FAILED, True, None
    # Never re-vend nor refund on a guess: the operator decides.
    return State.DISPENSE_FAILED, False, RefundOutcome.VEND_UNKNOWN


def refund_key(order_id: str) -> str:
    """Deterministic, so a refund retried after a crash is the same refund at Midtrans."""
    return f"{order_id}-r1"
