"""The menu as the operator edits it: validation, slots, stock levels, and what a change is.

Pure: values in, a Drink (or InvalidInput naming the field) out; no Redis. The console's forms
and `main.py menu import` both go through `parse_drink`, so a value refused on one is refused
on the other (issue "Bad input": clear error, nothing changed).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from constants.tunables import (
    CAPACITY_DEFAULT_UNITS,
    CAPACITY_MAX_UNITS,
    DRINK_NAME_MAX_CHARS,
    LOW_STOCK_DEFAULT_UNITS,
    PRICE_MAX_IDR,
    SLOTS_MAX,
)
from cores import rules
from cores.console_errors import InvalidInput
from cores.models import Drink, SlotState

DRINK_ID = re.compile(r"^[a-z0-9_-]{1,32}$")
#: An icon is a file under web/assets (the kiosk serves web/), or nothing.
ICON = re.compile(
    r"^assets/(?:[A-Za-z0-9_-][A-Za-z0-9_.-]*/)*[A-Za-z0-9_-][A-Za-z0-9_.-]*"
    r"\.(?:svg|png|jpg|jpeg|webp|gif)$"
)
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
#: The fields of a drink in the order `menu_changes` reports them.
FIELDS = ("name", "name_en", "icon", "price", "slots", "enabled", "capacity", "low_stock")


def whole_number(field: str, value: Any, low: int, high: int, what: str) -> int:
    """`value` (an int, or its digits as text) within low..high, else InvalidInput."""
    # ASCII digits only: int() would also read other scripts' digits.
    digits = isinstance(value, str) and re.fullmatch(r"\s*[0-9]{1,12}\s*", value)
    integral = (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value == int(value)
    )
    number = int(value) if digits or integral else None
    if number is None or not low <= number <= high:
        raise InvalidInput(field, f"{what} must be a whole number from {low:,} to {high:,}")
    return number


def parse_price(value: Any) -> int:
    """A price: a whole number of Rupiah from 1 to PRICE_MAX_IDR."""
    return whole_number("price", value, 1, PRICE_MAX_IDR, "a price in Rupiah")


def parse_name(field: str, value: Any) -> str:
    name = value.strip() if isinstance(value, str) else ""
    if not 1 <= len(name) <= DRINK_NAME_MAX_CHARS:
        raise InvalidInput(field, f"a name has 1 to {DRINK_NAME_MAX_CHARS} characters")
    return name


def parse_flag(field: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise InvalidInput(field, "expected true or false")


def parse_stock(value: Any, drink: Drink) -> int:
    """Units in a drink's slot: 0 to its capacity."""
    return whole_number("stock", value, 0, drink.capacity, f"the stock of {drink.id}")


def parse_drink(fields: Mapping[str, Any], menu: Sequence[Drink] = ()) -> Drink:
    """A drink from a form or a menu file, checked against the current `menu`.

    A drink of `menu` with the same id is the one being edited: a field left out keeps its
    value there (a new drink takes the defaults; its slot, the lowest free one). Raises
    InvalidInput naming the first field refused.
    """
    drink_id = fields.get("id")
    if not isinstance(drink_id, str) or not DRINK_ID.match(drink_id):
        raise InvalidInput("id", "an id has 1 to 32 characters: a-z, 0-9, '_' or '-'")
    current = next((d for d in menu if d.id == drink_id), None)

    def given(name: str) -> bool:
        return name in fields and fields[name] is not None

    def old(name: str, default: Any) -> Any:
        return getattr(current, name) if current is not None else default

    if not given("name") and current is None:
        raise InvalidInput("name", "a new drink needs a name")
    name = parse_name("name", fields["name"]) if given("name") else old("name", "")
    if given("name_en") and str(fields["name_en"]).strip():
        name_en = parse_name("name_en", fields["name_en"])
    elif current is not None and current.name_en != current.name:
        name_en = current.name_en  # set on purpose before: kept
    else:
        name_en = name
    if not given("price") and current is None:
        raise InvalidInput("price", "a new drink needs a price")
    price = parse_price(fields["price"]) if given("price") else old("price", 0)
    icon = str(fields["icon"]).strip() if given("icon") else old("icon", "")
    if icon and not ICON.match(icon):
        raise InvalidInput(
            "icon", "an icon is a picture under web/assets (assets/NAME.svg), or none"
        )
    others = {n: d.id for d in menu if d.id != drink_id for n in d.slots}
    named = "slots" if given("slots") else "slot"
    if given(named) and str(fields[named]).strip() not in ("", "[]"):
        slots = parse_slots(named, fields[named])
    else:
        slots = old("slots", ()) or (free_slot(others),)
    for slot in slots:
        if slot in others:
            raise InvalidInput(named, f"slot {slot} holds {others[slot]} already")
    enabled = parse_flag("enabled", fields["enabled"]) if given("enabled") else old("enabled", True)
    capacity = (
        whole_number("capacity", fields["capacity"], 1, CAPACITY_MAX_UNITS, "a capacity")
        if given("capacity")
        else old("capacity", CAPACITY_DEFAULT_UNITS)
    )
    low_stock = (
        whole_number("low_stock", fields["low_stock"], 0, capacity, "a low-stock threshold")
        if given("low_stock")
        else min(old("low_stock", LOW_STOCK_DEFAULT_UNITS), capacity)
    )
    return Drink(drink_id, name, icon, price, name_en, slots, enabled, capacity, low_stock)


def parse_slots(field: str, value: Any) -> tuple[int, ...]:
    """A drink's slots, in order of preference: a list of slot numbers (`[1, 4]`), one number,
    or their text (`"1, 4"`, `"1 4"`: the console's field). Each 1..SLOTS_MAX, none twice."""
    if isinstance(value, list | tuple):
        items: list[Any] = list(value)
    elif isinstance(value, str):
        items = [part for part in re.split(r"[\s,]+", value.strip()) if part]
    else:
        items = [value]
    if not items:
        raise InvalidInput(field, "a drink needs at least one slot")
    if len(items) > SLOTS_MAX:
        raise InvalidInput(field, f"at most {SLOTS_MAX} slots")
    slots = tuple(whole_number(field, n, 1, SLOTS_MAX, "a slot") for n in items)
    if len(set(slots)) != len(slots):
        raise InvalidInput(field, "a slot is listed twice")
    return slots


def free_slot(taken: Iterable[int]) -> int:
    """The lowest slot no drink uses; InvalidInput when all SLOTS_MAX are taken."""
    used = set(taken)
    for slot in range(1, SLOTS_MAX + 1):
        if slot not in used:
            return slot
    raise InvalidInput("slot", f"all {SLOTS_MAX} slots are taken")


def assign_slots(drinks: Sequence[Drink]) -> list[Drink]:
    """Drinks of a menu written before slots (none) get the lowest free slot each, in order."""
    taken = {n for d in drinks for n in d.slots}
    out = []
    for d in drinks:
        if not d.slots:
            slot = free_slot(taken)
            taken.add(slot)
            d = Drink(**{**d.__dict__, "slots": (slot,)})
        out.append(d)
    return out


def parse_menu(items: Any) -> list[tuple[Drink, int | None]]:
    """A whole menu file (a list of drinks, each with an optional `stock`), checked as a menu:
    ids and slots unique. Returns each drink with its stock (None: left as it is)."""
    if not isinstance(items, list) or not all(isinstance(i, Mapping) for i in items):
        raise InvalidInput("menu", "a menu is a JSON list of drinks")
    drinks: list[Drink] = []
    out: list[tuple[Drink, int | None]] = []
    for n, item in enumerate(items, 1):
        if any(d.id == item.get("id") for d in drinks):
            raise InvalidInput("id", f"drink {n}: the id {item.get('id')!r} is there twice")
        try:
            drink = parse_drink(item, drinks)
            stock = parse_stock(item["stock"], drink) if item.get("stock") is not None else None
        except InvalidInput as exc:
            raise InvalidInput(exc.field, f"drink {n} ({item.get('id')}): {exc.message}") from None
        drinks.append(drink)
        out.append((drink, stock))
    return out


def menu_changes(old: Sequence[Drink], new: Sequence[Drink]) -> list[str]:
    """What applying `new` over `old` changes, one sentence per change, in `new`'s order."""
    before = {d.id: d for d in old}
    after = {d.id: d for d in new}
    changes = []
    for d in new:
        was = before.get(d.id)
        if was is None:
            changes.append(f"add {d.id}: {d.name}, {rupiah(d.price)}, {slots_text(d.slots)}")
            continue
        for name in FIELDS:
            a, b = getattr(was, name), getattr(d, name)
            if a != b:
                if name == "price":
                    shown = (rupiah(a), rupiah(b))
                elif name == "slots":
                    shown = (slots_text(a), slots_text(b))
                else:
                    shown = (repr(a), repr(b))
                changes.append(f"change {d.id} {name}: {shown[0]} -> {shown[1]}")
    changes.extend(f"remove {d.id}: {d.name}" for d in old if d.id not in after)
    return changes


def slots_text(slots: Sequence[int]) -> str:
    """(1,) -> "slot 1"; (1, 4) -> "slots 1, 4"."""
    if len(slots) == 1:
        return f"slot {slots[0]}"
    return "slots " + (", ".join(str(n) for n in slots) or "none")


def menu_from_hash(raw: Mapping[str, str]) -> list[Drink]:
    """The menu hash (drink id -> JSON) as drinks, cheapest first; an entry written before
    slots gets the lowest free slot (in that order), as `Broker.ensure_ready` then stores."""
    drinks = sorted(
        (Drink.parse(json.loads(v)) for v in raw.values()), key=lambda d: (d.price, d.id)
    )
    return assign_slots(drinks)


def kiosk_menu(
    drinks: Iterable[Drink],
    stock: Mapping[str, int],
    slots: Mapping[int, SlotState] | None = None,
) -> list[dict]:
    """The SHOW_MENU frame's values: the enabled drinks with their stock, cheapest first. A
    drink none of whose `slots` can vend (each disabled or empty) shows stock 0: sold out."""
    states = slots or {}
    shown = sorted((d for d in drinks if d.enabled), key=lambda d: (d.price, d.id))
    return [
        {**d.public(), "stock": stock.get(d.id, 0) if rules.sellable(d.slots, states) else 0}
        for d in shown
    ]


def slot_rows(drinks: Iterable[Drink], states: Mapping[int, SlotState]) -> list[dict]:
    """Each slot of the menu (and any other slot with a state), by number: its drink, its
    state (ok, empty, disabled) and whether the operator can re-enable it."""
    owner = {n: d.id for d in drinks for n in d.slots}
    rows = []
    for n in sorted(owner.keys() | states.keys()):
        st = states.get(n, SlotState())
        status = "disabled" if st.disabled else "empty" if st.empty else "ok"
        rows.append(
            {
                "slot": n,
                "drink": owner.get(n, ""),
                "status": status,
                "fails_in_a_row": st.fails_in_a_row,
                "last_reason": st.last_reason,
                "at": st.at or None,
                "can_enable": not st.usable,
            }
        )
    return rows


class Level(StrEnum):
    OK = "ok"
    LOW = "low"
    SOLD_OUT = "sold_out"


@dataclass(frozen=True)
class StockLevel:
    drink: Drink
    units: int

    @property
    def level(self) -> Level:
        if self.units <= 0:
            return Level.SOLD_OUT
        if self.units <= self.drink.low_stock:
            return Level.LOW
        return Level.OK

    def values(self) -> dict:
        return {
            "id": self.drink.id,
            "name": self.drink.name,
            "slot": self.drink.slot,
            "slots": list(self.drink.slots),
            "slots_text": ", ".join(str(n) for n in self.drink.slots),
            "enabled": self.drink.enabled,
            "stock": self.units,
            "capacity": self.drink.capacity,
            "low_stock": self.drink.low_stock,
            "level": str(self.level),
        }


def stock_levels(drinks: Iterable[Drink], stock: Mapping[str, int]) -> list[StockLevel]:
    """Each drink's units and level (ok, low, sold out), by slot."""
    return [StockLevel(d, stock.get(d.id, 0)) for d in sorted(drinks, key=lambda d: d.slot)]


def rupiah(amount: int) -> str:
    """7000 -> "Rp 7.000" (Indonesian grouping, as the kiosk shows it)."""
    sign = "-" if amount < 0 else ""
    return f"{sign}Rp {abs(amount):,}".replace(",", ".")
