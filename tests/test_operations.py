"""The operator's writes (cores/operations.py) on fakeredis and on a private redis-server: each
change is audited, reaches a kiosk on the menu at once, and a refused one changes nothing."""

from __future__ import annotations

import json

import pytest

from constants.orders import OperatorKind, Resolution
from constants.states import ErrorCode, Sale, State
from cores.alert_store import AlertStore
from cores.alerts import Alert, AlertKind, Changes
from cores.broker import Broker, CommandRefused
from cores.console_errors import ActionRefused, InvalidInput, NotFound
from cores.operations import Operations
from tests.machine_helpers import machine_state
from tests.test_broker import dump

DRINKS = [
    {"id": "cola", "name": "Cola", "icon": "assets/cola.svg", "price": 7000, "stock": 5},
    {"id": "tea", "name": "Es Teh", "icon": "assets/tea.svg", "price": 5000, "stock": 0},
]
ME = "cli:ana"


@pytest.fixture(params=["fake", pytest.param("real", marks=pytest.mark.integration)])
def client(request):
    return request.getfixturevalue(f"{request.param}_redis")


@pytest.fixture
def ops(client, clock):
    broker = Broker(client, "vm-1", clock=clock)
    broker.ensure_ready(DRINKS)
    return Operations(broker)


def menu_frame(ops: Operations) -> dict:
    return {d["id"]: d for d in ops.broker.snapshot().frame["values"]}


def test_a_price_change_is_audited_and_reaches_a_kiosk_on_the_menu_at_once(ops):
    ops.broker.show_menu()
    ops.set_price("cola", "7500", ME)
    assert menu_frame(ops)["cola"]["price"] == 7500
    assert ops.broker.snapshot().state is State.SHOW_MENU
    [entry] = ops.audit()
    assert (entry["actor"], entry["action"], entry["target"]) == (ME, "set_price", "cola")
    assert (entry["before"], entry["after"]) == ({"price": 7000}, {"price": 7500})


def test_a_change_on_the_attract_screen_sends_no_frame(ops):
    events = ops.redis.xlen(ops.broker.events_key)
    ops.set_stock("cola", 9, ME)
    assert ops.redis.xlen(ops.broker.events_key) == events
    assert ops.broker.stock()["cola"] == 9


def test_a_disabled_drink_leaves_the_kiosk_menu_and_cannot_be_ordered(ops):
    ops.broker.show_menu()
    ops.set_enabled("cola", "false", ME)
    assert "cola" not in menu_frame(ops)
    with pytest.raises(CommandRefused) as caught:
        ops.broker.place_order("cola")
    assert caught.value.code is ErrorCode.UNKNOWN_DRINK
    ops.set_enabled("cola", True, ME)
    assert ops.broker.place_order("cola")


def test_a_price_change_never_touches_an_order_already_placed(ops):
    ops.broker.show_menu()
    first = ops.broker.place_order("cola")
    before = machine_state(ops.broker)
    ops.set_price("cola", 9000, ME)
    after = machine_state(ops.broker)
    assert after["order"] == before["order"] and after["state"] == before["state"]
    assert ops.broker.order(first).amount == 7000


def test_refill_fills_one_slot_or_all_to_capacity(ops):
    ops.put_drink({"id": "tea", "capacity": 24}, ME)
    assert ops.refill("tea", ME) == {"tea": 24}
    assert ops.refill(None, ME) == {"cola": 10, "tea": 24}
    assert ops.broker.stock() == {"cola": 10, "tea": 24}


def test_a_new_drink_is_added_with_its_stock_and_removed_with_it(ops):
    drink = ops.put_drink(
        {"id": "juice", "name": "Jus", "name_en": "Juice", "price": 9000, "stock": 4}, ME
    )
    assert (drink.slot, ops.broker.stock()["juice"]) == (3, 4)
    ops.remove_drink("juice", ME)
    assert "juice" not in ops.broker.stock() and "juice" not in [d.id for d in ops.drinks()]
    assert [e["action"] for e in ops.audit()] == ["remove_drink", "put_drink"]


@pytest.mark.parametrize(
    "action",
    [
        lambda ops: ops.set_price("cola", 0, ME),
        lambda ops: ops.set_price("cola", "7.5", ME),
        lambda ops: ops.set_price("juice", 100, ME),
        lambda ops: ops.set_stock("cola", -1, ME),
        lambda ops: ops.set_stock("cola", 11, ME),
        lambda ops: ops.set_stock("nope", 1, ME),
        lambda ops: ops.put_drink({"id": "juice", "name": "x" * 41, "price": 1}, ME),
        lambda ops: ops.put_drink({"id": "juice", "name": "Jus", "price": 1, "slot": 1}, ME),
        lambda ops: ops.put_drink({"id": "juice", "name": "Jus", "price": 1, "slot": 61}, ME),
        lambda ops: ops.put_drink({"id": "cola", "capacity": 3}, ME),
        lambda ops: ops.refill("nope", ME),
        lambda ops: ops.remove_drink("nope", ME),
        lambda ops: ops.set_price("cola", 7500, ""),
        lambda ops: ops.import_menu([{"id": "cola", "name": "Cola", "price": 1, "stock": 99}], ME),
    ],
)
def test_every_refused_input_changes_nothing(ops, client, action):
    ops.broker.show_menu()
    before = dump(client)
    with pytest.raises(InvalidInput):
        action(ops)
    assert dump(client) == before


def test_menu_import_shows_then_applies_the_changes(ops):
    items = [
        {"id": "cola", "name": "Cola", "icon": "assets/cola.svg", "price": 8000, "stock": 7},
        {"id": "juice", "name": "Jus", "price": 9000},
    ]
    preview = ops.preview_import(items)
    assert "change cola price: Rp 7.000 -> Rp 8.000" in preview
    assert ops.audit() == []
    assert ops.import_menu(items, ME) == preview
    assert [d.id for d in ops.drinks()] == ["cola", "juice"]
    assert ops.broker.stock() == {"cola": 7, "juice": 0}
    assert ops.preview_import(items) == []


def test_an_old_menu_without_slots_gets_them_stored(client, clock):
    client.hset(
        "vm:{vm-1}:menu", "cola", json.dumps({"id": "cola", "name": "Cola", "icon": "", "price": 1})
    )
    broker = Broker(client, "vm-1", clock=clock)
    broker.ensure_ready([])
    assert json.loads(client.hget("vm:{vm-1}:menu", "cola"))["slot"] == 1


def queued(ops: Operations, order_id: str, kind: OperatorKind) -> None:
    ops.broker.flag_for_operator(order_id, kind, amount=7000, drink="cola", detail="test")


def test_mark_vended_closes_the_entry_with_a_sale_an_audit_and_the_unit_taken(ops):
    queued(ops, "o-1", OperatorKind.VEND_UNKNOWN)
    ops.close_entry("o-1", Resolution.MARK_VENDED, ME)
    assert ops.queue() == []
    sale = ops.broker.sales()[-1]
    assert (sale["kind"], sale["resolved_by"], sale["amount"]) == (Sale.DISPENSED, ME, "7000")
    assert ops.broker.stock()["cola"] == 4
    assert ops.audit()[0]["action"] == "mark_vended"


def test_mark_vended_with_the_count_at_zero_leaves_it_at_zero(ops):
    ops.set_stock("cola", 0, ME)
    queued(ops, "o-1", OperatorKind.VEND_UNKNOWN)
    ops.close_entry("o-1", Resolution.MARK_VENDED, ME)
    assert ops.queue() == []
    assert ops.broker.stock()["cola"] == 0


def test_mark_refunded_needs_a_note_and_a_wrong_action_is_refused_changing_nothing(ops, client):
    queued(ops, "o-1", OperatorKind.REFUND_OWED)
    before = dump(client)
    with pytest.raises(ActionRefused, match="note"):
        ops.close_entry("o-1", Resolution.MARK_REFUNDED, ME, "")
    with pytest.raises(ActionRefused, match="does not resolve"):
        ops.close_entry("o-1", Resolution.MARK_VENDED, ME)
    with pytest.raises(NotFound):
        ops.close_entry("o-2", Resolution.MARK_REFUNDED, ME, "cash")
    assert dump(client) == before
    ops.close_entry("o-1", Resolution.MARK_REFUNDED, ME, "cash back to the customer")
    sale = ops.broker.sales()[-1]
    assert (sale["kind"], sale["note"]) == (Sale.REFUNDED, "cash back to the customer")


def test_a_stock_row_sets_units_and_limits_in_one_audited_write(ops):
    ops.broker.show_menu()
    events = ops.redis.xlen(ops.broker.events_key)
    drink = ops.set_stock_and_limits("cola", "3", "4", "2", ME)
    assert (ops.broker.stock()["cola"], drink.capacity, drink.low_stock) == (3, 4, 2)
    assert ops.redis.xlen(ops.broker.events_key) == events + 1  # one menu frame, not three
    assert menu_frame(ops)["cola"]["stock"] == 3
    [entry] = ops.audit()
    assert (entry["action"], entry["target"]) == ("set_stock_and_limits", "cola")
    assert entry["before"] == {"stock": 5, "capacity": 10, "low_stock": 2}
    assert entry["after"] == {"stock": 3, "capacity": 4, "low_stock": 2}


def test_a_stock_row_leaves_a_limit_given_as_none_as_it_was(ops):
    drink = ops.set_stock_and_limits("cola", 8, None, None, ME)
    assert (ops.broker.stock()["cola"], drink.capacity, drink.low_stock) == (8, 10, 2)


@pytest.mark.parametrize(
    ("units", "capacity", "low_stock"),
    [
        ("6", "5", None),  # units over the new capacity
        ("3", "4", "5"),  # a threshold over the capacity
        ("3", "4", "x"),  # good units and capacity, a bad threshold
        ("-1", "12", "4"),  # good limits, bad units
        ("3", "0", None),
    ],
)
def test_a_stock_row_with_one_refused_part_changes_nothing(ops, client, units, capacity, low_stock):
    ops.broker.show_menu()
    before = dump(client)
    with pytest.raises(InvalidInput):
        ops.set_stock_and_limits("cola", units, capacity, low_stock, ME)
    with pytest.raises(NotFound):
        ops.set_stock_and_limits("juice", "1", "10", None, ME)
    assert dump(client) == before


def raise_alert(ops: Operations, kind: AlertKind, subject: str) -> str:
    alert = Alert(kind, subject, "2 left", ops.broker.clock())
    AlertStore(ops.broker).apply(Changes(raised=(alert,)))
    return alert.id


def test_acknowledging_an_alert_closes_it_and_audits_who_did_it(ops):
    alert_id = raise_alert(ops, AlertKind.LOW_STOCK, "cola")
    ops.acknowledge_alert(alert_id, ME)
    assert AlertStore(ops.broker).open_alerts() == []
    [entry] = ops.audit()
    assert (entry["actor"], entry["action"], entry["target"]) == (ME, "acknowledge_alert", alert_id)
    assert entry["before"]["kind"] == "low_stock" and entry["before"]["subject"] == "cola"
    assert entry["after"] == {"open": False}
    assert AlertStore(ops.broker).recent()[-1]["state"] == "cleared"


def test_acknowledging_an_alert_that_is_not_open_is_refused_and_changes_nothing(ops, client):
    done = raise_alert(ops, AlertKind.LOW_STOCK, "cola")
    ops.acknowledge_alert(done, ME)
    still_open = raise_alert(ops, AlertKind.SOLD_OUT, "tea")
    before = dump(client)
    for alert_id in (done, "low_stock:nope"):
        with pytest.raises(NotFound):
            ops.acknowledge_alert(alert_id, ME)
    with pytest.raises(InvalidInput):
        ops.acknowledge_alert(still_open, "")  # nobody named
    assert dump(client) == before
