"""/metrics: the Prometheus text the OPERATOR process serves, parsed with prometheus_client's
own parser, after real purchases through the workers and the local sandbox."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from constants.states import State
from cores.metrics import GatewayRecorder, bucket, fold, fold_sales, read_metrics
from cores.midtrans import GatewayRefused, GatewayTimeout
from services.metrics_service import CONTENT_TYPE, metrics_endpoint, render_metrics
from tests.machine_helpers import wait_state
from tests.test_purchase import Machine


def samples(broker) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics: (name, sorted labels without `machine`) -> value."""
    out = {}
    for family in text_string_to_metric_families(render_metrics(broker).decode()):
        for s in family.samples:
            assert s.labels.pop("machine") == broker.machine_id
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_a_value_falls_in_the_smallest_bucket_that_holds_it_or_in_inf():
    assert bucket(0.05, (0.05, 0.1)) == "0.05"
    assert bucket(0.07, (0.05, 0.1)) == "0.1"
    assert bucket(3.0, (0.05, 0.1)) == "+Inf"


def test_the_payment_wait_runs_from_the_charge_to_the_payment_result_across_batches():
    first = fold([("1-0", {"kind": "charged", "order_id": "a", "at": "100"})], {})
    assert first.pending == {"a": 100.0} and first.cursor == "1-0"
    second = fold(
        [
            ("2-0", {"kind": "paid", "order_id": "a", "at": "104"}),
            ("3-0", {"kind": "charged", "order_id": "b", "at": "110"}),
            ("4-0", {"kind": "cancelled", "order_id": "b", "at": "111"}),
        ],
        first.pending,
    )
    assert second.counts["wait|paid|5.0"] == 1 and second.sums["wait_sum|paid"] == 4.0
    assert second.counts["wait|failed|2.0"] == 1
    assert second.done == ["a", "b"] and second.pending == {}
    assert second.counts["sales|paid"] == 1 and second.counts["sales|cancelled"] == 1


def test_a_sales_entry_is_counted_once_however_often_metrics_are_scraped(broker):
    broker.record_sale("vm-1-x", "dispensed", amount=7000)
    assert fold_sales(broker) == 1
    assert fold_sales(broker) == 0
    render_metrics(broker)
    assert read_metrics(broker).orders["dispensed"] == 1


def test_gateway_errors_are_counted_by_kind_and_calls_timed_by_operation(broker):
    record = GatewayRecorder(broker)
    record("status", 0.03, None)
    record("status", 12.0, GatewayTimeout("timed out", op="status", order_id="x"))
    record("refund", 0.2, GatewayRefused("412", "not allowed", {}, op="refund", order_id="x"))
    got = samples(broker)
    assert got[("vending_gateway_errors_total", (("kind", "timeout"), ("op", "status")))] == 1
    assert got[("vending_gateway_errors_total", (("kind", "refused_412"), ("op", "refund")))] == 1
    assert got[("vending_gateway_call_seconds_count", (("op", "status"),))] == 2
    assert got[("vending_gateway_call_seconds_bucket", (("le", "0.05"), ("op", "status")))] == 1
    assert got[("vending_gateway_call_seconds_bucket", (("le", "10.0"), ("op", "status")))] == 1
    assert got[("vending_gateway_call_seconds_bucket", (("le", "20.0"), ("op", "status")))] == 2
    assert got[("vending_gateway_call_seconds_sum", (("op", "status"),))] == 12.03
    assert got[("vending_gateway_failing_seconds", ())] >= 0


def test_after_a_purchase_metrics_show_the_order_the_wait_the_gateway_calls_and_the_stock(
    broker, sandbox, settings
):
    machine = Machine(broker, sandbox, settings)
    machine.client.observer = GatewayRecorder(broker)
    machine.start()
    try:
        before = samples(broker)
        order_id = machine.order("cola")
        machine.sandbox.pay(order_id)
        wait_state(broker, State.DISPENSED)
    finally:
        machine.stop()
    got = samples(broker)
    assert before[("vending_orders_total", (("outcome", "dispensed"),))] == 0
    assert got[("vending_orders_total", (("outcome", "dispensed"),))] == 1
    assert got[("vending_orders_total", (("outcome", "payment_failed"),))] == 0
    assert got[("vending_sales_entries_total", (("kind", "paid"),))] == 1
    assert got[("vending_payment_wait_seconds_count", (("result", "paid"),))] == 1
    assert got[("vending_payment_wait_seconds_count", (("result", "failed"),))] == 0
    assert 0 <= got[("vending_payment_wait_seconds_sum", (("result", "paid"),))] < 15
    assert got[("vending_gateway_call_seconds_count", (("op", "charge"),))] == 1
    assert got[("vending_gateway_call_seconds_count", (("op", "status"),))] >= 1
    assert got[("vending_stock_units", (("drink", "cola"),))] == 9
    assert got[("vending_stock_units", (("drink", "tea"),))] == 10
    assert 0 <= got[("vending_heartbeat_age_seconds", (("service", "ORDER"),))] < 60
    assert got[("vending_worker_up", (("service", "ORDER"),))] == 1
    assert got[("vending_worker_up", (("service", "NOTIFICATION"),))] == 0  # not running
    assert got[("vending_alerts_open", (("kind", "sold_out"),))] == 0
    assert broker.redis.hget("vm:{vm-1}:gateway", "failing_since") is None
    assert broker.redis.hget("vm:{vm-1}:gateway", "last_ok_at") is not None


def test_the_console_endpoint_answers_prometheus_text(broker):
    answer = metrics_endpoint(broker)(None)  # type: ignore[arg-type]  # it reads no request
    assert answer.media_type == CONTENT_TYPE
    assert b"vending_stock_units" in answer.body
