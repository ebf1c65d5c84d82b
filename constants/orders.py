"""What crosses process boundaries about an order: worker commands, the fields of an order's
hash, and the outcomes written there (shared/DESIGN.md, "Redis keys")."""

from enum import StrEnum


class Command(StrEnum):
    """Hints to the workers on the commands stream; the truth stays in the state and order."""

    CANCEL = "CANCEL"  # the kiosk asked to cancel the order on screen
    CHECK = "CHECK"  # a notification arrived: read the payment now
    RECHECK = "RECHECK"  # an order was put in the recheck set


class OrderField(StrEnum):
    """The fields of an order's hash (`vm:{id}:order:{order_id}`)."""

    ORDER_ID = "order_id"
    DRINK = "drink"  # JSON of the drink as it was on the menu when ordered
    AMOUNT = "amount"  # Rupiah, the price when ordered
    IDEMPOTENCY_KEY = "idempotency_key"  # of the charge, stored before it is sent (rule 5)
    CREATED_AT = "created_at"
    CHARGE_SENT = "charge_sent"  # "1" once a charge may exist at Midtrans
    PAYMENT_TYPE = "payment_type"
    TRANSACTION_ID = "transaction_id"
    EXPIRES_AT = "expires_at"  # the kiosk's deadline (unix s)
    GATEWAY_EXPIRY = "gateway_expiry"  # the charge's own expiry at Midtrans (unix s)
    FRAME_VALUES = "frame_values"  # JSON of the ORDER_CREATED screen
    CANCEL_REQUESTED = "cancel_requested"  # "1": the customer tapped Cancel
    CLOSING = "closing"  # a FailReason: being cancelled at Midtrans for this reason
    OUTCOME = "outcome"  # see Outcome
    PAID_AT = "paid_at"
    CLOSED_AT = "closed_at"
    VEND_STARTED_AT = "vend_started_at"
    #: The dispenser slot chosen for the vend at PAYMENT_SUCCESS -> DISPENSING (rules.choose_slot);
    #: "0": none of the drink's slots could vend: failed and refunded, never vended.
    SLOT = "slot"
    #: Fleet mode: DISPENSING known to be held by a replica at (unix s); the gateway asks the
    #: agent to vend only once it is set, and the vend's deadline runs from it.
    VEND_DURABLE_AT = "vend_durable_at"
    DISPENSE_FAILED_RECORDED = "dispense_failed_recorded"  # "1": the sale entry is written
    LATE = "late"  # see LateRefund
    #: The refund key of an operator's refund through Midtrans once its sales entry is written:
    #: the same refund answered twice (Midtrans replays a repeated key) is recorded once.
    REFUND_RECORDED = "refund_recorded"


class Outcome(StrEnum):
    """How an order ended (OrderField.OUTCOME). The failures carry a reason after a colon."""

    PAID = "paid"
    DISPENSED = "dispensed"
    FAILED = "failed"  # "failed:<FailReason>"
    DISPENSE_FAILED = "dispense_failed"  # "dispense_failed:<RefundOutcome>"

    def detail(self, why: str) -> str:
        return f"{self}:{why}"


def outcome_is_failed(outcome: str | None) -> bool:
    """A payment that failed (as opposed to paid, vended, or a failed vend)."""
    return (outcome or "").startswith(f"{Outcome.FAILED}:")


class LateRefund(StrEnum):
    """The refund of a payment that settled after its order was closed (OrderField.LATE)."""

    PENDING = "pending"  # found and recorded; the refund is under way
    REFUNDED = "refunded"
    OWED = "owed"  # Midtrans refused it: the operator refunds by hand


class OperatorKind(StrEnum):
    """What an entry of the operator's queue asks of a person."""

    REFUND_OWED = "refund_owed"
    VEND_UNKNOWN = "vend_unknown"
    ORDER_MISSING = "order_missing"


class Resolution(StrEnum):
    """What a person does about an entry of the operator's queue (cores.rules.RESOLUTIONS)."""

    RETRY_REFUND = "retry_refund"  # the refund again at Midtrans, with the same refund key
    MARK_REFUNDED = "mark_refunded"  # refunded by hand (a note says how)
    MARK_VENDED = "mark_vended"  # the drink did come out
    REFUND = "refund"  # the drink did not come out: refund at Midtrans
