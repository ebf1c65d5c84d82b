"""`/metrics` in the Prometheus text format, served by the OPERATOR process.

The workers record what they measure in Redis (cores/metrics.py); a custom collector reads it
at each scrape, so nothing here depends on prometheus_client's multiprocess mode. The
console app mounts `metrics_endpoint(broker)` at /metrics; `render_metrics(broker)` is the
same text for anything else (a test, a CLI).

    vending_orders_total{outcome}              orders by how they ended (sales stream)
    vending_sales_entries_total{kind}          every sales entry by kind
    vending_payment_wait_seconds{result}       histogram: ORDER_CREATED to paid / failed
    vending_gateway_call_seconds{op}           histogram: Midtrans calls, retries included
    vending_gateway_errors_total{op,kind}      failed Midtrans calls by kind
    vending_gateway_failing_seconds            how long the gateway's calls have failed (0: ok)
    vending_stock_units{drink}                 units left
    vending_heartbeat_age_seconds{service}     age of each worker's heartbeat (absent: none)
    vending_worker_up{service}                 1 while a worker's heartbeat is fresh
    vending_alerts_open{kind}                  open alerts

Every metric carries the label `machine`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from constants.tunables import HEARTBEAT_TTL_S
from cores.alerts import AlertKind
from cores.broker import Broker
from cores.metrics import Histogram, MetricsView, read_metrics

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

PREFIX = "vending_"


class MachineCollector:
    """A prometheus_client collector of one machine's metrics, read from Redis at collect()."""

    def __init__(self, broker: Broker, read: Callable[[Broker], MetricsView] = read_metrics):
        self.broker = broker
        self.read = read

    def describe(self) -> list[Metric]:
        return []  # nothing is read at registration

    def collect(self) -> Iterator[Metric]:
        view = self.read(self.broker)
        m = [view.machine_id]

        orders = CounterMetricFamily(
            PREFIX + "orders", "Orders by how they ended.", labels=["machine", "outcome"]
        )
        for outcome, n in view.orders.items():
            orders.add_metric([*m, outcome], n)
        yield orders

        sales = CounterMetricFamily(
            PREFIX + "sales_entries", "Sales stream entries by kind.", labels=["machine", "kind"]
        )
        for kind, n in sorted(view.sales.items()):
            sales.add_metric([*m, kind], n)
        yield sales

        yield _histograms(
            "payment_wait_seconds",
            "Seconds from ORDER_CREATED to the payment's result.",
            "result",
            m,
            view.payment_wait,
        )
        yield _histograms(
            "gateway_call_seconds",
            "Seconds per Midtrans call, its retries included.",
            "op",
            m,
            view.gateway_latency,
        )

        errors = CounterMetricFamily(
            PREFIX + "gateway_errors",
            "Failed Midtrans calls by kind.",
            labels=["machine", "op", "kind"],
        )
        for (op, kind), n in sorted(view.gateway_errors.items()):
            errors.add_metric([*m, op, kind], n)
        yield errors

        since = view.gateway.failing_since
        yield _gauge(
            "gateway_failing_seconds",
            "Seconds the gateway's calls have been failing (0 while they succeed).",
            [],
            [([], 0.0 if since is None else max(0.0, view.now - since))],
            m,
        )
        yield _gauge(
            "stock_units",
            "Units left per drink.",
            ["drink"],
            [([d], float(n)) for d, n in sorted(view.stock.items())],
            m,
        )
        yield _gauge(
            "heartbeat_age_seconds",
            "Seconds since each worker's last heartbeat (absent: none in the last minute).",
            ["service"],
            [([s], max(0.0, view.now - at)) for s, at in view.heartbeats.items() if at is not None],
            m,
        )
        yield _gauge(
            "worker_up",
            "1 while a worker's heartbeat is fresh.",
            ["service"],
            [
                ([s], float(at is not None and view.now - at <= HEARTBEAT_TTL_S))
                for s, at in view.heartbeats.items()
            ],
            m,
        )
        yield _gauge(
            "alerts_open",
            "Open alerts by kind.",
            ["kind"],
            [([str(k)], float(view.alerts_open.get(str(k), 0))) for k in AlertKind],
            m,
        )


def _gauge(
    name: str,
    doc: str,
    labels: list[str],
    samples: list[tuple[list[str], float]],
    machine: list[str],
) -> GaugeMetricFamily:
    family = GaugeMetricFamily(PREFIX + name, doc, labels=["machine", *labels])
    for values, value in samples:
        family.add_metric([*machine, *values], value)
    return family


def _buckets(histogram: Histogram) -> list[tuple[str, float]]:
    return [("+Inf" if b == float("inf") else repr(b), float(n)) for b, n in histogram.buckets]


def _histograms(
    name: str, text: str, label: str, machine: list[str], histograms: Mapping[str, Histogram]
) -> HistogramMetricFamily:
    """One histogram family, a histogram per value of `label`."""
    family = HistogramMetricFamily(PREFIX + name, text, labels=["machine", label])
    for value, histogram in histograms.items():
        family.add_metric([*machine, value], _buckets(histogram), histogram.total)
    return family


def render_metrics(broker: Broker) -> bytes:
    """The machine's metrics in the Prometheus text format (CONTENT_TYPE is its media type)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MachineCollector(broker))
    return generate_latest(registry)


#: The media type of `render_metrics`'s answer.
CONTENT_TYPE = CONTENT_TYPE_LATEST


def metrics_endpoint(broker: Broker) -> Callable[[Request], Response]:
    """A Starlette endpoint serving `render_metrics(broker)`; a sync function, so Starlette
    runs it in its thread pool (the Redis reads block)."""
    from starlette.responses import Response

    def metrics(request: Request) -> Response:
        return Response(render_metrics(broker), media_type=CONTENT_TYPE)

    return metrics
