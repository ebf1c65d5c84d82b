"""Fleet mode on a real Redis Cluster: a node failure loses nothing.

`main.py backend` on a cluster of its own (bench/fleet_harness.py `Backend(cluster=True)`: 3
masters + 3 replicas, real redis-servers on free ports) and real `main.py machine` agents whose
machine ids are chosen so that their keys (tag `{machine_id}`) live on every master. Customers
buy on every machine at once (a thread each); during that stream the master serving one of the
machines is killed with kill -9, its replica is promoted, and the old master is started again
and rejoins as a replica. A promoted master has no replica until the old one is back, so the
money-moving steps on it are not known durable (cores/broker.py NotDurable) and retried until
then: the sales that met the failover complete once it is back.

Then every machine is reconciled with bench/chaos.py's reconciler (its slice of the sandbox's
ledger, its agent's vend journal, its sales stream; and the fleet's isolation): no violation,
every machine back at IDLE within PAYMENT_DEADLINE_S and a margin, no order left paid and
undispensed, and no backend process or agent exited on the failover.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.chaos import Config, Report, reconcile, reconcile_fleet, serve_customer, wait_idle
from bench.fleet_harness import Agent, Backend, FleetMachine
from bench.harness import Page
from constants import keys
from constants.orders import OrderField, Outcome
from constants.states import State
from cores.redis_cluster import LocalCluster, find_cli
from cores.redis_process import find_binary
from tests.machine_helpers import eventually, need, need_redis_server

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DEADLINE_S = 6.0  # PAYMENT_DEADLINE_S of the fleet (bench/fleet_harness.py FAST)
#: A machine is back at IDLE this long after its last customer at the latest.
IDLE_MARGIN_S = 15.0


def spread_ids(cluster: LocalCluster, per_master: dict[int, int]) -> dict[str, int]:
    """Machine ids `fc-N` whose keys live on each master: `per_master[port]` ids on the
    master on `port`. Machine id -> its master's port."""
    wanted = dict(per_master)
    chosen: dict[str, int] = {}
    for n in range(10_000):
        machine_id = f"fc-{n}"
        port = cluster.master_of(keys.STATE.format(machine_id=machine_id))
        if wanted.get(port, 0) > 0:
            chosen[machine_id] = port
            wanted[port] -= 1
        if not any(wanted.values()):
            return chosen
    raise AssertionError(f"no machine ids found for {per_master}")


def cluster_ok(cluster: LocalCluster) -> bool:
    """Every live node says cluster_state:ok (all slots served)."""
    for port in cluster.ports:
        if cluster.stopped(port):
            continue
        client = cluster.client(port)
        try:
            if "cluster_state:ok" not in str(client.execute_command("CLUSTER", "INFO")):
                return False
        except Exception:
            return False
        finally:
            client.close()
    return True


class Stream:
    """Customers paying at once on one machine, one after another, until told to stop."""

    def __init__(self, machine: FleetMachine, seed: int) -> None:
        self.machine = machine
        self.cfg = Config(purchases=0, seed=seed, deadline_s=DEADLINE_S)
        self.report = Report()
        self.order_ids: list[str] = []
        self.done_at: list[float] = []
        self.stopping = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self.run, name=machine.machine_id, daemon=True)

    def run(self) -> None:
        import random

        rng = random.Random(self.cfg.seed)
        page = Page(self.machine.ws_url, connect=False)
        try:
            while not self.stopping.is_set():
                self.report.behaviours["pay_now"] += 1
                order_id = serve_customer(self.machine, page, "pay_now", rng, self.cfg, self.report)
                if order_id:
                    self.order_ids.append(order_id)
                self.done_at.append(time.monotonic())
        except BaseException as exc:  # the test fails on it
            self.error = exc
        finally:
            page.close()

    def since(self, at: float) -> int:
        return sum(1 for t in self.done_at if t > at)


@pytest.fixture
def cluster_fleet(tmp_path: Path) -> Iterator[tuple[Backend, list[FleetMachine]]]:
    """A backend on a cluster of its own and four agents: one machine on each master, and a
    second on the first master (the one the test kills)."""
    need_redis_server()
    need(find_cli(find_binary()) is not None, "no redis-cli on PATH (apt-get install redis-tools)")
    backend = Backend(tmp_path / "backend", cluster=True)
    machines: list[FleetMachine] = []
    try:
        assert backend.cluster is not None
        masters = backend.cluster.masters()
        ids = spread_ids(backend.cluster, {masters[0]: 2, masters[1]: 1, masters[2]: 1})
        for machine_id in ids:
            token = backend.register(machine_id)
            agent = Agent(tmp_path / machine_id, machine_id, token, backend.url)
            machines.append(FleetMachine(backend, agent))
        yield backend, machines
    finally:
        for machine in machines:
            machine.agent.stop()
            machine.close()
        assert backend.stop() == 0, backend.log()


@pytest.mark.timeout(600)
def test_a_master_killed_during_purchases_on_every_machine_loses_nothing(cluster_fleet):
    """Purchases on four machines spread over the three masters, at once; kill -9 of the
    master serving two of them while a paid sale is vending there; its replica promoted
    (cluster_state ok), the old master restarted and back as a replica; every machine keeps
    selling. Then: each machine's ledger slice, journal and sales reconcile with no
    violation, no order of one machine shows on another, every machine is at IDLE within
    PAYMENT_DEADLINE_S + a margin, no order is left paid and not vended, and no process of
    the backend nor any agent exited."""
    backend, machines = cluster_fleet
    cluster = backend.cluster
    assert cluster is not None
    masters = {m.machine_id: cluster.master_of(m.broker.state_key) for m in machines}
    assert set(masters.values()) == set(cluster.masters())  # every master serves a machine
    victim_machine = machines[0]
    victim = masters[victim_machine.machine_id]
    replica = cluster.replica_of(victim)
    assert replica is not None
    pids = {name: backend.pid(name) for name in backend_processes(backend)}
    agent_pids = {m.machine_id: m.agent.process.pid for m in machines}

    streams = [Stream(m, seed=1130 + n) for n, m in enumerate(machines)]
    for stream in streams:
        stream.thread.start()
    try:
        began = time.monotonic()
        eventually(lambda: all(s.since(began) >= 1 for s in streams), 120, "a sale on each")
        # kill -9 the master while a sale of its machine moves money (paid, or vending).
        in_flight = (State.PAYMENT_SUCCESS, State.DISPENSING)
        eventually(
            lambda: victim_machine.broker.snapshot().state in in_flight, 60, "a sale in flight"
        )
        killed_at = time.monotonic()
        assert victim_machine.kill9("master") is not None
        eventually(lambda: cluster.role(replica) == "master", 30, "the replica promoted")
        eventually(lambda: cluster_ok(cluster), 30, "cluster_state ok after the failover")
        assert cluster.master_of(victim_machine.broker.state_key) == replica
        # The promoted master has no replica: its money-moving steps wait until one is back.
        assert backend.restart_nodes() == [victim]
        eventually(lambda: cluster.role(victim) == "replica", 30, "the old master a replica")
        cluster.wait_ready(30)
        back_at = time.monotonic()
        eventually(
            lambda: all(s.since(back_at) >= 2 for s in streams), 180, "two sales on each after"
        )
        assert streams[0].since(killed_at) >= 2  # the killed master's machine sells on
    finally:
        for stream in streams:
            stream.stopping.set()
        for stream in streams:
            stream.thread.join(150)
    assert all(not s.thread.is_alive() for s in streams), "a customer never finished"
    assert [s.error for s in streams] == [None] * len(streams)

    # No purchase stuck past its deadline: every machine at IDLE, no order paid and unvended.
    for machine in machines:
        assert wait_idle(machine, DEADLINE_S + IDLE_MARGIN_S), machine.machine_id
    for stream in streams:
        for order_id in stream.order_ids:
            order = stream.machine.broker.order(order_id)
            assert order is not None, order_id
            outcome = order.get(OrderField.OUTCOME) or ""
            assert outcome and outcome != Outcome.PAID, (order_id, outcome)

    # The three records of each machine, and the fleet's isolation.
    order_ids = {s.machine.machine_id: s.order_ids for s in streams}
    settle_until = time.monotonic() + 60
    while True:
        trials = {m.machine_id: Report() for m in machines}
        for stream in streams:
            trials[stream.machine.machine_id].behaviours = stream.report.behaviours
            reconcile(stream.machine, stream.order_ids, trials[stream.machine.machine_id])
        isolation = reconcile_fleet(machines, order_ids, backend.ledger())
        violations = [f"{m}: {v}" for m, t in trials.items() for v in t.violations] + isolation
        if not violations or time.monotonic() > settle_until:
            break
        time.sleep(1.0)
    assert violations == []
    assert [s.report.violations for s in streams] == [[]] * len(streams)
    outcomes: collections.Counter = collections.Counter()
    for trial in trials.values():
        outcomes.update(trial.outcomes)
    assert outcomes["dispensed"] >= 3 * len(machines), outcomes

    # Nothing exited on the failover: the same backend processes and agents.
    assert {name: backend.pid(name) for name in pids} == pids
    assert backend.alive()
    assert all(m.agent.alive() for m in machines)
    assert {m.machine_id: m.agent.process.pid for m in machines} == agent_pids


def backend_processes(backend: Backend) -> list[str]:
    """The pid-file names of the backend's processes."""
    return sorted(p.stem for p in (backend.var / "pids").glob("*.pid"))
