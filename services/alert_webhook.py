"""POST each alert raised or cleared to ALERT_WEBHOOK_URL, in its own thread.

The queue is the alerts stream itself (bounded by ALERTS_MAXLEN), read from a cursor kept in
Redis (ALERTS_WEBHOOK_CURSOR) and moved past an entry once the receiver has taken it: a
restart resends nothing already taken and loses nothing raised meanwhile. Entries go out in
order; a receiver that is down or answers 5xx (or 408, 429) is tried again on
ALERT_WEBHOOK_RETRY_S, its last pause repeating until it answers. A receiver that refuses an
entry (any other 4xx) is logged and the entry skipped, so one bad entry cannot stop the rest.
Nothing here runs on a sale's path: the workers only write the stream.

The body is JSON: {"id": entry id (receivers may deduplicate on it), "machine_id", "kind",
"subject", "state": "raised" | "cleared", "detail", "at": unix s}.

Fleet mode: one sender for the whole fleet follows FLEET_ALERTS (cores.alert_store.
FleetAlertStore), where every machine's alerts are copied with their machine id: the same
body, its `machine_id` the entry's (`*` for a fleet-wide alert: a shared service down), its
`id` the FLEET_ALERTS entry's. One blocking read for the fleet, not one per machine.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
from collections.abc import Sequence
from typing import Protocol
from urllib.parse import urlsplit

import redis
import requests

from constants.tunables import (
    ALERT_WEBHOOK_RETRY_S,
    ALERT_WEBHOOK_TIMEOUT_S,
    ERROR_BACKOFF_S,
    REDIS_BLOCK_MAX_MS,
)
from cores.logs import kv

log = logging.getLogger(__name__)

#: HTTP statuses after which the same entry is sent again.
_RETRY_STATUSES = frozenset({408, 429})


class AlertFeed(Protocol):
    """An alerts stream and the webhook's cursor on it: a machine's (AlertStore) or the
    fleet's (FleetAlertStore). `machine_id`: of entries that do not name their machine."""

    @property
    def machine_id(self) -> str: ...

    def webhook_cursor(self) -> str: ...

    def set_webhook_cursor(self, entry_id: str) -> None: ...

    def read_after(
        self, cursor: str, block_ms: int, count: int = 100
    ) -> list[tuple[str, dict[str, str]]]: ...


class WebhookSender:
    """Delivers the alerts stream to `url`. `start()` runs it in a daemon thread; `stop()`
    ends it after the read or pause in hand (at most `block_s`, or one retry pause)."""

    def __init__(
        self,
        store: AlertFeed,
        url: str,
        session: requests.Session | None = None,
        retry_s: Sequence[float] = ALERT_WEBHOOK_RETRY_S,
        timeout_s: float = ALERT_WEBHOOK_TIMEOUT_S,
        block_s: float = REDIS_BLOCK_MAX_MS / 1000,
    ) -> None:
        self.store = store
        self.url = url
        self.session = session or requests.Session()
        self.retry_s = tuple(retry_s)
        self.timeout_s = timeout_s
        self.block_s = block_s
        self.stopping = threading.Event()
        #: The latest entry ids delivered by this sender (taken by the receiver), in order.
        self.delivered: collections.deque[str] = collections.deque(maxlen=1000)
        self.thread: threading.Thread | None = None

    def start(self) -> WebhookSender:
        self.thread = threading.Thread(target=self.run, name="alert-webhook", daemon=True)
        self.thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        self.stopping.set()
        if self.thread is not None:
            self.thread.join(timeout_s)
        self.session.close()

    def run(self) -> None:
        # The URL may carry a secret in its path (chat webhooks): only its host is logged.
        log.info("alert webhook started", extra=kv(host=urlsplit(self.url).hostname or "-"))
        cursor: str | None = None
        failures = 0
        while not self.stopping.is_set():
            try:
                if cursor is None:
                    cursor = self.store.webhook_cursor()
                for entry_id, fields in self.store.read_after(cursor, round(self.block_s * 1000)):
                    if not self._deliver(entry_id, fields):
                        return  # stopping: the entry stays after the cursor, sent next time
                    self.store.set_webhook_cursor(entry_id)
                    cursor = entry_id
                failures = 0
            except redis.RedisError as exc:
                delay = ERROR_BACKOFF_S[min(failures, len(ERROR_BACKOFF_S) - 1)]
                failures += 1
                log.warning("alert webhook: redis unavailable", extra=kv(error=str(exc)))
                cursor = None
                self.stopping.wait(delay)
        log.info("alert webhook stopped")

    def _deliver(self, entry_id: str, fields: dict[str, str]) -> bool:
        """POST one entry until the receiver takes (or refuses) it; False when stopping."""
        body: dict[str, str | float] = {
            "id": entry_id,
            "machine_id": self.store.machine_id,
            **fields,
        }
        with contextlib.suppress(KeyError, ValueError):
            body["at"] = float(fields["at"])
        attempt = 0
        while not self.stopping.is_set():
            attempt += 1
            try:
                answer = self.session.post(self.url, json=body, timeout=self.timeout_s)
                status: int | None = answer.status_code
                answer.close()
            except requests.RequestException as exc:
                # Only the error's kind: its text names the URL, whose path may be a secret.
                status, error = None, type(exc).__name__
            if status is not None and 200 <= status < 300:
                self.delivered.append(entry_id)
                log.info(
                    "alert sent",
                    extra=kv(
                        alert=f"{fields.get('kind')}:{fields.get('subject')}", attempt=attempt
                    ),
                )
                return True
            if status is not None and 400 <= status < 500 and status not in _RETRY_STATUSES:
                log.warning("alert refused by the webhook", extra=kv(id=entry_id, status=status))
                return True
            if status is not None:
                error = f"HTTP {status}"
            delay = self.retry_s[min(attempt - 1, len(self.retry_s) - 1)]
            log.warning(
                "alert webhook unreachable", extra=kv(id=entry_id, error=error, retry_s=delay)
            )
            self.stopping.wait(delay)
        return False
