"""Fleet mode's alert watcher: every registered machine checked with the one machine's rules,
a few at a time, from one thread of the OPERATOR process (`main.py --service OPERATOR --fleet`).

Which machines: the registry's (cores/fleet.py), active and revoked alike (a revoked machine
may still owe a refund), re-read once per ALERT_CHECK_S. How: each machine's check is the one
machine watcher's (`check_alerts` on its AlertStore: one round trip of seven reads on its own
slot, a MULTI only when an alert changes); no blocking read per machine, no event stream
followed. When: in id order, round and round, at the pace that checks every machine once per
ALERT_CHECK_S (with a tenth to spare, `PACE`): each second owes machines / period checks
(`batch_size`), a batch takes the whole ones after the last machine checked (`next_batch`: the
cursor is an id, so a machine added mid-round makes the round skip none), and the thread
pauses `pause_s` (period / machines, at least FLEET_ALERT_TICK_MIN_S) before the next batch. An
idle fleet of 1,000 costs about 19 checks (130 commands) a second, spread evenly; a newly
added machine is first checked within two periods.

Heartbeats: fleet mode's machines have none of their own; the shared services beat in
FLEET_WORKERS for the whole fleet (Broker.heartbeats falls back to them). They are judged once
for the fleet, every ALERT_CHECK_S (cores.alert_store.FleetAlertStore): a dead DISPENSE raises
one `heartbeat_stale:DISPENSE` of machine `*`, not one per machine, which at a thousand machines
would flood the webhook (and a rate-limited one would hold a refund owed behind them).

The one machine's watcher also checks at once when a sale ends; this one does not read the
events, so a refund owed or a vend outcome unknown is raised within ALERT_CHECK_S.

With ALERT_WEBHOOK_URL, one WebhookSender follows FLEET_ALERTS, where every machine's raises and
clears are copied with their machine id (cores/alert_store.py): the same JSON as one machine's.
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import cast

import redis

from constants import keys
from constants.tunables import ALERT_CHECK_S, ERROR_BACKOFF_S, FLEET_ALERT_TICK_MIN_S
from cores.alert_store import WATCHED_SERVICES, AlertStore, FleetAlertStore
from cores.broker import Broker
from cores.config import Settings
from cores.logs import for_machine, kv
from services.alert_webhook import WebhookSender
from services.alerts_service import AlertThreads, check_alerts

log = logging.getLogger(__name__)

#: The watcher goes round the fleet in this share of ALERT_CHECK_S: a batch a little late (a
#: slow check, a busy Redis) still leaves every machine checked within ALERT_CHECK_S.
PACE = 0.9

#: Rounding slack of the checks owed (floating point: n * (period / n) / period < 1).
_EPSILON = 1e-9


def batch_size(machines: int, elapsed_s: float, period_s: float, owed: float) -> tuple[int, float]:
    """How many of `machines` to check now, `elapsed_s` after the last batch, so that each is
    checked once per `period_s`; and the fraction of a check carried to the next batch. `owed`
    is the fraction carried from the last. A long stall checks every machine once, not more."""
    owed += machines * max(elapsed_s, 0.0) / period_s
    count = min(machines, math.floor(owed + _EPSILON))
    carry = 0.0 if count >= machines else max(owed - count, 0.0)
    return count, carry


def next_batch(machines: Sequence[str], after: str | None, count: int) -> list[str]:
    """The `count` machines next after `after` in id order, round to the first after the last
    (`after` None: from the first); each at most once."""
    ordered = sorted(machines)
    if not ordered or count <= 0:
        return []
    start = 0 if after is None else bisect.bisect_right(ordered, after)
    return [ordered[(start + i) % len(ordered)] for i in range(min(count, len(ordered)))]


def pause_s(machines: int, period_s: float, min_s: float = FLEET_ALERT_TICK_MIN_S) -> float:
    """The pause between two batches: one machine's share of the period, at least `min_s`
    (a large fleet is checked several machines a batch), at most the period."""
    if machines <= 0:
        return period_s
    return min(period_s, max(min_s, period_s / machines))


class FleetAlertWatcher:
    """Raises and clears the alerts of every machine of the fleet, and the fleet-wide ones.
    `tick()` does one batch (tests call it with their own clock); `run()` loops until
    `request_stop()`."""

    def __init__(
        self,
        client: redis.Redis,
        clock: Callable[[], float] = time.time,
        period_s: float = ALERT_CHECK_S,
        tick_min_s: float = FLEET_ALERT_TICK_MIN_S,
        services: Iterable[str] = WATCHED_SERVICES,
    ) -> None:
        self.redis = client
        self.clock = clock
        self.period_s = period_s
        self.tick_min_s = tick_min_s
        self.services = tuple(services)
        self.fleet_store = FleetAlertStore(client, services=self.services)
        self.stores: dict[str, AlertStore] = {}
        #: The registry's machine ids, sorted, as last read.
        self.machines: list[str] = []
        #: The machine last checked: the round goes on after it.
        self.after: str | None = None
        #: Checks owed and not yet done (a fraction); one at the start: the round begins at once.
        self.owed = 1.0
        self.last_tick: float | None = None
        #: When the registry is read again and the fleet-wide alerts are checked.
        self.next_round = 0.0
        self.watching_since: float | None = None
        self.stopping = threading.Event()
        #: Checks done, per machine, and fleet-wide ones (tests wait on them).
        self.checks: collections.Counter[str] = collections.Counter()
        self.fleet_checks = 0

    def request_stop(self) -> None:
        self.stopping.set()

    def run(self) -> None:
        log.info("fleet alert watcher running", extra=kv(period_s=self.period_s))
        failures = 0
        while not self.stopping.is_set():
            try:
                pause = self.tick()
                failures = 0
            except Exception as exc:  # a failing tick must not end the watcher
                pause = ERROR_BACKOFF_S[min(failures, len(ERROR_BACKOFF_S) - 1)]
                failures += 1
                if isinstance(exc, redis.RedisError):
                    log.warning("redis unavailable", extra=kv(error=str(exc), retry_s=pause))
                else:
                    log.exception("fleet alert check failed", extra=kv(retry_s=pause))
            self.stopping.wait(pause)
        log.info("fleet alert watcher stopped")

    def tick(self) -> float:
        """Read the registry and check the fleet-wide alerts when due, then check the
        machines owed a check by now; return the pause before the next tick."""
        now = self.clock()
        if self.watching_since is None:
            self.watching_since = now
        if now >= self.next_round:
            self._read_registry()
            check_alerts(self.fleet_store, now, self.watching_since)
            self.fleet_checks += 1
            self.next_round = now + self.period_s
        elapsed = 0.0 if self.last_tick is None else now - self.last_tick
        self.last_tick = now
        period = self.period_s * PACE
        count, self.owed = batch_size(len(self.machines), elapsed, period, self.owed)
        for machine_id in next_batch(self.machines, self.after, count):
            self.check_machine(machine_id, now)
            self.after = machine_id  # after the check: a Redis error retries this machine
        pause = pause_s(len(self.machines), period, self.tick_min_s)
        return max(0.0, min(pause, self.next_round - now))

    def check_machine(self, machine_id: str, now: float) -> None:
        """One machine's check, as its own watcher's. A Redis error ends the tick (the
        watcher backs off); any other is logged and the round goes on."""
        store = self.stores.get(machine_id)
        if store is None:
            broker = Broker(self.redis, machine_id)
            store = self.stores[machine_id] = AlertStore(broker, self.services, fleet=True)
        with for_machine(machine_id):
            try:
                check_alerts(store, now, self.watching_since or now)
            except redis.RedisError:
                raise
            except Exception:
                log.exception("alert check failed")
        self.checks[machine_id] += 1

    def _read_registry(self) -> None:
        self.machines = sorted(cast(list[str], self.redis.hkeys(keys.FLEET_MACHINES)))
        known = set(self.machines)
        self.stores = {m: s for m, s in self.stores.items() if m in known}


def start_fleet_alerts(
    settings: Settings, client: redis.Redis, blocking: redis.Redis
) -> AlertThreads:
    """Start the fleet's alert watcher and, with ALERT_WEBHOOK_URL, one webhook sender on
    FLEET_ALERTS (its blocking reads on `blocking`), in daemon threads; `.stop()` them.

    A webhook set for the first time starts after the stream's newest entry: its cursor is
    stored before the watcher's first check, so that the alerts of that check are sent."""
    sender = None
    if settings.alert_webhook_url:
        feed = FleetAlertStore(client, blocking)
        with contextlib.suppress(redis.RedisError):  # else the sender stores it once it can
            feed.webhook_cursor()
        sender = WebhookSender(feed, settings.alert_webhook_url).start()
    watcher = FleetAlertWatcher(client)
    thread = threading.Thread(target=watcher.run, name="fleet-alert-watcher", daemon=True)
    thread.start()
    started = AlertThreads(watcher, sender, threads=[thread])
    log.info(
        "alert watcher started", extra=kv(fleet=True, webhook=bool(settings.alert_webhook_url))
    )
    return started


__all__ = ["FleetAlertWatcher", "batch_size", "next_batch", "pause_s", "start_fleet_alerts"]
