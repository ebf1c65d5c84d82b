"""Dispenser slots: the menu's slots per drink, the slot rules (cores/rules.py), the slots'
health in Redis (cores/slots.py), the DISPENSE worker choosing and counting slots in both
modes, sold out on the kiosk's menu, the slot_disabled and slot_empty alerts, re-enabling (operations, CLI,
console), the wire's slot, reason and firmware fields, and the dispenser's status.

Units on fakeredis with a scripted gateway and dispenser (as tests/test_worker_steps.py); the
end-to-end purchase through `main.py up` with a simulated board is tests/test_serial_purchase.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest

from constants import keys
from constants.orders import OrderField
from constants.states import ErrorCode, Sale, State
from cores import agent_protocol, catalog, rules
from cores.agent_protocol import FROM_AGENT, FROM_GATEWAY, AgentProtocolError, Kind, Message
from cores.alerts import AlertKind, Facts, evaluate
from cores.broker import Broker, CommandRefused
from cores.console_errors import ActionRefused, InvalidInput, NotFound
from cores.models import Drink, SlotState
from cores.operations import Operations
from cores.remote_dispenser import RemoteDispenser
from cores.rules import Vend
from cores.slots import Slots
from services import commands
from services.dispense_service import DispenseWorker, dispenser_fields
from services.gateway_service import read_for_agent, record_dispenser
from tests.test_worker_steps import Gateway, paid, step

ME = "cli:ana"
LIMIT = 2


@dataclass
class Board:
    """A driver with a journal: each vend answers the next of `answers` (result, reason)."""

    answers: list[tuple[Vend, str | None]] = field(default_factory=list)
    calls: list[tuple[str, int | None]] = field(default_factory=list)
    journal: list[dict] = field(default_factory=list)

    def vend(self, order_id: str, drink_id: str, slot: int | None = None) -> Vend:
        self.calls.append((order_id, slot))
        result, reason = self.answers.pop(0) if self.answers else (Vend.VENDED, None)
        line = {"order_id": order_id, "drink": drink_id, "result": result.value, "slot": slot}
        if reason:
            line["reason"] = reason
        self.journal.append(line)
        return result

    def outcome(self, order_id: str) -> Vend | None:
        found = [Vend(e["result"]) for e in self.journal if e["order_id"] == order_id]
        return found[-1] if found else None

    def entries(self) -> list[dict]:
        return list(self.journal)

    def status(self) -> dict[str, object]:
        return {
            "driver": "serial",
            "port": "/dev/ttyUSB0",
            "firmware": "drinkboard 2.1",
            "alive": True,
            "checked_at": 1000.0,
        }


@pytest.fixture
def menu() -> list[dict]:
    """cola in slots 1 then 4; tea in slot 2."""
    return [
        {"id": "cola", "name": "Cola", "price": 7000, "stock": 10, "slots": [1, 4]},
        {"id": "tea", "name": "Teh", "price": 5000, "stock": 10, "slot": 2},
    ]


@pytest.fixture
def broker(fake_redis, menu, settings, clock):
    b = Broker(fake_redis, settings.machine_id, clock=clock)
    b.ensure_ready(menu)
    return b


def worker(broker: Broker, board: Board, clock, gateway: Gateway | None = None) -> DispenseWorker:
    return DispenseWorker(
        broker, gateway or Gateway(), board, clock, sleep=lambda s: None, slot_fail_limit=LIMIT
    )


def buy(broker: Broker, board: Board, settings, clock, gateway: Gateway | None = None) -> str:
    """A paid order of cola, dispensed by one step of the DISPENSE worker."""
    gateway = gateway or Gateway()
    order_id = paid(broker, gateway, settings, clock)
    step(worker(broker, board, clock, gateway))
    broker.show_menu()  # dismiss the result screen
    return order_id


def cola_on_kiosk(broker: Broker) -> int:
    return next(d["stock"] for d in broker.menu_values() if d["id"] == "cola")


# --- the menu's slots ------------------------------------------------------------------------


def test_a_drink_reads_slots_or_an_old_single_slot_and_stores_both():
    """`slots` wins; an old entry's `slot` is one slot; the record keeps `slot` (the first)
    for older readers and `slots`."""
    assert Drink.parse({"id": "a", "name": "A", "price": 1, "slots": [3, 5]}).slots == (3, 5)
    assert Drink.parse({"id": "a", "name": "A", "price": 1, "slot": 3}).slots == (3,)
    assert Drink.parse({"id": "a", "name": "A", "price": 1}).slots == ()
    record = Drink("a", "A", "", 1, "A", (3, 5)).record()
    assert (record["slot"], record["slots"]) == (3, [3, 5])


@pytest.mark.parametrize("given", [[1, 4], "1, 4", "1 4", ("1", "4")])
def test_the_menu_accepts_slots_as_a_list_or_text(given):
    drink = catalog.parse_drink({"id": "cola", "name": "Cola", "price": 1, "slots": given})
    assert drink.slots == (1, 4)


@pytest.mark.parametrize("given", [[1, 1], [0], [1, -2], "1, x", [1, catalog.SLOTS_MAX + 1]])
def test_slots_are_positive_whole_numbers_listed_once(given):
    with pytest.raises(InvalidInput) as caught:
        catalog.parse_drink({"id": "cola", "name": "Cola", "price": 1, "slots": given})
    assert caught.value.field == "slots"


def test_no_slot_is_used_by_two_drinks():
    tea = Drink("tea", "Teh", "", 1, "Teh", (2, 5))
    with pytest.raises(InvalidInput, match="slot 5 holds tea"):
        catalog.parse_drink({"id": "cola", "name": "C", "price": 1, "slots": [1, 5]}, [tea])
    with pytest.raises(InvalidInput) as caught:
        catalog.parse_menu(
            [
                {"id": "cola", "name": "C", "price": 1, "slots": [1, 4]},
                {"id": "tea", "name": "T", "price": 1, "slot": 4},
            ]
        )
    assert caught.value.field == "slot"


def test_a_menu_import_reports_a_change_of_slots(broker):
    ops = Operations(broker)
    items = [
        {"id": "cola", "name": "Cola", "price": 7000, "slots": [4, 1]},
        {"id": "tea", "name": "Teh", "price": 5000, "slot": 2},
    ]
    assert ops.import_menu(items, ME) == ["change cola slots: slots 1, 4 -> slots 4, 1"]
    assert next(d for d in ops.drinks() if d.id == "cola").slots == (4, 1)


# --- the rules -------------------------------------------------------------------------------


def test_the_first_slot_neither_disabled_nor_empty_is_chosen():
    off, empty = SlotState(disabled=True), SlotState(empty=True)
    assert rules.choose_slot((1, 4), {}) == 1
    assert rules.choose_slot((1, 4), {1: off}) == 4
    assert rules.choose_slot((1, 4), {1: empty, 4: SlotState(fails_in_a_row=1)}) == 4
    assert rules.choose_slot((1, 4), {1: off, 4: empty}) is None
    assert not rules.sellable((1, 4), {1: off, 4: empty})
    assert rules.sellable((), {})


def test_a_slot_is_disabled_after_the_limit_of_its_own_failures_in_a_row():
    s = SlotState()
    s1 = rules.slot_after_vend(s, Vend.FAILED, "JAM", 3, 10.0)
    assert s1 == SlotState(1, False, False, "JAM", 10.0)
    s2 = rules.slot_after_vend(s1, Vend.FAILED, "NO_DROP", 3, 11.0)
    assert s2 is not None and not s2.disabled
    s3 = rules.slot_after_vend(s2, Vend.FAILED, "TIMEOUT", 3, 12.0)
    assert s3 is not None and s3.disabled and s3.fails_in_a_row == 3
    reset = rules.slot_after_vend(s2, Vend.VENDED, None, 3, 13.0)
    assert reset is not None and reset.fails_in_a_row == 0 and reset.usable


def test_empty_marks_the_slot_empty_and_busy_or_unknown_leave_it_be():
    empty = rules.slot_after_vend(SlotState(), Vend.FAILED, "EMPTY", 3, 1.0)
    assert empty is not None and empty.empty and not empty.usable
    for reason in ("BUSY", "BAD_REQUEST", None):
        assert rules.slot_after_vend(SlotState(), Vend.FAILED, reason, 3, 1.0) is None
    assert rules.slot_after_vend(SlotState(fails_in_a_row=2), Vend.UNKNOWN, None, 3, 1.0) is None
    assert rules.slot_after_vend(SlotState(), Vend.VENDED, None, 3, 1.0) is None


@pytest.mark.parametrize("reason", ["NO_SLOT", "ERR", "SENSOR_BLOCKED", "PORT"])
def test_a_hardware_refusal_that_never_passes_counts_and_disables_the_slot(reason):
    """A menu slot with no relay or one the board does not know (NO_SLOT, ERR), a blocked drop
    sensor, an unplugged board (PORT): refused for ever, so they count like a jam and the
    limit takes the slot out of use, with the reason kept for the alert."""
    state = SlotState()
    for n, at in ((1, 1.0), (2, 2.0), (3, 3.0)):
        after = rules.slot_after_vend(state, Vend.FAILED, reason, 3, at)
        assert after is not None and after.fails_in_a_row == n
        state = after
    assert state.disabled and state.last_reason == reason
    detail = evaluate(Facts(now=4.0, slots={5: state}), {}).raised[0].detail
    assert detail == f"3 failed vends in a row, last {reason}"


def test_empty_does_not_count_toward_the_limit_nor_disable_the_slot():
    """Two jams then EMPTY (limit 3): the slot is empty, not disabled, its count still 2; a
    refill makes it usable. A slot disabled already stays disabled through EMPTY."""
    two = SlotState(2, False, False, "JAM", 1.0)
    after = rules.slot_after_vend(two, Vend.FAILED, "EMPTY", 3, 2.0)
    assert after == SlotState(2, False, True, "EMPTY", 2.0)
    fresh = rules.slot_after_vend(SlotState(), Vend.FAILED, "EMPTY", 1, 2.0)
    assert fresh is not None and fresh.empty and not fresh.disabled and fresh.fails_in_a_row == 0
    off = SlotState(3, True, False, "JAM", 1.0)
    still = rules.slot_after_vend(off, Vend.FAILED, "EMPTY", 3, 2.0)
    assert still is not None and still.disabled and still.fails_in_a_row == 3


def test_a_vend_is_counted_against_its_slot_once_per_order(broker):
    slots = Slots(broker)
    assert slots.record_vend(1, "o1", Vend.FAILED, "JAM", 3) is not None
    assert slots.record_vend(1, "o1", Vend.FAILED, "JAM", 3) is None
    assert slots.states()[1].fails_in_a_row == 1
    slots.record_vend(1, "o2", Vend.FAILED, "JAM", 3)
    assert slots.states()[1].fails_in_a_row == 2


# --- one machine: the DISPENSE worker --------------------------------------------------------


def test_the_worker_vends_from_the_drinks_first_slot_and_keeps_it_on_the_order(
    broker, settings, clock
):
    board = Board()
    order_id = buy(broker, board, settings, clock)
    assert board.calls == [(order_id, 1)]
    assert broker.order(order_id).get(OrderField.SLOT) == "1"
    assert broker.stock()["cola"] == 9


def test_a_jam_counts_against_the_slot_is_refunded_and_the_limit_disables_it(
    broker, settings, clock
):
    """Two JAMs (SLOT_FAIL_LIMIT 2) on slot 1: each order refunded, the slot disabled; cola
    then vends from its second slot 4; with 4 empty too it is sold out on the kiosk and an
    order for it is refused."""
    board = Board([(Vend.FAILED, "JAM"), (Vend.FAILED, "JAM"), (Vend.FAILED, "EMPTY")])
    gateway = Gateway()
    first = buy(broker, board, settings, clock, gateway)
    assert Slots(broker).states()[1] == SlotState(1, False, False, "JAM", clock())
    assert broker.order(first).get(OrderField.OUTCOME) == "dispense_failed:refunded"
    assert ("refund", first) in gateway.calls
    buy(broker, board, settings, clock, gateway)
    assert Slots(broker).states()[1].disabled
    assert cola_on_kiosk(broker) == 10  # slot 4 still vends it
    third = buy(broker, board, settings, clock, gateway)
    assert board.calls[-1] == (third, 4)
    assert Slots(broker).states()[4].empty
    assert cola_on_kiosk(broker) == 0
    assert broker.stock()["cola"] == 10  # the count is not what sells it out
    broker.show_menu()
    with pytest.raises(CommandRefused) as caught:
        broker.place_order("cola")
    assert caught.value.code == ErrorCode.SOLD_OUT


def test_an_unplugged_board_takes_the_slot_out_of_use_and_busy_does_not_count(
    broker, settings, clock
):
    """BUSY passes: not counted. PORT (the board unplugged) twice in a row (SLOT_FAIL_LIMIT 2):
    both orders refunded, slot 1 disabled with PORT as its last reason, so the alert tells the
    operator to check the cable instead of every buyer being refunded for ever."""
    board = Board([(Vend.FAILED, "BUSY"), (Vend.FAILED, "PORT"), (Vend.FAILED, "PORT")])
    buy(broker, board, settings, clock)
    assert 1 not in Slots(broker).states()
    buy(broker, board, settings, clock)
    buy(broker, board, settings, clock)
    state = Slots(broker).states()[1]
    assert state.disabled and state.last_reason == "PORT"
    raised = evaluate(Facts(now=clock(), slots=Slots(broker).states()), {}).raised
    assert [(a.id, a.detail) for a in raised] == [
        ("slot_disabled:1", "2 failed vends in a row, last PORT")
    ]


def test_a_good_vend_resets_the_slots_count(broker, settings, clock):
    board = Board([(Vend.FAILED, "JAM"), (Vend.VENDED, None)])
    buy(broker, board, settings, clock)
    buy(broker, board, settings, clock)
    assert Slots(broker).states()[1].fails_in_a_row == 0


def test_an_order_whose_drink_has_no_usable_slot_left_is_refunded_and_never_vended(
    broker, settings, clock
):
    """Paid, and meanwhile every slot of its drink went out of use: the order's slot is 0,
    the driver is never called, the payment is refunded (money rule 2)."""
    gateway = Gateway()
    order_id = paid(broker, gateway, settings, clock)
    broker.redis.hset(broker.slots_key, mapping={"1": '{"disabled": true}', "4": '{"empty": 1}'})
    board = Board()
    step(worker(broker, board, clock, gateway))
    assert board.calls == []
    assert broker.snapshot().state == State.DISPENSE_FAILED
    assert broker.order(order_id).get(OrderField.SLOT) == "0"
    assert ("refund", order_id) in gateway.calls


def test_the_worker_records_the_dispensers_firmware_when_it_changes(broker, clock):
    board = Board()
    w = worker(broker, board, clock)
    w.record_dispenser()
    key = keys.key(keys.DISPENSER, broker.machine_id)
    stored = broker.redis.hgetall(key)
    assert (stored["driver"], stored["firmware"], stored["last_seen"]) == (
        "serial",
        "drinkboard 2.1",
        "1000.0",
    )
    fields = dispenser_fields({"driver": "serial", "alive": False, "checked_at": 2000.0}, stored)
    assert (fields["alive"], fields["last_seen"]) == ("0", "1000.0")


# --- fleet mode: the worker and the gateway ----------------------------------------------------


def test_fleet_mode_puts_the_slot_in_the_vend_message_and_counts_the_agents_reason(
    broker, settings, clock
):
    gateway = Gateway()
    order_id = paid(broker, gateway, settings, clock)
    remote = DispenseWorker(
        broker,
        gateway,
        RemoteDispenser(broker, 30),
        clock,
        sleep=lambda s: None,
        slot_fail_limit=1,
    )
    step(remote)
    assert broker.order(order_id).get(OrderField.SLOT) == "1"
    catch = read_for_agent(broker, None, None)
    vend = agent_protocol.parse(catch.texts[-1], FROM_GATEWAY)
    assert (vend.kind, vend.order_id, vend.slot) == (Kind.VEND, order_id, 1)
    record = {"result": "failed", "at": clock(), "reason": "JAM"}
    broker.redis.hset(keys.key(keys.VEND, broker.machine_id), order_id, json.dumps(record))
    step(remote)
    assert broker.snapshot().state == State.DISPENSE_FAILED
    assert Slots(broker).states()[1].disabled
    assert ("refund", order_id) in gateway.calls


def test_the_gateway_keeps_the_agents_dispenser_from_its_hello(broker):
    record_dispenser(broker, "serial", "drinkboard 2.1")
    stored = broker.redis.hgetall(keys.key(keys.DISPENSER, broker.machine_id))
    assert (stored["driver"], stored["firmware"], stored["alive"]) == (
        "serial",
        "drinkboard 2.1",
        "1",
    )
    record_dispenser(broker, "serial", None)
    stored = broker.redis.hgetall(keys.key(keys.DISPENSER, broker.machine_id))
    assert "alive" not in stored and stored["last_seen"]


def test_the_wire_carries_slot_reason_and_firmware_checked():
    vend = Message(Kind.VEND, order_id="o1", drink_id="cola", slot=4)
    assert agent_protocol.parse(agent_protocol.encode(vend), FROM_GATEWAY).slot == 4
    old = '{"kind":"vend","order_id":"o1","drink_id":"cola"}'
    assert agent_protocol.parse(old, FROM_GATEWAY).slot is None
    for bad in (0, -1, "1", True, 1.5, catalog.SLOTS_MAX + 1):
        raw = json.dumps({"kind": "vend", "order_id": "o1", "drink_id": "cola", "slot": bad})
        with pytest.raises(AgentProtocolError):
            agent_protocol.parse(raw, FROM_GATEWAY)
    result = Message(Kind.VEND_RESULT, order_id="o1", result="failed", reason="JAM")
    assert agent_protocol.parse(agent_protocol.encode(result), FROM_AGENT).reason == "JAM"
    for bad in ("jam", "JAM JAM", "<b>", "X" * 40, 3):
        raw = json.dumps(
            {"kind": "vend_result", "order_id": "o1", "result": "failed", "reason": bad}
        )
        with pytest.raises(AgentProtocolError):
            agent_protocol.parse(raw, FROM_AGENT)
    hello = Message(Kind.HELLO, version="1.0", driver="serial", firmware="drinkboard 2.1")
    parsed = agent_protocol.parse(agent_protocol.encode(hello), FROM_AGENT)
    assert (parsed.driver, parsed.firmware) == ("serial", "drinkboard 2.1")
    assert agent_protocol.parse('{"kind":"hello","version":"1"}', FROM_AGENT).firmware is None
    with pytest.raises(AgentProtocolError):
        agent_protocol.parse('{"kind":"hello","version":"1","firmware":"a\\u0007b"}', FROM_AGENT)


# --- alerts, re-enabling, status ----------------------------------------------------------------


def test_slot_disabled_is_raised_while_the_slot_is_disabled_and_cleared_after():
    facts = Facts(now=5.0, slots={3: SlotState(3, True, False, "JAM", 4.0), 1: SlotState(1)})
    changes = evaluate(facts, {})
    assert [(a.kind, a.subject) for a in changes.raised] == [(AlertKind.SLOT_DISABLED, "3")]
    assert "3 failed vends in a row, last JAM" in changes.raised[0].detail
    opened = {a.id: a for a in changes.raised}
    assert not evaluate(facts, opened)
    cleared = evaluate(Facts(now=6.0), opened).cleared
    assert [(a.id, a.detail) for a in cleared] == [("slot_disabled:3", "re-enabled")]


def test_slot_empty_is_raised_while_the_slot_is_empty_and_cleared_by_a_refill(broker):
    """An EMPTY slot raises slot_empty (why a drink with stock left shows sold out); the
    refill of its drink clears the state, and with it the alert."""
    Slots(broker).record_vend(1, "o1", Vend.FAILED, "EMPTY", LIMIT)
    facts = Facts(now=5.0, slots=Slots(broker).states())
    changes = evaluate(facts, {})
    assert [(a.kind, a.subject) for a in changes.raised] == [(AlertKind.SLOT_EMPTY, "1")]
    assert "EMPTY" in changes.raised[0].detail
    opened = {a.id: a for a in changes.raised}
    assert not evaluate(facts, opened)
    Operations(broker).refill("cola", ME)
    cleared = evaluate(Facts(now=6.0, slots=Slots(broker).states()), opened).cleared
    assert [(a.id, a.detail) for a in cleared] == [("slot_empty:1", "refilled or re-enabled")]


def test_enabling_a_slot_is_audited_and_puts_its_drink_back_on_the_kiosk(broker):
    broker.redis.hset(broker.slots_key, mapping={"1": '{"disabled": true}', "4": '{"empty": 1}'})
    broker.show_menu()
    assert cola_on_kiosk(broker) == 0
    ops = Operations(broker)
    before = ops.enable_slot("1", ME)
    assert before["disabled"] is True
    assert 1 not in Slots(broker).states()
    menu = broker.snapshot().frame["values"]
    assert next(d["stock"] for d in menu if d["id"] == "cola") == 10
    entry = ops.audit(1)[0]
    assert (entry["actor"], entry["action"], entry["target"]) == (ME, "enable_slot", "1")
    with pytest.raises(ActionRefused):
        ops.enable_slot("1", ME)
    with pytest.raises(NotFound):
        ops.enable_slot("9", ME)
    with pytest.raises(InvalidInput):
        ops.enable_slot("x", ME)


def test_a_refill_puts_an_empty_slot_back_but_not_a_disabled_one(broker):
    broker.redis.hset(
        broker.slots_key,
        mapping={
            "1": json.dumps({"empty": True, "fails_in_a_row": 1}),
            "4": json.dumps({"empty": True, "disabled": True, "fails_in_a_row": 3}),
        },
    )
    Operations(broker).refill("cola", ME)
    states = Slots(broker).states()
    assert 1 not in states
    assert states[4].disabled and not states[4].empty


def test_status_and_the_slot_commands_show_the_dispenser_and_slots(broker, settings, clock):
    record_dispenser(broker, "serial", "drinkboard 2.1")
    broker.redis.hset(
        broker.slots_key,
        "1",
        json.dumps({"disabled": True, "fails_in_a_row": 2, "last_reason": "JAM"}),
    )
    ops = Operations(broker)
    out = commands.status(ops, settings)
    assert "dispenser: serial, firmware drinkboard 2.1" in out.text
    assert "slots out of use: 1 (cola: disabled, 2 failed, last JAM)" in out.text
    assert out.data["dispenser"]["firmware"] == "drinkboard 2.1"
    listing = commands.slots(ops, settings)
    assert [(r["slot"], r["drink"], r["status"]) for r in listing.data] == [
        (1, "cola", "disabled"),
        (2, "tea", "ok"),
        (4, "cola", "ok"),
    ]
    done = commands.slot_enable(ops, "1", ME)
    assert done.text == "slot 1: disabled -> enabled"
    assert json.loads(done.render(True))["enabled"] is True


def test_the_sales_of_a_failed_vend_stay_balanced(broker, settings, clock):
    """A JAM's order: its failed vend and its refund are recorded as before slots."""
    order_id = buy(broker, Board([(Vend.FAILED, "JAM")]), settings, clock)
    kinds = [s["kind"] for s in broker.sales() if s["order_id"] == order_id]
    assert kinds[-2:] == [Sale.DISPENSE_FAILED, Sale.REFUNDED]
