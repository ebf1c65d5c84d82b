"""The machine's state in Redis (cores/broker.py), on fakeredis and on a private redis-server.

Every test runs three times through the `client` fixture: fakes drift, so each behaviour is
proved on the real server too (shared/STYLE.md, "Tests mirror the modules"), and on a Redis
Cluster, where the same code must run unchanged (fleet mode).
"""

from __future__ import annotations

import json
import re
import threading
import uuid

import pytest

from constants import keys
from constants.states import RESULT_STATES, ErrorCode, FailReason, Sale, State
from constants.tunables import ORDER_KEEP_S
from cores.broker import Broker, CommandRefused, Snapshot
from cores.machine import Effects, IllegalTransition, Transition
from tests.machine_helpers import T0, eventually

MACHINE = "vm-1"
DRINKS = [
    {"id": "cola", "name": "Cola", "icon": "assets/cola.svg", "price": 7000, "stock": 5},
    {"id": "tea", "name": "Iced Tea", "icon": "assets/tea.svg", "price": 5000, "stock": 0},
    {"id": "water", "name": "Water", "icon": "assets/water.svg", "price": 4000, "stock": 3},
]
#: midtrans.md: order_id at most 50 characters, letters, digits and `- _ ~ .`.
MIDTRANS_ORDER_ID = re.compile(r"^[A-Za-z0-9\-_~.]{1,50}$")


@pytest.fixture(
    params=[
        "fake",
        pytest.param("real", marks=pytest.mark.integration),
        pytest.param("cluster", marks=pytest.mark.integration),
    ]
)
def client(request):
    """fakeredis, one real Redis, and a real Redis Cluster (services/runtime.py's client)."""
    if request.param == "cluster":
        return request.getfixturevalue("cluster_client")
    return request.getfixturevalue(f"{request.param}_redis")


@pytest.fixture
def broker(client, clock):
    b = Broker(client, MACHINE, clock=clock)
    b.ensure_ready(DRINKS)
    return b


def dump(client) -> dict:
    """Every key and its content, to prove that a refused command changed nothing."""
    out = {}
    for name in sorted(client.keys("*")):
        kind = client.type(name)
        if kind == "hash":
            out[name] = client.hgetall(name)
        elif kind == "stream":
            out[name] = client.xrange(name)
        elif kind == "string":
            out[name] = client.get(name)
        else:
            raise AssertionError(f"unexpected key type {kind} for {name}")
    return out


def refused(call, *args, code: ErrorCode) -> CommandRefused:
    with pytest.raises(CommandRefused) as info:
        call(*args)
    assert info.value.code is code
    assert info.value.message
    return info.value


def events(broker: Broker) -> list[dict]:
    return [fields for _, fields in broker.redis.xrange(broker.events_key)]


def to_order_created(broker: Broker, drink: str = "cola") -> str:
    broker.show_menu()
    oid = broker.place_order(drink)
    assert broker.transition(
        Transition(
            State.ORDER_CREATED,
            (State.MENU_CLICKED,),
            oid,
            {"order_id": oid, "qr_string": "000201"},
        )
    )
    return oid


#: The legal way from ORDER_CREATED to each result screen (cores.machine.TRANSITIONS).
PATHS = {
    State.PAYMENT_FAILED: (State.PAYMENT_FAILED,),
    State.DISPENSED: (State.PAYMENT_SUCCESS, State.DISPENSING, State.DISPENSED),
    State.DISPENSE_FAILED: (State.PAYMENT_SUCCESS, State.DISPENSING, State.DISPENSE_FAILED),
}


def to_result(broker: Broker, state: State = State.PAYMENT_FAILED) -> str:
    oid = to_order_created(broker)
    frm = State.ORDER_CREATED
    for to in PATHS[state]:
        assert broker.transition(Transition(to, (frm,), oid, {"order_id": oid}))
        frm = to
    return oid


# --- start-up and reading --------------------------------------------------------------------


def test_ensure_ready_loads_menu_and_stock_and_starts_idle(broker, client):
    assert [d.id for d in broker.menu()] == ["water", "tea", "cola"]  # by price
    assert broker.stock() == {"cola": 5, "tea": 0, "water": 3}
    snap = broker.snapshot()
    assert snap.state is State.IDLE
    assert snap.order_id is None
    assert snap.version == 1
    assert snap.since == T0
    assert snap.frame == {"event": "IDLE", "values": {}}
    assert client.xlen(broker.events_key) == 1


def test_ensure_ready_a_second_time_with_other_data_changes_nothing(broker, client):
    before = dump(client)
    other = [
        {"id": "juice", "name": "Juice", "icon": "assets/juice.svg", "price": 9000, "stock": 9},
        {**DRINKS[0], "price": 1, "stock": 99},
    ]
    broker.ensure_ready(other)
    assert dump(client) == before
    assert broker.menu()[-1].price == 7000


def test_ensure_ready_after_a_restart_keeps_the_current_state(broker, client):
    oid = to_order_created(broker)
    before = dump(client)
    Broker(client, MACHINE).ensure_ready(DRINKS)
    assert dump(client) == before
    assert broker.snapshot().order_id == oid


def test_snapshot_returns_a_typed_snapshot_of_the_state_hash(broker):
    snap = broker.snapshot()
    assert isinstance(snap, Snapshot)
    assert isinstance(snap.version, int) and isinstance(snap.since, float)


def test_snapshot_of_an_empty_redis_is_idle_version_zero(client):
    snap = Broker(client, MACHINE).snapshot()
    assert (snap.state, snap.order_id, snap.version) == (State.IDLE, None, 0)


def test_keys_of_a_machine_share_its_hash_tag(broker, client):
    to_order_created(broker)
    assert client.keys("*")
    assert all("{vm-1}" in name for name in client.keys("*"))


def test_last_event_id_is_zero_when_empty_then_the_newest_entry(client):
    b = Broker(client, MACHINE)
    assert b.last_event_id() == "0-0"
    b.ensure_ready(DRINKS)
    assert b.last_event_id() == client.xrevrange(b.events_key, count=1)[0][0]


# --- kiosk SHOW_MENU -------------------------------------------------------------------------


def test_show_menu_from_idle_shows_drinks_with_stock(broker, client, clock):
    clock.now = T0 + 5
    broker.show_menu()
    snap = broker.snapshot()
    assert snap.state is State.SHOW_MENU
    assert snap.since == T0 + 5
    assert snap.frame == {
        "event": "SHOW_MENU",
        "values": [
            {**DRINK_FRAME["water"], "stock": 3},
            {**DRINK_FRAME["tea"], "stock": 0},
            {**DRINK_FRAME["cola"], "stock": 5},
        ],
    }


#: A drink as the kiosk's frames show it: the English name defaults to the name.
DRINK_FRAME = {
    d["id"]: {k: d[k] for k in ("id", "name", "icon", "price")} | {"name_en": d["name"]}
    for d in DRINKS
}


def test_show_menu_appends_one_event_whose_frame_equals_the_snapshot(broker, client):
    before = client.xlen(broker.events_key)
    broker.show_menu()
    assert client.xlen(broker.events_key) == before + 1
    entry = events(broker)[-1]
    snap = broker.snapshot()
    assert json.loads(entry["frame"]) == snap.frame
    assert entry["state"] == "SHOW_MENU"
    assert entry["order_id"] == ""
    assert int(entry["version"]) == snap.version


def test_show_menu_on_the_menu_re_sends_it_with_the_current_stock(broker, client):
    broker.show_menu()
    broker.set_stock("cola", 1)
    broker.show_menu()
    snap = broker.snapshot()
    assert snap.state is State.SHOW_MENU
    assert {d["id"]: d["stock"] for d in snap.frame["values"]}["cola"] == 1
    assert client.xlen(broker.events_key) == 3


@pytest.mark.parametrize("result", sorted(RESULT_STATES))
def test_show_menu_on_a_result_screen_dismisses_it_to_idle(broker, client, result):
    to_result(broker, result)
    broker.show_menu()
    snap = broker.snapshot()
    assert snap.state is State.IDLE
    assert snap.order_id is None
    assert snap.frame == {"event": "IDLE", "values": {}}


@pytest.mark.parametrize("busy", ["MENU_CLICKED", "ORDER_CREATED"])
def test_show_menu_during_an_order_is_refused_and_changes_nothing(broker, client, busy):
    if busy == "MENU_CLICKED":
        broker.show_menu()
        broker.place_order("cola")
    else:
        to_order_created(broker)
    before = dump(client)
    refused(broker.show_menu, code=ErrorCode.WRONG_STATE)
    assert dump(client) == before


# --- kiosk ORDER -----------------------------------------------------------------------------


def test_place_order_creates_the_order_and_shows_menu_clicked(broker, client, clock):
    broker.show_menu()
    clock.now = T0 + 7
    oid = broker.place_order("cola")

    raw = client.hgetall(broker.order_key(oid))
    assert raw["order_id"] == oid
    assert int(raw["amount"]) == 7000
    assert json.loads(raw["drink"]) == DRINK_FRAME["cola"]
    assert uuid.UUID(raw["idempotency_key"])
    assert float(raw["created_at"]) == T0 + 7
    assert 0 < client.ttl(broker.order_key(oid)) <= ORDER_KEEP_S

    order = broker.order(oid)
    assert order is not None and order.amount == 7000 and order.drink.id == "cola"
    assert broker.current_order().order_id == oid

    snap = broker.snapshot()
    assert snap.state is State.MENU_CLICKED
    assert snap.order_id == oid
    assert snap.frame == {
        "event": "MENU_CLICKED",
        "values": {
            "order_id": oid,
            "amount": 7000,
            "drink": DRINK_FRAME["cola"],
        },
    }
    entry = events(broker)[-1]
    assert entry["state"] == "MENU_CLICKED" and entry["order_id"] == oid
    assert json.loads(entry["frame"]) == snap.frame


def test_place_order_records_an_ordered_sale(broker):
    broker.show_menu()
    oid = broker.place_order("cola")
    sales = broker.sales()
    assert len(sales) == 1
    assert sales[0]["kind"] == Sale.ORDERED
    assert sales[0]["order_id"] == oid
    assert int(sales[0]["amount"]) == 7000
    assert sales[0]["drink_id"] == "cola"
    assert float(sales[0]["at"]) == T0


def test_place_order_does_not_take_the_unit_from_stock_yet(broker):
    broker.show_menu()
    broker.place_order("cola")
    assert broker.stock()["cola"] == 5


@pytest.mark.parametrize(
    ("drink", "quantity", "code"),
    [
        ("juice", 1, ErrorCode.UNKNOWN_DRINK),
        ("tea", 1, ErrorCode.SOLD_OUT),
        ("cola", 2, ErrorCode.BAD_VALUES),
        ("cola", 0, ErrorCode.BAD_VALUES),
    ],
)
def test_refused_order_on_the_menu_changes_nothing(broker, client, drink, quantity, code):
    broker.show_menu()
    before = dump(client)
    refused(broker.place_order, drink, quantity, code=code)
    assert dump(client) == before
    assert broker.snapshot().state is State.SHOW_MENU


@pytest.mark.parametrize("setup", ["idle", "order_created", "out_of_service"])
def test_order_outside_the_menu_is_refused_and_changes_nothing(broker, client, setup):
    if setup == "order_created":
        to_order_created(broker)
    elif setup == "out_of_service":
        broker.set_out_of_service(True)
    before = dump(client)
    refused(broker.place_order, "cola", code=ErrorCode.WRONG_STATE)
    assert dump(client) == before


def test_order_of_a_drink_whose_stock_was_set_to_zero_is_refused(broker):
    broker.show_menu()
    broker.set_stock("cola", 0)
    refused(broker.place_order, "cola", code=ErrorCode.SOLD_OUT)


def test_order_ids_are_unique_and_valid_for_midtrans(broker):
    ids = [broker.new_order_id() for _ in range(500)]
    for _ in range(3):
        to_result(broker)
        broker.show_menu()
    ids += [o["order_id"] for o in broker.sales() if o["kind"] == Sale.ORDERED]
    assert len(ids) == len(set(ids)) == 503
    for oid in ids:
        assert MIDTRANS_ORDER_ID.match(oid), oid
        assert oid.startswith("vm-1-")


def test_order_id_of_the_longest_machine_id_fits_midtrans(client):
    b = Broker(client, "a.b_c-" + "x" * 14)
    client.set(b.seq_key, 9_999_998)
    oid = b.new_order_id()
    assert MIDTRANS_ORDER_ID.match(oid), oid


# --- kiosk CANCEL ----------------------------------------------------------------------------


def test_cancel_on_the_menu_goes_back_to_idle(broker, client):
    broker.show_menu()
    broker.request_cancel()
    snap = broker.snapshot()
    assert snap.state is State.IDLE
    assert snap.frame == {"event": "IDLE", "values": {}}
    assert json.loads(events(broker)[-1]["frame"]) == snap.frame
    assert client.xlen(broker.commands_key) == 0


@pytest.mark.parametrize("state", ["MENU_CLICKED", "ORDER_CREATED"])
def test_cancel_with_an_order_flags_it_and_asks_the_workers(broker, client, state):
    if state == "MENU_CLICKED":
        broker.show_menu()
        oid = broker.place_order("cola")
    else:
        oid = to_order_created(broker)
    snap = broker.snapshot()
    events_before = client.xlen(broker.events_key)

    broker.request_cancel()

    assert broker.order(oid).flag("cancel_requested")
    commands = [f for _, f in client.xrange(broker.commands_key)]
    assert commands == [{"command": "CANCEL", "order_id": oid}]
    assert broker.snapshot() == snap  # the workers decide, after Midtrans (money rule 3)
    assert client.xlen(broker.events_key) == events_before


@pytest.mark.parametrize("setup", ["idle", "result", "out_of_service"])
def test_cancel_with_nothing_to_cancel_is_refused_and_changes_nothing(broker, client, setup):
    if setup == "result":
        to_result(broker)
    elif setup == "out_of_service":
        broker.set_out_of_service(True)
    before = dump(client)
    refused(broker.request_cancel, code=ErrorCode.WRONG_STATE)
    assert dump(client) == before


# --- transitions: compare-and-set ------------------------------------------------------------


def test_transition_from_a_state_the_machine_is_not_in_is_refused(broker, client):
    oid = to_order_created(broker)
    before = dump(client)
    assert not broker.transition(
        Transition(
            State.DISPENSED,
            (State.DISPENSING,),
            oid,
            {},
            Effects(sale={"kind": Sale.PAID}, order_fields={"x": 1}, stock_drink="cola"),
        )
    )
    assert dump(client) == before


def test_a_move_the_machine_does_not_have_is_a_bug_raised_and_changes_nothing(broker, client):
    oid = to_order_created(broker)
    before = dump(client)
    with pytest.raises(IllegalTransition, match="ORDER_CREATED -> DISPENSED"):
        broker.transition(Transition(State.DISPENSED, (State.ORDER_CREATED,), oid, {}))
    assert dump(client) == before


def test_an_effect_a_move_may_not_write_is_a_bug_raised_and_changes_nothing(broker, client):
    """Stock is taken only when a drink is dispensed, never when a payment succeeds."""
    oid = to_order_created(broker)
    before = dump(client)
    with pytest.raises(IllegalTransition, match="cannot write stock"):
        broker.transition(
            Transition(
                State.PAYMENT_SUCCESS, (State.ORDER_CREATED,), oid, {}, Effects(stock_drink="cola")
            )
        )
    assert dump(client) == before


def test_transition_for_another_order_is_refused(broker, client):
    to_order_created(broker)
    before = dump(client)
    assert not broker.transition(
        Transition(
            State.PAYMENT_SUCCESS,
            (State.ORDER_CREATED,),
            "vm-1-other",
            {},
            Effects(sale={"kind": Sale.PAID}, order_fields={"x": 1}),
        )
    )
    assert dump(client) == before


def test_transition_with_a_stale_version_is_refused(broker, client):
    oid = to_order_created(broker)
    version = broker.snapshot().version
    before = dump(client)
    assert not broker.transition(
        Transition(
            State.PAYMENT_SUCCESS, (State.ORDER_CREATED,), oid, {}, expect_version=version - 1
        )
    )
    assert dump(client) == before
    assert broker.transition(
        Transition(State.PAYMENT_SUCCESS, (State.ORDER_CREATED,), oid, {}, expect_version=version)
    )


def test_applied_transition_writes_everything_it_was_given(broker, client, clock):
    oid = to_order_created(broker)
    version = broker.snapshot().version
    sales_before = len(broker.sales())
    clock.now = T0 + 30
    values = {"order_id": oid, "amount": 7000}

    assert broker.transition(
        Transition(
            State.PAYMENT_FAILED,
            (State.MENU_CLICKED, State.ORDER_CREATED),
            oid,
            values,
            Effects(
                sale={"kind": Sale.VEND_UNKNOWN, "amount": 7000, "note": None},
                order_fields={"outcome": "x", "paid": True, "detail": {"a": 1}},
                operator={"kind": "vend_unknown", "amount": 7000},
                recheck_at=T0 + 90,
            ),
        )
    )

    snap = broker.snapshot()
    assert snap.state is State.PAYMENT_FAILED
    assert snap.order_id == oid
    assert snap.version == version + 1
    assert snap.since == T0 + 30
    assert snap.frame == {"event": "PAYMENT_FAILED", "values": values}

    entry = events(broker)[-1]
    assert entry == {
        "state": "PAYMENT_FAILED",
        "order_id": oid,
        "version": str(version + 1),
        "frame": json.dumps(snap.frame, separators=(",", ":")),
    }

    sales = broker.sales()
    assert len(sales) == sales_before + 1
    sale = sales[-1]
    assert sale["kind"] == Sale.VEND_UNKNOWN and sale["order_id"] == oid
    assert int(sale["amount"]) == 7000 and float(sale["at"]) == T0 + 30
    assert "note" not in sale

    order = broker.order(oid)
    assert order.get("outcome") == "x"
    assert order.flag("paid")
    assert json.loads(order.get("detail")) == {"a": 1}

    queue = broker.operator_queue()
    assert queue[oid] == {"kind": "vend_unknown", "amount": 7000, "order_id": oid, "at": T0 + 30}
    assert client.zscore(broker.recheck_key, oid) == T0 + 90


def test_a_dispensed_drink_takes_one_unit_of_its_stock_in_the_same_transition(broker):
    oid = to_order_created(broker)
    stock = broker.stock()["cola"]
    for frm, to in (
        (State.ORDER_CREATED, State.PAYMENT_SUCCESS),
        (State.PAYMENT_SUCCESS, State.DISPENSING),
    ):
        assert broker.transition(Transition(to, (frm,), oid, {}))
    assert broker.transition(
        Transition(State.DISPENSED, (State.DISPENSING,), oid, {}, Effects(stock_drink="cola"))
    )
    assert broker.stock()["cola"] == stock - 1


def test_a_drink_dispensed_after_the_operator_set_its_stock_to_zero_leaves_zero(broker):
    """The operator counted the slot empty while its last drink was being paid: the count
    stays at zero, never -1 (the sale itself is recorded as ever)."""
    oid = to_order_created(broker)
    for frm, to in (
        (State.ORDER_CREATED, State.PAYMENT_SUCCESS),
        (State.PAYMENT_SUCCESS, State.DISPENSING),
    ):
        assert broker.transition(Transition(to, (frm,), oid, {}))
    broker.set_stock("cola", 0)
    assert broker.transition(
        Transition(
            State.DISPENSED,
            (State.DISPENSING,),
            oid,
            {},
            Effects(sale={"kind": Sale.DISPENSED, "amount": 7000}, stock_drink="cola"),
        )
    )
    assert broker.stock()["cola"] == 0
    assert broker.sales()[-1]["kind"] == Sale.DISPENSED


def test_transition_that_clears_the_order_records_the_sale_under_the_old_order(broker):
    oid = to_order_created(broker)
    assert broker.transition(
        Transition(
            State.PAYMENT_FAILED,
            (State.ORDER_CREATED,),
            oid,
            {},
            Effects(sale={"kind": Sale.CANCELLED}),
            new_order_id=None,
        )
    )
    assert broker.snapshot().order_id is None
    assert broker.sales()[-1]["order_id"] == oid


def test_transition_without_sale_appends_no_sale(broker):
    oid = to_order_created(broker)
    count = len(broker.sales())
    assert broker.transition(Transition(State.PAYMENT_SUCCESS, (State.ORDER_CREATED,), oid, {}))
    assert len(broker.sales()) == count


def reset(client, broker: Broker, state: State, order_id: str) -> None:
    """Put the machine in `state` for `order_id`, as a test's set-up (not a transition)."""
    snap = broker.snapshot()
    client.hset(
        broker.state_key,
        mapping={"state": str(state), "order_id": order_id, "version": snap.version, "tid": ""},
    )


def race(client, order_id: str, targets: tuple[State, ...]) -> dict[State, bool]:
    """Each target tried at the same instant from its own thread and Broker."""
    barrier = threading.Barrier(len(targets))
    results: dict[State, bool] = {}

    def decide(to: State) -> None:
        racer = Broker(client, MACHINE)
        barrier.wait(timeout=10)
        results[to] = racer.transition(
            Transition(
                to,
                (State.ORDER_CREATED,),
                order_id,
                {"order_id": order_id},
                Effects(sale={"kind": str(to)}),
            )
        )

    threads = [threading.Thread(target=decide, args=(to,)) for to in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert not any(t.is_alive() for t in threads)
    return results


def test_only_one_of_two_racing_transitions_is_applied(broker, client):
    """Two workers decide at once for the same order: success and failure. One wins."""
    for n in range(20):
        oid = f"vm-1-race-{n}"
        reset(client, broker, State.ORDER_CREATED, oid)
        events_before = client.xlen(broker.events_key)

        results = race(client, oid, (State.PAYMENT_SUCCESS, State.PAYMENT_FAILED))

        assert sorted(results.values()) == [False, True]
        winner = next(s for s, ok in results.items() if ok)
        assert broker.snapshot().state is winner
        assert client.xlen(broker.events_key) == events_before + 1
        sales = [s for s in broker.sales() if s["order_id"] == oid]
        assert [s["kind"] for s in sales] == [str(winner)]


def test_events_count_equals_the_applied_transitions(broker, client):
    applied = 1  # ensure_ready
    broker.show_menu()
    applied += 1
    with pytest.raises(CommandRefused):
        broker.place_order("tea")
    oid = broker.place_order("cola")
    applied += 1
    broker.request_cancel()  # a request to the workers, not a transition
    with pytest.raises(CommandRefused):
        broker.show_menu()
    outcomes = [
        broker.transition(Transition(State.ORDER_CREATED, (State.MENU_CLICKED,), oid, {})),
        broker.transition(Transition(State.ORDER_CREATED, (State.MENU_CLICKED,), oid, {})),
        broker.transition(Transition(State.PAYMENT_FAILED, (State.ORDER_CREATED,), "other", {})),
        broker.transition(
            Transition(
                State.PAYMENT_FAILED,
                (State.ORDER_CREATED,),
                oid,
                {"reason": str(FailReason.CANCELLED)},
            )
        ),
    ]
    assert outcomes == [True, False, False, True]
    applied += sum(outcomes)
    broker.show_menu()
    applied += 1
    assert client.xlen(broker.events_key) == applied
    assert broker.snapshot().version == applied
    assert [int(e["version"]) for e in events(broker)] == list(range(1, applied + 1))


# --- waking on the streams -------------------------------------------------------------------


def test_wait_returns_the_entries_appended_after_the_cursor(broker):
    to_order_created(broker)
    cursor = broker.cursor()
    broker.request_cancel()
    oid = broker.snapshot().order_id
    assert broker.transition(Transition(State.PAYMENT_FAILED, (State.ORDER_CREATED,), oid, {}))

    moved, entries = broker.wait(cursor, timeout_s=1)

    assert [
        (stream, fields.get("command") or fields.get("state")) for stream, fields in entries
    ] in (
        [(broker.commands_key, "CANCEL"), (broker.events_key, "PAYMENT_FAILED")],
        [(broker.events_key, "PAYMENT_FAILED"), (broker.commands_key, "CANCEL")],
    )
    assert moved == broker.cursor()
    assert moved != cursor


def test_wait_with_nothing_new_times_out_with_no_entries(broker):
    cursor = broker.cursor()
    moved, entries = broker.wait(cursor, timeout_s=0.05)
    assert entries == []
    assert moved == cursor


def test_wait_with_no_time_left_returns_at_once(broker):
    cursor = broker.cursor()
    assert broker.wait(cursor, timeout_s=0) == (cursor, [])


def test_cursor_of_empty_streams_starts_at_zero(client):
    b = Broker(client, MACHINE)
    assert b.cursor() == {b.events_key: "0-0", b.commands_key: "0-0"}


def test_wait_blocks_until_another_process_appends(real_redis):
    """On the real server: a blocked wait wakes on an entry written by another client."""
    b = Broker(real_redis, MACHINE)
    b.ensure_ready(DRINKS)
    cursor = b.cursor()

    def append_once_the_wait_blocks() -> None:
        # The server lists a client blocked in XREAD (flag b): the wait is under way.
        eventually(
            lambda: any(
                c["cmd"] == "xread" and "b" in c["flags"] for c in real_redis.client_list()
            ),
            5,
            "the wait to block",
        )
        Broker(real_redis, MACHINE).show_menu()

    writer = threading.Thread(target=append_once_the_wait_blocks)
    writer.start()
    try:
        moved, entries = b.wait(cursor, timeout_s=5)
    finally:
        writer.join(timeout=5)
    assert [fields["state"] for _, fields in entries] == ["SHOW_MENU"]
    assert moved[b.events_key] == b.last_event_id()


def test_blocking_wait_times_out_with_no_entries(real_redis):
    b = Broker(real_redis, MACHINE)
    b.ensure_ready(DRINKS)
    cursor = b.cursor()
    assert b.wait(cursor, timeout_s=0.3) == (cursor, [])


# --- operator --------------------------------------------------------------------------------


def test_set_stock_changes_the_units_of_a_drink(broker):
    broker.set_stock("tea", 9)
    assert broker.stock()["tea"] == 9


def test_set_stock_of_an_unknown_drink_is_refused_and_changes_nothing(broker, client):
    before = dump(client)
    refused(broker.set_stock, "juice", 3, code=ErrorCode.UNKNOWN_DRINK)
    assert dump(client) == before


def test_negative_stock_is_refused_and_changes_nothing(broker, client):
    before = dump(client)
    refused(broker.set_stock, "cola", -1, code=ErrorCode.BAD_VALUES)
    assert dump(client) == before


@pytest.mark.parametrize("setup", ["idle", "menu", "result"])
def test_out_of_service_from_a_quiet_state_and_back_to_idle(broker, setup):
    if setup == "menu":
        broker.show_menu()
    elif setup == "result":
        to_result(broker)
    broker.set_out_of_service(True)
    snap = broker.snapshot()
    assert snap.state is State.OUT_OF_SERVICE
    assert snap.order_id is None
    assert snap.frame == {"event": "OUT_OF_SERVICE", "values": {}}
    refused(broker.show_menu, code=ErrorCode.WRONG_STATE)

    broker.set_out_of_service(False)
    assert broker.snapshot().state is State.IDLE
    assert broker.snapshot().frame == {"event": "IDLE", "values": {}}


def test_out_of_service_during_an_order_is_refused_and_changes_nothing(broker, client):
    to_order_created(broker)
    before = dump(client)
    refused(broker.set_out_of_service, True, code=ErrorCode.WRONG_STATE)
    assert dump(client) == before


def test_back_in_service_when_not_out_of_service_is_refused(broker, client):
    before = dump(client)
    refused(broker.set_out_of_service, False, code=ErrorCode.WRONG_STATE)
    assert dump(client) == before


def test_heartbeats_of_a_fleet_machine_are_its_shared_workers(broker, client):
    """A machine served by fleet mode's shared workers has no heartbeat keys of its own: its
    status shows when a process of each service was last alive, newest of them; a machine's
    own heartbeat wins, and a service nobody runs stays None."""
    client.zadd(keys.FLEET_WORKERS.format(service="ORDER"), {"host:1": T0 - 5, "host:2": T0 - 1})
    broker.heartbeat("SCREEN", 60)
    beats = broker.heartbeats(["ORDER", "SCREEN", "DISPENSE"])
    assert beats["ORDER"] == T0 - 1
    assert beats["SCREEN"] == T0
    assert beats["DISPENSE"] is None
