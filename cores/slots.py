"""The dispenser slots' health in Redis: which slot a vend uses, and what a vend did to it.

A drink is vended from the first of its slots (cores/models.py Drink.slots) that is neither
disabled nor empty (cores/rules.py `choose_slot`). The machine's SLOTS hash (constants/keys.py)
holds, per slot that ever failed, a JSON SlotState: failures in a row, disabled, empty, the
last reason. After a vend the DISPENSE worker records its result against the slot it chose
(`record_vend`, judged by rules.slot_after_vend): VENDED resets the count; a failure that is
the slot's own (JAM, NO_DROP, TIMEOUT) or a refusal of the hardware that does not pass on its
own (NO_SLOT, ERR, SENSOR_BLOCKED, PORT: rules.SLOT_FAULTS) counts, and SLOT_FAIL_LIMIT in a
row disable the slot; EMPTY marks it empty without counting; BUSY is not counted. A drink
none of whose slots can vend is sold out: the kiosk's menu shows it with stock 0
(catalog.kiosk_menu) and an order for it is refused (Broker.place_order). The alert
`slot_disabled` (its detail names the last reason: PORT says check the cable) is raised while
a slot is disabled, `slot_empty` while one is empty (cores/alerts.py), so a drink sold out
on the kiosk while its stock says units are left is explained.

The operator re-enables a slot (cores/operations.py `enable_slot`: its entry deleted, audited
in the same MULTI); a refill of a drink clears `empty` on its slots.

Every write is to the one SLOTS key (the machine's hash tag: one Cluster slot), read and written
under WATCH. A result is counted once per order: the entry remembers the last order counted
(`last_order`), so a worker that restarts between the count and the order's end does not count
it twice.
"""

from __future__ import annotations

import json
import logging
from typing import cast

import redis
from redis.client import Pipeline

from constants import keys
from cores import catalog, rules
from cores.broker import Broker
from cores.logs import kv
from cores.models import Drink, SlotState, slot_states
from cores.rules import Vend

log = logging.getLogger(__name__)

#: Field of an entry naming the last order whose vend was counted (not part of SlotState).
LAST_ORDER = "last_order"


class Slots:
    """One machine's slot states, through its Broker's client."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.redis = broker.redis
        self.key = keys.key(keys.SLOTS, broker.machine_id)

    def states(self) -> dict[int, SlotState]:
        return slot_states(cast(dict[str, str], self.redis.hgetall(self.key)))

    def rows(self, drinks: list[Drink] | None = None) -> list[dict]:
        """Each slot with its drink and state, for `status` and the console."""
        menu = self.broker.menu() if drinks is None else drinks
        return catalog.slot_rows(menu, self.states())

    def choose(self, drink_id: str) -> int | None:
        """The slot to vend `drink_id` from now: a slot number; 0 when the drink has slots
        and none can vend; None when it has none (not on the menu: the driver decides)."""
        drink = next((d for d in self.broker.menu() if d.id == drink_id), None)
        if drink is None or not drink.slots:
            return None
        return rules.choose_slot(drink.slots, self.states()) or 0

    def record_vend(
        self, slot: int, order_id: str, vend: Vend, reason: str | None, limit: int
    ) -> SlotState | None:
        """Count a vend's result against `slot` (once per order); the new state, or None when
        nothing changed."""
        field = str(slot)
        changed: SlotState | None = None
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(self.key)
                    raw = cast(str | None, pipe.hget(self.key, field))
                    if raw and _last_order(raw) == order_id:
                        pipe.unwatch()
                        return None  # counted already
                    now = self.broker.clock()
                    changed = rules.slot_after_vend(SlotState.parse(raw), vend, reason, limit, now)
                    pipe.multi()
                    if changed is not None:
                        entry = {**changed.record(), LAST_ORDER: order_id}
                        pipe.hset(self.key, field, json.dumps(entry))
                    elif raw:  # unchanged, but this order is counted
                        pipe.hset(
                            self.key, field, json.dumps({**json.loads(raw), LAST_ORDER: order_id})
                        )
                    pipe.execute()
                    break
                except redis.WatchError:
                    continue
        if changed is not None and not changed.usable:
            log.warning(
                "slot out of use",
                extra=kv(
                    slot=slot,
                    disabled=changed.disabled,
                    empty=changed.empty,
                    fails=changed.fails_in_a_row,
                    reason=changed.last_reason,
                ),
            )
        return changed

    def queue_enable(self, pipe: Pipeline, slot: int) -> None:
        """Queue the re-enabling of `slot` (its entry deleted: a healthy slot, count 0)."""
        pipe.hdel(self.key, str(slot))

    def queue_refilled(self, pipe: Pipeline, states: dict[int, SlotState], drink: Drink) -> None:
        """Queue `empty` cleared on the slots of `drink` (read under WATCH as `states`): an
        empty slot that is not disabled is healthy again; a disabled one stays disabled."""
        for slot in drink.slots:
            st = states.get(slot)
            if st is None or not st.empty:
                continue
            if st.disabled:
                pipe.hset(self.key, str(slot), json.dumps({**st.record(), "empty": False}))
            else:
                pipe.hdel(self.key, str(slot))


def _last_order(raw: str) -> str | None:
    try:
        found = json.loads(raw).get(LAST_ORDER)
    except (ValueError, AttributeError):
        return None
    return found if isinstance(found, str) else None


__all__ = ["Slots"]
