"""Operator sub-commands of main.py: status, stock, maintenance. They act through the Broker.

`status` includes the dispenser (the machine's DISPENSER hash: driver, the board's firmware
from its PING, when it last answered) and each dispenser slot's state (cores/slots.py)."""

from __future__ import annotations

import json
import time
from typing import cast

from constants import keys
from constants.orders import OrderField
from constants.services import WATCHED
from cores.broker import Broker
from cores.slots import Slots


def status(broker: Broker) -> dict:
    """The machine's state, current order, stock, the operator's queue and worker heartbeats."""
    snap = broker.snapshot()
    order = broker.order(snap.order_id)
    now = time.time()
    beats = {
        service: None if at is None else round(now - at, 1)
        for service, at in broker.heartbeats(WATCHED).items()
    }
    return {
        "machine_id": broker.machine_id,
        "state": str(snap.state),
        "since": snap.since,
        "order": None
        if order is None
        else {
            k: v
            for k, v in order.fields.items()
            if k not in (OrderField.IDEMPOTENCY_KEY, OrderField.FRAME_VALUES)
        },
        "stock": broker.stock(),
        "operator_queue": list(broker.operator_queue().values()),
        "heartbeat_age_s": beats,
        "dispenser": dispenser(broker),
        "slots": Slots(broker).rows(),
    }


def dispenser(broker: Broker) -> dict | None:
    """The dispenser as last recorded (None: never): driver, port, firmware, alive (bool or
    None: unknown), checked_at and last_seen (unix s or None)."""
    raw = cast(dict[str, str], broker.redis.hgetall(keys.key(keys.DISPENSER, broker.machine_id)))
    if not raw:
        return None

    def at(name: str) -> float | None:
        value = raw.get(name)
        return float(value) if value else None

    return {
        "driver": raw.get("driver") or None,
        "port": raw.get("port") or None,
        "firmware": raw.get("firmware") or None,
        "alive": None if not raw.get("alive") else raw["alive"] == "1",
        "checked_at": at("checked_at"),
        "last_seen": at("last_seen"),
    }


def health(status_: dict, ttl_s: float) -> list[str]:
    """What is unhealthy in a `status()` answer: workers whose heartbeat is missing or old."""
    problems = []
    for service in WATCHED:
        age = status_["heartbeat_age_s"].get(str(service))
        if age is None or age > ttl_s:
            problems.append(f"{service}: no heartbeat in the last {ttl_s:.0f} s")
    return problems


def dumps(data: object) -> str:
    return json.dumps(data, indent=2, sort_keys=True, default=str)
