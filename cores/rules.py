"""The vending and money rules, as plain functions: no Redis, no HTTP, no sleeping.

Each takes the current state, an event and `now`, and returns what to do. The services do
the I/O around them (shared/STYLE.md, "Decisions apart from I/O"). The money rules cited are
those of shared/DESIGN.md.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from enum import Enum

from constants.orders import Command, LateRefund, OperatorKind, Resolution, outcome_is_failed
from constants.states import RESULT_STATES, ErrorCode, FailReason, RefundOutcome, Sale, State
from constants.tunables import (
    CHARGE_EXPIRY_MARGIN_MIN,
    CLOSE_RETRY_S,
    PAYMENT_POLL_MAX_S,
    PAYMENT_POLL_SCHEDULE_S,
    RECHECK_AFTER_EXPIRY_S,
    RECHECK_EVERY_S,
    REFUND_RETRY_S,
)
from cores.models import SlotState

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


def screen_deadline(
    state: State, since: float, menu_idle_s: float, result_screen_s: float
) -> float | None:
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


def kiosk_deadline(
    created_at: float, payment_deadline_s: float, gateway_expiry: float | None
) -> float:
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


def judge_payment(
    transaction_status: str, fraud_status: str | None, paid_amount: int | None, order_amount: int
) -> tuple[Paid, FailReason | None]:
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
    READ = "read"  # read the payment's status now


@dataclass(frozen=True)
class Decision:
    step: Step
    reason: FailReason | None = None
    at: float | None = None
    #: With FAIL: when the late-payment desk reads the payment again (money rule 4).
    recheck_at: float | None = None


@dataclass(frozen=True)
class Watch:
    """The schedule of status reads of the order on screen (in memory; a restarted worker
    starts a new one, and reads at once)."""

    order_id: str
    checks: int
    next_check: float


def watch_schedule(
    watch: Watch | None, order_id: str, now: float, commands: set[str], closing: bool
) -> Watch:
    """The schedule for the order on screen, after the worker woke with `commands`.

    A notification (CHECK) or the customer's CANCEL cuts the wait short; while the order is
    closing, only news from the gateway (CHECK) does: the cancel is already under way.
    """
    if watch is None or watch.order_id != order_id:
        watch = Watch(order_id, 0, now + poll_delay(0))
    cut_short = {Command.CHECK} if closing else {Command.CHECK, Command.CANCEL}
    if commands & cut_short:
        watch = replace(watch, next_check=now)
    return watch


def after_read(watch: Watch, now: float) -> Watch:
    """The schedule after a status read: the next read backs off (poll_delay)."""
    return Watch(watch.order_id, watch.checks + 1, now + poll_delay(watch.checks + 1))


def next_payment_step(
    now: float, watch: Watch, deadline: float, cancel_requested: bool, closing: FailReason | None
) -> Decision:
    """Before any gateway call: WAIT until `at`, READ the status now, or (while the order is
    closing) CLOSE again: the cancel at Midtrans is retried on the schedule."""
    if closing is not None:
        if now < watch.next_check:
            return Decision(Step.WAIT, at=watch.next_check)
        return Decision(Step.CLOSE, closing)
    if now < watch.next_check and now < deadline and not cancel_requested:
        return Decision(Step.WAIT, at=min(watch.next_check, deadline))
    return Decision(Step.READ)


def decide_payment(
    now: float,
    deadline: float,
    cancel_requested: bool,
    paid: Paid,
    reason: FailReason | None,
    next_check: float,
) -> Decision:
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


def decide_after_close(
    paid: Paid | None, reason: FailReason | None, closing_reason: FailReason, now: float
) -> Decision:
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


def closing_outcome(
    decision: Decision, now: float, gateway_expiry: float | None, transaction_found: bool
) -> Decision:
    """How closing the order on screen ends, after decide_after_close (money rules 3, 4).

    While the gateway cannot confirm, keep closing until the charge's own expiry and a grace
    have passed; then fail with a recheck at once. A transaction the gateway does not know
    (404) can no longer be paid, but is read once more later.
    """
    if decision.step is Step.CLOSE:
        if stop_closing(now, gateway_expiry, RECHECK_AFTER_EXPIRY_S):
            return Decision(Step.FAIL, FailReason.GATEWAY_UNREACHABLE, recheck_at=now)
        return decision
    if decision.step is Step.FAIL and not transaction_found:
        return replace(decision, recheck_at=now + RECHECK_EVERY_S)
    return decision


def charge_error(refused_code: str | None) -> tuple[Decision, bool]:
    """A charge that failed: refused with `refused_code`, or unreachable (None).

    Returns what to do and whether the failed charge goes in the sales record. A charge that
    may exist unseen (unreachable) is closed so it can never be paid; so is an order_id
    already charged (406: a retry beyond the idempotency window), and honoured if paid.
    """
    if refused_code is None:
        return Decision(Step.CLOSE, FailReason.GATEWAY_UNREACHABLE), True
    if refused_code == "406":
        return Decision(Step.CLOSE, FailReason.GATEWAY_REFUSED), False
    return Decision(Step.FAIL, FailReason.GATEWAY_REFUSED), True


def unseen_charge_outcome(
    decision: Decision, reason: FailReason, now: float, payment_deadline_s: float
) -> Decision:
    """How closing a charge whose QR was never shown ends (the ORDER worker's close).

    Nobody saw the QR, so nobody can pay it: where the gateway cannot confirm the cancel the
    order fails at once, rechecked after the charge's own expiry (money rule 4); where it
    failed, the screen says why we closed it. A payment (or a wrong amount) is honoured.
    """
    if decision.step is Step.CLOSE:
        expiry_s = charge_expiry_minutes(payment_deadline_s) * 60
        return Decision(Step.FAIL, reason, recheck_at=now + expiry_s + RECHECK_AFTER_EXPIRY_S)
    if decision.step is Step.FAIL and decision.reason != FailReason.AMOUNT_MISMATCH:
        return Decision(Step.FAIL, reason)
    return decision


def failure_record(
    reason: FailReason, now: float, recheck_at: float | None
) -> tuple[Sale, float | None]:
    """The sales entry of a failed payment, and when its payment is read again.

    A settlement of the wrong amount moved money that was not the price: the late-payment
    desk refunds it at once (money rule 2).
    """
    kind = Sale.CANCELLED if reason == FailReason.CANCELLED else Sale.PAYMENT_FAILED
    if reason == FailReason.AMOUNT_MISMATCH:
        return kind, now
    return kind, recheck_at


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
    if not outcome_is_failed(outcome):
        return Late.NOTHING
    if late in (LateRefund.REFUNDED, LateRefund.OWED):
        return Late.SETTLED
    return Late.READ_STATUS


class LateStatus(Enum):
    """What the gateway's status of a closed order asks for."""

    REFUND = "refund"  # settled after the order was closed: refund what was paid
    RECORD_REFUNDED = "record_refunded"  # our refund went through, its answer was lost
    PENDING = "pending"  # look again later
    UNPAID = "unpaid"  # nothing moved: done


def late_status(
    late: str | None,
    transaction_status: str,
    fraud_status: str | None,
    paid_amount: int | None,
    order_amount: int,
) -> LateStatus:
    status = transaction_status.lower()
    if late == LateRefund.PENDING and status in ("refund", "partial_refund"):
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


def vend_record(outcome: RefundOutcome) -> tuple[Sale, OperatorKind | None, str | None]:
    """The sales entry of a vend that did not give a drink, and what it asks of a person."""
    if outcome is RefundOutcome.REFUNDED:
        return Sale.REFUNDED, None, None
    if outcome is RefundOutcome.OWED:
        return Sale.REFUND_OWED, OperatorKind.REFUND_OWED, "refund refused or unreachable"
    return Sale.VEND_UNKNOWN, OperatorKind.VEND_UNKNOWN, "check the machine, then refund"


# --- dispenser slots ---------------------------------------------------------------------------

#: Reasons of a failed vend counted against its slot: the slot's own (the vend reached it and
#: nothing came out: JAM, NO_DROP, TIMEOUT) and the hardware's refusals that never pass on
#: their own (NO_SLOT: a menu slot with no relay or one the board does not know; ERR: the
#: board refused, e.g. `ERR bad slot 5`; SENSOR_BLOCKED: the drop sensor broken before the
#: motor ran; PORT: the board unplugged). Left uncounted, those would refund every buyer for
#: ever without telling anyone; counted, SLOT_FAIL_LIMIT of them in a row take the slot out
#: of use with the slot_disabled alert naming the last reason (an unplugged board thus
#: disables its slots one after the other, and the drinks show sold out). BUSY is not
#: counted (the board vends another order: it passes), nor is EMPTY (it marks the slot empty
#: until a refill, see below), nor a failure without a reason.
SLOT_FAULTS = frozenset({"JAM", "NO_DROP", "TIMEOUT", "NO_SLOT", "ERR", "SENSOR_BLOCKED", "PORT"})
#: The reason that marks a slot empty (until a refill of its drink, or the operator); it does
#: not count toward SLOT_FAIL_LIMIT.
EMPTY = "EMPTY"


def choose_slot(slots: Sequence[int], states: Mapping[int, SlotState]) -> int | None:
    """The slot a vend of a drink uses: its first slot neither disabled nor empty (None:
    none left, the drink is sold out whatever its stock says)."""
    for slot in slots:
        if states.get(slot, SlotState()).usable:
            return slot
    return None


def sellable(slots: Sequence[int], states: Mapping[int, SlotState]) -> bool:
    """Whether a drink can be vended now as far as its slots go (a drink with no slot
    assigned yet is left to the driver, as before slots)."""
    return not slots or choose_slot(slots, states) is not None


def slot_after_vend(
    state: SlotState, vend: Vend, reason: str | None, limit: int, now: float
) -> SlotState | None:
    """A slot's state after a vend from it (None: unchanged).

    VENDED resets its count of failures in a row (and it was not empty). FAILED for one of
    SLOT_FAULTS counts against it: `limit` failures in a row disable it. EMPTY marks it empty
    and leaves the count (and `disabled`) as they were: a refill puts it back. UNKNOWN changes
    nothing (a person looks), nor does BUSY or a failure without a reason."""
    if vend is Vend.VENDED:
        if state.fails_in_a_row == 0 and not state.empty:
            return None
        return replace(state, fails_in_a_row=0, empty=False, at=now)
    if vend is Vend.FAILED and reason == EMPTY:
        return replace(state, empty=True, last_reason=EMPTY, at=now)
    if vend is Vend.FAILED and reason in SLOT_FAULTS:
        fails = state.fails_in_a_row + 1
        return replace(
            state,
            fails_in_a_row=fails,
            disabled=state.disabled or fails >= limit,
            last_reason=str(reason),
            at=now,
        )
    return None


# --- refunds: one policy for a failed vend and a late payment ----------------------------


class RefundTry(Enum):
    """What one refund call at Midtrans came to."""

    DONE = "done"
    REFUSED = "refused"  # Midtrans said no (4xx): asking again changes nothing
    UNREACHABLE = "unreachable"  # no answer: the refund may or may not have happened


def refund_next(result: RefundTry, attempt: int) -> tuple[RefundOutcome | None, float | None]:
    """After refund attempt `attempt` (0-based): the outcome, or the pause before the next.

    Midtrans refusing is final: the refund is owed, for the operator. An unreachable gateway
    is tried again on the REFUND_RETRY_S schedule with the same refund key (the same refund
    at Midtrans), then owed. Money rule 2: refunded, or recorded.
    """
    if result is RefundTry.DONE:
        return RefundOutcome.REFUNDED, None
    if result is RefundTry.UNREACHABLE and attempt < len(REFUND_RETRY_S):
        return None, REFUND_RETRY_S[attempt]
    return RefundOutcome.OWED, None


def refund_key(order_id: str) -> str:
    """Deterministic, so a refund retried after a crash is the same refund at Midtrans."""
    return f"{order_id}-r1"


# --- the operator's queue: what a person may do about each kind of entry ---------------------

#: The resolutions each kind of entry accepts.
RESOLUTIONS: dict[OperatorKind, tuple[Resolution, ...]] = {
    OperatorKind.REFUND_OWED: (Resolution.RETRY_REFUND, Resolution.MARK_REFUNDED),
    OperatorKind.VEND_UNKNOWN: (Resolution.MARK_VENDED, Resolution.REFUND),
    OperatorKind.ORDER_MISSING: (Resolution.MARK_VENDED, Resolution.MARK_REFUNDED),
}
#: Resolutions that move money through Midtrans (money rule 2, with rules.refund_key).
REFUNDS_AT_GATEWAY = frozenset({Resolution.RETRY_REFUND, Resolution.REFUND})
#: Resolutions a person takes on their word: a note must say what they did.
NOTE_REQUIRED = frozenset({Resolution.MARK_REFUNDED})


def check_resolution(kind: str, action: str, note: str) -> str | None:
    """Why `action` cannot resolve an entry of `kind` (None: it can)."""
    allowed = RESOLUTIONS.get(OperatorKind(kind)) if kind in set(OperatorKind) else None
    if not allowed:
        return f"an entry of kind {kind!r} cannot be resolved here"
    if action not in allowed:
        names = " or ".join(allowed)
        return f"{action!r} does not resolve a {kind} entry: use {names}"
    if action in NOTE_REQUIRED and not note.strip():
        return f"{action} needs a note saying how the money went back"
    return None


def resolution_sale(action: Resolution) -> Sale:
    """The sales entry that closes an entry resolved by `action` (the money's last word)."""
    return Sale.DISPENSED if action is Resolution.MARK_VENDED else Sale.REFUNDED
