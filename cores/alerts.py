"""When to raise and when to clear an alert, as plain functions: no Redis, no HTTP, no sleeping.

The watcher (services/alerts_service.py) reads what it needs into a `Facts` value, asks
`evaluate` what changed against the open alerts, and writes the answer (cores/alert_store.py).
An alert is identified by `kind:subject` (e.g. `low_stock:cola`, `heartbeat_stale:ORDER`,
`refund_owed:<order_id>`): it is raised once while its condition holds and cleared once it
no longer does (shared/DESIGN.md, "Operator console", alerts).

    kind              subject    raised while
    low_stock         drink id   0 < stock <= the drink's low_stock threshold
    sold_out          drink id   stock <= 0
    heartbeat_stale   service    no heartbeat for more than HEARTBEAT_TTL_S
    refund_owed       order id   the operator's queue holds a refund owed for the order
    vend_unknown      order id   the operator's queue holds a vend of unknown outcome
    gateway_down      midtrans   the gateway's calls have failed for over GATEWAY_DOWN_ALERT_S
    slot_disabled     slot N     the dispenser slot failed SLOT_FAIL_LIMIT vends in a row and is
                                 disabled (cores/slots.py), until the operator re-enables it;
                                 the detail names the last reason (JAM, PORT, ERR, ...)
    slot_empty        slot N     the board said EMPTY for the slot, until a refill of its drink
                                 or the operator re-enables it (its drink may show sold out
                                 while its stock says units are left)
    redis_restarted   redis      `up` restarted redis-server less than REDIS_RESTART_ALERT_S ago
                                 (and the operator has not acknowledged it); a later restart
                                 raises it again
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from constants.orders import OperatorKind
from constants.tunables import GATEWAY_DOWN_ALERT_S, HEARTBEAT_TTL_S, REDIS_RESTART_ALERT_S
from cores.models import SlotState


class AlertKind(StrEnum):
    LOW_STOCK = "low_stock"
    SOLD_OUT = "sold_out"
    HEARTBEAT_STALE = "heartbeat_stale"
    REFUND_OWED = "refund_owed"
    VEND_UNKNOWN = "vend_unknown"
    GATEWAY_DOWN = "gateway_down"
    REDIS_RESTARTED = "redis_restarted"
    SLOT_DISABLED = "slot_disabled"
    SLOT_EMPTY = "slot_empty"


class AlertState(StrEnum):
    """The `state` of an entry of the alerts stream."""

    RAISED = "raised"
    CLEARED = "cleared"


#: The subject of the alerts that are about the machine as a whole.
GATEWAY_SUBJECT = "midtrans"
REDIS_SUBJECT = "redis"

#: Entries of the operator's queue that raise an alert, and which.
_QUEUE_ALERTS: dict[str, AlertKind] = {
    OperatorKind.REFUND_OWED: AlertKind.REFUND_OWED,
    OperatorKind.VEND_UNKNOWN: AlertKind.VEND_UNKNOWN,
}


@dataclass(frozen=True)
class Alert:
    """One alert. `at`: since when its condition holds, where known (the start of a failing
    streak, a restart), else when it was raised or cleared."""

    kind: AlertKind
    subject: str
    detail: str
    at: float

    @property
    def id(self) -> str:
        return f"{self.kind}:{self.subject}"

    def record(self) -> dict[str, Any]:
        """As ALERTS_OPEN holds it (JSON)."""
        return {
            "kind": str(self.kind),
            "subject": self.subject,
            "detail": self.detail,
            "at": self.at,
        }

    def entry(self, state: AlertState) -> dict[str, str | float]:
        """As the alerts stream holds it."""
        return {
            "kind": str(self.kind),
            "subject": self.subject,
            "state": str(state),
            "detail": self.detail,
            "at": self.at,
        }

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> Alert:
        return cls(
            AlertKind(raw["kind"]),
            str(raw["subject"]),
            str(raw.get("detail", "")),
            float(raw["at"]),
        )


@dataclass(frozen=True)
class Gateway:
    """The gateway's health as the workers' calls saw it (the GATEWAY hash)."""

    last_ok_at: float | None = None
    failing_since: float | None = None
    last_error: str = ""


@dataclass(frozen=True)
class Facts:
    """What the watcher observed, at `now` (unix s)."""

    now: float
    #: Drink id -> units left, for the drinks on sale.
    stock: Mapping[str, int] = field(default_factory=dict)
    #: Drink id -> its low-stock threshold, for the drinks on sale (enabled, on the menu).
    low_stock: Mapping[str, int] = field(default_factory=dict)
    #: Service -> its last heartbeat (unix s), None when there is none (expired).
    heartbeats: Mapping[str, float | None] = field(default_factory=dict)
    #: Since when the watcher has been watching: a heartbeat missing since before then is
    #: only stale once HEARTBEAT_TTL_S has passed (the machine may be starting).
    watching_since: float = 0.0
    #: The operator's queue: order id -> its entry {kind, ...}.
    queue: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    gateway: Gateway = Gateway()
    #: When `up` last restarted redis-server, and how many times in all (None: never, or
    #: acknowledged).
    redis_restarted_at: float | None = None
    redis_restarts: int = 0
    #: The dispenser slots' health, slot -> state (a slot not listed is healthy).
    slots: Mapping[int, SlotState] = field(default_factory=dict)


@dataclass(frozen=True)
class Changes:
    """What to write: alerts to raise (entered or replaced in the open set) and to clear."""

    raised: tuple[Alert, ...] = ()
    cleared: tuple[Alert, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.raised or self.cleared)


def wanted(facts: Facts) -> dict[str, Alert]:
    """Every alert the facts call for, by id."""
    now = facts.now
    found: list[Alert] = []
    for drink, threshold in sorted(facts.low_stock.items()):
        units = facts.stock.get(drink, 0)
        if units <= 0:
            found.append(Alert(AlertKind.SOLD_OUT, drink, "sold out", now))
        elif units <= threshold:
            found.append(Alert(AlertKind.LOW_STOCK, drink, f"{units} left", now))
    for service, beat in sorted(facts.heartbeats.items()):
        if beat is None and now - facts.watching_since > HEARTBEAT_TTL_S:
            detail = f"no heartbeat for over {HEARTBEAT_TTL_S:.0f} s"
            found.append(Alert(AlertKind.HEARTBEAT_STALE, service, detail, now))
        elif beat is not None and now - beat > HEARTBEAT_TTL_S:
            detail = f"last heartbeat {now - beat:.0f} s ago"
            found.append(Alert(AlertKind.HEARTBEAT_STALE, service, detail, beat))
    for order_id, entry in sorted(facts.queue.items()):
        kind = _QUEUE_ALERTS.get(str(entry.get("kind")))
        if kind is not None:
            detail = str(entry.get("detail") or entry.get("kind"))
            found.append(Alert(kind, order_id, detail, float(entry.get("at") or now)))
    since = facts.gateway.failing_since
    if since is not None and now - since > GATEWAY_DOWN_ALERT_S:
        detail = f"unreachable for {now - since:.0f} s: {facts.gateway.last_error}".rstrip(": ")
        found.append(Alert(AlertKind.GATEWAY_DOWN, GATEWAY_SUBJECT, detail, since))
    restarted = facts.redis_restarted_at
    if restarted is not None and now - restarted < REDIS_RESTART_ALERT_S:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(restarted))
        detail = f"redis-server restarted by `up` at {stamp} ({facts.redis_restarts} in all)"
        found.append(Alert(AlertKind.REDIS_RESTARTED, REDIS_SUBJECT, detail, restarted))
    for slot, st in sorted(facts.slots.items()):
        if st.disabled:
            detail = f"{st.fails_in_a_row} failed vends in a row"
            detail += f", last {st.last_reason}" if st.last_reason else ""
            found.append(Alert(AlertKind.SLOT_DISABLED, str(slot), detail, st.at or now))
        if st.empty:
            detail = "the board said EMPTY: refill its drink (or re-enable the slot)"
            found.append(Alert(AlertKind.SLOT_EMPTY, str(slot), detail, st.at or now))
    return {alert.id: alert for alert in found}


def evaluate(facts: Facts, open_alerts: Mapping[str, Alert]) -> Changes:
    """Which alerts to raise (called for, not open; or a newer redis restart) and which to
    clear (open, no longer called for; stamped with `facts.now`)."""
    want = wanted(facts)
    raised = tuple(
        alert
        for alert_id, alert in want.items()
        if alert_id not in open_alerts
        or (alert.kind == AlertKind.REDIS_RESTARTED and alert.at > open_alerts[alert_id].at)
    )
    cleared = tuple(
        replace(alert, detail=_cleared_detail(alert), at=facts.now)
        for alert_id, alert in sorted(open_alerts.items())
        if alert_id not in want
    )
    return Changes(raised, cleared)


def _cleared_detail(alert: Alert) -> str:
    return {
        AlertKind.LOW_STOCK: "stock back above the threshold",
        AlertKind.SOLD_OUT: "back in stock",
        AlertKind.HEARTBEAT_STALE: "heartbeat back",
        AlertKind.REFUND_OWED: "resolved",
        AlertKind.VEND_UNKNOWN: "resolved",
        AlertKind.GATEWAY_DOWN: "gateway reachable again",
        AlertKind.REDIS_RESTARTED: "seen",
        AlertKind.SLOT_DISABLED: "re-enabled",
        AlertKind.SLOT_EMPTY: "refilled or re-enabled",
    }[alert.kind]


def gateway_write_due(
    believed_ok: bool | None, written_at: float, ok: bool, now: float, refresh_s: float
) -> bool:
    """Whether a process writes the gateway's health after a call: on a change of what it
    believes (or its first call), or once `refresh_s` has passed since it last wrote, so
    that processes that saw different things converge. Otherwise the call writes nothing."""
    return believed_ok is not ok or now - written_at >= refresh_s
