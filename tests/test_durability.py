"""Money-moving steps are acknowledged only once a replica holds them (cores/broker.py,
"Durability"): a real master and one real replica (two redis-servers, REPLICAOF), no cluster.

The replica is taken away with REPLICAOF NO ONE on it (it stops replicating at once, and the
master's WAIT finds no replica to acknowledge), and given back with REPLICAOF.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator

import pytest
import redis

from constants import keys
from constants.orders import OrderField
from constants.states import Sale, State
from constants.tunables import DURABLE_RETRY_S
from cores import agent_protocol
from cores.agent_protocol import Kind, Message
from cores.broker import Broker, Durability, NotDurable
from cores.fleet import Fleet
from cores.machine import TRANSITIONS, Effects, Transition, must_be_durable
from cores.redis_process import RedisProcess
from cores.remote_dispenser import RemoteDispenser
from cores.work import WorkHints, shard_of, work_key
from services.dispense_service import DispenseWorker
from services.gateway_service import read_for_agent, record_vend_result
from tests.kiosk_helpers import MENU
from tests.machine_helpers import eventually
from tests.test_gateway import agent, serving, until
from tests.test_worker_steps import Gateway as FakeMidtrans

#: Short enough for a test, long enough for a replica on the same host to answer.
TIMEOUT_MS = 300
WAITS = Durability(replicas=1, timeout_ms=TIMEOUT_MS)


# --- which steps wait (pure) -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("to", "sale", "waits"),
    [
        (State.PAYMENT_SUCCESS, Sale.PAID, True),  # paid
        (State.DISPENSING, None, True),  # the agent may vend on it
        (State.DISPENSED, Sale.DISPENSED, True),
        (State.DISPENSE_FAILED, Sale.REFUNDED, True),
        (State.DISPENSE_FAILED, Sale.REFUND_OWED, True),
        (State.DISPENSE_FAILED, Sale.VEND_UNKNOWN, False),  # nothing moved: the operator looks
        (State.DISPENSE_FAILED, None, False),  # order record missing: the operator looks
        (None, Sale.LATE_PAYMENT, True),  # record_sale: recorded before its refund
        (None, Sale.DISPENSE_FAILED, True),  # record_sale: recorded before its refund
        (None, Sale.REFUNDED, True),
        (None, Sale.REFUND_OWED, True),
        (None, Sale.CHARGE_FAILED, False),
        (State.MENU_CLICKED, Sale.ORDERED, False),
        (State.ORDER_CREATED, Sale.CHARGED, False),
        (State.PAYMENT_FAILED, Sale.PAYMENT_FAILED, False),  # re-derived if lost: re-closed
        (State.IDLE, None, False),
        (State.SHOW_MENU, None, False),
    ],
)
def test_the_money_moving_steps_are_the_ones_that_wait(to, sale, waits):
    """must_be_durable: paid, DISPENSING, DISPENSED, a refund made or owed, a late payment and
    a failed vend's record wait for a replica; screens, orders and charges do not."""
    assert must_be_durable(to, sale) is waits


def test_a_transition_says_whether_it_waits_from_its_target_and_its_sale():
    """Transition.durable reads the move's target and its sales entry's kind; every move of
    the table into PAYMENT_SUCCESS, DISPENSING or DISPENSED waits."""
    refunded = Effects(sale={"kind": Sale.REFUNDED, "amount": 1})
    unknown = Effects(sale={"kind": Sale.VEND_UNKNOWN, "amount": 1})
    assert Transition(State.DISPENSE_FAILED, (State.DISPENSING,), "o", {}, refunded).durable
    assert not Transition(State.DISPENSE_FAILED, (State.DISPENSING,), "o", {}, unknown).durable
    for frm, to in TRANSITIONS:
        move = Transition(to, (frm,), "o", {})
        assert move.durable is (to in (State.PAYMENT_SUCCESS, State.DISPENSING, State.DISPENSED))


def test_not_durable_is_a_redis_error_and_one_redis_waits_for_no_replica(fake_redis):
    """NotDurable is handled where a Redis error is (the workers' retry, the gateway's ask
    again); a plain client's Broker waits for no replica unless told."""
    assert issubclass(NotDurable, redis.RedisError)
    assert Broker(fake_redis, "vm-1").durability.replicas == 0
    assert Broker(fake_redis, "vm-1", durability=WAITS).durability == WAITS


# --- a master and its replica ------------------------------------------------------------------


def _online(info: dict) -> bool:
    """The master counts its replica online (after a diskless sync: once the replica's first
    ACK came, up to a second after the replica says its link is up)."""
    replica = info.get("slave0")
    return isinstance(replica, dict) and replica.get("state") == "online"


class Pair:
    """A master and its replica, both real; `detach`/`attach` take the replica away and back."""

    def __init__(self, master: RedisProcess, replica: RedisProcess) -> None:
        self.master_server = master
        self.master = redis.Redis.from_url(master.url, decode_responses=True, socket_timeout=10)
        self.replica = redis.Redis.from_url(replica.url, decode_responses=True, socket_timeout=10)

    def attach(self) -> None:
        self.master.config_set("repl-diskless-sync-delay", 0)  # a full sync at once
        self.replica.execute_command("REPLICAOF", self.master_server.host, self.master_server.port)
        eventually(
            lambda: (
                self.replica.info("replication").get("master_link_status") == "up"
                and _online(self.master.info("replication"))
                and self._acknowledges()
            ),
            what="the replica in sync",
        )

    def _acknowledges(self) -> bool:
        """A write of the master's acknowledged by the replica (just after a sync the replica
        may take a moment to answer the master's GETACK)."""
        with self.master.pipeline(transaction=False) as pipe:
            pipe.set("sync-probe", time.time())
            pipe.wait(1, 100)
            return pipe.execute()[-1] == 1

    def detach(self) -> None:
        self.replica.execute_command("REPLICAOF", "NO", "ONE")
        eventually(
            lambda: self.master.info("replication").get("connected_slaves") == 0,
            what="the master without its replica",
        )

    def close(self) -> None:
        self.master.close()
        self.replica.close()


@pytest.fixture
def pair(start_redis_server: Callable[..., RedisProcess]) -> Iterator[Pair]:
    both = Pair(start_redis_server(), start_redis_server())
    both.attach()
    yield both
    both.close()


def machine(pair: Pair, machine_id: str = "vm-1", durability: Durability = WAITS) -> Broker:
    broker = Broker(pair.master, machine_id, hints=WorkHints(pair.master), durability=durability)
    broker.ensure_ready(MENU)
    return broker


def paid(broker: Broker) -> str:
    """An order of cola at PAYMENT_SUCCESS."""
    broker.show_menu()
    order_id = broker.place_order("cola")
    assert broker.transition(Transition(State.PAYMENT_SUCCESS, (State.MENU_CLICKED,), order_id, {}))
    return order_id


def to_dispensing(order_id: str) -> Transition:
    return Transition(State.DISPENSING, (State.PAYMENT_SUCCESS,), order_id, {})


def test_a_dispensing_held_by_the_replica_is_acknowledged(pair):
    """With the replica up, the move to DISPENSING returns once the replica holds it: read
    from the replica right after, it is there."""
    broker = machine(pair)
    order_id = paid(broker)
    assert broker.transition(to_dispensing(order_id))
    held = pair.replica.hgetall(broker.state_key)
    assert (held["state"], held["order_id"]) == (State.DISPENSING, order_id)


def test_a_dispensing_no_replica_holds_is_not_durable_and_stays_on_the_master(pair):
    """Replica gone: the move to DISPENSING raises NotDurable after the timeout (never
    sooner), and the write stands on the master (the caller re-checks from the state)."""
    broker = machine(pair)
    order_id = paid(broker)
    pair.detach()
    started = time.monotonic()
    with pytest.raises(NotDurable):
        broker.transition(to_dispensing(order_id))
    assert time.monotonic() - started >= TIMEOUT_MS / 1000 * 0.9
    snap = broker.snapshot()
    assert (snap.state, snap.order_id) == (State.DISPENSING, order_id)


def test_a_step_the_master_no_longer_holds_is_not_durable_whatever_the_replica_says(pair):
    """The mark is written only where the step is found: a snapshot the master no longer
    holds (as after a failover that lost it) is not vouched for, with the replica up."""
    broker = machine(pair)
    order_id = paid(broker)
    assert broker.transition(to_dispensing(order_id))
    snap = broker.snapshot()
    broker.confirm_state(snap)  # held: returns
    gone = type(snap)(snap.state, snap.order_id, snap.version - 1, snap.since, snap.frame)
    with pytest.raises(NotDurable, match="does not hold"):
        broker.confirm_state(gone)


def test_a_late_payment_record_no_replica_holds_is_not_durable(pair):
    """record_sale of a late payment (before its refund is sent) raises NotDurable without
    the replica; an ordinary record never waits."""
    broker = machine(pair)
    pair.detach()
    broker.record_sale("o-1", Sale.CHARGE_FAILED, amount=1)
    with pytest.raises(NotDurable):
        broker.record_sale_with_order("o-1", Sale.LATE_PAYMENT, {OrderField.LATE: "pending"})
    assert [s["kind"] for s in broker.sales()] == [Sale.CHARGE_FAILED, Sale.LATE_PAYMENT]
    # The order's field went with it, in one MULTI.
    assert pair.master.hget(broker.order_key("o-1"), OrderField.LATE) == "pending"


def waits_sent(client: redis.Redis) -> int:
    return int(client.info("commandstats").get("cmdstat_wait", {}).get("calls", 0))


def test_durability_zero_sends_no_wait_at_all(pair):
    """One Redis (durability 0, the default for a plain client): a whole sale's money steps
    send no WAIT and no mark, counted by the server itself."""
    broker = machine(pair, durability=Durability(0))
    pair.master.config_resetstat()
    order_id = paid(broker)
    assert broker.transition(to_dispensing(order_id))
    broker.record_sale(order_id, Sale.REFUNDED, amount=1)
    assert waits_sent(pair.master) == 0
    assert not pair.master.exists(broker.durable_key)
    durable = machine(pair, "vm-2")
    assert durable.transition(to_dispensing(paid(durable)))
    # The control: PAYMENT_SUCCESS and DISPENSING waited (one more to load the mark's script).
    assert waits_sent(pair.master) >= 2


# --- the DISPENSE worker and the gateway ------------------------------------------------------


def test_the_dispense_worker_never_lets_a_vend_start_on_a_dispensing_not_known_durable(pair):
    """Replica gone: the DISPENSE worker moves to DISPENSING, finds it not durable, and asks
    again after DURABLE_RETRY_S; meanwhile the order has no VEND_DURABLE_AT and the gateway
    would send no `vend`. Replica back: the next step confirms it, marks the order, and the
    gateway sends `vend`; the vend's deadline runs from then."""
    broker = machine(pair)
    order_id = paid(broker)
    worker = DispenseWorker(broker, FakeMidtrans(), RemoteDispenser(broker, 30.0))
    pair.detach()
    now = time.time()
    retry_at = worker.step(broker.snapshot(), [])
    assert retry_at is not None and now + DURABLE_RETRY_S <= retry_at < now + 30
    assert broker.snapshot().state == State.DISPENSING  # on the master, not known durable
    order = broker.order(order_id)
    assert order is not None and order.get(OrderField.VEND_DURABLE_AT) is None
    assert read_for_agent(broker, None, None).vend_order is None
    with pytest.raises(NotDurable):  # still no replica: still nothing asked of the agent
        worker.dispense(broker.snapshot())
    assert read_for_agent(broker, None, None).vend_order is None
    pair.attach()
    deadline = worker.step(broker.snapshot(), [])
    order = broker.order(order_id)
    assert order is not None
    marked = order.number(OrderField.VEND_DURABLE_AT)
    assert marked is not None and deadline == pytest.approx(marked + 30.0)
    assert read_for_agent(broker, None, None).vend_order == order_id


def test_a_vend_result_not_known_durable_is_asked_for_again(pair, monkeypatch):
    """The agent's vend_result is recorded while no replica is there: the gateway does not
    count it as kept (NotDurable) and clears what it sent; when the record turns out lost (a
    failover), the next pump sends `vend` again on the same connection, and the agent's repeat
    answer is recorded once the replica is back."""
    monkeypatch.setattr(Durability, "for_client", classmethod(lambda cls, client: WAITS))
    tokens = {"vm-a": Fleet(pair.master).add("vm-a", "cli:test")}
    broker = machine(pair, "vm-a")
    with serving(pair.master) as gateway, agent(gateway, "vm-a", tokens["vm-a"]) as ws:
        order_id = paid(broker)
        assert broker.transition(to_dispensing(order_id))
        broker.mark_vend_durable(order_id, time.time())
        vend, _ = until(ws, lambda m: m.kind is Kind.VEND)
        assert vend.order_id == order_id
        pair.detach()
        result = agent_protocol.encode(
            Message(Kind.VEND_RESULT, order_id=order_id, result="vended")
        )
        ws.send(result)
        vend_key = keys.key(keys.VEND, "vm-a")
        eventually(lambda: pair.master.hexists(vend_key, order_id), what="the record")
        link = gateway.links["vm-a"]
        eventually(lambda: link.vend_sent is None, what="the vend forgotten")
        pair.master.hdel(vend_key, order_id)  # lost with the master that held it
        WorkHints(pair.master).hint("vm-a")
        again, _ = until(ws, lambda m: m.kind is Kind.VEND)
        assert again.order_id == order_id
        pair.attach()
        ws.send(result)
        eventually(lambda: pair.replica.hexists(vend_key, order_id), what="the replica's copy")
        assert json.loads(pair.master.hget(vend_key, order_id))["result"] == "vended"


def test_recording_a_vend_result_no_replica_holds_still_wakes_the_workers(pair):
    """record_vend_result without a replica: NotDurable, with the record on the master and
    the hint sent (the DISPENSE worker's own durable steps vouch for it, or it is asked
    again)."""
    broker = machine(pair, "vm-a")
    order_id = paid(broker)
    assert broker.transition(to_dispensing(order_id))
    hints = WorkHints(pair.master)
    pair.detach()
    stream = work_key(shard_of("vm-a"))
    hinted = pair.master.xlen(stream)
    with pytest.raises(NotDurable):
        record_vend_result(broker, hints, order_id, "vended")
    assert pair.master.hexists(keys.key(keys.VEND, "vm-a"), order_id)
    assert pair.master.xlen(stream) == hinted + 1
