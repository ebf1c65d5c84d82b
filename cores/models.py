"""The values the machine reads from Redis: the state snapshot, a drink, an order.

Redis holds strings; these hold types. Parsing lives here, once, so that the broker and the
tests read the same way.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from constants.orders import OrderField
from constants.states import State
from constants.tunables import CAPACITY_DEFAULT_UNITS, LOW_STOCK_DEFAULT_UNITS


@dataclass(frozen=True)
class Snapshot:
    """The machine's state hash: where it is, for which order, and the frame of its screen."""

    state: State
    order_id: str | None
    version: int
    since: float
    frame: dict

    @classmethod
    def parse(cls, raw: Mapping[str, str]) -> Snapshot:
        if not raw:  # a new machine, before its first transition
            return cls(State.IDLE, None, 0, 0.0, {"event": str(State.IDLE), "values": {}})
        return cls(
            State(raw["state"]),
            raw.get("order_id") or None,
            int(raw["version"]),
            float(raw["since"]),
            json.loads(raw["frame"]),
        )


@dataclass(frozen=True)
class Drink:
    """A drink of the menu, as the operator set it (cores/catalog.py validates it).

    `slots` are the dispenser slots it is vended from, in order of preference: the first
    one usable (neither disabled nor empty, cores/rules.py `choose_slot`) vends it. Empty: not
    assigned yet, in a menu written before slots. An int given for it (the single `slot` of
    older code and menus) is read as that one slot (0: none). `capacity` is the units the
    drink's slots hold and `low_stock` the threshold of the low-stock alert.
    """

    id: str
    name: str
    icon: str
    price: int
    name_en: str = ""
    slots: tuple[int, ...] = ()
    enabled: bool = True
    capacity: int = CAPACITY_DEFAULT_UNITS
    low_stock: int = LOW_STOCK_DEFAULT_UNITS

    @classmethod
    def parse(cls, d: Mapping[str, Any]) -> Drink:
        """A drink from Redis, menu.json or an order; fields that an older entry lacks take
        their defaults (the English name: the name)."""
        name = str(d["name"])
        return cls(
            id=str(d["id"]),
            name=name,
            icon=str(d.get("icon") or ""),
            price=int(d["price"]),
            name_en=str(d.get("name_en") or name),
            slots=_slots(d),
            enabled=bool(d.get("enabled", True)),
            capacity=int(d.get("capacity", CAPACITY_DEFAULT_UNITS)),
            low_stock=int(d.get("low_stock", LOW_STOCK_DEFAULT_UNITS)),
        )

    def __post_init__(self) -> None:
        slots: Any = self.slots
        if isinstance(slots, int):
            slots = (slots,) if slots else ()
        object.__setattr__(self, "slots", tuple(int(n) for n in slots))

    @property
    def slot(self) -> int:
        """The first slot (0: none assigned)."""
        return self.slots[0] if self.slots else 0

    def public(self) -> dict:
        """What the kiosk shows (and what an order keeps of its drink)."""
        return {
            "id": self.id,
            "name": self.name,
            "name_en": self.name_en or self.name,
            "icon": self.icon,
            "price": self.price,
        }

    def record(self) -> dict:
        """Every field, as the menu hash stores it."""
        return {
            **self.public(),
            "slot": self.slot,  # read by code older than `slots`
            "slots": list(self.slots),
            "enabled": self.enabled,
            "capacity": self.capacity,
            "low_stock": self.low_stock,
        }


def _slots(d: Mapping[str, Any]) -> tuple[int, ...]:
    """A stored drink's slots: `slots` (a list), else its single `slot` (0 or absent: none)."""
    many = d.get("slots")
    if isinstance(many, list | tuple):
        return tuple(int(n) for n in many)
    one = int(d.get("slot") or 0)
    return (one,) if one else ()


@dataclass
class Order:
    """An order's hash (strings in Redis, typed here). Fields are named by OrderField."""

    order_id: str
    drink: Drink
    amount: int
    idempotency_key: str
    created_at: float
    fields: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, raw: Mapping[str, str]) -> Order | None:
        if not raw or OrderField.ORDER_ID not in raw:
            return None
        return cls(
            order_id=raw[OrderField.ORDER_ID],
            drink=Drink.parse(json.loads(raw[OrderField.DRINK])),
            amount=int(raw[OrderField.AMOUNT]),
            idempotency_key=raw[OrderField.IDEMPOTENCY_KEY],
            created_at=float(raw[OrderField.CREATED_AT]),
            fields=dict(raw),
        )

    def get(self, name: OrderField, default: str | None = None) -> str | None:
        return self.fields.get(name, default)

    def flag(self, name: OrderField) -> bool:
        return self.fields.get(name) == "1"

    def number(self, name: OrderField) -> float | None:
        raw = self.fields.get(name)
        return float(raw) if raw not in (None, "") else None

    def values(self) -> dict:
        """What every screen of an order shows."""
        return {"order_id": self.order_id, "drink": self.drink.public(), "amount": self.amount}

    def item(self) -> dict:
        """The order as one Midtrans item_details entry."""
        return {"id": self.drink.id, "price": self.amount, "quantity": 1, "name": self.drink.name}


@dataclass(frozen=True)
class SlotState:
    """A dispenser slot's health (the machine's SLOTS hash, slot -> JSON of this).

    `fails_in_a_row`: failed vends of the slot since its last good one; `disabled`: it failed
    SLOT_FAIL_LIMIT times in a row; `empty`: the board said EMPTY (until a refill of its drink
    or the operator re-enables it); `last_reason`: the reason of its last failed vend; `at`:
    when this last changed (unix s). A slot with no entry is healthy."""

    fails_in_a_row: int = 0
    disabled: bool = False
    empty: bool = False
    last_reason: str = ""
    at: float = 0.0

    @property
    def usable(self) -> bool:
        return not (self.disabled or self.empty)

    @classmethod
    def parse(cls, raw: str | None) -> SlotState:
        """An entry of the SLOTS hash; a missing or unreadable one is a healthy slot."""
        if not raw:
            return cls()
        try:
            d = json.loads(raw)
            return cls(
                int(d.get("fails_in_a_row") or 0),
                bool(d.get("disabled")),
                bool(d.get("empty")),
                str(d.get("last_reason") or ""),
                float(d.get("at") or 0.0),
            )
        except (ValueError, TypeError, AttributeError):
            return cls()

    def record(self) -> dict:
        return {
            "fails_in_a_row": self.fails_in_a_row,
            "disabled": self.disabled,
            "empty": self.empty,
            "last_reason": self.last_reason,
            "at": self.at,
        }


def slot_states(raw: Mapping[str, str]) -> dict[int, SlotState]:
    """The SLOTS hash (slot number -> JSON) typed; fields that are not slot numbers skipped."""
    return {int(k): SlotState.parse(v) for k, v in raw.items() if k.isdigit()}


def text(value: Any) -> str | int | float:
    """A value as Redis stores it: flags as "1"/"0", numbers and strings as they are, the
    rest as JSON."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int | float | str):
        return value
    return json.dumps(value)
