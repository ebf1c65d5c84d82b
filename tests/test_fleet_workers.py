"""Fleet mode's workers with their real steps: DISPENSE with the vend done by the machine's
agent (cores/remote_dispenser.py), and NOTIFICATION routing a notification to its machine by
the order id, on a private real Redis under ShardRunners, with a scripted Midtrans as in
test_worker_steps.py. The agent and the gateway are stood in for by what they write: the
machine's VEND hash and a hint."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import fakeredis
import pytest
import redis
import requests

from constants import keys
from constants.orders import Command, OperatorKind, OrderField
from constants.services import Service
from constants.states import FailReason, RefundOutcome, Sale, State
from constants.tunables import REMOTE_VEND_MARGIN_S, WORK_SHARDS
from cores.broker import Broker
from cores.config import LOCAL_SANDBOX_KEY, Settings
from cores.midtrans import signature
from cores.remote_dispenser import RemoteDispenser, RemoteMove, remote_step
from cores.rules import Vend
from cores.work import WorkHints, due_key, lease_key, shard_of
from services import payment
from services.dispense_service import DispenseWorker
from services.notification_service import FleetNotificationServer, machine_of
from services.order_created_service import OrderCreatedWorker
from services.order_service import OrderWorker
from services.runtime import fleet_worker_factory
from services.shard_runner import ShardRunner
from tests.machine_helpers import ROOT, T0, child_env, eventually, sale_kinds, wait_state
from tests.test_worker_steps import Gateway

A, B = "vm-a", "vm-b-2"

# --- the decision, pure ----------------------------------------------------------------------------


def test_a_remote_vend_starts_waits_for_its_deadline_then_goes_to_the_operator():
    """PAYMENT_SUCCESS starts it; DISPENSING waits until started + timeout; past it the
    outcome is unknown (money rule 6); a reported result is final in any state."""
    assert remote_step(State.PAYMENT_SUCCESS, None, None, T0, 30).move is RemoteMove.START
    waiting = remote_step(State.DISPENSING, None, T0, T0 + 10, 30)
    assert (waiting.move, waiting.at) == (RemoteMove.WAIT, T0 + 30)
    late = remote_step(State.DISPENSING, None, T0, T0 + 30, 30)
    assert (late.move, late.vend) == (RemoteMove.FINISH, Vend.UNKNOWN)
    for state in (State.PAYMENT_SUCCESS, State.DISPENSING):
        done = remote_step(state, Vend.FAILED, T0, T0 + 1, 30)
        assert (done.move, done.vend) == (RemoteMove.FINISH, Vend.FAILED)


def test_the_agent_s_report_is_read_from_its_own_machine_s_vend_hash_only():
    """`outcome` reads vm:{id}:vend of its machine: a report under another machine's key, or
    none, is no answer; an unreadable record is an unknown outcome, for a person."""
    client = fakeredis.FakeRedis(decode_responses=True)
    remote = RemoteDispenser(Broker(client, A))
    client.hset(keys.key(keys.VEND, B), "o-1", json.dumps({"result": "vended", "at": T0}))
    assert remote.outcome("o-1") is None
    client.hset(keys.key(keys.VEND, A), "o-1", json.dumps({"result": "failed", "at": T0}))
    assert remote.outcome("o-1") is Vend.FAILED
    client.hset(keys.key(keys.VEND, A), "o-2", "{not json")
    assert remote.outcome("o-2") is Vend.UNKNOWN


def test_order_ids_name_their_machine_read_from_the_right():
    """Broker.new_order_id's ids: a machine id with '-' stays whole; anything else is none."""
    assert machine_of("vm-b-2-20270115080000-000001-ab12") == "vm-b-2"
    assert machine_of("vm-1-20270115080000-1234567-00ff") == "vm-1"
    assert machine_of("20270115080000-000001-ab12") is None
    assert machine_of("vm 1-20270115080000-000001-ab12") is None
    assert machine_of("order-1") is None


# --- machines on a real Redis ---------------------------------------------------------------------


def register(client: redis.Redis, *machines: str) -> None:
    for machine in machines:
        client.hset(keys.FLEET_MACHINES, machine, '{"added_at": 0, "revoked_at": null}')


def machine(client: redis.Redis, machine_id: str, menu: list[dict]) -> Broker:
    """A registered machine of the fleet (its Broker with hints), at IDLE with stock."""
    register(client, machine_id)
    broker = Broker(client, machine_id, hints=WorkHints(client))
    broker.ensure_ready(menu)
    broker.set_stock("cola", 5)
    return broker


def paid(broker: Broker, gateway: Gateway, settings: Settings) -> str:
    """An order of cola charged and settled: the machine at PAYMENT_SUCCESS."""
    broker.show_menu()
    order_id = broker.place_order("cola")
    OrderWorker(broker, gateway, settings).step(broker.snapshot(), [])
    gateway.statuses[order_id] = "settlement"
    notified = [(broker.commands_key, {"command": Command.CHECK, "order_id": order_id})]
    OrderCreatedWorker(broker, gateway, settings).step(broker.snapshot(), notified)
    assert broker.snapshot().state == State.PAYMENT_SUCCESS
    return order_id


def agent_reports(broker: Broker, order_id: str, result: str) -> None:
    """What the gateway does with the agent's vend_result: HSET the VEND hash, then a hint."""
    broker.redis.hset(
        keys.key(keys.VEND, broker.machine_id),
        order_id,
        json.dumps({"result": result, "at": time.time()}),
    )
    WorkHints(broker.redis).hint(broker.machine_id)


@pytest.fixture
def gateway() -> Gateway:
    return Gateway()


@pytest.fixture
def dispense(real_redis: redis.Redis, gateway: Gateway) -> Iterator[dict]:
    """A DISPENSE ShardRunner whose workers vend through the agent, with `timeout_s`."""
    options = {"timeout_s": 30.0}

    def make_worker(broker: Broker) -> DispenseWorker:
        remote = RemoteDispenser(broker, options["timeout_s"])
        return DispenseWorker(broker, gateway, remote, sleep=lambda s: None)

    runner = ShardRunner(Service.DISPENSE, real_redis, real_redis, make_worker, consumer="d1")
    runner.block_s = 0.05
    runner.renew_s = 0.2
    yield {"runner": runner, "options": options}
    runner.stop()


def test_a_vend_the_agent_reports_done_is_dispensed_with_its_stock_and_sale(
    real_redis, menu, settings, gateway, dispense
):
    """PAYMENT_SUCCESS -> DISPENSING with its start time and a timer at the deadline; the
    agent's `vended` (VEND hash + hint) -> DISPENSED, one unit off stock, a DISPENSED sale;
    the timer dropped."""
    broker = machine(real_redis, A, menu)
    order_id = paid(broker, gateway, settings)
    dispense["runner"].start()
    wait_state(broker, State.DISPENSING)
    started = broker.order(order_id).number(OrderField.VEND_STARTED_AT)
    assert started is not None
    due = due_key(shard_of(A), Service.DISPENSE)
    eventually(lambda: real_redis.zscore(due, A) is not None, what="the vend's deadline stored")
    assert real_redis.zscore(due, A) == pytest.approx(started + 30)
    agent_reports(broker, order_id, "vended")
    wait_state(broker, State.DISPENSED)
    assert broker.stock()["cola"] == 4
    assert Sale.DISPENSED in sale_kinds(broker, order_id)
    assert ("refund", order_id) not in gateway.calls
    eventually(lambda: real_redis.zscore(due, A) is None, what="the timer dropped")


def test_a_vend_the_agent_reports_failed_is_refunded(real_redis, menu, settings, gateway, dispense):
    """`failed` -> DISPENSE_FAILED, refunded at Midtrans and recorded; stock untouched."""
    broker = machine(real_redis, A, menu)
    order_id = paid(broker, gateway, settings)
    dispense["runner"].start()
    wait_state(broker, State.DISPENSING)
    agent_reports(broker, order_id, "failed")
    snap = wait_state(broker, State.DISPENSE_FAILED)
    assert snap.frame["values"]["refund"] == RefundOutcome.REFUNDED
    assert ("refund", order_id) in gateway.calls
    assert Sale.REFUNDED in sale_kinds(broker, order_id)
    assert broker.stock()["cola"] == 5


def test_a_vend_unconfirmed_by_its_deadline_goes_to_the_operator_unrefunded(
    real_redis, menu, settings, gateway, dispense
):
    """No result by VEND_TIMEOUT_S: vend outcome unknown, in the operator's queue; neither
    re-vended nor refunded (money rule 6). The step's own timer wakes it: no hint needed."""
    dispense["options"]["timeout_s"] = 0.5
    broker = machine(real_redis, A, menu)
    order_id = paid(broker, gateway, settings)
    dispense["runner"].start()
    wait_state(broker, State.DISPENSING)
    snap = wait_state(broker, State.DISPENSE_FAILED, timeout_s=5)
    assert snap.frame["values"]["refund"] == RefundOutcome.VEND_UNKNOWN
    assert broker.operator_queue()[order_id]["kind"] == OperatorKind.VEND_UNKNOWN
    assert ("refund", order_id) not in gateway.calls
    assert Sale.VEND_UNKNOWN in sale_kinds(broker, order_id)
    assert broker.stock()["cola"] == 5


def test_another_machine_s_report_for_the_order_finishes_nothing(real_redis, menu, settings):
    """A result under machine B's VEND hash for A's order leaves A waiting for its own."""
    gateway = Gateway()
    broker = machine(real_redis, A, menu)
    order_id = paid(broker, gateway, settings)
    worker = DispenseWorker(broker, gateway, RemoteDispenser(broker), sleep=lambda s: None)
    deadline = worker.step(broker.snapshot(), [])
    assert broker.snapshot().state == State.DISPENSING and deadline is not None
    other = Broker(real_redis, B)
    agent_reports(other, order_id, "vended")
    assert worker.step(broker.snapshot(), []) == pytest.approx(deadline)
    assert broker.snapshot().state == State.DISPENSING


def test_the_fleet_dispense_worker_is_built_with_the_remote_dispenser_and_machine_settings(
    real_redis, settings
):
    """runtime's factory: DISPENSE vends through the agent with VEND_TIMEOUT_S and the link's
    margin (REMOTE_VEND_MARGIN_S); each worker carries its own machine's id in its settings
    (the charge's metadata) and the session."""
    session = requests.Session()
    try:
        dispense_worker = fleet_worker_factory(Service.DISPENSE, settings, session)(
            Broker(real_redis, A)
        )
        assert isinstance(dispense_worker, DispenseWorker)
        assert isinstance(dispense_worker.dispenser, RemoteDispenser)
        # The agent's own protocol waits and the link on top of the driver's timeout.
        assert dispense_worker.dispenser.timeout_s == (
            settings.vend_timeout_s + REMOTE_VEND_MARGIN_S
        )
        order_worker = fleet_worker_factory(Service.ORDER, settings, session)(Broker(real_redis, B))
        assert isinstance(order_worker, OrderWorker)
        assert order_worker.settings.machine_id == B
        assert order_worker.client.session is session
    finally:
        session.close()


# --- notifications ---------------------------------------------------------------------------------


def signed(order_id: str, status_code: str = "200", amount: str = "7000.00") -> dict:
    return {
        "order_id": order_id,
        "status_code": status_code,
        "gross_amount": amount,
        "transaction_status": "settlement",
        "signature_key": signature(order_id, status_code, amount, LOCAL_SANDBOX_KEY),
    }


def keyspace(client: redis.Redis, pattern: str = "*") -> dict[str, bytes | None]:
    """Every key matching `pattern` with its whole value (DUMP)."""
    return {k: client.dump(k) for k in sorted(client.scan_iter(pattern))}


@pytest.fixture
def receiver(real_redis: redis.Redis, gateway: Gateway) -> Iterator[FleetNotificationServer]:
    """Fleet mode's receiver on port 0 (its desks' runner not started: a test starts it)."""
    server = FleetNotificationServer(
        real_redis, real_redis, lambda broker: gateway, LOCAL_SANDBOX_KEY, consumer="n1"
    )
    server.runner.block_s = 0.05
    server.runner.renew_s = 0.2
    server.start(runner=False)
    yield server
    server.stop()


def closed_order(broker: Broker, gateway: Gateway, settings: Settings) -> str:
    """An order charged, then closed while its payment could still move (gateway silent)."""
    broker.show_menu()
    order_id = broker.place_order("cola")
    OrderWorker(broker, gateway, settings).step(broker.snapshot(), [])
    order = broker.order(order_id)
    assert payment.fail(broker, order, FailReason.GATEWAY_UNREACHABLE, State.ORDER_CREATED)
    return order_id


def test_a_late_payment_notification_is_routed_to_its_machine_and_refunded_there_only(
    real_redis, menu, settings, gateway, receiver
):
    """A verified notification for machine A's closed order lands in A's RECHECK set with a
    hint; A's desk (under the NOTIFICATION runner) reads the status and refunds; machine B,
    whose id also has '-' in it, is not touched at all."""
    a = machine(real_redis, A, menu)
    machine(real_redis, B, menu)
    order_id = closed_order(a, gateway, settings)
    gateway.statuses[order_id] = "settlement"
    # No recheck of its own is due: only the notification can bring the desk to it.
    assert real_redis.zscore(a.recheck_key, order_id) is None
    b_before = keyspace(real_redis, f"vm:{{{B}}}:*")
    receiver.runner.start()
    answer = requests.post(receiver.url, json=signed(order_id), timeout=5)
    assert answer.status_code == 200
    eventually(lambda: Sale.REFUNDED in sale_kinds(a, order_id), what="A's late refund")
    assert ("refund", order_id) in gateway.calls
    assert Sale.LATE_PAYMENT in sale_kinds(a, order_id)
    assert keyspace(real_redis, f"vm:{{{B}}}:*") == b_before


def test_a_notification_naming_no_registered_machine_is_answered_and_changes_nothing(
    real_redis, menu, settings, gateway, receiver
):
    """An order id of an unknown machine, or not of ours at all, is answered 200 (Midtrans
    would otherwise retry it for days) and writes nothing anywhere."""
    machine(real_redis, A, menu)
    before = keyspace(real_redis)
    for order_id in ("vm-zz-20270115080000-000001-ab12", "somebody-else-42"):
        answer = requests.post(receiver.url, json=signed(order_id), timeout=5)
        assert answer.status_code == 200
        assert answer.json()["status_code"] == "200"
    assert keyspace(real_redis) == before
    assert gateway.calls == []


# --- processes ------------------------------------------------------------------------------------


def fleet_worker(redis_url: str, tmp_path: Path, service: str) -> subprocess.Popen:
    """`python main.py --service SERVICE --fleet` on the Redis at `redis_url`."""
    env = child_env(REDIS_URL=redis_url, VAR_DIR=str(tmp_path / "var"))
    return subprocess.Popen(
        [sys.executable, str(ROOT / "main.py"), "--service", service, "--fleet"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def lease_holders(client: redis.Redis, service: str) -> list[str | None]:
    return [client.get(lease_key(shard, service)) for shard in range(WORK_SHARDS)]


@pytest.mark.slow
def test_fleet_worker_processes_share_the_shards_survive_a_kill_and_stop_on_sigterm(
    real_redis, redis_server, tmp_path
):
    """Two `main.py --service SCREEN --fleet` processes split the 8 shards 4/4; after a
    kill -9 of one, the other holds all 8 within 5 s; SIGTERM then stops it cleanly (exit
    0), its leases and its entry in the workers' zset given up."""
    first = fleet_worker(redis_server.url, tmp_path, "SCREEN")
    second = fleet_worker(redis_server.url, tmp_path, "SCREEN")
    try:
        names = {p: f"{socket.gethostname()}:{p.pid}" for p in (first, second)}
        eventually(
            lambda: (
                Counter(lease_holders(real_redis, "SCREEN")) == dict.fromkeys(names.values(), 4)
            ),
            timeout_s=20,
            what="the shards split 4/4",
        )
        assert set(lease_holders(real_redis, "SCREEN")) == set(names.values())
        first.kill()
        first.wait(5)
        killed_at = time.monotonic()
        eventually(
            lambda: lease_holders(real_redis, "SCREEN") == [names[second]] * WORK_SHARDS,
            timeout_s=10,
            what="the survivor to hold every shard",
        )
        assert time.monotonic() - killed_at < 5
        second.send_signal(signal.SIGTERM)
        assert second.wait(15) == 0
        assert lease_holders(real_redis, "SCREEN") == [None] * WORK_SHARDS
        workers = keys.FLEET_WORKERS.format(service="SCREEN")
        assert real_redis.zscore(workers, names[second]) is None
    finally:
        for process in (first, second):
            if process.poll() is None:
                process.kill()
                process.wait(5)
