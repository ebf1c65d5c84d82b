"""What /metrics reports, kept in Redis, since the workers that measure it are separate
processes (no prometheus_client multiprocess mode):

- Each gateway call is recorded by the process that made it (`GatewayRecorder`, the Midtrans
  client's observer): its latency bucket, sum and error kind are incremented in the METRICS
  hash in one pipelined round trip, and the gateway's health (GATEWAY hash, which the
  gateway_down alert reads) is written on a change of state only.
- Orders by outcome and the payment wait are folded from the sales stream at scrape time
  (`fold_sales`), from a cursor kept with the counters in METRICS_SALES, so each entry is
  counted once whoever scrapes and however often. The wait runs from the `charged` entry
  (ORDER_CREATED) to the order's `paid`, `payment_failed` or `cancelled` entry.
- Stock, heartbeats and open alerts are read as they are (`read_metrics`).

Histograms are kept as one counter per bucket (not cumulative) plus a sum; `Histogram` makes
them cumulative for the exposition.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import cast

import redis

from constants import keys
from constants.states import Sale
from constants.tunables import (
    GATEWAY_HEALTH_REFRESH_S,
    GATEWAY_LATENCY_BUCKETS_S,
    PAYMENT_WAIT_BUCKETS_S,
)
from cores.alert_store import WATCHED_SERVICES, gateway_health
from cores.alerts import Gateway, gateway_write_due
from cores.broker import Broker
from cores.logs import kv
from cores.midtrans import GatewayUnreachable, MidtransError, error_kind

log = logging.getLogger(__name__)

#: Sales entries that end an order, one per order: what "orders by outcome" counts.
ORDER_OUTCOMES = (
    Sale.DISPENSED,
    Sale.DISPENSE_FAILED,
    Sale.PAYMENT_FAILED,
    Sale.CANCELLED,
    Sale.CHARGE_FAILED,
)
#: Sales entries that end a payment wait, and the `result` label of each.
_WAIT_ENDS = {Sale.PAID: "paid", Sale.PAYMENT_FAILED: "failed", Sale.CANCELLED: "failed"}

_SEP = "|"
INF = math.inf


def bucket(value: float, bounds: Sequence[float]) -> str:
    """The (non-cumulative) bucket a value falls in: its smallest bound >= value, or +Inf."""
    for bound in bounds:
        if value <= bound:
            return repr(float(bound))
    return "+Inf"


@dataclass(frozen=True)
class Histogram:
    """A histogram for the exposition: cumulative (bound, count) pairs ending with +Inf."""

    buckets: tuple[tuple[float, int], ...]
    total: float

    @property
    def count(self) -> int:
        return self.buckets[-1][1] if self.buckets else 0

    @classmethod
    def from_counts(
        cls, counts: Mapping[str, int], total: float, bounds: Sequence[float]
    ) -> Histogram:
        running = 0
        out = []
        for bound in (*bounds, INF):
            running += counts.get("+Inf" if bound == INF else repr(float(bound)), 0)
            out.append((float(bound), running))
        return cls(tuple(out), total)


# --- gateway calls (written by the workers) ----------------------------------------------------


def call_increments(op: str, elapsed_s: float, error: MidtransError | None) -> dict[str, int]:
    """The METRICS counters one gateway call adds to (its sum is added apart, a float)."""
    found = {_SEP.join(("gateway_seconds", op, bucket(elapsed_s, GATEWAY_LATENCY_BUCKETS_S))): 1}
    if error is not None:
        found[_SEP.join(("gateway_errors", op, error_kind(error)))] = 1
    return found


class GatewayRecorder:
    """The Midtrans client's observer in a worker: records each call's latency and error in
    METRICS, and the gateway's health in GATEWAY when it changes (or every
    GATEWAY_HEALTH_REFRESH_S while calls are made, so processes converge). A Redis error
    here is logged and dropped: a metric never fails a sale."""

    def __init__(self, broker: Broker, refresh_s: float = GATEWAY_HEALTH_REFRESH_S) -> None:
        self.broker = broker
        self.refresh_s = refresh_s
        self.metrics_key = keys.key(keys.METRICS, broker.machine_id)
        self.gateway_key = keys.key(keys.GATEWAY, broker.machine_id)
        self._believed_ok: bool | None = None
        self._written_at = -INF
        self._lock = threading.Lock()

    def __call__(self, op: str, elapsed_s: float, error: MidtransError | None) -> None:
        ok = not isinstance(error, GatewayUnreachable)
        now = self.broker.clock()
        with self._lock:
            write_health = gateway_write_due(
                self._believed_ok, self._written_at, ok, now, self.refresh_s
            )
            try:
                with self.broker.redis.pipeline(transaction=False) as pipe:
                    for name, n in call_increments(op, elapsed_s, error).items():
                        pipe.hincrby(self.metrics_key, name, n)
                    pipe.hincrbyfloat(self.metrics_key, _SEP.join(("gateway_sum", op)), elapsed_s)
                    if write_health and ok:
                        pipe.hset(self.gateway_key, "last_ok_at", now)
                        pipe.hdel(self.gateway_key, "failing_since")
                    elif write_health:
                        # The streak started at its first failure: a refresh keeps it.
                        pipe.hsetnx(self.gateway_key, "failing_since", now)
                        pipe.hset(self.gateway_key, "last_error", str(error)[:200])
                    pipe.execute()
            except redis.RedisError as exc:
                log.warning("gateway metrics not recorded", extra=kv(op=op, error=str(exc)))
                return
            if write_health:
                if self._believed_ok is not ok:
                    log.info("gateway health changed", extra=kv(reachable=ok, op=op))
                self._believed_ok, self._written_at = ok, now


# --- the sales stream (folded at scrape time) --------------------------------------------------


@dataclass
class Fold:
    """What a batch of sales entries adds to METRICS_SALES."""

    counts: dict[str, int] = field(default_factory=dict)
    sums: dict[str, float] = field(default_factory=dict)
    #: Orders charged and not yet paid or failed: order id -> the charge's time.
    pending: dict[str, float] = field(default_factory=dict)
    #: Orders whose wait ended (their pending field is removed).
    done: list[str] = field(default_factory=list)
    cursor: str | None = None


def fold(entries: Iterable[tuple[str, Mapping[str, str]]], pending: Mapping[str, float]) -> Fold:
    """Count sales entries by kind and measure payment waits; pure."""
    out = Fold()
    waiting = dict(pending)
    for entry_id, f in entries:
        out.cursor = entry_id
        kind, order_id = f.get("kind", ""), f.get("order_id", "")
        name = _SEP.join(("sales", kind))
        out.counts[name] = out.counts.get(name, 0) + 1
        at = float(f.get("at") or 0)
        if kind == Sale.CHARGED and order_id:
            waiting[order_id] = at
            out.pending[order_id] = at
        elif kind in _WAIT_ENDS and order_id in waiting:
            result = _WAIT_ENDS[Sale(kind)]
            wait = max(0.0, at - waiting.pop(order_id))
            name = _SEP.join(("wait", result, bucket(wait, PAYMENT_WAIT_BUCKETS_S)))
            out.counts[name] = out.counts.get(name, 0) + 1
            total = _SEP.join(("wait_sum", result))
            out.sums[total] = out.sums.get(total, 0.0) + wait
            out.pending.pop(order_id, None)
            out.done.append(order_id)
    return out


def fold_sales(broker: Broker, batch: int = 1000) -> int:
    """Fold the sales entries not counted yet into METRICS_SALES; returns how many. Safe to
    run from several threads or processes at once: each batch is a compare-and-set on the
    counters' hash (WATCH, MULTI), so an entry is counted once."""
    key = keys.key(keys.METRICS_SALES, broker.machine_id)
    folded = 0
    with broker.redis.pipeline() as pipe:
        while True:
            try:
                pipe.watch(key)
                state = cast(dict[str, str], pipe.hgetall(key))
                cursor = state.get("cursor", "0-0")
                entries = cast(
                    list[tuple[str, dict[str, str]]],
                    pipe.xrange(broker.sales_key, min=f"({cursor}", count=batch),
                )
                if not entries:
                    pipe.unwatch()
                    return folded
                prefix = "pending" + _SEP
                pending = {
                    k[len(prefix) :]: float(v) for k, v in state.items() if k.startswith(prefix)
                }
                out = fold(entries, pending)
                pipe.multi()
                for name, n in out.counts.items():
                    pipe.hincrby(key, name, n)
                for name, x in out.sums.items():
                    pipe.hincrbyfloat(key, name, x)
                for order_id, at in out.pending.items():
                    pipe.hset(key, prefix + order_id, at)
                for order_id in out.done:
                    pipe.hdel(key, prefix + order_id)
                pipe.hset(key, "cursor", cast(str, out.cursor))
                pipe.execute()
                folded += len(entries)
                if len(entries) < batch:
                    return folded
            except redis.WatchError:
                continue


# --- reading it all -----------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricsView:
    """Everything /metrics shows of one machine, as plain values."""

    machine_id: str
    now: float
    gateway_latency: dict[str, Histogram]
    gateway_errors: dict[tuple[str, str], int]
    payment_wait: dict[str, Histogram]
    sales: dict[str, int]
    stock: dict[str, int]
    heartbeats: dict[str, float | None]
    gateway: Gateway
    alerts_open: dict[str, int]

    @property
    def orders(self) -> dict[str, int]:
        """Orders by how they ended (a kind never seen counts 0)."""
        return {str(kind): self.sales.get(str(kind), 0) for kind in ORDER_OUTCOMES}


def read_metrics(broker: Broker, services: Iterable[str] = WATCHED_SERVICES) -> MetricsView:
    """Fold the new sales entries, then read every counter and gauge in one round trip."""
    fold_sales(broker)
    services = tuple(services)
    mid = broker.machine_id
    with broker.redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(keys.key(keys.METRICS, mid))
        pipe.hgetall(keys.key(keys.METRICS_SALES, mid))
        pipe.hgetall(broker.stock_key)
        pipe.mget([broker.heartbeat_key(s) for s in services])
        pipe.hgetall(keys.key(keys.GATEWAY, mid))
        pipe.hgetall(keys.key(keys.ALERTS_OPEN, mid))
        calls, sales, stock, beats, gateway, open_ = pipe.execute()
    latency: dict[str, dict[str, int]] = {}
    errors: dict[tuple[str, str], int] = {}
    sums: dict[str, float] = {}
    for name, value in calls.items():
        parts = name.split(_SEP)
        if parts[0] == "gateway_seconds" and len(parts) == 3:
            latency.setdefault(parts[1], {})[parts[2]] = int(value)
        elif parts[0] == "gateway_errors" and len(parts) == 3:
            errors[(parts[1], parts[2])] = int(value)
        elif parts[0] == "gateway_sum" and len(parts) == 2:
            sums[parts[1]] = float(value)
    waits: dict[str, dict[str, int]] = {}
    wait_sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for name, value in sales.items():
        parts = name.split(_SEP)
        if parts[0] == "sales" and len(parts) == 2:
            counts[parts[1]] = int(value)
        elif parts[0] == "wait" and len(parts) == 3:
            waits.setdefault(parts[1], {})[parts[2]] = int(value)
        elif parts[0] == "wait_sum" and len(parts) == 2:
            wait_sums[parts[1]] = float(value)
    alerts_open: dict[str, int] = {}
    for raw in open_.values():
        kind = str(json.loads(raw).get("kind"))
        alerts_open[kind] = alerts_open.get(kind, 0) + 1
    return MetricsView(
        machine_id=mid,
        now=broker.clock(),
        gateway_latency={
            op: Histogram.from_counts(c, sums.get(op, 0.0), GATEWAY_LATENCY_BUCKETS_S)
            for op, c in sorted(latency.items())
        },
        gateway_errors=errors,
        payment_wait={
            result: Histogram.from_counts(
                waits.get(result, {}), wait_sums.get(result, 0.0), PAYMENT_WAIT_BUCKETS_S
            )
            for result in ("paid", "failed")
        },
        sales=counts,
        stock={k: int(v) for k, v in stock.items()},
        heartbeats={
            s: None if at is None else float(at) for s, at in zip(services, beats, strict=True)
        },
        gateway=gateway_health(gateway),
        alerts_open=alerts_open,
    )
