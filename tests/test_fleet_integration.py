"""Fleet mode for real: `main.py backend` (gateway, shared workers, notification receiver,
console, sandbox) and `main.py machine` agents as processes, each agent with its own journal
and kiosk port; pages are scripted websocket clients of the agents, as the kiosk page is, and
customers pay through the sandbox's simulator."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.sync.client import connect

from bench.fleet_harness import Agent, Backend
from bench.harness import Page
from constants.orders import OperatorKind
from constants.states import Sale, State
from cores import agent_protocol as wire
from cores.broker import Broker
from cores.fleet import Fleet
from tests.machine_helpers import eventually, need_redis_server

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    """One backend for the tests that do not stop it (each uses machines of its own)."""
    need_redis_server()
    b = Backend(tmp_path_factory.mktemp("backend"))
    yield b
    assert b.stop() == 0, b.log()


class Fleetful:
    """Agents started by a test and pages opened on them, stopped and closed at its end."""

    def __init__(self, backend: Backend, folder: Path) -> None:
        self.backend = backend
        self.folder = folder
        self.agents: list[Agent] = []
        self.pages: list[Page] = []

    def page(self, agent: Agent, first: str = "IDLE") -> Page:
        """A page on the agent's kiosk, once the agent shows the screen `first`."""
        page = Page(agent.ws_url, connect=False)
        self.pages.append(page)
        page.connect()
        if page.frames[-1]["event"] != first:
            page.until(first)
        return page

    def machine(self, machine_id: str, token: str | None = None, **env: str) -> Agent:
        token = token if token is not None else self.backend.register(machine_id)
        agent = Agent(self.folder / machine_id, machine_id, token, self.backend.url, **env)
        self.agents.append(agent)
        return agent

    def stop(self) -> None:
        for page in self.pages:
            page.close()
        for agent in self.agents:
            agent.stop()


@pytest.fixture
def fleet(backend: Backend, tmp_path: Path) -> Iterator[Fleetful]:
    f = Fleetful(backend, tmp_path)
    yield f
    f.stop()


def qr_for(page: Page, drink: str = "cola") -> str:
    """Tap, pick `drink`: the order id, once its QR is on screen."""
    page.send("SHOW_MENU")
    page.until("SHOW_MENU")
    page.send("ORDER", id=drink, total=1)
    return page.until("ORDER_CREATED")["values"]["order_id"]


def buy(page: Page, backend: Backend, drink: str = "cola") -> str:
    """Tap, pick `drink`, pay it: the order id, once the machine shows DISPENSED."""
    order_id = qr_for(page, drink)
    assert backend.pay(order_id) == 200
    page.until("DISPENSED", timeout_s=30)
    return order_id


def sales_of(broker: Broker, order_id: str) -> list[str]:
    return [s["kind"] for s in broker.sales() if s["order_id"] == order_id]


def test_machines_buy_at_once_each_through_its_own_agent(backend, fleet):
    """Three machines buy at the same time through their agents: each order is charged,
    paid, vended by its own agent (journal) and recorded on its own machine only, with one
    unit off that machine's stock."""
    agents = [fleet.machine(f"buy-{n}") for n in range(3)]
    pages = [fleet.page(a) for a in agents]
    orders: dict[str, str] = {}
    errors: list[BaseException] = []

    def one(agent: Agent, page: Page) -> None:
        try:
            orders[agent.machine_id] = buy(page, backend)
        except BaseException as exc:  # reported below, with the machine
            errors.append(exc)

    before = {a.machine_id: backend.broker(a.machine_id).stock()["cola"] for a in agents}
    threads = [
        threading.Thread(target=one, args=(a, p)) for a, p in zip(agents, pages, strict=True)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    for agent in agents:
        machine = backend.broker(agent.machine_id)
        order_id = orders[agent.machine_id]
        assert order_id.startswith(agent.machine_id + "-")
        assert sales_of(machine, order_id) == [
            Sale.ORDERED,
            Sale.CHARGED,
            Sale.PAID,
            Sale.DISPENSED,
        ]
        assert machine.stock()["cola"] == before[agent.machine_id] - 1
        journal = [e for e in agent.journal() if e["order_id"] == order_id]
        assert [e["result"] for e in journal] == ["started", "vended"]
        others = [o for m, o in orders.items() if m != agent.machine_id]
        assert not any(e["order_id"] in others for e in agent.journal())


def test_a_wrong_or_revoked_token_is_refused_and_the_page_shows_the_machine_offline(backend, fleet):
    """An agent with a wrong token never gets a screen from the backend: its page shows the
    machine offline and a tap is refused locally. Revoking a connected machine closes its
    live connection: its page goes offline within 5 s, and nothing of the machine changes."""
    backend.register("tok-1")
    wrong = fleet.machine("tok-1", token="not-the-token")
    page = fleet.page(wrong, first="OUT_OF_SERVICE")
    page.send("SHOW_MENU")
    assert page.until("ERROR")["values"]["code"] == "unavailable"
    assert backend.broker("tok-1").snapshot().state == State.IDLE

    good = fleet.machine("tok-2")
    live = fleet.page(good)
    Fleet(backend.redis).revoke("tok-2", "cli:test")
    revoked_at = time.monotonic()
    live.until("OUT_OF_SERVICE", timeout_s=5)
    assert time.monotonic() - revoked_at < 5
    live.send("SHOW_MENU")
    assert live.until("ERROR")["values"]["code"] == "unavailable"
    assert backend.broker("tok-2").snapshot().state == State.IDLE


def test_an_agent_killed_mid_vend_leaves_the_order_to_the_operator(backend, fleet):
    """kill -9 of the agent while its motor turns (journal: started, no result): the restarted
    agent answers the backend's repeated vend with `unknown` from its journal, so the order
    goes to the operator as a vend outcome unknown: not vended again, not refunded."""
    agent = fleet.machine("slow-1", DISPENSE_S="5")
    machine = backend.broker("slow-1")
    page = fleet.page(agent)
    order_id = qr_for(page)
    assert backend.pay(order_id) == 200
    eventually(lambda: any(e["order_id"] == order_id for e in agent.journal()), timeout_s=20)
    agent.kill9()
    agent.restart()
    eventually(lambda: machine.snapshot().state == State.DISPENSE_FAILED or None, timeout_s=30)
    entry = machine.operator_queue()[order_id]
    assert entry["kind"] == OperatorKind.VEND_UNKNOWN
    assert [e["result"] for e in agent.journal() if e["order_id"] == order_id] == ["started"]
    assert Sale.REFUNDED not in sales_of(machine, order_id)
    assert Sale.DISPENSED not in sales_of(machine, order_id)


def test_a_notification_reaches_the_machine_of_its_order_only(backend, fleet):
    """The sandbox's notification for a payment reaches the backend's receiver, which routes
    it by order id: the recheck lands on that machine's keys, none on another machine's."""
    agents = [fleet.machine("note-1"), fleet.machine("note-2")]
    page = fleet.page(agents[0])
    order_id = buy(page, backend)

    def commands(machine_id: str) -> list[dict]:
        return [f for _, f in backend.redis.xrange(f"vm:{{{machine_id}}}:commands")]

    eventually(lambda: any(c.get("order_id") == order_id for c in commands("note-1")), timeout_s=10)
    assert not any(c.get("order_id") == order_id for c in commands("note-2"))


def test_a_sale_in_flight_resumes_when_the_agents_link_comes_back(backend, fleet):
    """kill -9 of the backend's gateway while a QR is on screen (the supervisor restarts it,
    the agent reconnects with backoff): the customer pays meanwhile, and once the link is
    back the page is redrawn from the state and the sale ends as one vend, recorded once."""
    agent = fleet.machine("flight-1")
    page = fleet.page(agent)
    order_id = qr_for(page, "tea")
    assert backend.kill_child("gateway") is not None
    assert backend.pay(order_id) == 200
    page.until("DISPENSED", timeout_s=30)
    machine = backend.broker("flight-1")
    assert sales_of(machine, order_id) == [Sale.ORDERED, Sale.CHARGED, Sale.PAID, Sale.DISPENSED]
    assert [e["result"] for e in agent.journal() if e["order_id"] == order_id] == [
        "started",
        "vended",
    ]


def test_an_agent_sending_another_machines_ids_changes_nothing_of_that_machine(backend, fleet):
    """Machine A's own token on the real gateway, frames naming machine B everywhere (a
    vend_result of B's order, kiosk frames with B's ids in their values): B's state, order,
    stock and sales are as they were, and A's vend hash records nothing."""
    token_a = backend.register("iso-a")
    victim = fleet.machine("iso-b")
    order_b = qr_for(fleet.page(victim))
    b = backend.broker("iso-b")

    def of_b() -> dict:
        return {
            "state": b.snapshot(),
            "order": backend.redis.hgetall(b.order_key(order_b)),
            "stock": b.stock(),
            "sales": b.sales(),
            "vend": backend.redis.hgetall("vm:{iso-b}:vend"),
        }

    before = of_b()
    headers = {wire.MACHINE_HEADER: "iso-a", "Authorization": f"Bearer {token_a}"}
    with connect(backend.url, additional_headers=headers) as ws:
        ws.send(wire.encode(wire.Message(wire.Kind.HELLO, version="test")))
        ws.recv(timeout=10)  # A's own screen
        forged = [
            wire.Message(wire.Kind.VEND_RESULT, order_id=order_b, result="vended"),
            wire.Message(wire.Kind.VEND_RESULT, order_id=order_b, result="failed"),
        ]
        for values in ({"machine_id": "iso-b", "order_id": order_b}, {"id": "cola", "total": 1}):
            for event in ("CANCEL", "SHOW_MENU", "ORDER"):
                frame = json.dumps({"event": event, "values": values})
                forged.append(wire.Message(wire.Kind.PAGE, page=1, frame=frame))
        for message in forged:
            ws.send(wire.encode(message))
        ws.send(wire.encode(wire.Message(wire.Kind.PAGE, page=2, frame='{"event":"NOPE"}')))
        # The gateway works an agent's frames in order: once page 2's ERROR is back, every
        # forged frame before it has been worked.
        while wire.parse(ws.recv(timeout=10), wire.FROM_GATEWAY).page != 2:
            pass
    assert of_b() == before
    assert backend.redis.hgetall("vm:{iso-a}:vend") == {}


@pytest.fixture
def own_backend(tmp_path: Path) -> Iterator[Backend]:
    """A backend of the test's own, with two processes of each worker service."""
    need_redis_server()
    b = Backend(tmp_path / "backend", workers=2)
    yield b
    b.stop()


def test_a_worker_killed_mid_payment_is_taken_over_and_the_sale_completes(own_backend, tmp_path):
    """kill -9 of the first of two ORDER_CREATED processes while a QR is on screen: the shards
    it worked are taken over (by the other process, or its restarted self) and the payment is
    seen, vended and recorded once."""
    fleet = Fleetful(own_backend, tmp_path)
    try:
        agent = fleet.machine("take-1")
        page = fleet.page(agent)
        order_id = qr_for(page)
        assert own_backend.kill_child("order_created-1") is not None
        assert own_backend.pay(order_id) == 200
        page.until("DISPENSED", timeout_s=30)
        kinds = sales_of(own_backend.broker("take-1"), order_id)
        assert kinds == [Sale.ORDERED, Sale.CHARGED, Sale.PAID, Sale.DISPENSED]
    finally:
        fleet.stop()


def test_the_backend_restarted_while_agents_stay_up(own_backend, tmp_path):
    """The backend stops while an agent runs: the page shows the machine offline within 5 s
    and a tap is refused; when the backend is back the page is redrawn from the state and a
    purchase goes through."""
    fleet = Fleetful(own_backend, tmp_path)
    try:
        agent = fleet.machine("back-1")
        page = fleet.page(agent)
        own_backend.process.terminate()
        stopped_at = time.monotonic()
        page.until("OUT_OF_SERVICE", timeout_s=5)
        assert time.monotonic() - stopped_at < 5
        page.send("SHOW_MENU")
        assert page.until("ERROR")["values"]["code"] == "unavailable"
        own_backend.process.wait(30)
        own_backend.restart()
        page.until("IDLE", timeout_s=30)
        order_id = buy(page, own_backend)
        assert Sale.DISPENSED in sales_of(own_backend.broker("back-1"), order_id)
    finally:
        fleet.stop()
