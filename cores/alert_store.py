"""The alerts of a machine in Redis: what the watcher observes, the open alerts, the alerts
stream and the webhook's cursor on it, and the marker `up` leaves when it restarts Redis.

The decisions are cores/alerts.py's; this module reads the facts and writes the answer. A
raise or a clear is one MULTI: its entry on the ALERTS stream and its change to ALERTS_OPEN.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any, cast

from constants import keys
from constants.services import WATCHED
from constants.tunables import ALERTS_MAXLEN
from cores import catalog
from cores.alerts import Alert, AlertKind, AlertState, Changes, Facts, Gateway
from cores.broker import Broker

#: The services whose heartbeats are watched: those `up` starts that beat.
WATCHED_SERVICES: tuple[str, ...] = tuple(str(s) for s in WATCHED)

#: Alerts stream entries as this module returns them: (entry id, fields).
Entries = list[tuple[str, dict[str, str]]]


class AlertStore:
    """Reads and writes a machine's alerts through its broker's Redis client."""

    def __init__(self, broker: Broker, services: Iterable[str] = WATCHED_SERVICES) -> None:
        self.broker = broker
        self.redis = broker.redis
        self.services = tuple(services)
        self.alerts_key = self._key(keys.ALERTS)
        self.open_key = self._key(keys.ALERTS_OPEN)
        self.cursor_key = self._key(keys.ALERTS_WEBHOOK_CURSOR)
        self.gateway_key = self._key(keys.GATEWAY)
        self.restart_key = self._key(keys.REDIS_RESTARTED)

    def _key(self, template: str) -> str:
        return keys.key(template, self.broker.machine_id)

    # --- the watcher ------------------------------------------------------------------------

    def observe(self, now: float, watching_since: float) -> tuple[Facts, dict[str, Alert]]:
        """The facts the rules judge, and the open alerts: one round trip of seven reads."""
        b = self.broker
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(b.stock_key)
            pipe.hgetall(b.menu_key)
            pipe.mget([b.heartbeat_key(s) for s in self.services])
            pipe.hgetall(b.operator_key)
            pipe.hgetall(self.gateway_key)
            pipe.hgetall(self.restart_key)
            pipe.hgetall(self.open_key)
            stock, menu, beats, queue, gateway, restart, open_ = pipe.execute()
        thresholds = {d.id: d.low_stock for d in catalog.menu_from_hash(menu) if d.enabled}
        facts = Facts(
            now=now,
            stock={k: int(v) for k, v in stock.items()},
            low_stock=thresholds,
            heartbeats={
                s: None if at is None else float(at)
                for s, at in zip(self.services, beats, strict=True)
            },
            watching_since=watching_since,
            queue={k: json.loads(v) for k, v in queue.items()},
            gateway=gateway_health(gateway),
            redis_restarted_at=_number(restart.get("at")),
            redis_restarts=int(restart.get("count") or 0),
        )
        return facts, {k: Alert.parse(json.loads(v)) for k, v in open_.items()}

    def apply(self, changes: Changes) -> None:
        """Write the raises and clears in one MULTI: stream entries and the open set."""
        if not changes:
            return
        with self.redis.pipeline() as pipe:
            for alert in changes.raised:
                self._append(pipe, alert, AlertState.RAISED)
                pipe.hset(self.open_key, alert.id, json.dumps(alert.record()))
            for alert in changes.cleared:
                self._append(pipe, alert, AlertState.CLEARED)
                pipe.hdel(self.open_key, alert.id)
            pipe.execute()

    def _append(self, pipe: Any, alert: Alert, state: AlertState) -> None:
        pipe.xadd(self.alerts_key, alert.entry(state), maxlen=ALERTS_MAXLEN, approximate=True)

    # --- the operator -----------------------------------------------------------------------

    def open_alerts(self) -> list[Alert]:
        """The open alerts, oldest first."""
        raw = cast(dict[str, str], self.redis.hgetall(self.open_key))
        return sorted((Alert.parse(json.loads(v)) for v in raw.values()), key=lambda a: a.at)

    def recent(self, count: int = 100) -> list[dict[str, str]]:
        """The newest `count` entries of the alerts stream, oldest first, each with its id."""
        entries = cast(Entries, self.redis.xrevrange(self.alerts_key, count=count))
        return [{"id": i, **f} for i, f in reversed(entries)]

    def acknowledge(
        self, alert_id: str, now: float, also: Callable[[Any, Alert], None] | None = None
    ) -> Alert | None:
        """The operator clears an open alert by hand: the alert as it was (None: it is not
        open). `also(pipe, alert)` adds its writes (an audit entry) to the same MULTI. A Redis
        restart is then forgotten; any other alert is raised again at the next check while
        its condition holds."""
        raw = self.redis.hget(self.open_key, alert_id)
        if raw is None:
            return None
        alert = Alert.parse(json.loads(cast(str, raw)))
        with self.redis.pipeline() as pipe:
            cleared = Alert(alert.kind, alert.subject, "acknowledged by the operator", now)
            self._append(pipe, cleared, AlertState.CLEARED)
            pipe.hdel(self.open_key, alert_id)
            if alert.kind == AlertKind.REDIS_RESTARTED:
                pipe.delete(self.restart_key)
            if also is not None:
                also(pipe, alert)
            pipe.execute()
        return alert

    # --- the webhook ------------------------------------------------------------------------

    def webhook_cursor(self) -> str:
        """Where the webhook resumes: after the last entry it delivered. The first time, the
        newest entry now (a newly set webhook is not sent the history), stored at once."""
        cursor = self.redis.get(self.cursor_key)
        if cursor is not None:
            return cast(str, cursor)
        newest = cast(Entries, self.redis.xrevrange(self.alerts_key, count=1))
        first = newest[0][0] if newest else "0-0"
        self.redis.set(self.cursor_key, first, nx=True)
        return cast(str, self.redis.get(self.cursor_key) or first)

    def set_webhook_cursor(self, entry_id: str) -> None:
        self.redis.set(self.cursor_key, entry_id)

    def read_after(self, cursor: str, block_ms: int, count: int = 100) -> Entries:
        """Alerts stream entries after `cursor`, blocking up to `block_ms` for one."""
        answer = self.broker.blocking.xread({self.alerts_key: cursor}, count=count, block=block_ms)
        if not answer:
            return []
        if isinstance(answer, dict):  # RESP3: stream -> [entries]
            found = cast(dict[str, list[Entries]], answer)
            return [e for streams in found.values() for e in streams[0]]
        return [e for _, entries in cast(list[tuple[str, Entries]], answer) for e in entries]


def mark_redis_restart(broker: Broker) -> None:
    """`up` restarted the machine's redis-server: leave the marker the watcher alerts on."""
    key = keys.key(keys.REDIS_RESTARTED, broker.machine_id)
    with broker.redis.pipeline() as pipe:
        pipe.hset(key, "at", broker.clock())
        pipe.hincrby(key, "count", 1)
        pipe.execute()


def gateway_health(raw: dict[str, str]) -> Gateway:
    """The GATEWAY hash, typed."""
    return Gateway(
        last_ok_at=_number(raw.get("last_ok_at")),
        failing_since=_number(raw.get("failing_since")),
        last_error=raw.get("last_error", ""),
    )


def _number(raw: str | None) -> float | None:
    return float(raw) if raw not in (None, "") else None


__all__ = ["AlertStore", "gateway_health", "mark_redis_restart"]
