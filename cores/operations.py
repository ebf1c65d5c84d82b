"""The operator's writes: menu, prices, stock, the queue's resolutions, and the audit stream.

The broker's other half, for the console and `main.py`'s operator commands: each action reads
under WATCH, validates (cores/catalog.py, cores/rules.py), and writes in one MULTI its change,
an AUDIT entry {actor, action, target, before, after, at} and, when the machine shows the menu,
the menu again (SHOW_MENU -> SHOW_MENU), so a change reaches the kiosk at once. A change that
raises a drink's stock (a refill) clears `empty` on its dispenser slots (cores/slots.py), and
`enable_slot` puts a disabled or empty slot back in use. An order already
placed keeps the drink and amount it snapshotted at ORDER time (shared/DESIGN.md, "Operator
console"). A refused action raises cores.console_errors and changes nothing.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from redis.client import Pipeline
from redis.typing import EncodableT, FieldT

from constants import keys
from constants.orders import OrderField, Resolution
from constants.states import Sale, State
from constants.tunables import SLOTS_MAX
from cores import audit, catalog, rules, sales
from cores.alert_store import AlertStore
from cores.alerts import Alert
from cores.broker import Broker, Writes
from cores.console_errors import ActionRefused, InvalidInput, NotFound
from cores.logs import kv
from cores.machine import Transition
from cores.models import Drink, SlotState, Snapshot, slot_states
from cores.slots import Slots

log = logging.getLogger(__name__)

#: (drinks by id, stock by id) as an edit reads them; an edit returns the new ones.
Menu = tuple[dict[str, Drink], dict[str, int]]


@dataclass(frozen=True)
class Change:
    """What an edit does: the new menu and stock, and the audit's before and after."""

    drinks: dict[str, Drink]
    stock: dict[str, int]
    before: Any
    after: Any
    #: Drinks refilled by this edit whatever their count said (`refill`): their empty slots
    #: are put back in use, as they are for any edit that raises a drink's count.
    refilled: tuple[str, ...] = ()


class Operations:
    """Operator actions on one machine's Redis, through its Broker."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.redis = broker.redis
        self.audit_key = broker._key(keys.AUDIT)

    # --- reading ----------------------------------------------------------------------------

    def drinks(self) -> list[Drink]:
        """Every drink, enabled or not, cheapest first."""
        return self.broker.menu()

    def drink(self, drink_id: str) -> Drink:
        found = next((d for d in self.drinks() if d.id == drink_id), None)
        if found is None:
            raise NotFound("drink", f"no drink {drink_id!r} on the menu")
        return found

    def stock_levels(self) -> list[catalog.StockLevel]:
        return catalog.stock_levels(self.drinks(), self.broker.stock())

    def queue(self) -> list[dict]:
        """What needs a person, oldest first: {order_id, kind, amount, drink, detail, at}."""
        return sorted(self.broker.operator_queue().values(), key=lambda e: e.get("at", 0))

    def audit(self, count: int = 100) -> list[dict]:
        """The newest `count` operator actions, newest first; before/after parsed."""
        return audit.read(self.redis, self.audit_key, count)

    def sales_entries(self, start_s: float, end_s: float | None = None) -> list[dict]:
        """Sales entries from `start_s` (unix s) up to `end_s` (None: the newest), oldest first:
        an XRANGE on the stream ids, which are the entries' times in ms."""
        low = f"{int(start_s * 1000)}-0"
        high = "+" if end_s is None else f"{int(end_s * 1000) - 1}-18446744073709551615"
        entries = self.redis.xrange(self.broker.sales_key, low, high)
        return [{"id": i, **f} for i, f in cast(list[tuple[str, dict[str, str]]], entries)]

    def sales_report(self, first: str, last: str, tz: Any) -> sales.Report:
        """The report of the days `first`..`last` (YYYY-MM-DD, in `tz`, both included): the
        orders placed in that range, followed to their end however late it came."""
        start, end = sales.day_range(first, last, tz)
        return sales.report(self.sales_entries(start), start, end, tz)

    # --- the menu ---------------------------------------------------------------------------

    def put_drink(self, fields: Mapping[str, Any], actor: str) -> Drink:
        """Add a drink, or change one (fields left out keep their values). A new drink may
        carry its `stock`; it starts empty otherwise."""
        made: list[Drink] = []

        def edit(drinks: dict[str, Drink], stock: dict[str, int]) -> Change:
            drink = catalog.parse_drink(fields, list(drinks.values()))
            new_stock = dict(stock)
            if drink.id not in drinks:
                units = fields.get("stock")
                new_stock[drink.id] = (
                    0 if units in (None, "") else catalog.parse_stock(units, drink)
                )
            elif stock.get(drink.id, 0) > drink.capacity:
                raise InvalidInput(
                    "capacity",
                    f"{drink.id} holds {stock[drink.id]} now: more than {drink.capacity}",
                )
            was = drinks.get(drink.id)
            made.append(drink)
            return Change(
                {**drinks, drink.id: drink},
                new_stock,
                None if was is None else was.record(),
                drink.record(),
            )

        self._edit("put_drink", str(fields.get("id")), edit, actor)
        return made[-1]

    def remove_drink(self, drink_id: str, actor: str) -> None:
        def edit(drinks: dict[str, Drink], stock: dict[str, int]) -> Change:
            was = _named(drinks, drink_id)
            rest = {k: v for k, v in drinks.items() if k != drink_id}
            left = {k: v for k, v in stock.items() if k != drink_id}
            return Change(rest, left, {**was.record(), "stock": stock.get(drink_id, 0)}, None)

        self._edit("remove_drink", drink_id, edit, actor)

    def set_price(self, drink_id: str, price: Any, actor: str) -> Drink:
        """The price of the next order of this drink (never of one placed already)."""
        return self._set_field("set_price", drink_id, "price", price, actor)

    def set_enabled(self, drink_id: str, enabled: Any, actor: str) -> Drink:
        """A disabled drink leaves the kiosk's menu and cannot be ordered."""
        return self._set_field("set_enabled", drink_id, "enabled", enabled, actor)

    def set_stock(self, drink_id: str, units: Any, actor: str) -> int:
        """Units in the drink's slot: 0 to its capacity."""

        def edit(drinks: dict[str, Drink], stock: dict[str, int]) -> Change:
            drink = _named(drinks, drink_id)
            value = catalog.parse_stock(units, drink)
            return Change(drinks, {**stock, drink_id: value}, stock.get(drink_id, 0), value)

        self._edit("set_stock", drink_id, edit, actor)
        return catalog.parse_stock(units, self.drink(drink_id))

    def refill(self, drink_id: str | None, actor: str) -> dict[str, int]:
        """A slot (or, with None, every slot) filled to its capacity: the new stock by drink."""

        def edit(drinks: dict[str, Drink], stock: dict[str, int]) -> Change:
            chosen = [_named(drinks, drink_id)] if drink_id else list(drinks.values())
            full = {d.id: d.capacity for d in chosen}
            before = {d.id: stock.get(d.id, 0) for d in chosen}
            return Change(drinks, {**stock, **full}, before, full, tuple(full))

        return cast(dict[str, int], self._edit("refill", drink_id or "*", edit, actor).after)

    def preview_import(self, items: Any) -> list[str]:
        """What `import_menu(items)` would change (InvalidInput for a bad file)."""
        parsed = catalog.parse_menu(items)
        return catalog.menu_changes(self.drinks(), [d for d, _ in parsed])

    def import_menu(self, items: Any, actor: str) -> list[str]:
        """Make the menu `items` (a menu file's list): drinks not in it are removed; a drink's
        stock is set where the file gives one. Returns the changes applied."""
        parsed = catalog.parse_menu(items)
        changes: list[str] = []

        def edit(drinks: dict[str, Drink], stock: dict[str, int]) -> Change:
            changes.clear()  # judged again after a race: the changes against what now holds
            new = {d.id: d for d, _ in parsed}
            new_stock = {k: stock.get(k, 0) for k in new}
            new_stock.update({d.id: units for d, units in parsed if units is not None})
            for d in new.values():
                if new_stock[d.id] > d.capacity:
                    raise InvalidInput("stock", f"{d.id} holds {new_stock[d.id]}: over capacity")
            changes.extend(catalog.menu_changes(list(drinks.values()), list(new.values())))
            return Change(new, new_stock, None, changes)

        self._edit("import_menu", "menu", edit, actor)
        return changes

    def set_stock_and_limits(
        self, drink_id: str, units: Any, capacity: Any, low_stock: Any, actor: str
    ) -> Drink:
        """A stock row: the units in the slot, the slot's capacity and the low-stock threshold
        (None keeps a limit's value), checked together and written in one MULTI with one audit
        entry; a refused one changes none."""
        made: list[Drink] = []
        limits = {"capacity": capacity, "low_stock": low_stock}

        def edit(drinks: dict[str, Drink], stock: dict[str, int]) -> Change:
            was = _named(drinks, drink_id)
            drink = catalog.parse_drink({**limits, "id": drink_id}, list(drinks.values()))
            value = catalog.parse_stock(units, drink)
            made.append(drink)

            def row(d: Drink, n: int) -> dict[str, int]:
                return {"stock": n, "capacity": d.capacity, "low_stock": d.low_stock}

            return Change(
                {**drinks, drink_id: drink},
                {**stock, drink_id: value},
                row(was, stock.get(drink_id, 0)),
                row(drink, value),
            )

        self._edit("set_stock_and_limits", drink_id, edit, actor)
        return made[-1]

    # --- the operator's queue -----------------------------------------------------------------

    def queue_entry(self, order_id: str) -> dict:
        entry = self.broker.operator_queue().get(order_id)
        if entry is None:
            raise NotFound("order_id", f"order {order_id!r} is not in the operator's queue")
        return entry

    def close_entry(
        self,
        order_id: str,
        action: Resolution,
        actor: str,
        note: str = "",
        requeue: Mapping[str, Any] | None = None,
        detail: str = "",
    ) -> dict:
        """Resolve a queue entry: in one MULTI, take it off the queue (or, with `requeue`,
        replace it: a refund that is owed after all), append the sales entry that closes it
        (rules.resolution_sale, with resolved_by), and audit. `mark_vended` also takes the
        unit from the stock. Returns the entry as it was."""
        audit.check_actor(actor)
        tid = uuid.uuid4().hex
        seen: list[dict] = []

        def judge(pipe: Pipeline) -> Writes:
            raw = pipe.hget(self.broker.operator_key, order_id)
            if raw is None:
                raise NotFound("order_id", f"order {order_id!r} is not in the operator's queue")
            entry = json.loads(cast(str, raw))
            why = rules.check_resolution(entry.get("kind", ""), action, note)
            if why:
                raise ActionRefused(why)
            seen.append(entry)
            now = self.broker.clock()
            amount = entry.get("amount")
            drink = entry.get("drink")
            # The unit vended leaves the count, which never goes below zero (a count that was
            # already wrong stays at zero for the operator to correct).
            units = (
                int(cast(str, pipe.hget(self.broker.stock_key, str(drink))) or 0) if drink else 0
            )

            def write(p: Pipeline) -> None:
                after: dict[str, Any] = {"resolution": str(action), "note": note}
                if requeue is not None:
                    fresh = {**entry, **requeue, "order_id": order_id, "at": now}
                    p.hset(self.broker.operator_key, order_id, json.dumps(fresh))
                    after["queue"] = fresh
                else:
                    p.hdel(self.broker.operator_key, order_id)
                    sale = rules.resolution_sale(action)
                    fields: dict[FieldT, EncodableT] = {
                        "kind": str(sale),
                        "order_id": order_id,
                        "at": now,
                    }
                    fields.update({"resolved_by": actor, "resolution": str(action)})
                    if amount is not None:
                        fields["amount"] = int(amount)
                    if drink:
                        fields["drink_id"] = str(drink)
                    if note:
                        fields["note"] = note
                    if action in rules.REFUNDS_AT_GATEWAY:
                        key = rules.refund_key(order_id)
                        fields["refund_key"] = key
                        p.hset(self.broker.order_key(order_id), OrderField.REFUND_RECORDED, key)
                    p.xadd(self.broker.sales_key, fields)
                    after["sale"] = str(sale)
                    if action is Resolution.MARK_VENDED and drink and units > 0:
                        p.hincrby(self.broker.stock_key, str(drink), -1)
                if detail:
                    after["detail"] = detail
                self._audit(p, actor, str(action), order_id, entry, after, now)

            return write

        watch = (self.broker.operator_key, self.broker.stock_key)
        self.broker._compare_and_set(watch, judge, tid)
        log.info(
            "queue entry resolved",
            extra=kv(order_id=order_id, action=action, actor=actor, requeued=requeue is not None),
        )
        return seen[-1]

    def record_refund(
        self, entry: Mapping[str, Any], action: Resolution, actor: str, note: str
    ) -> bool:
        """A refund made by `actor` whose queue entry another resolution took meanwhile: the
        money moved all the same, so its sales entry and audit are written (one MULTI) —
        unless that resolution recorded this very refund (the same refund key, which Midtrans
        answers twice): then nothing is written and False is returned."""
        order_id = str(entry["order_id"])
        key = rules.refund_key(order_id)
        order_key = self.broker.order_key(order_id)
        fields: dict[FieldT, EncodableT] = {
            "kind": str(Sale.REFUNDED),
            "order_id": order_id,
            "at": self.broker.clock(),
            "resolved_by": actor,
            "resolution": str(action),
            "refund_key": key,
        }
        if entry.get("amount") is not None:
            fields["amount"] = int(entry["amount"])
        if entry.get("drink"):
            fields["drink_id"] = str(entry["drink"])
        after = {"sale": str(Sale.REFUNDED), "note": note, "queue": "resolved meanwhile"}

        def judge(pipe: Pipeline) -> Writes:
            if pipe.hget(order_key, OrderField.REFUND_RECORDED) == key:
                return None

            def write(p: Pipeline) -> None:
                p.hset(order_key, OrderField.REFUND_RECORDED, key)
                p.xadd(self.broker.sales_key, fields)
                self._audit(p, actor, str(action), order_id, dict(entry), after)

            return write

        return self.broker._compare_and_set((order_key,), judge, uuid.uuid4().hex)

    def slot_rows(self) -> list[dict]:
        """Each dispenser slot with its drink and state (cores/catalog.py slot_rows)."""
        return Slots(self.broker).rows()

    def enable_slot(self, slot: Any, actor: str) -> dict:
        """Put a disabled or empty slot back in use (its failures forgotten), audited in the
        same MULTI; on the menu screen the menu is sent again (its drink is on sale again).
        NotFound for a slot no drink uses and with no state; ActionRefused for a slot in use.
        Returns the slot's state before."""
        audit.check_actor(actor)
        number = catalog.whole_number("slot", slot, 1, SLOTS_MAX, "a slot")
        broker = self.broker
        slots = Slots(broker)
        tid = uuid.uuid4().hex
        seen: list[dict] = []

        def judge(pipe: Pipeline) -> Writes:
            snap = Snapshot.parse(cast(dict[str, str], pipe.hgetall(broker.state_key)))
            states = slot_states(cast(dict[str, str], pipe.hgetall(broker.slots_key)))
            drinks = catalog.menu_from_hash(cast(dict[str, str], pipe.hgetall(broker.menu_key)))
            raw_stock = cast(dict[str, str], pipe.hgetall(broker.stock_key))
            stock = {k: int(v) for k, v in raw_stock.items()}
            st = states.get(number)
            if st is None and all(number not in d.slots for d in drinks):
                raise NotFound("slot", f"no drink uses slot {number}")
            if st is None or st.usable:
                raise ActionRefused(f"slot {number} is in use already: nothing to enable")
            before = st.record()
            seen.append(before)
            now = broker.clock()
            after = {k: v for k, v in states.items() if k != number}

            def write(p: Pipeline) -> None:
                slots.queue_enable(p, number)
                self._audit(p, actor, "enable_slot", str(number), before, {"usable": True}, now)
                if snap.state is State.SHOW_MENU:
                    values = catalog.kiosk_menu(drinks, stock, after)
                    move = Transition(State.SHOW_MENU, (State.SHOW_MENU,), None, values)
                    broker._queue(p, snap, move, now, tid)

            return write

        watch = (broker.state_key, broker.slots_key, broker.menu_key, broker.stock_key)
        broker._compare_and_set(watch, judge, tid)
        log.info("operator action", extra=kv(action="enable_slot", target=number, actor=actor))
        return seen[-1]

    def acknowledge_alert(self, alert_id: str, actor: str) -> None:
        """An open alert cleared by hand (cores/alert_store.py), audited in the same MULTI;
        NotFound, changing nothing, when it is not open."""
        audit.check_actor(actor)
        now = self.broker.clock()

        def audited(pipe: Any, alert: Alert) -> None:
            after = {"open": False}
            self._audit(pipe, actor, "acknowledge_alert", alert_id, alert.record(), after, now)

        if AlertStore(self.broker).acknowledge(alert_id, now, also=audited) is None:
            raise NotFound("alert", f"no open alert {alert_id!r}: cleared already, or unknown")
        log.info(
            "operator action", extra=kv(action="acknowledge_alert", target=alert_id, actor=actor)
        )

    def audit_account(self, action: str, name: str, actor: str) -> None:
        """A console account added or removed (the password and its hash are never written)."""
        audit.check_actor(actor)
        present = action != "operator_remove"
        self._audit(self.redis, actor, action, name, not present, present)

    def record_attempt(self, order_id: str, action: Resolution, actor: str, detail: str) -> None:
        """Audit a resolution that changed nothing (a refund Midtrans still refused)."""
        self._audit(self.redis, actor, str(action), order_id, None, {"failed": detail})

    # --- internals --------------------------------------------------------------------------

    def _set_field(self, action: str, drink_id: str, name: str, value: Any, actor: str) -> Drink:
        made: list[Drink] = []

        def edit(drinks: dict[str, Drink], stock: dict[str, int]) -> Change:
            was = _named(drinks, drink_id)
            drink = catalog.parse_drink({"id": drink_id, name: value}, list(drinks.values()))
            made.append(drink)
            before, after = getattr(was, name), getattr(drink, name)
            return Change({**drinks, drink_id: drink}, stock, {name: before}, {name: after})

        self._edit(action, drink_id, edit, actor)
        return made[-1]

    def _edit(
        self,
        action: str,
        target: str,
        edit: Callable[[dict[str, Drink], dict[str, int]], Change],
        actor: str,
    ) -> Change:
        """Read the menu and stock under WATCH, `edit` them (it raises to refuse), and write
        the new ones with the audit entry and, on the menu screen, the menu re-sent."""
        audit.check_actor(actor)
        tid = uuid.uuid4().hex
        done: list[Change] = []
        broker = self.broker

        def judge(pipe: Pipeline) -> Writes:
            snap = Snapshot.parse(cast(dict[str, str], pipe.hgetall(broker.state_key)))
            raw = cast(dict[str, str], pipe.hgetall(broker.menu_key))
            drinks = {d.id: d for d in catalog.menu_from_hash(raw)}
            stock = {
                k: int(v) for k, v in cast(dict[str, str], pipe.hgetall(broker.stock_key)).items()
            }
            states = slot_states(cast(dict[str, str], pipe.hgetall(broker.slots_key)))
            change = edit(drinks, stock)
            done.append(change)
            now = broker.clock()
            refilled = [
                d
                for d in change.drinks.values()
                if d.id in change.refilled or change.stock.get(d.id, 0) > stock.get(d.id, 0)
            ]
            after = _refilled(states, refilled)

            def write(p: Pipeline) -> None:
                for gone in drinks.keys() - change.drinks.keys():
                    p.hdel(broker.menu_key, gone)
                for d in change.drinks.values():
                    if drinks.get(d.id) != d or d.id not in raw:
                        p.hset(broker.menu_key, d.id, json.dumps(d.record()))
                for gone in stock.keys() - change.stock.keys():
                    p.hdel(broker.stock_key, gone)
                for k, units in change.stock.items():
                    if stock.get(k) != units:
                        p.hset(broker.stock_key, k, units)
                for d in refilled:
                    Slots(broker).queue_refilled(p, states, d)
                self._audit(p, actor, action, target, change.before, change.after, now)
                if snap.state is State.SHOW_MENU:
                    values = catalog.kiosk_menu(change.drinks.values(), change.stock, after)
                    move = Transition(State.SHOW_MENU, (State.SHOW_MENU,), None, values)
                    broker._queue(p, snap, move, now, tid)

            return write

        watch = (broker.state_key, broker.menu_key, broker.stock_key, broker.slots_key)
        broker._compare_and_set(watch, judge, tid)
        log.info("operator action", extra=kv(action=action, target=target, actor=actor))
        return done[-1]

    def set_out_of_service(self, out: bool, actor: str) -> State:
        """Maintenance on (only between customers: CommandRefused otherwise) or off; the
        audit entry follows the move (Broker.set_out_of_service judges the state)."""
        audit.check_actor(actor)
        before = self.broker.snapshot().state
        self.broker.set_out_of_service(out)
        after = self.broker.snapshot().state
        self._audit(self.broker.redis, actor, "maintenance", "machine", str(before), str(after))
        log.info("operator action", extra=kv(action="maintenance", target=after, actor=actor))
        return after

    def _audit(
        self,
        pipe: Any,
        actor: str,
        action: str,
        target: str,
        before: Any,
        after: Any,
        now: float | None = None,
    ) -> None:
        at = self.broker.clock() if now is None else now
        audit.append(pipe, self.audit_key, actor, action, target, before, after, at)


def _refilled(states: dict[int, SlotState], drinks: list[Drink]) -> dict[int, SlotState]:
    """The slot states once the slots of `drinks` were refilled: `empty` cleared (as
    Slots.queue_refilled writes it)."""
    out = dict(states)
    for d in drinks:
        for n in d.slots:
            st = out.get(n)
            if st is not None and st.empty:
                out[n] = SlotState(st.fails_in_a_row, True, False, st.last_reason, st.at)
                if not st.disabled:
                    del out[n]
    return out


def _named(drinks: Mapping[str, Drink], drink_id: str | None) -> Drink:
    if drink_id is None or drink_id not in drinks:
        raise NotFound("drink", f"no drink {drink_id!r} on the menu")
    return drinks[drink_id]


__all__ = ["Change", "Operations"]
