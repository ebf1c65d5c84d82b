"""The chaos soak's short runs: 30 customers through the real machine, and 12 through a fleet
of two machines on one backend (on one Redis, and on a Redis Cluster whose masters and
replicas are killed too), while processes are killed and the gateway misbehaves; the
three records must reconcile with no violation (and, in the fleet, no machine sees another's
orders)."""

from __future__ import annotations

import io

import pytest

from bench.chaos import Config, soak
from cores.redis_cluster import find_cli
from cores.redis_process import find_binary
from tests.machine_helpers import need, need_redis_server

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.mark.timeout(300)
def test_thirty_customers_under_chaos_break_no_money_rule(tmp_path):
    need_redis_server()
    out = io.StringIO()
    report = soak(Config(purchases=30, seed=20261126), tmp_path, out)
    text = out.getvalue()
    assert report.violations == [], text
    assert sum(report.behaviours.values()) == 30, text
    assert sum(report.faults.values()) > 0, text  # chaos did happen
    assert "violations: 0" in text


@pytest.mark.timeout(420)
def test_a_fleet_of_two_under_chaos_breaks_no_money_rule_and_no_isolation(tmp_path):
    """Two machines (agents) on one backend, their customers at once, while agents, shared
    workers, the gateway and Redis are killed: each machine's three records reconcile, no
    order of one machine appears in the other's sales, journal or operator queue, and the
    report names each machine and replays with --fleet."""
    need_redis_server()
    out = io.StringIO()
    report = soak(Config(purchases=12, seed=20261130, fault_every_s=1.5, fleet=2), tmp_path, out)
    text = out.getvalue()
    assert report.violations == [], text
    assert sum(report.behaviours.values()) == 12, text
    assert sum(v for k, v in report.faults.items() if k != "vend_failures") > 0, text
    assert "chaos-1: 6 customers" in text and "chaos-2: 6 customers" in text, text
    assert "violations: 0" in text
    assert "--fleet 2" in text


@pytest.mark.timeout(300)
def test_a_fleet_of_two_on_a_redis_cluster_under_node_kills_breaks_no_money_rule(tmp_path):
    """The fleet soak on a backend on a Redis Cluster of its own (--cluster), faults every
    second: masters and replicas killed with kill -9 and restarted (a failover each time a
    master goes) among the other faults: each machine's records reconcile, no isolation
    breach, the cluster is whole again at the end, and the replay line carries --cluster."""
    need_redis_server()
    need(find_cli(find_binary()) is not None, "no redis-cli on PATH (apt-get install redis-tools)")
    out = io.StringIO()
    # This seed's chaos kills a master about 2 s in (and later ones: node faults wait for the
    # cluster to be whole again).
    cfg = Config(purchases=12, seed=20261174, fault_every_s=1.0, fleet=2, cluster=True)
    report = soak(cfg, tmp_path, out)
    text = out.getvalue()
    assert report.violations == [], text
    assert sum(report.behaviours.values()) == 12, text
    assert report.faults["kill_master"] >= 1, text  # a failover happened
    assert "on a Redis Cluster" in text and "--fleet 2 --cluster" in text, text
