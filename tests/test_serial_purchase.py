"""The acceptance of DISPENSER=serial: `main.py up` (and, once, fleet mode's `main.py machine`)
driving tests/board_sim.py's simulated vending board on a pseudo-terminal, with a scripted
kiosk page and the sandbox's customer.

One machine: the board is sent VEND for the paid order only (one line, with the order's slot),
the drink is DISPENSED and the stock drops by one; a board answering DONE FAIL JAM ends the
order DISPENSE_FAILED with the refund at the sandbox and the slot's failure counted; a second
JAM (SLOT_FAIL_LIMIT=2) disables the slot: the drink shows sold out on the kiosk's menu, an
order for it is refused, the alert slot_disabled is raised; `main.py slot enable 1` puts it
back on sale. `main.py status` shows the board's firmware from its PING.

Fleet mode: the agent's serial driver gets the gateway's `vend` with the slot the backend's
DISPENSE worker chose, and the backend shows the agent's board firmware.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.harness import Launched, Page
from constants import keys
from constants.orders import OrderField
from constants.states import ErrorCode, Sale, State
from tests.board_sim import BoardSim
from tests.machine_helpers import eventually, launch, need_redis_server

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FIRMWARE = "drinkboard-sim 1.2.0"


@pytest.fixture
def board() -> Iterator[BoardSim]:
    sim = BoardSim(firmware=FIRMWARE)
    yield sim
    sim.close()


@pytest.fixture
def up(tmp_path: Path, board: BoardSim) -> Iterator[Launched]:
    machine = launch(
        tmp_path,
        DISPENSER="serial",
        DISPENSER_PORT=board.path,
        SLOT_FAIL_LIMIT="2",
        VEND_TIMEOUT_S="10",
    )
    yield machine
    assert machine.stop() == 0, machine.log()


@pytest.fixture
def kiosk(up: Launched) -> Iterator[Page]:
    k = Page(up.ws_url, connect=False)
    assert k.connect()["event"] == "IDLE"
    yield k
    k.close()


def menu_stock(kiosk: Page, drink: str = "cola") -> int:
    """Open the menu: the stock the kiosk shows for `drink`."""
    kiosk.send("SHOW_MENU")
    menu = kiosk.until("SHOW_MENU")
    return next(d["stock"] for d in menu["values"] if d["id"] == drink)


def order(kiosk: Page, drink: str = "cola") -> str:
    """From the menu, order `drink`: its order id once the QR is on screen."""
    kiosk.send("ORDER", id=drink, total=1)
    return kiosk.until("ORDER_CREATED")["values"]["order_id"]


def bought(up: Launched, kiosk: Page, result: str) -> str:
    """A cola ordered and paid, until its result screen `result` and IDLE after it."""
    assert menu_stock(kiosk) > 0
    order_id = order(kiosk)
    assert up.pay(order_id) == 200
    kiosk.until(result, timeout_s=30)
    kiosk.until("IDLE")
    return order_id


def slot_row(up: Launched, slot: int) -> dict:
    listing = up.main("slot", "--json")
    assert listing.returncode == 0, listing.stderr
    return next(r for r in json.loads(listing.stdout) if r["slot"] == slot)


def test_a_purchase_vends_from_the_board_and_jams_refund_then_disable_the_slot(
    up: Launched, kiosk: Page, board: BoardSim
):
    status = eventually(
        lambda: (
            (s := up.main("status", "--json")).returncode == 0 and json.loads(s.stdout)["dispenser"]
        ),
        what="the dispenser's status",
    )
    assert (status["driver"], status["firmware"]) == ("serial", FIRMWARE)
    assert status["last_seen"] is not None
    assert f"firmware {FIRMWARE}" in up.main("status").stdout

    # A good vend: VEND only once paid, one line, from cola's slot (1).
    stock = up.broker.stock()["cola"]
    assert menu_stock(kiosk) == stock
    order_id = order(kiosk)
    assert board.vends_received() == []  # ordered, not paid: nothing reaches the board
    assert up.pay(order_id) == 200
    kiosk.until("DISPENSED", timeout_s=30)
    assert board.vends_received() == [f"VEND {order_id} 1"]
    assert board.moved == [(order_id, 1)]
    assert up.broker.stock()["cola"] == stock - 1
    assert up.broker.order(order_id).get(OrderField.SLOT) == "1"
    kiosk.until("IDLE")

    # A JAM: the order fails, is refunded at the sandbox, and counts against slot 1.
    board.mode, board.fail_reason = "fail", "JAM"
    jammed = bought(up, kiosk, "DISPENSE_FAILED")
    assert board.vends_received()[-1] == f"VEND {jammed} 1"
    assert [t["transaction_status"] for t in up.ledger_of(jammed)] == ["refund"]
    kinds = [s["kind"] for s in up.broker.sales() if s["order_id"] == jammed]
    assert kinds[-2:] == [Sale.DISPENSE_FAILED, Sale.REFUNDED]
    assert up.broker.stock()["cola"] == stock - 1
    row = slot_row(up, 1)
    assert (row["status"], row["fails_in_a_row"], row["last_reason"]) == ("ok", 1, "JAM")

    # A second JAM (SLOT_FAIL_LIMIT=2): slot 1 is disabled, cola sold out, the alert raised.
    second = bought(up, kiosk, "DISPENSE_FAILED")
    assert [t["transaction_status"] for t in up.ledger_of(second)] == ["refund"]
    assert slot_row(up, 1)["status"] == "disabled"
    assert menu_stock(kiosk) == 0
    assert up.broker.stock()["cola"] == stock - 1  # the count is not what sold it out
    kiosk.send("ORDER", id="cola", total=1)
    refused = kiosk.until("ERROR")
    assert refused["values"]["code"] == ErrorCode.SOLD_OUT
    alerts = eventually(
        lambda: [
            a
            for a in json.loads(up.main("alerts", "--json").stdout)
            if a.get("kind") == "slot_disabled"
        ],
        what="the slot_disabled alert",
    )
    assert alerts[0]["subject"] == "1"
    sent = len(board.vends_received())

    # `main.py slot enable 1`: audited, cola on sale again.
    enabled = up.main("slot", "enable", "1", "--json")
    assert enabled.returncode == 0, enabled.stderr
    assert json.loads(enabled.stdout)["enabled"] is True
    assert slot_row(up, 1)["status"] == "ok"
    audit = json.loads(up.main("audit", "--json").stdout)
    assert audit[0]["action"] == "enable_slot" and audit[0]["target"] == "1"
    menu = kiosk.until("SHOW_MENU")  # the open menu, sent again with cola on sale
    assert next(d["stock"] for d in menu["values"] if d["id"] == "cola") == stock - 1
    assert len(board.vends_received()) == sent  # nothing was vended meanwhile
    assert up.broker.snapshot().state == State.SHOW_MENU


def test_fleet_mode_sends_the_vend_to_the_agents_board_with_the_slot(
    tmp_path: Path, board: BoardSim
):
    """`main.py backend` + `main.py machine` with DISPENSER=serial on the pty: the paid order
    reaches the board as one VEND with the slot the backend chose, and is DISPENSED; the
    backend keeps the agent's board firmware from its hello."""
    from bench.fleet_harness import Agent, Backend

    need_redis_server()
    backend = Backend(tmp_path / "backend")
    agent = None
    page = None
    try:
        token = backend.register("vm-s")
        agent = Agent(
            tmp_path / "vm-s",
            "vm-s",
            token,
            backend.url,
            DISPENSER="serial",
            DISPENSER_PORT=board.path,
        )
        broker = backend.broker("vm-s")
        dispenser_key = keys.key(keys.DISPENSER, "vm-s")
        seen = eventually(lambda: backend.redis.hgetall(dispenser_key), what="the hello")
        assert (seen["driver"], seen["firmware"]) == ("serial", FIRMWARE)
        page = Page(agent.ws_url, connect=False)
        page.connect()
        if page.frames[-1]["event"] != "IDLE":
            page.until("IDLE")
        page.send("SHOW_MENU")
        page.until("SHOW_MENU")
        order_id = order(page)
        assert board.vends_received() == []
        assert backend.pay(order_id) == 200
        page.until("DISPENSED", timeout_s=30)
        assert board.vends_received() == [f"VEND {order_id} 1"]
        assert broker.order(order_id).get(OrderField.SLOT) == "1"
        record = json.loads(backend.redis.hget(keys.key(keys.VEND, "vm-s"), order_id))
        assert record["result"] == "vended"
    finally:
        if page is not None:
            page.close()
        if agent is not None:
            agent.stop()
        assert backend.stop() == 0, backend.log()
