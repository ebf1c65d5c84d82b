"""The vending and money rules (cores/rules.py): pure functions, no fixtures."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from constants.orders import Command, OperatorKind
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
from cores import rules
from cores.rules import (
    SHOW_MENU_MOVES,
    Decision,
    Late,
    LateStatus,
    Paid,
    RefundTry,
    Refusal,
    Step,
    Vend,
    after_vend,
    charge_expiry_minutes,
    check_order,
    decide_after_close,
    decide_payment,
    judge_payment,
    kiosk_deadline,
    late_status,
    late_triage,
    poll_delay,
    refund_key,
    screen_deadline,
    stop_closing,
    wrong_state,
)

OTHER_STATES = [s for s in State if s is not State.SHOW_MENU]
NOW = 1_764_150_000.0
times = st.floats(min_value=0, max_value=4e9, allow_nan=False)
paids = st.sampled_from(list(Paid))
reasons = st.none() | st.sampled_from(list(FailReason))


# --- kiosk SHOW_MENU -------------------------------------------------------------------------


def test_show_menu_on_the_attract_screen_opens_the_menu():
    assert SHOW_MENU_MOVES[State.IDLE] is State.SHOW_MENU


def test_show_menu_on_the_menu_re_sends_the_menu():
    assert SHOW_MENU_MOVES[State.SHOW_MENU] is State.SHOW_MENU


@pytest.mark.parametrize("state", sorted(RESULT_STATES))
def test_show_menu_on_a_result_screen_dismisses_it_to_idle(state):
    assert SHOW_MENU_MOVES[state] is State.IDLE


@pytest.mark.parametrize(
    "state",
    [
        State.MENU_CLICKED,
        State.ORDER_CREATED,
        State.PAYMENT_SUCCESS,
        State.DISPENSING,
        State.OUT_OF_SERVICE,
    ],
)
def test_show_menu_is_not_possible_during_an_order_or_maintenance(state):
    assert state not in SHOW_MENU_MOVES


def test_show_menu_table_covers_every_state_exactly_once():
    allowed = set(SHOW_MENU_MOVES)
    refused = {
        State.MENU_CLICKED,
        State.ORDER_CREATED,
        State.PAYMENT_SUCCESS,
        State.DISPENSING,
        State.OUT_OF_SERVICE,
    }
    assert allowed | refused == set(State)
    assert not allowed & refused


def test_wrong_state_refusal_names_the_command_and_the_state():
    refusal = wrong_state("CANCEL", State.IDLE)
    assert refusal.code is ErrorCode.WRONG_STATE
    assert "CANCEL" in refusal.message and "IDLE" in refusal.message


# --- kiosk ORDER -----------------------------------------------------------------------------


def test_order_of_one_known_drink_in_stock_on_the_menu_is_accepted():
    assert check_order(State.SHOW_MENU, drink_known=True, stock=5, quantity=1) is None


def test_order_of_the_last_unit_is_accepted():
    assert check_order(State.SHOW_MENU, drink_known=True, stock=1, quantity=1) is None


@pytest.mark.parametrize("quantity", [0, 2, 10, -1])
def test_order_of_other_than_one_drink_is_refused_as_bad_values(quantity):
    refusal = check_order(State.SHOW_MENU, drink_known=True, stock=5, quantity=quantity)
    assert isinstance(refusal, Refusal)
    assert refusal.code is ErrorCode.BAD_VALUES


@pytest.mark.parametrize("state", OTHER_STATES)
def test_order_outside_the_menu_is_refused_as_wrong_state(state):
    refusal = check_order(state, drink_known=True, stock=5, quantity=1)
    assert refusal is not None
    assert refusal.code is ErrorCode.WRONG_STATE
    assert str(state) in refusal.message


def test_order_of_an_unknown_drink_is_refused():
    refusal = check_order(State.SHOW_MENU, drink_known=False, stock=0, quantity=1)
    assert refusal is not None
    assert refusal.code is ErrorCode.UNKNOWN_DRINK


@pytest.mark.parametrize("stock", [0, -1])
def test_order_of_a_sold_out_drink_is_refused(stock):
    refusal = check_order(State.SHOW_MENU, drink_known=True, stock=stock, quantity=1)
    assert refusal is not None
    assert refusal.code is ErrorCode.SOLD_OUT


# --- screen timers ---------------------------------------------------------------------------


def test_menu_returns_to_idle_after_menu_idle_s():
    assert screen_deadline(State.SHOW_MENU, 100.0, menu_idle_s=60, result_screen_s=5) == 160.0


@pytest.mark.parametrize("state", sorted(RESULT_STATES))
def test_result_screen_returns_to_idle_after_result_screen_s(state):
    assert screen_deadline(state, 100.0, menu_idle_s=60, result_screen_s=5) == 105.0


@pytest.mark.parametrize("state", sorted(set(State) - RESULT_STATES - {State.SHOW_MENU}))
def test_other_screens_never_time_out_on_their_own(state):
    assert screen_deadline(state, 100.0, menu_idle_s=60, result_screen_s=5) is None


# --- payment timing --------------------------------------------------------------------------


def test_first_status_check_is_fast():
    assert poll_delay(0) == PAYMENT_POLL_SCHEDULE_S[0]
    assert poll_delay(0) <= 1.0


def test_poll_schedule_backs_off_and_never_speeds_up_again():
    delays = [poll_delay(n) for n in range(50)]
    assert delays == sorted(delays)
    assert delays[-1] > delays[0]


def test_poll_schedule_caps_at_the_maximum():
    assert poll_delay(len(PAYMENT_POLL_SCHEDULE_S)) == PAYMENT_POLL_MAX_S
    assert poll_delay(10_000) == PAYMENT_POLL_MAX_S


@given(st.integers(min_value=0, max_value=1_000_000))
def test_every_poll_delay_is_positive_and_at_most_the_cap(attempt):
    assert 0 < poll_delay(attempt) <= PAYMENT_POLL_MAX_S


@pytest.mark.parametrize(("deadline_s", "minutes"), [(1, 2), (60, 2), (61, 3), (120, 3), (900, 16)])
def test_charge_expiry_is_whole_minutes_a_margin_beyond_the_kiosk_deadline(deadline_s, minutes):
    assert charge_expiry_minutes(deadline_s) == minutes
    assert isinstance(charge_expiry_minutes(deadline_s), int)


@given(st.floats(min_value=1, max_value=900))
def test_charge_never_expires_before_the_kiosk_deadline_plus_the_margin(deadline_s):
    minutes = charge_expiry_minutes(deadline_s)
    assert minutes * 60 >= deadline_s + CHARGE_EXPIRY_MARGIN_MIN * 60


def test_kiosk_deadline_is_ours_when_midtrans_gives_no_expiry():
    assert kiosk_deadline(NOW, 120, None) == NOW + 120


def test_kiosk_deadline_is_midtrans_expiry_when_that_is_sooner():
    assert kiosk_deadline(NOW, 120, NOW + 30) == NOW + 30


def test_kiosk_deadline_is_ours_when_midtrans_expires_later():
    assert kiosk_deadline(NOW, 120, NOW + 900) == NOW + 120


# --- judging a status read (money rule 1) ----------------------------------------------------


def test_settlement_of_the_right_amount_is_paid():
    assert judge_payment("settlement", None, 7000, 7000) == (Paid.PAID, None)


def test_capture_with_fraud_accept_is_paid():
    assert judge_payment("capture", "accept", 7000, 7000) == (Paid.PAID, None)


@pytest.mark.parametrize("fraud", ["challenge", None, ""])
def test_capture_without_fraud_accept_is_not_paid_yet(fraud):
    assert judge_payment("capture", fraud, 7000, 7000) == (Paid.PENDING, None)


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        ("deny", FailReason.DENIED),
        ("failure", FailReason.DENIED),
        ("cancel", FailReason.CANCELLED),
        ("expire", FailReason.EXPIRED),
    ],
)
def test_final_unpaid_statuses_are_unpaid_with_their_reason(status, reason):
    assert judge_payment(status, None, 7000, 7000) == (Paid.UNPAID, reason)


@pytest.mark.parametrize("status", ["refund", "partial_refund"])
def test_a_refunded_transaction_is_never_paid(status):
    paid, reason = judge_payment(status, None, 7000, 7000)
    assert paid is Paid.UNPAID
    assert reason is FailReason.GATEWAY_REFUSED


@pytest.mark.parametrize("status", ["pending", "authorize", "something_new"])
def test_pending_and_unknown_statuses_keep_waiting(status):
    assert judge_payment(status, None, None, 7000) == (Paid.PENDING, None)


@pytest.mark.parametrize("amount", [6999, 7001, 14000, None])
def test_settlement_of_another_amount_is_a_mismatch_not_a_payment(amount):
    assert judge_payment("settlement", None, amount, 7000) == (
        Paid.MISMATCH,
        FailReason.AMOUNT_MISMATCH,
    )


def test_capture_accept_of_another_amount_is_a_mismatch():
    assert judge_payment("capture", "accept", 1, 7000)[0] is Paid.MISMATCH


@pytest.mark.parametrize(
    ("status", "fraud", "expected"),
    [
        ("SETTLEMENT", None, Paid.PAID),
        ("Settlement", "ACCEPT", Paid.PAID),
        ("CAPTURE", "Accept", Paid.PAID),
        ("Capture", "CHALLENGE", Paid.PENDING),
        ("DENY", None, Paid.UNPAID),
        ("Expire", None, Paid.UNPAID),
    ],
)
def test_status_and_fraud_status_are_read_case_insensitively(status, fraud, expected):
    assert judge_payment(status, fraud, 7000, 7000)[0] is expected


# --- watching a payment ----------------------------------------------------------------------


def test_paid_succeeds_even_with_a_cancel_requested_past_the_deadline():
    decision = decide_payment(
        NOW + 500, NOW, cancel_requested=True, paid=Paid.PAID, reason=None, next_check=NOW + 501
    )
    assert decision == Decision(Step.SUCCEED)


def test_amount_mismatch_fails_the_order():
    decision = decide_payment(
        NOW, NOW + 60, False, Paid.MISMATCH, FailReason.AMOUNT_MISMATCH, NOW + 1
    )
    assert decision == Decision(Step.FAIL, FailReason.AMOUNT_MISMATCH)


@pytest.mark.parametrize("reason", [FailReason.DENIED, FailReason.EXPIRED, FailReason.CANCELLED])
def test_final_unpaid_status_fails_with_its_reason(reason):
    decision = decide_payment(NOW, NOW + 60, False, Paid.UNPAID, reason, NOW + 1)
    assert decision == Decision(Step.FAIL, reason)


def test_cancel_requested_while_pending_closes_the_order_as_cancelled():
    decision = decide_payment(NOW, NOW + 60, True, Paid.PENDING, None, NOW + 1)
    assert decision.step is Step.CLOSE
    assert decision.reason is FailReason.CANCELLED


def test_deadline_reached_while_pending_closes_the_order_as_timeout():
    decision = decide_payment(NOW + 60, NOW + 60, False, Paid.PENDING, None, NOW + 61)
    assert decision.step is Step.CLOSE
    assert decision.reason is FailReason.TIMEOUT


def test_cancel_requested_past_the_deadline_is_reported_as_cancelled():
    decision = decide_payment(NOW + 61, NOW + 60, True, Paid.PENDING, None, NOW + 62)
    assert decision == Decision(Step.CLOSE, FailReason.CANCELLED)


def test_waits_until_the_next_check_when_it_comes_before_the_deadline():
    decision = decide_payment(NOW, NOW + 60, False, Paid.PENDING, None, NOW + 2)
    assert decision == Decision(Step.WAIT, at=NOW + 2)


def test_waits_only_until_the_deadline_when_the_next_check_is_later():
    decision = decide_payment(NOW + 59, NOW + 60, False, Paid.PENDING, None, NOW + 69)
    assert decision == Decision(Step.WAIT, at=NOW + 60)


@given(now=times, deadline=times, cancel=st.booleans(), next_check=times, reason=reasons)
def test_paid_always_succeeds_never_fails_nor_closes(now, deadline, cancel, next_check, reason):
    decision = decide_payment(now, deadline, cancel, Paid.PAID, reason, next_check)
    assert decision.step is Step.SUCCEED


@given(now=times, deadline=times, cancel=st.booleans(), paid=paids, next_check=times, r=reasons)
def test_only_paid_ever_succeeds(now, deadline, cancel, paid, next_check, r):
    decision = decide_payment(now, deadline, cancel, paid, r, next_check)
    assert (decision.step is Step.SUCCEED) == (paid is Paid.PAID)


@given(now=times, deadline=times, cancel=st.booleans(), next_check=times)
def test_pending_is_never_failed_directly_and_waits_no_later_than_the_deadline(
    now, deadline, cancel, next_check
):
    decision = decide_payment(now, deadline, cancel, Paid.PENDING, None, next_check)
    assert decision.step is not Step.FAIL
    if decision.step is Step.WAIT:
        assert decision.at == min(next_check, deadline)
        assert now < deadline and not cancel


# --- after closing at Midtrans (money rule 3) ------------------------------------------------


@pytest.mark.parametrize("closing", [FailReason.CANCELLED, FailReason.TIMEOUT])
def test_payment_settled_during_the_close_is_honoured(closing):
    assert decide_after_close(Paid.PAID, None, closing, NOW) == Decision(Step.SUCCEED)


@pytest.mark.parametrize("closing", [FailReason.CANCELLED, FailReason.TIMEOUT])
@pytest.mark.parametrize("gateway_reason", [FailReason.CANCELLED, FailReason.EXPIRED])
def test_closed_unpaid_order_fails_with_the_reason_we_closed_it(closing, gateway_reason):
    assert decide_after_close(Paid.UNPAID, gateway_reason, closing, NOW) == Decision(
        Step.FAIL, closing
    )


def test_denied_during_the_close_stays_denied():
    decision = decide_after_close(Paid.UNPAID, FailReason.DENIED, FailReason.TIMEOUT, NOW)
    assert decision == Decision(Step.FAIL, FailReason.DENIED)


def test_amount_mismatch_after_the_close_fails_as_mismatch():
    decision = decide_after_close(
        Paid.MISMATCH, FailReason.AMOUNT_MISMATCH, FailReason.CANCELLED, NOW
    )
    assert decision == Decision(Step.FAIL, FailReason.AMOUNT_MISMATCH)


@pytest.mark.parametrize("paid", [None, Paid.PENDING])
@pytest.mark.parametrize("closing", [FailReason.CANCELLED, FailReason.TIMEOUT])
def test_unreadable_or_still_pending_after_close_is_closed_again_later(paid, closing):
    decision = decide_after_close(paid, None, closing, NOW)
    assert decision == Decision(Step.CLOSE, closing, at=NOW + CLOSE_RETRY_S)


@given(
    paid=st.sampled_from([None, Paid.PENDING]),
    reason=reasons,
    closing=st.sampled_from([FailReason.CANCELLED, FailReason.TIMEOUT]),
    now=times,
)
def test_never_fails_an_order_whose_qr_may_still_be_paid(paid, reason, closing, now):
    decision = decide_after_close(paid, reason, closing, now)
    assert decision.step is Step.CLOSE
    assert decision.at is not None and decision.at > now


@given(paid=st.none() | paids, reason=reasons, closing=st.sampled_from(list(FailReason)), now=times)
def test_after_close_succeeds_exactly_when_paid(paid, reason, closing, now):
    decision = decide_after_close(paid, reason, closing, now)
    assert (decision.step is Step.SUCCEED) == (paid is Paid.PAID)
    assert decision.step is not Step.WAIT


# --- dispensing (money rules 2 and 6) --------------------------------------------------------


def test_vended_is_dispensed_without_refund():
    assert after_vend(Vend.VENDED) == (State.DISPENSED, False, None)


def test_failed_vend_is_refunded():
    state, refund, outcome = after_vend(Vend.FAILED)
    assert state is State.DISPENSE_FAILED
    assert refund is True
    assert outcome is None


def test_unknown_vend_goes_to_the_operator_neither_refunded_nor_re_vended():
    assert after_vend(Vend.UNKNOWN) == (State.DISPENSE_FAILED, False, RefundOutcome.VEND_UNKNOWN)


def test_refund_key_is_the_same_for_the_same_order():
    assert refund_key("vm-1-20261126100000-000001-ab12") == refund_key(
        "vm-1-20261126100000-000001-ab12"
    )


def test_refund_keys_of_different_orders_differ():
    assert refund_key("vm-1-a") != refund_key("vm-1-b")
    assert refund_key("vm-1-a").startswith("vm-1-a")


def test_closing_is_given_up_only_past_the_charge_expiry_plus_grace():
    assert not stop_closing(1000.0, None, 60)  # expiry unknown: never
    assert not stop_closing(1000.0, 950.0, 60)
    assert stop_closing(1010.0, 950.0, 60)


@pytest.mark.parametrize(
    ("on_screen", "outcome", "late", "expected"),
    [
        (True, None, None, Late.WAKE_WORKER),
        (True, "failed:timeout", None, Late.WAKE_WORKER),
        (False, None, None, Late.NOTHING),
        (False, "dispensed", None, Late.NOTHING),
        (False, "dispense_failed:refunded", None, Late.NOTHING),
        (False, "failed:cancelled", None, Late.READ_STATUS),
        (False, "failed:amount_mismatch", "pending", Late.READ_STATUS),
        (False, "failed:cancelled", "refunded", Late.SETTLED),
        (False, "failed:cancelled", "owed", Late.SETTLED),
    ],
)
def test_late_triage_reads_the_gateway_only_for_orders_closed_as_failed(
    on_screen, outcome, late, expected
):
    assert late_triage(on_screen, outcome, late) is expected


@pytest.mark.parametrize(
    ("late", "status", "fraud", "paid", "expected"),
    [
        (None, "settlement", None, 7000, LateStatus.REFUND),
        (None, "settlement", None, 6000, LateStatus.REFUND),  # wrong amount: still refunded
        (None, "capture", "accept", 7000, LateStatus.REFUND),
        (None, "capture", "challenge", 7000, LateStatus.PENDING),
        (None, "pending", None, 7000, LateStatus.PENDING),
        (None, "cancel", None, 7000, LateStatus.UNPAID),
        (None, "expire", None, 7000, LateStatus.UNPAID),
        ("pending", "refund", None, 7000, LateStatus.RECORD_REFUNDED),
        ("pending", "partial_refund", None, 7000, LateStatus.RECORD_REFUNDED),
        ("pending", "settlement", None, 7000, LateStatus.REFUND),  # re-send the same refund
    ],
)
def test_late_status_refunds_any_settlement_of_a_closed_order(late, status, fraud, paid, expected):
    assert late_status(late, status, fraud, paid, 7000) is expected


# --- the order on screen: schedule and steps ------------------------------------------------


def test_a_new_order_gets_a_fresh_schedule_and_its_first_read_soon():
    watch = rules.watch_schedule(None, "o-1", 100.0, set(), closing=False)
    assert watch == rules.Watch("o-1", 0, 100.0 + rules.poll_delay(0))
    other = rules.watch_schedule(watch, "o-2", 200.0, set(), closing=False)
    assert other.order_id == "o-2" and other.checks == 0


def test_a_notification_or_a_cancel_cuts_the_wait_short():
    watch = rules.Watch("o-1", 3, 150.0)
    for command in (Command.CHECK, Command.CANCEL):
        assert (
            rules.watch_schedule(watch, "o-1", 110.0, {command}, closing=False).next_check == 110.0
        )


def test_while_closing_only_news_from_the_gateway_cuts_the_wait_short():
    watch = rules.Watch("o-1", 3, 150.0)
    assert (
        rules.watch_schedule(watch, "o-1", 110.0, {Command.CANCEL}, closing=True).next_check
        == 150.0
    )
    assert (
        rules.watch_schedule(watch, "o-1", 110.0, {Command.CHECK}, closing=True).next_check == 110.0
    )


def test_each_read_backs_the_next_one_off():
    watch = rules.Watch("o-1", 0, 100.0)
    for checks in range(1, 10):
        watch = rules.after_read(watch, 100.0)
        assert watch.checks == checks
        assert watch.next_check == 100.0 + rules.poll_delay(checks)


@pytest.mark.parametrize(
    ("now", "cancel", "step", "at"),
    [
        (100.0, False, Step.WAIT, 105.0),  # next read at 105, deadline at 120
        (105.0, False, Step.READ, None),  # the read is due
        (100.0, True, Step.READ, None),  # a cancel: read now, then close
        (121.0, False, Step.READ, None),  # past the deadline: read once more before closing
    ],
)
def test_before_any_call_the_worker_waits_or_reads(now, cancel, step, at):
    decision = rules.next_payment_step(now, rules.Watch("o-1", 1, 105.0), 120.0, cancel, None)
    assert decision.step is step and decision.at == at


def test_a_closing_order_is_cancelled_again_on_its_schedule():
    watch = rules.Watch("o-1", 1, 105.0)
    assert rules.next_payment_step(100.0, watch, 120.0, False, FailReason.TIMEOUT) == Decision(
        Step.WAIT, at=105.0
    )
    assert rules.next_payment_step(105.0, watch, 120.0, False, FailReason.TIMEOUT) == Decision(
        Step.CLOSE, FailReason.TIMEOUT
    )


def test_an_unconfirmed_close_is_retried_until_the_charge_expiry_and_grace_pass():
    retry = Decision(Step.CLOSE, FailReason.TIMEOUT, at=102.0)
    assert rules.closing_outcome(retry, 100.0, 1000.0, transaction_found=False) == retry
    after = 1000.0 + RECHECK_AFTER_EXPIRY_S
    assert rules.closing_outcome(retry, after, 1000.0, transaction_found=False) == Decision(
        Step.FAIL, FailReason.GATEWAY_UNREACHABLE, recheck_at=after
    )


def test_a_close_of_a_transaction_midtrans_does_not_know_is_read_once_more_later():
    failed = Decision(Step.FAIL, FailReason.TIMEOUT)
    assert (
        rules.closing_outcome(failed, 100.0, 1000.0, transaction_found=False).recheck_at
        == 100.0 + RECHECK_EVERY_S
    )
    assert rules.closing_outcome(failed, 100.0, 1000.0, transaction_found=True) == failed
    paid = Decision(Step.SUCCEED)
    assert rules.closing_outcome(paid, 100.0, 1000.0, transaction_found=True) == paid


@pytest.mark.parametrize(
    ("code", "step", "reason", "recorded"),
    [
        (None, Step.CLOSE, FailReason.GATEWAY_UNREACHABLE, True),
        ("406", Step.CLOSE, FailReason.GATEWAY_REFUSED, False),
        ("400", Step.FAIL, FailReason.GATEWAY_REFUSED, True),
        ("500", Step.FAIL, FailReason.GATEWAY_REFUSED, True),
    ],
)
def test_a_failed_charge_is_closed_where_it_may_exist_and_failed_where_it_cannot(
    code, step, reason, recorded
):
    decision, record = rules.charge_error(code)
    assert (decision.step, decision.reason, record) == (step, reason, recorded)


def test_closing_a_charge_nobody_saw_fails_at_once_and_rechecks_after_its_expiry():
    unconfirmed = Decision(Step.CLOSE, FailReason.GATEWAY_UNREACHABLE, at=102.0)
    decision = rules.unseen_charge_outcome(
        unconfirmed, FailReason.GATEWAY_UNREACHABLE, 100.0, payment_deadline_s=60
    )
    expiry_s = rules.charge_expiry_minutes(60) * 60
    assert decision == Decision(
        Step.FAIL,
        FailReason.GATEWAY_UNREACHABLE,
        recheck_at=100.0 + expiry_s + RECHECK_AFTER_EXPIRY_S,
    )


def test_closing_a_charge_nobody_saw_says_why_we_closed_it_and_honours_a_payment():
    cancelled = Decision(Step.FAIL, FailReason.CANCELLED)
    assert rules.unseen_charge_outcome(
        cancelled, FailReason.GATEWAY_REFUSED, 100.0, 60
    ) == Decision(Step.FAIL, FailReason.GATEWAY_REFUSED)
    for kept in (Decision(Step.SUCCEED), Decision(Step.FAIL, FailReason.AMOUNT_MISMATCH)):
        assert rules.unseen_charge_outcome(kept, FailReason.GATEWAY_REFUSED, 100.0, 60) == kept


@pytest.mark.parametrize(
    ("reason", "kind", "recheck"),
    [
        (FailReason.CANCELLED, Sale.CANCELLED, None),
        (FailReason.TIMEOUT, Sale.PAYMENT_FAILED, None),
        (FailReason.AMOUNT_MISMATCH, Sale.PAYMENT_FAILED, 100.0),  # refunded at once
    ],
)
def test_a_failed_payment_is_recorded_by_its_reason(reason, kind, recheck):
    assert rules.failure_record(reason, 100.0, None) == (kind, recheck)


def test_a_failure_keeps_a_recheck_it_was_given():
    assert rules.failure_record(FailReason.TIMEOUT, 100.0, 500.0) == (Sale.PAYMENT_FAILED, 500.0)


# --- a vend that gave no drink, and refunds -------------------------------------------------


@pytest.mark.parametrize(
    ("outcome", "kind", "operator"),
    [
        (RefundOutcome.REFUNDED, Sale.REFUNDED, None),
        (RefundOutcome.OWED, Sale.REFUND_OWED, OperatorKind.REFUND_OWED),
        (RefundOutcome.VEND_UNKNOWN, Sale.VEND_UNKNOWN, OperatorKind.VEND_UNKNOWN),
    ],
)
def test_a_vend_without_a_drink_is_recorded_and_goes_to_a_person_unless_refunded(
    outcome, kind, operator
):
    recorded, asks, _detail = rules.vend_record(outcome)
    assert (recorded, asks) == (kind, operator)


def test_a_refund_that_went_through_is_done_and_one_midtrans_refused_is_owed_at_once():
    assert rules.refund_next(RefundTry.DONE, 0) == (RefundOutcome.REFUNDED, None)
    assert rules.refund_next(RefundTry.REFUSED, 0) == (RefundOutcome.OWED, None)


def test_an_unreachable_gateway_is_retried_on_the_schedule_then_the_refund_is_owed():
    pauses = []
    attempt = 0
    while True:
        outcome, pause = rules.refund_next(RefundTry.UNREACHABLE, attempt)
        if outcome is not None:
            break
        pauses.append(pause)
        attempt += 1
    assert outcome is RefundOutcome.OWED
    assert tuple(pauses) == REFUND_RETRY_S
