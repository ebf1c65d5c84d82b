"""The console in fleet mode (`main.py --service OPERATOR --fleet`): the machines of the
registry, each machine's pages, and operator changes that wake the shared workers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from constants.states import State
from cores.accounts import Accounts
from cores.broker import Broker
from cores.config import Settings
from cores.fleet import Fleet
from cores.work import shard_of, work_key
from services.operator_service import FleetMachines, create_app
from tests.console_helpers import OPERATOR, PASSWORD, TestClient, log_in, post
from tests.machine_helpers import T0

pytestmark = pytest.mark.integration


@pytest.fixture
def fleet_client(
    real_redis: redis.Redis, settings: Settings, menu: list[dict]
) -> Iterator[TestClient]:
    """The fleet console with two registered machines (vm-1 seen by the gateway, vm-7 not)."""
    registry = Fleet(real_redis)
    for machine_id in ("vm-1", "vm-7"):
        registry.add(machine_id, "cli:test")
        Broker(real_redis, machine_id).ensure_ready(menu)
    registry.seen("vm-1", "1.0.0", T0)
    Accounts(real_redis).add(OPERATOR, PASSWORD)
    app = create_app(settings, Broker(real_redis, "vm-1"), fleet_machines=FleetMachines(real_redis))
    with TestClient(app, base_url="http://127.0.0.1:3336") as c:
        yield c


def test_the_machine_list_is_the_registry_with_when_each_agent_was_last_seen(fleet_client):
    """Every registered machine is listed (a machine added later too), with its agent's last
    contact, 'never' for one whose agent has not connected yet."""
    log_in(fleet_client)
    page = fleet_client.get("/machines").text
    assert 'data-testid="machine-vm-1"' in page and 'data-testid="machine-vm-7"' in page
    assert "Agent last seen" in page and "never" in page


def test_a_machine_outside_the_registry_has_no_pages(fleet_client):
    """/machines/ID/ of an unregistered machine is 404, not a page over empty keys."""
    log_in(fleet_client)
    assert fleet_client.get("/machines/vm-9/").status_code == 404
    assert fleet_client.get("/machines/vm-7/").status_code == 200


def test_maintenance_changes_only_that_machine_and_wakes_its_shared_workers(
    fleet_client, real_redis
):
    """Maintenance on vm-7 from the console puts vm-7 alone out of service, and leaves a hint
    on vm-7's work shard so that the shared workers and the gateway see it at once."""
    token = log_in(fleet_client)
    shard = work_key(shard_of("vm-7"))
    before = real_redis.xlen(shard)
    answer = post(fleet_client, "/machines/vm-7/maintenance", token, mode="on")
    assert answer.status_code == 303
    assert Broker(real_redis, "vm-7").snapshot().state == State.OUT_OF_SERVICE
    assert Broker(real_redis, "vm-1").snapshot().state == State.IDLE
    hints = real_redis.xrange(shard)[before:]
    assert [fields["m"] for _, fields in hints] == ["vm-7"]
