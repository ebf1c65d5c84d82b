"""Alerts in fleet mode (services/fleet_alerts.py): every registered machine checked with the
one machine's rules, spread over ALERT_CHECK_S; the shared services' heartbeats judged once for
the fleet (FLEET_WORKERS, as Broker.heartbeats reads them); every machine's alerts copied onto
the fleet-wide stream that one webhook sender delivers; and the OPERATOR --fleet process that
runs them. The watcher's `tick` is driven with the test's clock (no sleeps); the schedule is
tested as the pure functions it is."""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests

from constants import keys
from constants.orders import OperatorKind
from constants.tunables import (
    ALERT_CHECK_S,
    FLEET_ALERT_TICK_MIN_S,
    HEARTBEAT_TTL_S,
    REDIS_BLOCK_MAX_MS,
)
from cores.alert_store import FLEET_WIDE, WATCHED_SERVICES, AlertStore, FleetAlertStore
from cores.alerts import Alert, AlertKind, Changes
from cores.broker import Broker
from cores.fleet import Fleet
from cores.redis_process import free_port
from cores.work import WorkHints
from services.alert_webhook import WebhookSender
from services.fleet_alerts import (
    PACE,
    FleetAlertWatcher,
    batch_size,
    next_batch,
    pause_s,
    start_fleet_alerts,
)
from tests.machine_helpers import ROOT, Clock, child_env, cli, eventually
from tests.test_alert_webhook import Receiver

MACHINES = ("vm-1", "vm-2", "vm-3")
REFUND_ORDER = "vm-2-20270115150000-000001-beef"


# --- helpers ----------------------------------------------------------------------------------


def beat_shared(client: redis.Redis, at: float, *services: str) -> None:
    """The shared workers of `services` (default: every watched one) say they are alive."""
    for service in services or WATCHED_SERVICES:
        client.zadd(keys.FLEET_WORKERS.format(service=service), {"backend:1": at})


def open_ids(client: redis.Redis, machine_id: str) -> set[str]:
    return {a.id for a in AlertStore(Broker(client, machine_id)).open_alerts()}


def fleet_open_ids(client: redis.Redis) -> set[str]:
    return {a.id for a in FleetAlertStore(client).open_alerts()}


def fleet_stream(client: redis.Redis) -> list[tuple[str, str, str]]:
    return [
        (e["machine_id"], e["state"], f"{e['kind']}:{e['subject']}")
        for e in FleetAlertStore(client).recent()
    ]


def go_round(watcher: FleetAlertWatcher, clock: Clock, periods: float = 1.0) -> None:
    """Tick the watcher through `periods` ALERT_CHECK_S of the test's clock, moving the clock
    by each pause the watcher asks for."""
    end = clock.now + periods * watcher.period_s
    for _ in range(100_000):
        if clock.now >= end:
            return
        clock.now += watcher.tick()
    raise AssertionError("the watcher never reached the end of its round")


@pytest.fixture
def fleet(real_redis: redis.Redis, menu: list[dict], clock: Clock) -> redis.Redis:
    """Three registered machines, well stocked, on the attract screen; the shared workers
    alive now."""
    registry = Fleet(real_redis, clock)
    for machine_id in MACHINES:
        registry.add(machine_id, "cli:test")
        broker = Broker(real_redis, machine_id, clock=clock)
        broker.ensure_ready(menu)
        for drink in broker.stock():
            broker.set_stock(drink, 10)
    beat_shared(real_redis, clock.now)
    return real_redis


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.stop()


# --- the schedule (pure) ----------------------------------------------------------------------


def test_a_batch_is_the_next_machines_in_id_order_round_to_the_first_each_once():
    """The cursor is an id: a batch goes on after it, wraps round, never holds a machine
    twice, and an id gone from (or never in) the list still places the cursor."""
    ids = ["vm-3", "vm-1", "vm-2", "vm-4"]
    assert next_batch(ids, None, 2) == ["vm-1", "vm-2"]
    assert next_batch(ids, "vm-2", 3) == ["vm-3", "vm-4", "vm-1"]
    assert next_batch(ids, "vm-4", 9) == ["vm-1", "vm-2", "vm-3", "vm-4"]
    assert next_batch(ids, "vm-25", 1) == ["vm-3"]  # between vm-2 and vm-3
    assert next_batch(ids, "vm-1", 0) == [] and next_batch([], None, 5) == []


def test_the_checks_owed_grow_with_time_carry_their_fraction_and_never_exceed_the_fleet():
    """n machines owe n checks per period: a fraction waits for the next batch, and a stall
    of any length owes each machine one check, not a backlog."""
    assert batch_size(1000, 0.1, 60.0, 0.0) == (1, pytest.approx(1000 * 0.1 / 60 - 1))
    count, carry = batch_size(3, 10.0, 60.0, 0.0)
    assert count == 0 and carry == pytest.approx(0.5)
    assert batch_size(3, 10.0, 60.0, carry)[0] == 1
    assert batch_size(3, 3600.0, 60.0, 0.5) == (3, 0.0)
    assert pause_s(3, 60.0) == 20.0 and pause_s(1000, 60.0) == FLEET_ALERT_TICK_MIN_S
    assert pause_s(0, 60.0) == 60.0


@pytest.mark.parametrize("machines", [1, 3, 7, 100, 1000])
def test_the_schedule_checks_every_machine_within_the_period_a_few_at_a_time(machines):
    """Simulated as the watcher runs it (pause, owed checks, next batch) over five periods:
    every machine is checked within ALERT_CHECK_S of its last check (and of the start), and
    no batch holds more than one pause's share of the fleet (plus one): spread, not all at
    once."""
    ids = [f"vm-{i:04d}" for i in range(machines)]
    period = ALERT_CHECK_S * PACE
    pause = pause_s(machines, period)
    share = math.ceil(machines * pause / period) + 1
    now, owed, after = 0.0, 1.0, None
    last: dict[str, float] = dict.fromkeys(ids, 0.0)
    gaps: list[float] = []
    biggest = 0
    elapsed = 0.0
    while now < 5 * ALERT_CHECK_S:
        count, owed = batch_size(machines, elapsed, period, owed)
        batch = next_batch(ids, after, count)
        biggest = max(biggest, len(batch))
        for machine in batch:
            gaps.append(now - last[machine])
            last[machine] = now
            after = machine
        now += pause
        elapsed = pause
    gaps.extend(now - pause - at for at in last.values())
    assert max(gaps) <= ALERT_CHECK_S
    assert biggest <= share
    assert len(gaps) >= 5 * machines  # every machine checked about once a period


class Recording(FleetAlertWatcher):
    """A watcher that notes when it checked each machine (by the test's clock)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.times: dict[str, list[float]] = defaultdict(list)
        self.batches: list[int] = []

    def check_machine(self, machine_id: str, now: float) -> None:
        super().check_machine(machine_id, now)
        self.times[machine_id].append(now)

    def tick(self) -> float:
        before = sum(self.checks.values())
        pause = super().tick()
        self.batches.append(sum(self.checks.values()) - before)
        return pause


def test_the_watcher_spreads_its_checks_over_the_period_and_reaches_machines_added_later(
    fake_redis, clock
):
    """The watcher itself (fakeredis, the test's clock): 20 machines are checked one a pause,
    each within ALERT_CHECK_S of the start and of its last check; a machine registered after a
    period is checked within two periods."""
    registry = Fleet(fake_redis, clock)
    ids = [f"vm-{i:02d}" for i in range(20)]
    for machine_id in ids:
        registry.add(machine_id, "cli:test")
    watcher = Recording(fake_redis, clock=clock)
    start = clock.now
    go_round(watcher, clock)
    registry.add("vm-10a", "cli:test")
    added_at = clock.now
    go_round(watcher, clock, periods=3)
    assert max(watcher.batches) == 1 and len(watcher.batches) > 4 * len(ids)
    for machine_id in ids:
        times = [start, *watcher.times[machine_id], clock.now]
        assert max(b - a for a, b in zip(times, times[1:], strict=False)) <= ALERT_CHECK_S
    assert watcher.times["vm-10a"][0] - added_at <= 2 * ALERT_CHECK_S


# --- the rules, per machine and fleet-wide (real Redis) ---------------------------------------


def test_a_refund_owed_on_one_machine_of_three_is_its_alert_only_and_fleet_list_shows_it(
    fleet, redis_server, tmp_path, clock
):
    """A refund owed in vm-2's operator queue raises refund_owed on vm-2 alone (its
    alerts:open and its alerts stream), copied onto the fleet-wide stream with vm-2's id;
    `main.py fleet list --json` lists it on vm-2 and nothing on the others."""
    Broker(fleet, "vm-2").flag_for_operator(REFUND_ORDER, OperatorKind.REFUND_OWED, amount=7000)
    watcher = FleetAlertWatcher(fleet, clock=clock)
    go_round(watcher, clock)
    assert {m: watcher.checks[m] >= 1 for m in MACHINES} == dict.fromkeys(MACHINES, True)
    assert open_ids(fleet, "vm-2") == {f"refund_owed:{REFUND_ORDER}"}
    assert open_ids(fleet, "vm-1") == set() and open_ids(fleet, "vm-3") == set()
    assert fleet_stream(fleet) == [("vm-2", "raised", f"refund_owed:{REFUND_ORDER}")]
    listed = cli(redis_server.url, tmp_path, "fleet", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    alerts = {m["id"]: m["alerts"] for m in json.loads(listed.stdout)}
    assert alerts == {"vm-1": [], "vm-2": ["refund_owed"], "vm-3": []}
    go_round(watcher, clock)  # still owed: not raised twice
    assert len(fleet_stream(fleet)) == 1
    fleet.hdel(Broker(fleet, "vm-2").operator_key, REFUND_ORDER)  # resolved
    go_round(watcher, clock)
    assert open_ids(fleet, "vm-2") == set()
    assert fleet_stream(fleet)[-1] == ("vm-2", "cleared", f"refund_owed:{REFUND_ORDER}")


def test_a_revoked_machine_is_still_checked(fleet, clock):
    """Revoking stops a machine's token, not its debts: a vend of unknown outcome on a
    revoked machine is still an alert."""
    Fleet(fleet, clock).revoke("vm-3", "cli:test")
    order = "vm-3-20270115150000-000002-cafe"
    Broker(fleet, "vm-3").flag_for_operator(order, OperatorKind.VEND_UNKNOWN, amount=5000)
    go_round(FleetAlertWatcher(fleet, clock=clock), clock)
    assert open_ids(fleet, "vm-3") == {f"vend_unknown:{order}"}


def test_shared_workers_alive_raise_no_stale_heartbeat_for_any_machine(fleet, clock):
    """The machines have no heartbeat keys of their own in fleet mode; while the shared
    workers keep beating in FLEET_WORKERS, three periods (well past the TTL) raise no
    heartbeat_stale, per machine or fleet-wide. The facts agree with Broker.heartbeats: the
    one machine's store (fleet=False) falls back to the same beats."""
    watcher = FleetAlertWatcher(fleet, clock=clock)
    for _ in range(3):
        go_round(watcher, clock)
        beat_shared(fleet, clock.now)
    assert clock.now - watcher.watching_since > HEARTBEAT_TTL_S
    assert fleet_open_ids(fleet) == set() and fleet_stream(fleet) == []
    assert all(open_ids(fleet, m) == set() for m in MACHINES)
    broker = Broker(fleet, "vm-1")
    facts, _ = AlertStore(broker, fleet=False).observe(clock.now, clock.now - 600)
    assert facts.heartbeats == broker.heartbeats(WATCHED_SERVICES)
    assert all(at == clock.now for at in facts.heartbeats.values())


def test_a_shared_service_dead_past_the_ttl_raises_one_fleet_wide_alert_cleared_when_back(
    fleet, clock
):
    """DISPENSE's processes stop beating: once its last beat is older than the TTL, one
    heartbeat_stale:DISPENSE is raised for the fleet (machine `*`), none per machine; a
    process beating again clears it."""
    watcher = FleetAlertWatcher(fleet, clock=clock)
    go_round(watcher, clock)
    assert fleet_open_ids(fleet) == set()
    clock.now += HEARTBEAT_TTL_S + 1
    beat_shared(fleet, clock.now, *(s for s in WATCHED_SERVICES if s != "DISPENSE"))
    go_round(watcher, clock)
    assert fleet_open_ids(fleet) == {"heartbeat_stale:DISPENSE"}
    assert all(open_ids(fleet, m) == set() for m in MACHINES)
    assert fleet_stream(fleet) == [(FLEET_WIDE, "raised", "heartbeat_stale:DISPENSE")]
    assert "last heartbeat" in FleetAlertStore(fleet).open_alerts()[0].detail
    beat_shared(fleet, clock.now)
    go_round(watcher, clock)
    assert fleet_open_ids(fleet) == set()
    assert fleet_stream(fleet)[-1] == (FLEET_WIDE, "cleared", "heartbeat_stale:DISPENSE")


def test_a_shared_service_that_never_beat_is_stale_once_watched_longer_than_the_ttl(fleet, clock):
    """A service with no process at all (no FLEET_WORKERS entry) is not stale at the start
    (the backend may be starting) and is once the watcher has watched past the TTL."""
    fleet.delete(keys.FLEET_WORKERS.format(service="NOTIFICATION"))
    watcher = FleetAlertWatcher(fleet, clock=clock)
    go_round(watcher, clock, periods=0.5)
    assert fleet_open_ids(fleet) == set()
    clock.now += HEARTBEAT_TTL_S
    beat_shared(fleet, clock.now, *(s for s in WATCHED_SERVICES if s != "NOTIFICATION"))
    go_round(watcher, clock)
    assert fleet_open_ids(fleet) == {"heartbeat_stale:NOTIFICATION"}


def test_one_machine_mode_keeps_its_own_heartbeats_and_writes_nothing_fleet_wide(real_redis, clock):
    """Without work hints a machine's store is the one machine's: a missing heartbeat of its
    own (and no FLEET_WORKERS) is stale for it, and nothing is copied to FLEET_ALERTS."""
    broker = Broker(real_redis, "vm-1", clock=clock)
    store = AlertStore(broker)
    assert store.fleet is False
    facts, _ = store.observe(clock.now, clock.now - 600)
    assert facts.heartbeats == dict.fromkeys(WATCHED_SERVICES)
    store.apply(Changes(raised=(Alert(AlertKind.SOLD_OUT, "cola", "sold out", clock.now),)))
    assert real_redis.exists(keys.FLEET_ALERTS) == 0


def test_an_operator_acknowledgement_in_fleet_mode_reaches_the_fleet_wide_stream(fleet, clock):
    """The console's Brokers carry work hints in fleet mode: an acknowledged alert's clear is
    copied onto FLEET_ALERTS, so the webhook hears it as in one-machine mode."""
    broker = Broker(fleet, "vm-1", clock=clock, hints=WorkHints(fleet))
    store = AlertStore(broker)
    assert store.fleet is True
    store.apply(Changes(raised=(Alert(AlertKind.SOLD_OUT, "cola", "sold out", clock.now),)))
    assert store.acknowledge("sold_out:cola", clock.now)
    assert fleet_stream(fleet) == [
        ("vm-1", "raised", "sold_out:cola"),
        ("vm-1", "cleared", "sold_out:cola"),
    ]


# --- the webhook ------------------------------------------------------------------------------


def test_the_webhook_receives_each_machines_alert_as_json_from_the_fleet_wide_stream(
    fleet, clock, receiver
):
    """One sender on FLEET_ALERTS delivers vm-2's refund owed with the one machine's body
    (id, machine_id vm-2, kind, subject, state, detail, at) and a fleet-wide stale heartbeat
    with machine_id `*`, in order."""
    sender = WebhookSender(
        FleetAlertStore(fleet), receiver.url, retry_s=(0.05,), timeout_s=2, block_s=0.05
    ).start()
    try:
        eventually(lambda: fleet.get(keys.FLEET_ALERTS_WEBHOOK_CURSOR), what="the cursor stored")
        Broker(fleet, "vm-2").flag_for_operator(
            REFUND_ORDER, OperatorKind.REFUND_OWED, amount=7000, detail="vend failed"
        )
        watcher = FleetAlertWatcher(fleet, clock=clock)
        go_round(watcher, clock)
        clock.now += HEARTBEAT_TTL_S + 1
        beat_shared(fleet, clock.now, *(s for s in WATCHED_SERVICES if s != "ORDER"))
        go_round(watcher, clock)
        eventually(lambda: len(receiver.bodies) == 2, what="two alerts delivered")
    finally:
        sender.stop()
    refund, stale = receiver.bodies
    assert set(refund) == {"id", "machine_id", "kind", "subject", "state", "detail", "at"}
    assert refund["machine_id"] == "vm-2" and refund["kind"] == "refund_owed"
    assert refund["subject"] == REFUND_ORDER and refund["state"] == "raised"
    assert refund["detail"] == "vend failed" and isinstance(refund["at"], float)
    assert refund["id"] == FleetAlertStore(fleet).recent()[0]["id"]
    assert (stale["machine_id"], stale["kind"], stale["subject"]) == (
        FLEET_WIDE,
        "heartbeat_stale",
        "ORDER",
    )


def test_start_fleet_alerts_runs_the_watcher_and_sender_and_stops_them(fleet, settings, receiver):
    """What OPERATOR --fleet starts: the watcher's thread checks at once (the fleet-wide
    alerts and the first machine) and the sender's thread runs; `stop()` ends both."""
    settings = dataclasses.replace(settings, alert_webhook_url=receiver.url)
    started = start_fleet_alerts(settings, fleet, fleet)
    try:
        watcher = started.watcher
        assert isinstance(watcher, FleetAlertWatcher)
        eventually(lambda: watcher.fleet_checks >= 1 and watcher.checks["vm-1"] >= 1)
        assert started.sender is not None
        eventually(lambda: fleet.get(keys.FLEET_ALERTS_WEBHOOK_CURSOR), what="the sender")
    finally:
        started.stop(timeout_s=5)
    assert not any(t.is_alive() for t in started.threads)
    thread = started.sender.thread
    assert thread is not None and started.sender.stopping.is_set()
    thread.join(REDIS_BLOCK_MAX_MS / 1000 + 5)  # its read in hand ends at its BLOCK
    assert not thread.is_alive()


def console_up(port: int) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{port}/login", timeout=1).status_code == 200
    except requests.RequestException:
        return False


@pytest.mark.slow
def test_the_operator_fleet_process_posts_a_machines_refund_owed_and_stops_on_sigterm(
    fleet, redis_server, tmp_path: Path, receiver
):
    """`main.py --service OPERATOR --fleet` with ALERT_WEBHOOK_URL: a refund owed on a
    registered machine reaches the webhook with that machine's id, from the process's own
    watcher and sender; SIGTERM ends the process after uvicorn's graceful shutdown."""
    Broker(fleet, "vm-2").flag_for_operator(REFUND_ORDER, OperatorKind.REFUND_OWED, amount=7000)
    fleet.hdel(keys.FLEET_MACHINES, "vm-1", "vm-3")  # vm-2 alone: checked at once
    log = tmp_path / "operator.log"
    port = free_port()
    env = child_env(
        REDIS_URL=redis_server.url,
        VAR_DIR=str(tmp_path / "var"),
        OPERATOR_PORT=str(port),
        ALERT_WEBHOOK_URL=receiver.url,
    )
    with log.open("w") as err:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "main.py"), "--service", "OPERATOR", "--fleet"],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        eventually(
            lambda: receiver.bodies or process.poll() is not None,
            timeout_s=30,
            what="the refund owed posted",
        )
        assert process.poll() is None, log.read_text()
        [body] = receiver.bodies
        assert (body["machine_id"], body["kind"], body["subject"]) == (
            "vm-2",
            "refund_owed",
            REFUND_ORDER,
        )
        eventually(lambda: console_up(port), timeout_s=30, what="the console serving")
        process.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then raises the signal again (ends by it, as `up`'s).
        assert process.wait(15) in (0, -signal.SIGTERM)
        assert "Application shutdown complete" in log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)
