"""The alert watcher on a real redis-server: each kind of alert raised, then cleared, with
its entries on the alerts stream and the open set kept with them."""

from __future__ import annotations

import pytest
import redis

from constants.orders import OperatorKind
from cores.alert_store import WATCHED_SERVICES, AlertStore, mark_redis_restart
from cores.broker import Broker
from cores.metrics import GatewayRecorder
from cores.midtrans import GatewayTimeout
from services.alerts_service import AlertWatcher, alerts_text, format_alerts
from services.supervisor import Supervisor
from tests.machine_helpers import Clock, eventually, start_worker, stop_worker


@pytest.fixture
def machine(real_redis, settings, menu, clock: Clock) -> Broker:
    """A machine whose clock the test moves, every worker beating, every drink well stocked."""
    b = Broker(real_redis, settings.machine_id, clock=clock)
    b.ensure_ready(menu)
    beat(b)
    for drink in b.stock():
        b.set_stock(drink, 10)
    return b


def beat(broker: Broker, *services: str) -> None:
    for service in services or WATCHED_SERVICES:
        broker.heartbeat(service, 60)


def open_ids(broker: Broker) -> set[str]:
    return {a.id for a in AlertStore(broker).open_alerts()}


def stream(broker: Broker) -> list[tuple[str, str]]:
    return [(e["state"], f"{e['kind']}:{e['subject']}") for e in AlertStore(broker).recent()]


def test_a_quiet_well_stocked_machine_raises_no_alert(machine):
    AlertWatcher(machine, clock=machine.clock).check(machine.clock())
    assert open_ids(machine) == set() and stream(machine) == []


def test_low_stock_and_sold_out_are_raised_on_schedule_and_cleared_after_a_refill(machine, clock):
    watcher = AlertWatcher(machine, clock=clock, check_every_s=15)
    thread = start_worker(watcher)
    try:
        eventually(lambda: watcher.checks >= 1, what="the first check")
        machine.set_stock("cola", 2)
        machine.set_stock("tea", 0)
        clock.now += 15
        eventually(lambda: watcher.checks >= 2, what="the scheduled check")
        assert open_ids(machine) == {"low_stock:cola", "sold_out:tea"}
        machine.set_stock("cola", 10)
        machine.set_stock("tea", 10)
        clock.now += 15
        eventually(lambda: watcher.checks >= 3, what="the next check")
    finally:
        stop_worker(watcher, thread)
    assert open_ids(machine) == set()
    assert stream(machine) == [
        ("raised", "low_stock:cola"),
        ("raised", "sold_out:tea"),
        ("cleared", "low_stock:cola"),
        ("cleared", "sold_out:tea"),
    ]


def test_the_watcher_checks_at_once_when_the_machine_changes_screen_not_only_on_schedule(
    machine, clock
):
    watcher = AlertWatcher(machine, clock=clock)
    thread = start_worker(watcher)
    try:
        eventually(lambda: watcher.checks >= 1, what="the first check")
        machine.set_stock("water", 0)
        machine.set_out_of_service(True)  # an event on the stream; the clock stands still
        eventually(lambda: "sold_out:water" in open_ids(machine), what="an unscheduled check")
    finally:
        stop_worker(watcher, thread)


def test_a_worker_whose_heartbeat_stops_is_reported_stale_and_cleared_when_it_beats_again(
    machine, clock
):
    watcher = AlertWatcher(machine, clock=clock)
    watcher.watching_since = clock.now
    clock.now += 61
    beat(machine, *(s for s in WATCHED_SERVICES if s != "DISPENSE"))
    watcher.check(clock.now)
    assert open_ids(machine) == {"heartbeat_stale:DISPENSE"}
    beat(machine)
    watcher.check(clock.now)
    assert open_ids(machine) == set()
    assert stream(machine) == [
        ("raised", "heartbeat_stale:DISPENSE"),
        ("cleared", "heartbeat_stale:DISPENSE"),
    ]


def test_a_refund_owed_and_a_vend_unknown_stay_alerts_until_the_operator_resolves_them(machine):
    watcher = AlertWatcher(machine, clock=machine.clock)
    machine.flag_for_operator("vm-1-a", OperatorKind.REFUND_OWED, amount=7000, detail="412")
    machine.flag_for_operator("vm-1-b", OperatorKind.VEND_UNKNOWN, amount=6000)
    watcher.check(machine.clock())
    assert open_ids(machine) == {"refund_owed:vm-1-a", "vend_unknown:vm-1-b"}
    watcher.check(machine.clock())  # still owed: not raised twice
    assert len(stream(machine)) == 2
    machine.redis.hdel(machine.operator_key, "vm-1-a", "vm-1-b")  # resolved
    watcher.check(machine.clock())
    assert open_ids(machine) == set()
    assert [s for s, _ in stream(machine)] == ["raised", "raised", "cleared", "cleared"]


def test_the_gateway_failing_for_over_two_minutes_raises_gateway_down_and_a_success_clears_it(
    machine, clock
):
    watcher = AlertWatcher(machine, clock=clock)
    recorder = GatewayRecorder(machine)
    gateway_key = AlertStore(machine).gateway_key
    recorder("status", 3.0, GatewayTimeout("timed out", op="status", order_id="x"))
    started = clock.now
    assert float(machine.redis.hget(gateway_key, "failing_since")) == started
    machine.redis.hdel(gateway_key, "last_error")
    clock.now += 10
    recorder("status", 3.0, GatewayTimeout("timed out", op="status", order_id="x"))
    assert machine.redis.hget(gateway_key, "last_error") is None  # no change: nothing written
    watcher.check(clock.now)
    assert open_ids(machine) == set()
    clock.now += 111
    recorder("charge", 3.0, GatewayTimeout("timed out", op="charge", order_id="y"))
    assert float(machine.redis.hget(gateway_key, "failing_since")) == started  # refreshed, kept
    beat(machine)
    watcher.check(clock.now)
    assert open_ids(machine) == {"gateway_down:midtrans"}
    recorder("status", 0.2, None)
    watcher.check(clock.now)
    assert open_ids(machine) == set()
    assert machine.redis.hget(gateway_key, "failing_since") is None


def test_a_redis_restart_by_up_is_an_alert_until_the_operator_acknowledges_it(
    start_redis_server, settings, menu, clock
):
    server = start_redis_server(appendonly=True)
    supervisor = Supervisor(settings)
    supervisor.redis = server
    assert server.process is not None
    server.process.kill()
    server.process.wait()
    supervisor.tend()  # `up` notices and restarts it
    assert server.alive()
    client = redis.Redis.from_url(server.url, decode_responses=True)
    try:
        broker = Broker(client, settings.machine_id, clock=clock)
        broker.ensure_ready(menu)
        beat(broker)
        watcher = AlertWatcher(broker, clock=clock)
        clock.now = float(client.hget(AlertStore(broker).restart_key, "at"))
        watcher.check(clock.now)
        assert open_ids(broker) == {"redis_restarted:redis"}
        assert "1 in all" in AlertStore(broker).open_alerts()[0].detail
        assert AlertStore(broker).acknowledge("redis_restarted:redis", clock.now)
        watcher.check(clock.now)
        assert open_ids(broker) == set()
        assert stream(broker) == [
            ("raised", "redis_restarted:redis"),
            ("cleared", "redis_restarted:redis"),
        ]
    finally:
        client.close()


def test_a_redis_restart_alert_clears_itself_after_an_hour(machine, clock):
    mark_redis_restart(machine)
    watcher = AlertWatcher(machine, clock=clock)
    watcher.check(clock.now)
    assert open_ids(machine) == {"redis_restarted:redis"}
    clock.now += 3600
    beat(machine)
    watcher.check(clock.now)
    assert open_ids(machine) == set()


def test_the_alerts_listing_shows_open_alerts_or_the_whole_recent_stream(machine):
    machine.set_stock("cola", 0)
    watcher = AlertWatcher(machine, clock=machine.clock)
    watcher.check(machine.clock())
    store = AlertStore(machine)
    [row] = format_alerts(store)
    assert row["id"] == "sold_out:cola" and row["detail"] == "sold out"
    assert "sold_out:cola" in alerts_text([row])
    machine.set_stock("cola", 5)
    watcher.check(machine.clock())
    assert format_alerts(store) == []
    assert [r["state"] for r in format_alerts(store, show_all=True)] == ["raised", "cleared"]
    assert alerts_text([]) == "no open alerts"
