"""The machine's state machine, as data: every legal move and what may go with it.

Each entry of TRANSITIONS is a move (from -> to) and the side effects that may be written in
the same MULTI as the new state:

    SALE       an entry in the append-only sales stream (money rule 5)
    ORDER      fields of the order's hash (outcome, times, the QR screen, ...)
    STOCK      one unit taken from the drink's stock
    OPERATOR   an entry in the operator's queue (refund owed, vend outcome unknown)
    RECHECK    the order put in the recheck set (money rule 4)

`Broker.transition` checks every Transition against this table and raises IllegalTransition
for a move or an effect it does not list: that is a bug in the caller, never a customer's
doing. A move that is legal but no longer applies (the machine moved on) is refused quietly
by the compare-and-set instead. The README's state diagram is `diagram()` (tests compare).

Money-moving steps (`must_be_durable`): on a Redis with replicas (fleet mode on a cluster)
these are acknowledged only once a replica holds them (cores/broker.py, "Durability"): a
transition to PAYMENT_SUCCESS (paid), DISPENSING (a vend may start on it) or DISPENSED, and
any step whose sales entry is a refund, a refund owed, a late payment or the failed vend
recorded before its refund is sent (DURABLE_SALES).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

from constants.states import RESULT_STATES, Sale, State


class Effect(StrEnum):
    SALE = "sale"
    ORDER = "order"
    STOCK = "stock"
    OPERATOR = "operator"
    RECHECK = "recheck"


class IllegalTransition(Exception):
    """A transition the state machine does not have (a programming error)."""


S = State
_NONE: frozenset[Effect] = frozenset()
_CLOSE = frozenset({Effect.SALE, Effect.ORDER, Effect.RECHECK, Effect.OPERATOR})
#: The result screens in a fixed order (RESULT_STATES is a set), so the table reads the same
#: in every process.
_RESULTS = tuple(sorted(RESULT_STATES))

#: (from, to) -> the effects that may go with it. The comment says who makes the move.
TRANSITIONS: Final[Mapping[tuple[State, State], frozenset[Effect]]] = {
    (S.IDLE, S.IDLE): _NONE,  # a new machine's first state
    (S.IDLE, S.SHOW_MENU): _NONE,  # kiosk SHOW_MENU
    (S.SHOW_MENU, S.SHOW_MENU): _NONE,  # kiosk SHOW_MENU on the menu: re-sent
    (S.SHOW_MENU, S.IDLE): _NONE,  # kiosk CANCEL, or SCREEN after MENU_IDLE_S
    (S.SHOW_MENU, S.MENU_CLICKED): frozenset({Effect.SALE, Effect.ORDER}),  # kiosk ORDER
    (S.MENU_CLICKED, S.ORDER_CREATED): frozenset({Effect.SALE, Effect.ORDER}),  # ORDER
    (S.MENU_CLICKED, S.PAYMENT_FAILED): _CLOSE,  # ORDER: refused, cancelled or unreachable
    (S.MENU_CLICKED, S.PAYMENT_SUCCESS): frozenset({Effect.SALE, Effect.ORDER}),  # ORDER
    (S.ORDER_CREATED, S.ORDER_CREATED): frozenset({Effect.ORDER}),  # ORDER_CREATED: closing
    (S.ORDER_CREATED, S.PAYMENT_SUCCESS): frozenset({Effect.SALE, Effect.ORDER}),
    (S.ORDER_CREATED, S.PAYMENT_FAILED): _CLOSE,  # ORDER_CREATED: failed, cancelled, timeout
    (S.PAYMENT_SUCCESS, S.DISPENSING): frozenset({Effect.ORDER}),  # DISPENSE, before the vend
    (S.PAYMENT_SUCCESS, S.DISPENSE_FAILED): frozenset({Effect.OPERATOR}),  # order record gone
    (S.DISPENSING, S.DISPENSED): frozenset({Effect.SALE, Effect.ORDER, Effect.STOCK}),
    (S.DISPENSING, S.DISPENSE_FAILED): frozenset({Effect.SALE, Effect.ORDER, Effect.OPERATOR}),
    **{(result, S.IDLE): _NONE for result in _RESULTS},  # a tap, or SCREEN's timer
    **{(frm, S.OUT_OF_SERVICE): _NONE for frm in (S.IDLE, S.SHOW_MENU, *_RESULTS)},
    (S.OUT_OF_SERVICE, S.IDLE): _NONE,  # operator: back in service
}

#: Operator maintenance is possible from these states (no customer in the middle of a sale).
OUT_OF_SERVICE_FROM: Final = tuple(frm for frm, to in TRANSITIONS if to is S.OUT_OF_SERVICE)


#: A transition to one of these is acknowledged only once a replica holds it: PAYMENT_SUCCESS
#: (the customer paid: lost, the DISPENSE worker could not vend), DISPENSING (the agent may vend
#: on it: lost, the order would be vended again), DISPENSED (stock and the sales record).
DURABLE_STATES: Final = frozenset({S.PAYMENT_SUCCESS, S.DISPENSING, S.DISPENSED})
#: A step (a transition, or Broker.record_sale) whose sales entry is one of these waits too: a
#: refund made or owed, a late payment found, and a failed vend recorded before its refund.
DURABLE_SALES: Final = frozenset(
    {Sale.REFUNDED, Sale.REFUND_OWED, Sale.LATE_PAYMENT, Sale.DISPENSE_FAILED}
)


def must_be_durable(to: State | None, sale_kind: str | None) -> bool:
    """Whether a step moving to `to` (None: no transition) with a sales entry of `sale_kind`
    (None: none) moves money, and so waits for a replica (Broker durability)."""
    return to in DURABLE_STATES or (sale_kind is not None and sale_kind in DURABLE_SALES)


class _Keep:
    def __repr__(self) -> str:
        return "KEEP"


#: Transition.new_order_id default: the state keeps naming the same order.
KEEP: Final = _Keep()


@dataclass(frozen=True)
class Effects:
    """What is written with a transition, in the same MULTI."""

    sale: Mapping[str, Any] | None = None  # {"kind": Sale, ...}
    order_fields: Mapping[str, Any] | None = None  # OrderField -> value
    stock_drink: str | None = None  # take one unit of this drink
    operator: Mapping[str, Any] | None = None  # {"kind": OperatorKind, ...}
    recheck_at: float | None = None  # unix s: when to read the payment again

    def kinds(self) -> frozenset[Effect]:
        present = {
            Effect.SALE: self.sale,
            Effect.ORDER: self.order_fields,
            Effect.STOCK: self.stock_drink,
            Effect.OPERATOR: self.operator,
            Effect.RECHECK: self.recheck_at,
        }
        return frozenset(kind for kind, value in present.items() if value is not None)


@dataclass(frozen=True)
class Transition:
    """One compare-and-set: from one of `from_states` naming `order_id`, to `to`, showing
    `values`. `expect_version` also pins the exact version (a timer that a tap restarted)."""

    to: State
    from_states: tuple[State, ...]
    order_id: str | None
    values: Any
    effects: Effects = field(default_factory=Effects)
    new_order_id: str | None | _Keep = KEEP
    expect_version: int | None = None

    @property
    def durable(self) -> bool:
        """A money-moving move: acknowledged only once a replica holds it."""
        kind = self.effects.sale.get("kind") if self.effects.sale else None
        return must_be_durable(self.to, None if kind is None else str(kind))

    @property
    def next_order_id(self) -> str | None:
        return self.order_id if isinstance(self.new_order_id, _Keep) else self.new_order_id

    def check(self) -> None:
        """Raise IllegalTransition unless every move and effect is in TRANSITIONS."""
        if not self.from_states:
            raise IllegalTransition(f"transition to {self.to} from no state")
        kinds = self.effects.kinds()
        for frm in self.from_states:
            allowed = TRANSITIONS.get((frm, self.to))
            if allowed is None:
                raise IllegalTransition(f"{frm} -> {self.to} is not a move of the machine")
            if not kinds <= allowed:
                extra = ", ".join(sorted(kinds - allowed))
                raise IllegalTransition(f"{frm} -> {self.to} cannot write {extra}")


def moves_from(state: State) -> list[State]:
    return [to for frm, to in TRANSITIONS if frm is state]


def diagram(table: Iterable[tuple[tuple[State, State], frozenset[Effect]]] | None = None) -> str:
    """The table as text: one line per move with its effects (the README's "States")."""
    rows = list(table if table is not None else TRANSITIONS.items())
    width = max(len(frm) for (frm, _), _ in rows)
    to_width = max(len(to) for (_, to), _ in rows)
    lines = []
    for (frm, to), effects in rows:
        what = ", ".join(e for e in Effect if e in effects) or "-"
        lines.append(f"{frm:<{width}} -> {to:<{to_width}}  {what}".rstrip())
    return "\n".join(lines)


if __name__ == "__main__":
    print(diagram())
