"""The alert watcher: reads the machine, asks cores/alerts.py, writes raises and clears.

It runs inside the OPERATOR process (`start_alert_watcher`), next to the webhook sender when
ALERT_WEBHOOK_URL is set. Like every worker it blocks on the events and commands streams: it
checks every ALERT_CHECK_S, and at once when a sale ends (a result screen: stock and the
operator's queue may have changed). An idle check is one round trip of seven reads
(cores/alert_store.py), so the watcher adds about ten Redis commands per ALERT_CHECK_S,
besides its own heartbeat cycle (three commands per 20 s, as every worker).

Fleet mode runs no watcher per machine: services/fleet_alerts.py checks every registered
machine with the same `check_alerts`, a few at a time, in one thread of the OPERATOR process.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import Protocol

from constants.states import RESULT_STATES, State
from constants.tunables import ALERT_CHECK_S
from cores import alerts
from cores.alert_store import AlertStore
from cores.broker import Broker, Snapshot
from cores.config import Settings
from cores.logs import kv
from services.alert_webhook import WebhookSender
from services.worker import Worker

log = logging.getLogger(__name__)

#: Events after which the watcher checks at once rather than at its next period.
_CHECK_AFTER = frozenset({*RESULT_STATES, State.OUT_OF_SERVICE})


class AlertWatcher(Worker):
    """Raises and clears the machine's alerts (cores/alerts.py has the rules)."""

    service = "ALERTS"
    max_block_s = ALERT_CHECK_S

    def __init__(
        self,
        broker: Broker,
        clock: Callable[[], float] = time.time,
        check_every_s: float = ALERT_CHECK_S,
    ) -> None:
        super().__init__(broker, clock)
        self.store = AlertStore(broker)
        self.check_every_s = check_every_s
        self.watching_since: float | None = None
        self.next_check = 0.0
        #: Checks done (tests wait on it).
        self.checks = 0

    def step(self, snap: Snapshot, entries: list[tuple[str, dict]]) -> float | None:
        now = self.clock()
        if self.watching_since is None:
            self.watching_since = now
        ended = any(
            stream == self.broker.events_key and fields.get("state") in _CHECK_AFTER
            for stream, fields in entries
        )
        if now >= self.next_check or ended:
            self.check(now)
            self.next_check = now + self.check_every_s
        return self.next_check

    def check(self, now: float) -> alerts.Changes:
        """One evaluation: read, judge, write what changed."""
        changes = check_alerts(self.store, now, self.watching_since or now)
        self.checks += 1
        return changes


class Observed(Protocol):
    """What `check_alerts` reads and writes: a machine's alerts (AlertStore) or the fleet's
    (FleetAlertStore)."""

    def observe(
        self, now: float, watching_since: float
    ) -> tuple[alerts.Facts, dict[str, alerts.Alert]]: ...

    def apply(self, changes: alerts.Changes) -> None: ...


def check_alerts(store: Observed, now: float, watching_since: float) -> alerts.Changes:
    """One evaluation of `store`'s alerts: read, judge (cores/alerts.py), write what changed."""
    facts, open_alerts = store.observe(now, watching_since)
    changes = alerts.evaluate(facts, open_alerts)
    store.apply(changes)
    for alert in changes.raised:
        log.warning("alert raised", extra=kv(alert=alert.id, detail=alert.detail))
    for alert in changes.cleared:
        log.info("alert cleared", extra=kv(alert=alert.id, detail=alert.detail))
    return changes


class Stoppable(Protocol):
    def request_stop(self) -> None: ...


@dataclass
class AlertThreads:
    """The watcher (a machine's AlertWatcher, or fleet mode's FleetAlertWatcher) and, with
    ALERT_WEBHOOK_URL, the webhook sender, each in a daemon thread."""

    watcher: Stoppable
    sender: WebhookSender | None = None
    threads: list[threading.Thread] = field(default_factory=list)

    def stop(self, timeout_s: float = 1.0) -> None:
        """Ask both to stop; wait at most `timeout_s` (a read on Redis in hand ends at its
        own timeout; the threads are daemons, so a process that exits does not wait)."""
        self.watcher.request_stop()
        if self.sender is not None:
            self.sender.stop(timeout_s)
        for thread in self.threads:
            thread.join(timeout_s)


def start_alert_watcher(settings: Settings, broker: Broker) -> AlertThreads:
    """Start the alert watcher (and the webhook sender when ALERT_WEBHOOK_URL is set) in
    daemon threads of the calling process, on `broker`; `.stop()` them at shutdown."""
    watcher = AlertWatcher(broker)
    thread = threading.Thread(target=watcher.run, name="alert-watcher", daemon=True)
    thread.start()
    started = AlertThreads(watcher, threads=[thread])
    if settings.alert_webhook_url:
        started.sender = WebhookSender(AlertStore(broker), settings.alert_webhook_url).start()
    log.info("alert watcher started", extra=kv(webhook=bool(settings.alert_webhook_url)))
    return started


def format_alerts(store: AlertStore, show_all: bool = False, count: int = 100) -> list[dict]:
    """What `main.py alerts [--all]` lists: the open alerts, or the newest stream entries."""
    if show_all:
        return store.recent(count)
    return [{"id": a.id, **a.record()} for a in store.open_alerts()]


def alerts_text(rows: list[dict], tz: tzinfo = UTC) -> str:
    """`main.py alerts` without --json: one line per alert, times in `tz` (the machine's)."""
    if not rows:
        return "no open alerts"
    lines = []
    for row in rows:
        stamp = datetime.fromtimestamp(float(row["at"]), tz).strftime("%Y-%m-%d %H:%M:%S")
        state = f" {row['state']}" if "state" in row else ""
        lines.append(f"{stamp}{state} {row['kind']}:{row['subject']}  {row.get('detail', '')}")
    return "\n".join(lines)
