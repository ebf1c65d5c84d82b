"""The alerts of a machine in Redis: what the watcher observes, the open alerts, the alerts
stream and the webhook's cursor on it, and the marker `up` leaves when it restarts Redis.

The decisions are cores/alerts.py's; this module reads the facts and writes the answer. A
raise or a clear is one MULTI: its entry on the ALERTS stream and its change to ALERTS_OPEN.

Heartbeats are read as Broker.heartbeats reads them: the machine's own key, else the newest
beat of fleet mode's shared processes of the service (FLEET_WORKERS). One machine has no
FLEET_WORKERS, so a missing heartbeat stays missing there. In fleet mode (`fleet=True`, the
default for a Broker with work hints) the machines have no heartbeats of their own: the shared
services are judged once for the whole fleet (`FleetAlertStore`, machine id `*`), not once per
machine (a dead service would raise a thousand alerts, and a rate-limited webhook would hold a
refund owed behind them); each machine's check leaves them out.

Fleet mode also copies every raise and clear of a machine onto the fleet-wide FLEET_ALERTS
stream, which one webhook sender follows for the whole fleet. That copy is written just before
the machine's MULTI (another slot, `{fleet}`, so another command): a failure between the two
sends an alert twice (it is raised again at the next check), never loses one.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any, cast

import redis

from constants import keys
from constants.services import WATCHED
from constants.tunables import ALERTS_MAXLEN
from cores import catalog
from cores.alerts import Alert, AlertKind, AlertState, Changes, Facts, Gateway
from cores.broker import Broker
from cores.models import slot_states
from cores.work import fleet_heartbeats

#: The `machine_id` of fleet-wide alerts (no machine id has `*`: cores/config.py MACHINE_ID).
FLEET_WIDE = "*"

#: The services whose heartbeats are watched: those `up` starts that beat.
WATCHED_SERVICES: tuple[str, ...] = tuple(str(s) for s in WATCHED)

#: Alerts stream entries as this module returns them: (entry id, fields).
Entries = list[tuple[str, dict[str, str]]]


class AlertReads:
    """What both stores read alike: the open set (`open_key`) and the stream (`alerts_key`)."""

    redis: redis.Redis
    open_key: str
    alerts_key: str

    def open_alerts(self) -> list[Alert]:
        """The open alerts, oldest first."""
        raw = cast(dict[str, str], self.redis.hgetall(self.open_key))
        return sorted((Alert.parse(json.loads(v)) for v in raw.values()), key=lambda a: a.at)

    def recent(self, count: int = 100) -> list[dict[str, str]]:
        """The newest `count` entries of the alerts stream, oldest first, each with its id."""
        entries = cast(Entries, self.redis.xrevrange(self.alerts_key, count=count))
        return [{"id": i, **f} for i, f in reversed(entries)]


class AlertStore(AlertReads):
    """Reads and writes a machine's alerts through its broker's Redis client."""

    def __init__(
        self,
        broker: Broker,
        services: Iterable[str] = WATCHED_SERVICES,
        fleet: bool | None = None,
    ) -> None:
        """`fleet`: the machine is one of fleet mode's (default: whether `broker` sends work
        hints, as fleet mode's Brokers do): its alerts are also copied to FLEET_ALERTS and
        the shared services' heartbeats are left to the fleet-wide check."""
        self.broker = broker
        self.redis = broker.redis
        self.services = tuple(services)
        self.fleet = broker.hints is not None if fleet is None else fleet
        self.alerts_key = self._key(keys.ALERTS)
        self.open_key = self._key(keys.ALERTS_OPEN)
        self.cursor_key = self._key(keys.ALERTS_WEBHOOK_CURSOR)
        self.gateway_key = self._key(keys.GATEWAY)
        self.restart_key = self._key(keys.REDIS_RESTARTED)

    def _key(self, template: str) -> str:
        return keys.key(template, self.broker.machine_id)

    @property
    def machine_id(self) -> str:
        return self.broker.machine_id

    # --- the watcher ------------------------------------------------------------------------

    def observe(self, now: float, watching_since: float) -> tuple[Facts, dict[str, Alert]]:
        """The facts the rules judge, and the open alerts: one round trip of eight reads (and,
        outside fleet mode, one read a service whose heartbeat is missing)."""
        b = self.broker
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(b.stock_key)
            pipe.hgetall(b.menu_key)
            pipe.mget([b.heartbeat_key(s) for s in self.services])
            pipe.hgetall(b.operator_key)
            pipe.hgetall(self.gateway_key)
            pipe.hgetall(self.restart_key)
            pipe.hgetall(self.open_key)
            pipe.hgetall(b.slots_key)
            stock, menu, beats, queue, gateway, restart, open_, slots = pipe.execute()
        thresholds = {d.id: d.low_stock for d in catalog.menu_from_hash(menu) if d.enabled}
        heartbeats: dict[str, float | None] = {
            s: None if at is None else float(at) for s, at in zip(self.services, beats, strict=True)
        }
        missing = [s for s, at in heartbeats.items() if at is None]
        if self.fleet:  # judged once for the fleet (FleetAlertStore)
            heartbeats = {s: at for s, at in heartbeats.items() if at is not None}
        elif missing:  # as Broker.heartbeats: the shared processes' beat where none is own
            heartbeats.update(fleet_heartbeats(self.redis, missing))
        facts = Facts(
            now=now,
            stock={k: int(v) for k, v in stock.items()},
            low_stock=thresholds,
            heartbeats=heartbeats,
            watching_since=watching_since,
            queue={k: json.loads(v) for k, v in queue.items()},
            gateway=gateway_health(gateway),
            redis_restarted_at=_number(restart.get("at")),
            redis_restarts=int(restart.get("count") or 0),
            slots=slot_states(slots),
        )
        return facts, {k: Alert.parse(json.loads(v)) for k, v in open_.items()}

    def apply(self, changes: Changes) -> None:
        """Write the raises and clears in one MULTI: stream entries and the open set (in
        fleet mode, after their copies on FLEET_ALERTS)."""
        if not changes:
            return
        if self.fleet:
            self._copy_to_fleet(
                [(a, AlertState.RAISED) for a in changes.raised]
                + [(a, AlertState.CLEARED) for a in changes.cleared]
            )
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

    def _copy_to_fleet(self, entries: list[tuple[Alert, AlertState]]) -> None:
        """The machine's raises and clears onto FLEET_ALERTS, in one MULTI (`{fleet}` slot)."""
        with self.redis.pipeline() as pipe:
            for alert, state in entries:
                _append_fleet(pipe, self.machine_id, alert, state)
            pipe.execute()

    # --- the operator -----------------------------------------------------------------------

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
        cleared = Alert(alert.kind, alert.subject, "acknowledged by the operator", now)
        if self.fleet:
            self._copy_to_fleet([(cleared, AlertState.CLEARED)])
        with self.redis.pipeline() as pipe:
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
        return _webhook_cursor(self.redis, self.cursor_key, self.alerts_key)

    def set_webhook_cursor(self, entry_id: str) -> None:
        self.redis.set(self.cursor_key, entry_id)

    def read_after(self, cursor: str, block_ms: int, count: int = 100) -> Entries:
        """Alerts stream entries after `cursor`, blocking up to `block_ms` for one."""
        return _read_after(self.broker.blocking, self.alerts_key, cursor, block_ms, count)


class FleetAlertStore(AlertReads):
    """Fleet mode's fleet-wide alerts (machine id `*`): a shared service with no live process
    (heartbeat_stale), judged once for every machine, from FLEET_WORKERS; and the FLEET_ALERTS
    stream every machine's alerts are copied to, with the webhook's cursor on it. Every key is
    in the `{fleet}` slot: a raise or a clear is one MULTI."""

    machine_id = FLEET_WIDE

    def __init__(
        self,
        client: redis.Redis,
        blocking: redis.Redis | None = None,
        services: Iterable[str] = WATCHED_SERVICES,
    ) -> None:
        self.redis = client
        self.blocking = blocking or client
        self.services = tuple(services)
        self.alerts_key = keys.FLEET_ALERTS
        self.open_key = keys.FLEET_ALERTS_OPEN
        self.cursor_key = keys.FLEET_ALERTS_WEBHOOK_CURSOR

    def observe(self, now: float, watching_since: float) -> tuple[Facts, dict[str, Alert]]:
        """The shared services' heartbeats (as cores.work.fleet_heartbeats reads them: the
        newest beat of any process of the service) and the open fleet-wide alerts: one
        round trip."""
        with self.redis.pipeline(transaction=False) as pipe:
            for service in self.services:
                pipe.zrevrange(keys.FLEET_WORKERS.format(service=service), 0, 0, withscores=True)
            pipe.hgetall(self.open_key)
            *newest, open_ = pipe.execute()
        beats = {
            s: float(top[0][1]) if top else None
            for s, top in zip(self.services, newest, strict=True)
        }
        facts = Facts(now=now, heartbeats=beats, watching_since=watching_since)
        return facts, {k: Alert.parse(json.loads(v)) for k, v in open_.items()}

    def apply(self, changes: Changes) -> None:
        """Write the raises and clears in one MULTI: FLEET_ALERTS entries and the open set."""
        if not changes:
            return
        with self.redis.pipeline() as pipe:
            for alert in changes.raised:
                _append_fleet(pipe, FLEET_WIDE, alert, AlertState.RAISED)
                pipe.hset(self.open_key, alert.id, json.dumps(alert.record()))
            for alert in changes.cleared:
                _append_fleet(pipe, FLEET_WIDE, alert, AlertState.CLEARED)
                pipe.hdel(self.open_key, alert.id)
            pipe.execute()

    def webhook_cursor(self) -> str:
        """As AlertStore.webhook_cursor, on FLEET_ALERTS."""
        return _webhook_cursor(self.redis, self.cursor_key, self.alerts_key)

    def set_webhook_cursor(self, entry_id: str) -> None:
        self.redis.set(self.cursor_key, entry_id)

    def read_after(self, cursor: str, block_ms: int, count: int = 100) -> Entries:
        """FLEET_ALERTS entries after `cursor`, blocking up to `block_ms` for one: one
        blocking read for the whole fleet."""
        return _read_after(self.blocking, self.alerts_key, cursor, block_ms, count)


def _append_fleet(pipe: Any, machine_id: str, alert: Alert, state: AlertState) -> None:
    entry = {"machine_id": machine_id, **alert.entry(state)}
    pipe.xadd(keys.FLEET_ALERTS, entry, maxlen=ALERTS_MAXLEN, approximate=True)


def _webhook_cursor(client: redis.Redis, cursor_key: str, stream_key: str) -> str:
    """The webhook's cursor; the first time, the stream's newest entry now, stored at once
    (SET NX: two senders starting together agree). Both keys share one slot."""
    cursor = client.get(cursor_key)
    if cursor is not None:
        return cast(str, cursor)
    newest = cast(Entries, client.xrevrange(stream_key, count=1))
    first = newest[0][0] if newest else "0-0"
    client.set(cursor_key, first, nx=True)
    return cast(str, client.get(cursor_key) or first)


def _read_after(
    blocking: redis.Redis, stream_key: str, cursor: str, block_ms: int, count: int
) -> Entries:
    answer = blocking.xread({stream_key: cursor}, count=count, block=block_ms)
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


__all__ = ["FLEET_WIDE", "AlertStore", "FleetAlertStore", "gateway_health", "mark_redis_restart"]
