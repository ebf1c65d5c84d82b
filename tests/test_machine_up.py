"""The whole machine started by `python main.py up`: real Redis with AOF, the sandbox, the
websocket server and the workers as separate processes, driven by a scripted kiosk over
the websocket protocol (websocket-client) and paid through the sandbox's HTTP API.
"""

from __future__ import annotations

import json

import pytest

from bench.harness import Page
from constants.orders import OrderField
from constants.states import Sale, State
from tests.machine_helpers import eventually, launch

pytestmark = pytest.mark.integration


@pytest.fixture
def up(tmp_path):
    machine = launch(tmp_path)
    yield machine
    assert machine.stop() == 0, machine.log()


@pytest.fixture
def kiosk(up):
    k = Page(up.ws_url, connect=False)
    assert k.connect()["event"] == "IDLE"
    yield k
    k.close()


def buy(kiosk: Page, drink: str = "cola") -> dict:
    kiosk.send("SHOW_MENU")
    menu = kiosk.until("SHOW_MENU")
    assert any(d["id"] == drink for d in menu["values"])
    kiosk.send("ORDER", id=drink, total=1)
    return kiosk.until("ORDER_CREATED")


def test_scripted_kiosk_buys_a_cola_through_main_py_up(up, kiosk):
    stock = up.broker.stock()["cola"]
    created = buy(kiosk)
    order_id = created["values"]["order_id"]
    assert created["values"]["qr_string"]
    up.pay(order_id)
    for event in ("PAYMENT_SUCCESS", "DISPENSING", "DISPENSED", "IDLE"):
        kiosk.until(event)
    kinds = [s["kind"] for s in up.broker.sales() if s["order_id"] == order_id]
    assert kinds == [Sale.ORDERED, Sale.CHARGED, Sale.PAID, Sale.DISPENSED]
    assert up.broker.stock()["cola"] == stock - 1
    status = up.main("status", "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["stock"]["cola"] == stock - 1


def test_a_second_up_on_the_same_var_dir_refuses_to_start(up):
    second = up.main("up")
    assert second.returncode == 1
    assert "another `main.py up`" in second.stderr


def test_unknown_and_sold_out_drinks_get_error_and_change_nothing(up, kiosk):
    assert up.main("stock", "lemon", "0").returncode == 0
    kiosk.send("SHOW_MENU")
    menu = kiosk.until("SHOW_MENU")
    assert {d["id"]: d["stock"] for d in menu["values"]}["lemon"] == 0
    before = up.broker.snapshot()
    for drink, code in (("lemon", "sold_out"), ("nope", "unknown_drink")):
        kiosk.send("ORDER", id=drink, total=1)
        error = kiosk.until("ERROR")
        assert error["values"]["code"] == code
    assert up.broker.snapshot() == before


def test_malformed_frames_and_a_forged_payment_success_change_nothing(up, kiosk):
    kiosk.send("SHOW_MENU")
    kiosk.until("SHOW_MENU")
    before = up.broker.snapshot()
    for raw in (
        "not json",
        "[]",
        '{"event": "PAYMENT_SUCCESS", "values": {}}',
        '{"event": "ORDER", "values": {"id": "cola", "total": 2}}',
        '{"event": "ORDER", "values": {"id": 5, "total": 1}}',
    ):
        kiosk.send_raw(raw)
        assert kiosk.until("ERROR")["event"] == "ERROR"
    assert up.broker.snapshot() == before
    assert up.broker.sales() == []


def test_cancel_on_the_qr_screen_cancels_the_midtrans_transaction(up, kiosk):
    order_id = buy(kiosk)["values"]["order_id"]
    kiosk.send("CANCEL")
    failed = kiosk.until("PAYMENT_FAILED")
    assert failed["values"]["reason"] == "cancelled"
    assert up.ledger_of(order_id)[0]["transaction_status"] == "cancel"
    kiosk.until("IDLE")


@pytest.mark.slow
@pytest.mark.parametrize("worker", ["order", "order_created"])
def test_kill_9_of_a_payment_worker_mid_step_still_completes_the_purchase_once(up, kiosk, worker):
    if worker == "order":
        up.faults(LATENCY_MS=1500)  # the charge is in flight when the worker dies
        kiosk.send("SHOW_MENU")
        kiosk.until("SHOW_MENU")
        kiosk.send("ORDER", id="cola", total=1)
        order_id = kiosk.until("MENU_CLICKED")["values"]["order_id"]
        # CHARGE_SENT is written just before the charge goes out, which the sandbox holds.
        eventually(
            lambda: up.broker.order(order_id).flag(OrderField.CHARGE_SENT),
            10,
            "the charge to be sent",
            interval_s=0.02,
        )
        up.wait_restarted(worker, up.kill9(worker))
        order_id = kiosk.until("ORDER_CREATED", timeout_s=30)["values"]["order_id"]
        up.faults(LATENCY_MS=0)
    else:
        order_id = buy(kiosk)["values"]["order_id"]
        up.wait_restarted(worker, up.kill9(worker))
    up.pay(order_id)
    kiosk.until("DISPENSED", timeout_s=30)
    assert len(up.ledger_of(order_id)) == 1
    kinds = [s["kind"] for s in up.broker.sales() if s["order_id"] == order_id]
    assert kinds.count(Sale.PAID) == 1 and kinds.count(Sale.DISPENSED) == 1
    vends = [json.loads(line) for line in (up.var / "vends.jsonl").read_text().splitlines()]
    assert [v["order_id"] for v in vends] == [order_id]


@pytest.mark.slow
def test_kill_9_of_the_dispense_worker_mid_vend_is_never_vended_twice(tmp_path):
    up = launch(tmp_path, DISPENSE_S="3")
    try:
        k = Page(up.ws_url)
        order_id = buy(k)["values"]["order_id"]
        up.pay(order_id)
        k.until("DISPENSING")
        up.wait_restarted("dispense", up.kill9("dispense"))
        failed = k.until("DISPENSE_FAILED", timeout_s=30)
        assert failed["values"]["refund"] == "vend_unknown"
        assert up.broker.operator_queue()[order_id]["kind"] == Sale.VEND_UNKNOWN
        assert not (up.var / "vends.jsonl").exists()
        assert up.ledger_of(order_id)[0]["transaction_status"] == "settlement"
        k.until("IDLE")
        assert up.broker.snapshot().state == State.IDLE
        k.close()
    finally:
        assert up.stop() == 0


def test_up_refuses_production_payments_with_the_simulated_dispenser(tmp_path):
    """`main.py up` with MIDTRANS_IS_PRODUCTION=true and DISPENSER=simulated starts nothing:
    it would take real money for drinks that never drop. Exit 2, the two settings named."""
    import subprocess
    import sys

    from tests.machine_helpers import ROOT, child_env

    env = child_env(
        VAR_DIR=str(tmp_path / "var"),
        MIDTRANS_IS_PRODUCTION="true",
        MIDTRANS_SERVER_KEY="Mid-server-real-key",
        DISPENSER="simulated",
    )
    done = subprocess.run(
        [sys.executable, str(ROOT / "main.py"), "up"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert "MIDTRANS_IS_PRODUCTION=true with DISPENSER=simulated" in done.stderr
    assert not (tmp_path / "var" / "redis").exists()  # no Redis started, nothing at all
