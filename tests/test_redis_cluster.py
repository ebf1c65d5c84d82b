"""Fleet mode on a Redis Cluster: the local cluster (cores/redis_cluster.py), the cluster client
(services/runtime.py) and a machine's purchase path (cores/broker.py) on it.

A real cluster of 3 masters + 3 replicas (tests/conftest.py `redis_cluster`, one per session):
machines whose keys live on each master buy drinks; a master killed with kill -9 is replaced by
its replica while the Broker carries on, and comes back as a replica.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import redis
from redis.cluster import RedisCluster
from redis.exceptions import CrossSlotTransactionError

from constants.states import Sale, State
from cores.broker import Broker
from cores.config import Settings
from cores.machine import Effects, Transition
from cores.redis_cluster import LocalCluster, find_cli, keyslot, parse_nodes
from cores.redis_process import find_binary
from services import runtime
from services.supervisor import Supervisor
from tests.machine_helpers import eventually, need, need_redis_server

DRINKS = [
    {"id": "cola", "name": "Cola", "icon": "assets/cola.svg", "price": 7000, "stock": 5},
    {"id": "water", "name": "Water", "icon": "assets/water.svg", "price": 4000, "stock": 3},
]


def need_cluster_binaries() -> None:
    need_redis_server()
    need(find_cli(find_binary()) is not None, "no redis-cli on PATH (apt-get install redis-tools)")


def machines_on_each_master(cluster: LocalCluster) -> dict[int, str]:
    """A machine id whose keys (tag `{id}`) live on each master: master port -> id."""
    found: dict[int, str] = {}
    masters = set(cluster.masters())
    for n in range(1000):
        machine_id = f"vm-{n}"
        port = cluster.master_of(Broker(redis.Redis(), machine_id).state_key)
        found.setdefault(port, machine_id)
        if set(found) == masters:
            return found
    raise AssertionError("no machine id found for every master")


def buy(broker: Broker, drink: str = "cola") -> str:
    """A whole purchase: menu, order, QR, paid, dispensing, dispensed (a unit taken under
    WATCH), the result dismissed (IDLE)."""
    broker.show_menu()
    oid = broker.place_order(drink)
    steps = [
        (State.ORDER_CREATED, State.MENU_CLICKED, {"order_id": oid, "qr_string": "000201"}, None),
        (State.PAYMENT_SUCCESS, State.ORDER_CREATED, {"order_id": oid}, None),
        (State.DISPENSING, State.PAYMENT_SUCCESS, {"order_id": oid}, None),
        (
            State.DISPENSED,
            State.DISPENSING,
            {"order_id": oid},
            Effects(sale={"kind": Sale.DISPENSED, "amount": 7000}, stock_drink=drink),
        ),
    ]
    for to, frm, values, effects in steps:
        move = Transition(to, (frm,), oid, values, effects or Effects())
        assert broker.transition(move), f"{frm} -> {to} refused"
    broker.show_menu()
    return oid


# --- the local cluster ---------------------------------------------------------------------------


def test_the_local_cluster_runs_three_masters_with_a_replica_each_on_free_ports(redis_cluster):
    """Six real redis-servers on distinct ports, every slot served by one of 3 masters, each
    master with a replica of its own; its URL names every node."""
    masters, replicas = redis_cluster.masters(), redis_cluster.replicas()
    assert len(masters) == 3 and len(replicas) == 3
    assert sorted(masters + replicas) == sorted(redis_cluster.ports)
    assert all(port <= 55535 for port in redis_cluster.ports)  # the bus port is port + 10000
    assert {redis_cluster.role(port) for port in masters} == {"master"}
    assert {redis_cluster.role(port) for port in replicas} == {"replica"}
    assert all(redis_cluster.replica_of(port) in replicas for port in masters)
    assert redis_cluster.url == "redis+cluster://" + ",".join(
        f"127.0.0.1:{port}" for port in redis_cluster.ports
    )


@pytest.mark.slow
def test_a_local_cluster_started_again_reuses_its_nodes_ports_and_data(tmp_path: Path):
    """`main.py backend --cluster` started twice on one VAR_DIR: the same nodes on the same
    ports, not a new cluster, and what was written is still there."""
    need_cluster_binaries()
    first = LocalCluster(tmp_path / "cluster")
    ports = first.ports
    try:
        first.start()
        client = runtime.cluster_client(first.url, decode_responses=True)
        client.set("{vm-1}:kept", "yes")
        first.wait_replicated(first.master_of("{vm-1}:kept"))
        client.close()
    finally:
        first.stop()
    again = LocalCluster(tmp_path / "cluster")
    assert again.ports == sorted(ports)
    try:
        again.start()
        client = runtime.cluster_client(again.url, decode_responses=True)
        assert client.get("{vm-1}:kept") == "yes"
        client.close()
    finally:
        again.stop()


def test_cluster_nodes_text_is_parsed_into_roles_and_slots():
    text = (
        "a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460\n"
        "b2 127.0.0.1:7003@17003 slave a1 0 0 1 connected\n"
        "c3 127.0.0.1:7001@17001 master,fail - 0 0 2 connected 5461 5462-10922 [7->-x]\n"
    )
    a, b, c = parse_nodes(text)
    assert (a.port, a.role, a.slots, a.failed) == (7000, "master", ((0, 5460),), False)
    assert (b.role, b.master_id, b.slots) == ("replica", "a1", ())
    assert c.failed and c.slots == ((5461, 5461), (5462, 10922))
    assert a.serves(0) and not a.serves(5461)


# --- the cluster client --------------------------------------------------------------------------


def test_runtime_makes_a_cluster_client_from_a_cluster_url_or_from_cluster_nodes(
    redis_cluster, settings
):
    """REDIS_URL=redis+cluster://..., REDIS_CLUSTER_NODES and a redis+cluster:// URL in
    VAR_DIR/redis.url each give a RedisCluster that reaches the cluster; a redis:// URL a
    redis.Redis."""
    nodes = ",".join(f"127.0.0.1:{port}" for port in redis_cluster.ports[:2])
    settings.var_dir.mkdir(parents=True, exist_ok=True)
    settings.redis_url_file.write_text(redis_cluster.url + "\n", encoding="utf-8")
    for one in (
        settings.replace(redis_url=redis_cluster.url),
        settings.replace(redis_cluster_nodes=nodes),
        settings,  # VAR_DIR/redis.url
    ):
        client = runtime.redis_client(one, "tests")
        try:
            assert isinstance(client, RedisCluster)
            assert client.ping()
            assert {n.port for n in client.get_primaries()} == set(redis_cluster.masters())
            # A transaction by default, as redis.Redis's pipeline (one slot).
            with client.pipeline() as pipe:
                pipe.set("{vm-1}:a", "1").incr("{vm-1}:b").execute()
            assert client.get("{vm-1}:b") is not None
        finally:
            client.close()
    single = runtime.redis_client(Settings(redis_url="redis://127.0.0.1:1/0"))
    assert type(single) is redis.Redis


def test_a_transaction_across_two_slots_is_refused_on_the_cluster(cluster_client):
    """A MULTI must stay in one slot: the cluster client refuses one that does not, rather
    than split it (which would no longer be atomic)."""
    with pytest.raises(CrossSlotTransactionError), cluster_client.pipeline() as pipe:
        pipe.set("{vm-1}:x", 1)
        pipe.set("{vm-2}:x", 1)
        pipe.execute()
    # A plain pipeline (transaction=False) may span slots: it is split over the nodes.
    with cluster_client.pipeline(transaction=False) as pipe:
        pipe.set("{vm-1}:x", 1).set("{vm-2}:x", 2).set("{vm-3}:x", 3)
        assert pipe.execute() == [True, True, True]


def kill_clients_of(cluster: LocalCluster, key: str) -> None:
    """Close every client connection of the master serving `key` (a network cut)."""
    node = cluster.client(cluster.master_of(key))
    try:
        node.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
    finally:
        node.close()


@pytest.mark.parametrize("where", ["before a read", "before EXEC"])
def test_a_watch_lost_with_its_connection_raises_watch_error_and_writes_nothing(
    redis_cluster, cluster_client, where
):
    """As on one server: a connection cut while keys are WATCHed is a WatchError, never the
    same command (or MULTI/EXEC) sent again on a new connection where the WATCH no longer
    holds (redis-py's cluster transaction would retry it: the writes applied unguarded)."""
    key = "{vm-1}:guarded"
    cluster_client.set(key, "before")
    with cluster_client.pipeline() as pipe:
        pipe.watch(key)
        if where == "before a read":
            kill_clients_of(redis_cluster, key)
            with pytest.raises(redis.WatchError):
                pipe.get(key)
        else:
            assert pipe.get(key) == "before"
            pipe.multi()
            pipe.set(key, "written")
            kill_clients_of(redis_cluster, key)
            with pytest.raises(redis.WatchError):
                pipe.execute()
    assert cluster_client.get(key) == "before"
    # The next transaction on the same client runs as usual.
    with cluster_client.pipeline() as pipe:
        pipe.watch(key)
        pipe.multi()
        pipe.set(key, "after")
        assert pipe.execute() == [True]  # parsed as on one server
    assert cluster_client.get(key) == "after"


def test_a_transaction_answers_on_the_cluster_as_on_one_server(cluster_client, real_redis):
    """The replies of a MULTI/EXEC are parsed alike on both (redis-py's cluster transaction
    would leave SET's 'OK', XRANGE's nested lists and EXPIRE's 1 raw)."""

    def run(client: redis.Redis) -> list:
        client.hset("{vm-1}:h", mapping={"x": "1"})
        client.xadd("{vm-1}:s", {"f": "v"}, id="1-1")
        with client.pipeline() as pipe:
            pipe.set("{vm-1}:k", "v")
            pipe.hgetall("{vm-1}:h")
            pipe.xrange("{vm-1}:s")
            pipe.xrevrange("{vm-1}:s", count=1)
            pipe.zadd("{vm-1}:z", {"m": 1.5})
            pipe.zrange("{vm-1}:z", 0, -1, withscores=True)
            pipe.expire("{vm-1}:k", 10)
            pipe.hincrby("{vm-1}:h", "n", 2)
            return pipe.execute()

    assert run(cluster_client) == run(real_redis)


def test_a_pipeline_takes_an_mget_of_one_slot_as_one_server_does(cluster_client):
    """alert_store and metrics read heartbeats with MGET in a pipeline (one machine's slot)."""
    cluster_client.set("{vm-1}:a", "1")
    with cluster_client.pipeline(transaction=False) as pipe:
        pipe.mget(["{vm-1}:a", "{vm-1}:b"])
        pipe.get("{vm-2}:c")
        assert pipe.execute() == [["1", None], None]


# --- the purchase path on every master -----------------------------------------------------------


def test_purchases_on_machines_served_by_each_of_the_three_masters(redis_cluster, cluster_client):
    """Show menu, order, QR, paid, dispensing, dispensed with its unit of stock taken under
    WATCH, for a machine on each master: every MULTI of a purchase stays in its slot."""
    on = machines_on_each_master(redis_cluster)
    assert len(on) == 3
    for port, machine_id in on.items():
        broker = Broker(cluster_client, machine_id)
        broker.ensure_ready(DRINKS)
        assert redis_cluster.master_of(broker.state_key) == port
        first, second = buy(broker), buy(broker)
        assert first != second
        assert broker.stock() == {"cola": 3, "water": 3}
        assert broker.snapshot().state is State.IDLE
        kinds = [sale["kind"] for sale in broker.sales()]
        assert kinds.count(str(Sale.DISPENSED)) == 2


def test_racing_orders_on_the_cluster_sell_the_last_unit_once(redis_cluster, cluster_client):
    """Two kiosk taps racing for the last can, on the cluster: WATCH/MULTI lets one win;
    the other is judged again on the state that now holds and refused."""
    machine_id = next(iter(machines_on_each_master(redis_cluster).values()))
    broker = Broker(cluster_client, machine_id)
    broker.ensure_ready([{**DRINKS[0], "stock": 1}])
    broker.show_menu()
    results: list[object] = []
    start = threading.Barrier(2)

    def tap() -> None:
        start.wait()
        try:
            results.append(broker.place_order("cola"))
        except Exception as exc:  # noqa: BLE001 (the loser's refusal is the point)
            results.append(exc)

    threads = [threading.Thread(target=tap) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    orders = [r for r in results if isinstance(r, str)]
    assert len(orders) == 1, results
    assert broker.snapshot().state is State.MENU_CLICKED


# --- a master's failover -------------------------------------------------------------------------


@pytest.mark.slow
def test_a_killed_master_fails_over_to_its_replica_and_the_broker_carries_on(
    redis_cluster, cluster_client
):
    """kill -9 of the master of a machine mid-purchase: its replica is promoted (the cluster
    is ok again within ~10 s) and the Broker's next step waits for it (retry with backoff),
    then applies, nothing acknowledged before lost; machines on the other masters sell on;
    the old master started again comes back as the new master's replica, and the purchase
    completes (its money-moving steps have a replica to hold them again)."""
    on = machines_on_each_master(redis_cluster)
    victim, machine_id = next(iter(on.items()))
    replica = redis_cluster.replica_of(victim)
    assert replica is not None
    broker = Broker(cluster_client, machine_id)
    broker.ensure_ready(DRINKS)
    paid = buy(broker)
    broker.show_menu()
    oid = broker.place_order("cola")
    redis_cluster.wait_replicated(victim)  # replication is asynchronous (see WAIT)

    redis_cluster.kill9(victim)
    assert broker.transition(
        Transition(
            State.ORDER_CREATED,
            (State.MENU_CLICKED,),
            oid,
            {"order_id": oid, "qr_string": "000201"},
        )
    )
    assert redis_cluster.role(replica) == "master"
    assert redis_cluster.master_of(broker.state_key) == replica
    snap = broker.snapshot()
    assert (snap.state, snap.order_id) == (State.ORDER_CREATED, oid)
    assert paid in {s["order_id"] for s in broker.sales()}
    for port, other in on.items():
        if port != victim:
            neighbour = Broker(cluster_client, other)
            neighbour.ensure_ready(DRINKS)
            buy(neighbour)
            assert neighbour.stock()["cola"] == 4

    redis_cluster.restart(victim)
    eventually(lambda: redis_cluster.role(victim) == "replica", 15, "the old master a replica")
    redis_cluster.wait_ready(15)
    assert redis_cluster.replica_of(replica) == victim
    for to, frm, effects in (
        (State.PAYMENT_SUCCESS, State.ORDER_CREATED, Effects()),
        (State.DISPENSING, State.PAYMENT_SUCCESS, Effects()),
        (State.DISPENSED, State.DISPENSING, Effects(stock_drink="cola")),
    ):
        assert broker.transition(Transition(to, (frm,), oid, {"order_id": oid}, effects))
    assert broker.stock()["cola"] == 3
    broker.show_menu()  # the result dismissed
    assert buy(broker)
    assert broker.stock()["cola"] == 2


def test_cluster_key_slots_follow_the_machine_hash_tag():
    """Every key of a machine shares its `{id}` tag: one slot, so one MULTI can hold them."""
    broker = Broker(redis.Redis(), "vm-7")
    slots = {
        keyslot(key)
        for key in (broker.state_key, broker.stock_key, broker.events_key, broker.order_key("x"))
    }
    assert slots == {keyslot("vm-7")}


# --- `main.py backend --cluster` -----------------------------------------------------------------


@pytest.mark.slow
def test_the_backend_supervisor_runs_a_local_cluster_and_restarts_a_dead_node(tmp_path: Path):
    """`backend --cluster` without REDIS_URL: a cluster under VAR_DIR/cluster whose URL goes
    to VAR_DIR/redis.url (what every child and `main.py` command reads); a node that dies is
    started again by the supervisor's round; a second run reuses the nodes and their ports."""
    need_cluster_binaries()
    settings = Settings(var_dir=tmp_path / "var")
    supervisor = Supervisor(settings, fleet_workers=1, cluster=True)
    try:
        url = supervisor.start_redis()
        cluster = supervisor.cluster
        assert cluster is not None and cluster.data_dir == settings.var_dir / "cluster"
        assert url == cluster.url and url.startswith("redis+cluster://")
        assert settings.redis_url_file.read_text(encoding="utf-8").strip() == url
        assert isinstance(runtime.redis_client(settings), RedisCluster)  # from redis.url
        victim = cluster.masters()[0]
        cluster.kill9(victim)
        supervisor.tend()
        assert cluster.alive(victim)
        supervisor.plan(url)
        assert supervisor.env["REDIS_URL"] == url and "REDIS_CLUSTER_NODES" not in supervisor.env
    finally:
        supervisor.shutdown()
    assert not any(cluster.alive(port) for port in cluster.ports)
    again = Supervisor(settings, fleet_workers=1, cluster=True)
    try:
        assert again.start_redis() == url
    finally:
        again.shutdown()


def test_the_backend_uses_the_cluster_the_settings_name_and_starts_none(tmp_path: Path):
    """REDIS_CLUSTER_NODES (or REDIS_URL) set: `backend --cluster` starts no local cluster
    and its children get REDIS_URL=redis+cluster://... alone."""
    settings = Settings(var_dir=tmp_path / "var", redis_cluster_nodes="10.0.0.1:7000,10.0.0.2:7000")
    supervisor = Supervisor(settings, fleet_workers=1, cluster=True)
    url = supervisor.start_redis()
    assert url == "redis+cluster://10.0.0.1:7000,10.0.0.2:7000"
    assert supervisor.cluster is None and supervisor.redis is None
    assert not (tmp_path / "var" / "cluster").exists()


def test_stream_reads_are_routed_without_asking_a_node_for_their_keys(
    redis_cluster, cluster_client
):
    """XREAD and XREADGROUP (blocking or not, a group named STREAMS too) reach the master of
    their stream with its entries, and no node is asked COMMAND GETKEYS for them: redis-py
    would ask twice per read, a round trip each, on every shard runner's and gateway's read."""
    from services.cluster_client import stream_read_keys

    assert stream_read_keys(("XREADGROUP", "GROUP", "STREAMS", "c", b"STREAMS", "k", ">")) == ["k"]
    assert stream_read_keys(("XREAD", "COUNT", 5, b"STREAMS", "a", "b", "0", "0")) == ["a", "b"]
    assert stream_read_keys(("GET", "k")) is None
    stream = "fleet:{shard-3}:work"
    entry = cluster_client.xadd(stream, {"m": "vm-1"})
    cluster_client.xgroup_create(stream, "STREAMS", id="0")
    for port in redis_cluster.masters():
        node = redis_cluster.client(port)
        node.config_resetstat()
        node.close()
    assert cluster_client.xread({stream: "0"}, count=10, block=100)[0][1][0][0] == entry
    read = cluster_client.xreadgroup("STREAMS", "c", {stream: ">"}, count=10, block=100)
    assert read[0][1][0][0] == entry
    asked = 0
    for port in redis_cluster.masters():
        node = redis_cluster.client(port)
        asked += int(node.info("commandstats").get("cmdstat_command|getkeys", {}).get("calls", 0))
        node.close()
    assert asked == 0
