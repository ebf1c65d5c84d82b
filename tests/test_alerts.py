"""The alert rules (cores/alerts.py): plain values in, raises and clears out."""

from __future__ import annotations

from cores.alerts import (
    Alert,
    AlertKind,
    Facts,
    Gateway,
    evaluate,
    gateway_write_due,
    wanted,
)

NOW = 1_800_000_000.0


def ids(alerts) -> set[str]:
    return {a.id for a in alerts}


def facts(**changes) -> Facts:
    base = {
        "now": NOW,
        "stock": {"cola": 8, "tea": 8},
        "low_stock": {"cola": 2, "tea": 3},
        "heartbeats": {"ORDER": NOW - 5},
        "watching_since": NOW - 1000,
    }
    base.update(changes)
    return Facts(**base)


def test_a_healthy_machine_calls_for_no_alert():
    assert wanted(facts()) == {}


def test_a_drink_at_its_low_stock_threshold_raises_low_stock_and_one_sold_out_raises_sold_out():
    found = wanted(facts(stock={"cola": 2, "tea": 0}))
    assert set(found) == {"low_stock:cola", "sold_out:tea"}
    assert found["low_stock:cola"].detail == "2 left"


def test_a_drink_missing_from_the_stock_counts_as_sold_out_and_a_drink_off_sale_alerts_nothing():
    assert set(wanted(facts(stock={"tea": 9}, low_stock={"cola": 2}))) == {"sold_out:cola"}


def test_a_refill_clears_low_stock_once_and_a_sale_to_zero_swaps_it_for_sold_out():
    low = Alert(AlertKind.LOW_STOCK, "cola", "1 left", NOW - 60)
    changes = evaluate(facts(stock={"cola": 10, "tea": 8}), {low.id: low})
    assert changes.raised == () and ids(changes.cleared) == {"low_stock:cola"}
    assert changes.cleared[0].at == NOW
    changes = evaluate(facts(stock={"cola": 0, "tea": 8}), {low.id: low})
    assert ids(changes.raised) == {"sold_out:cola"} and ids(changes.cleared) == {"low_stock:cola"}


def test_an_open_alert_still_called_for_is_not_raised_again():
    low = Alert(AlertKind.LOW_STOCK, "cola", "2 left", NOW - 60)
    assert not evaluate(facts(stock={"cola": 1, "tea": 8}), {low.id: low})


def test_a_heartbeat_older_than_its_ttl_is_stale_and_a_fresh_one_clears_it():
    found = wanted(facts(heartbeats={"ORDER": NOW - 61, "SCREEN": NOW - 10}))
    assert set(found) == {"heartbeat_stale:ORDER"}
    stale = found["heartbeat_stale:ORDER"]
    assert ids(evaluate(facts(), {stale.id: stale}).cleared) == {"heartbeat_stale:ORDER"}


def test_a_missing_heartbeat_is_stale_only_once_the_watcher_has_waited_a_heartbeat_ttl():
    starting = facts(heartbeats={"DISPENSE": None}, watching_since=NOW - 30)
    assert wanted(starting) == {}
    late = facts(heartbeats={"DISPENSE": None}, watching_since=NOW - 61)
    assert set(wanted(late)) == {"heartbeat_stale:DISPENSE"}


def test_refunds_owed_and_unknown_vends_in_the_operators_queue_raise_one_alert_per_order():
    queue = {
        "vm-1-a": {"kind": "refund_owed", "detail": "gateway refused (412)", "at": NOW - 9},
        "vm-1-b": {"kind": "vend_unknown", "at": NOW - 5},
        "vm-1-c": {"kind": "order_missing", "at": NOW - 5},
    }
    found = wanted(facts(queue=queue))
    assert set(found) == {"refund_owed:vm-1-a", "vend_unknown:vm-1-b"}
    assert found["refund_owed:vm-1-a"].detail == "gateway refused (412)"
    resolved = evaluate(facts(), found)
    assert ids(resolved.cleared) == {"refund_owed:vm-1-a", "vend_unknown:vm-1-b"}


def test_the_gateway_is_reported_down_after_two_minutes_of_failing_calls_not_before():
    assert wanted(facts(gateway=Gateway(failing_since=NOW - 119, last_error="timeout"))) == {}
    down = wanted(facts(gateway=Gateway(failing_since=NOW - 121, last_error="status: timeout")))
    alert = down["gateway_down:midtrans"]
    assert alert.at == NOW - 121 and "status: timeout" in alert.detail
    back = evaluate(facts(gateway=Gateway(last_ok_at=NOW)), down)
    assert ids(back.cleared) == {"gateway_down:midtrans"}


def test_a_redis_restart_stays_an_alert_for_an_hour_and_a_later_restart_raises_it_again():
    first = wanted(facts(redis_restarted_at=NOW - 10, redis_restarts=1))
    assert set(first) == {"redis_restarted:redis"}
    assert "1 in all" in first["redis_restarted:redis"].detail
    same = evaluate(facts(redis_restarted_at=NOW - 10, redis_restarts=1), first)
    assert not same
    again = evaluate(facts(redis_restarted_at=NOW - 1, redis_restarts=2), first)
    assert ids(again.raised) == {"redis_restarted:redis"} and again.cleared == ()
    later = evaluate(facts(now=NOW + 3600, redis_restarted_at=NOW - 10), first)
    assert ids(later.cleared) == {"redis_restarted:redis"}


def test_the_gateways_health_is_written_on_a_change_or_a_refresh_not_on_every_call():
    assert gateway_write_due(None, float("-inf"), True, NOW, 30)  # first call
    assert not gateway_write_due(True, NOW - 5, True, NOW, 30)  # still fine
    assert gateway_write_due(True, NOW - 5, False, NOW, 30)  # began failing
    assert not gateway_write_due(False, NOW - 5, False, NOW, 30)  # still failing
    assert gateway_write_due(False, NOW - 30, False, NOW, 30)  # refresh
