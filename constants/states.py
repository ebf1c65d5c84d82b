"""Machine states, websocket event names and the reasons a screen can show.

The state names MENU_CLICKED, ORDER_CREATED, PAYMENT_SUCCESS, PAYMENT_FAILED and IDLE, and the
kiosk events SHOW_MENU and ORDER, come from the original design (shared/DESIGN.md) and stay.
"""

from enum import StrEnum


class State(StrEnum):
    """Where the machine is; each state is also the name of the frame its screen draws."""

    IDLE = "IDLE"
    SHOW_MENU = "SHOW_MENU"
    MENU_CLICKED = "MENU_CLICKED"
    ORDER_CREATED = "ORDER_CREATED"
    PAYMENT_SUCCESS = "PAYMENT_SUCCESS"
    DISPENSING = "DISPENSING"
    DISPENSED = "DISPENSED"
    PAYMENT_FAILED = "PAYMENT_FAILED"
    DISPENSE_FAILED = "DISPENSE_FAILED"
    OUT_OF_SERVICE = "OUT_OF_SERVICE"


#: Result screens: back to IDLE after RESULT_SCREEN_S, or at once on a tap.
RESULT_STATES = frozenset({State.DISPENSED, State.PAYMENT_FAILED, State.DISPENSE_FAILED})

#: States in which an order exists and money may be involved.
ORDER_STATES = frozenset(
    {State.MENU_CLICKED, State.ORDER_CREATED, State.PAYMENT_SUCCESS, State.DISPENSING}
)


class ClientEvent(StrEnum):
    """Frames a kiosk page may send. Anything else is refused with ERROR."""

    SHOW_MENU = "SHOW_MENU"
    ORDER = "ORDER"
    CANCEL = "CANCEL"


#: The frame the server sends to one page when it refuses that page's frame.
ERROR_EVENT = "ERROR"


class ErrorCode(StrEnum):
    """The `code` of an ERROR frame."""

    MALFORMED_FRAME = "malformed_frame"
    UNKNOWN_EVENT = "unknown_event"
    BAD_VALUES = "bad_values"
    UNKNOWN_DRINK = "unknown_drink"
    SOLD_OUT = "sold_out"
    WRONG_STATE = "wrong_state"
    RATE_LIMITED = "rate_limited"
    UNAVAILABLE = "unavailable"


class FailReason(StrEnum):
    """Why a payment failed: the `reason` of a PAYMENT_FAILED frame (the page translates it)."""

    CANCELLED = "cancelled"
    TIMEOUT = "timeout"
    DENIED = "denied"
    EXPIRED = "expired"
    GATEWAY_UNREACHABLE = "gateway_unreachable"
    GATEWAY_REFUSED = "gateway_refused"
    AMOUNT_MISMATCH = "amount_mismatch"


class RefundOutcome(StrEnum):
    """What became of the money of a paid order that was not vended (DISPENSE_FAILED frame)."""

    REFUNDED = "refunded"
    OWED = "owed"
    VEND_UNKNOWN = "vend_unknown"


class Sale(StrEnum):
    """Kinds of entries in the append-only sales/audit stream."""

    ORDERED = "ordered"
    CHARGED = "charged"
    CHARGE_FAILED = "charge_failed"
    PAID = "paid"
    CANCELLED = "cancelled"
    PAYMENT_FAILED = "payment_failed"
    DISPENSED = "dispensed"
    DISPENSE_FAILED = "dispense_failed"
    REFUNDED = "refunded"
    REFUND_OWED = "refund_owed"
    VEND_UNKNOWN = "vend_unknown"
    LATE_PAYMENT = "late_payment"
